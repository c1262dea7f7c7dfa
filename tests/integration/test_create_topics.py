"""The topic job against the real broker: it creates the catalog, brings a drifted topic back
to it (more partitions, the catalog's configs, an operator's own config kept), and a second run
changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from stepbus_contracts import Topics
from stepbus_runtime.create_topics import dynamic_configs, reconcile_topics

from ..harness import delete_topics, unique_prefix

pytestmark = pytest.mark.integration


@pytest.fixture
async def admin(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await client.start()
    yield client
    await client.close()


async def _state(
    admin: AIOKafkaAdminClient, topics: Topics
) -> dict[str, tuple[int, dict[str, str]]]:
    names = [name for name, _ in topics.specs()]
    counts = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)}
    configs: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    ):
        for _, _, _, name, entries, *_ in response.resources:
            configs[name] = dynamic_configs(entries)
    return {name: (counts[name], configs[name]) for name in names}


async def test_the_job_creates_the_catalog_and_brings_drifted_topics_back(
    kafka_bootstrap: str, admin: AIOKafkaAdminClient
) -> None:
    topics = Topics(unique_prefix())
    try:
        await reconcile_topics(kafka_bootstrap, topics, replication_factor=1)
        created = await _state(admin, topics)
        for name, spec in topics.specs():
            count, configs = created[name]
            assert count == spec.partitions, name
            assert {k: configs.get(k) for k in spec.configs} == spec.configs, name

        audit = topics.audit
        drifted = {**created[audit][1], "retention.ms": "1000", "max.message.bytes": "2000000"}
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, audit, drifted)])
        await reconcile_topics(
            kafka_bootstrap, topics, replication_factor=1, partitions={"memory.requests": 8}
        )
        after = await _state(admin, topics)
        assert after[topics.memory_requests][0] == 8
        assert (
            after[audit][1]["retention.ms"] == dict(topics.specs())[audit].configs["retention.ms"]
        )
        assert after[audit][1]["max.message.bytes"] == "2000000", "an operator's config stays"

        await reconcile_topics(
            kafka_bootstrap, topics, replication_factor=1, partitions={"memory.requests": 8}
        )
        assert await _state(admin, topics) == after
    finally:
        await delete_topics(kafka_bootstrap, topics.prefix)
