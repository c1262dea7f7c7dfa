"""Create the catalog's topics on startup (the broker does not auto-create them)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError
from aiokafka.protocol.admin import DeleteGroupsRequest
from stepbus_contracts import Topics, TopicSpec

from .kafka_security import kafka_options

__all__ = ["delete_namespace", "ensure_topics", "topic_partitions"]

log = logging.getLogger(__name__)


async def ensure_topics(
    bootstrap_servers: str,
    topics: Topics,
    *,
    replication_factor: int = 1,
    wait_seconds: float = 60.0,
    partitions: int | None = None,
) -> None:
    """Create every topic of the catalog that does not exist yet; existing ones are kept.

    Returns once every topic's partitions all have a leader — a topic that another service has
    just created may be listed before it can be read — and retries while the broker is
    unreachable, up to ``wait_seconds``. ``partitions`` overrides the catalog's partition
    counts (a replay's short-lived namespace needs one per topic).
    """
    specs = topics.specs()
    if partitions is not None:
        specs = [(name, replace(spec, partitions=partitions)) for name, spec in specs]
    deadline = asyncio.get_running_loop().time() + wait_seconds
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **kafka_options())
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [
                NewTopic(
                    name,
                    num_partitions=spec.partitions,
                    replication_factor=replication_factor,
                    topic_configs=spec.configs,
                )
                for name, spec in specs
                if name not in existing
            ]
            if missing:
                try:
                    response = await admin.create_topics(missing)
                except TopicAlreadyExistsError:
                    response = None  # another service created them first
                _raise_refusals(response)
                log.info("created topics %s", [t.name for t in missing])
            if await _all_led(admin, dict(specs)):
                return
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"topics have no leaders after {wait_seconds:.0f}s")
            await asyncio.sleep(0.2)
        except KafkaConnectionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)
        finally:
            await admin.close()


_ALREADY_EXISTS = 36


def _raise_refusals(response: object) -> None:
    """Raise when the broker refused to create a topic for a reason waiting cannot fix (no
    permission, invalid config): otherwise startup would wait for leaders that never come."""
    errors = getattr(response, "topic_errors", None) or ()
    refused = [
        (e[0], e[1], e[2] if len(e) > 2 else None)
        for e in errors
        if e[1] not in (0, _ALREADY_EXISTS)
    ]
    if refused:
        details = "; ".join(
            f"{name}: error {code} {message or ''}".strip() for name, code, message in refused
        )
        raise PermissionError(
            f"the broker refused to create topics ({details}); create them beforehand "
            "(docs/security.md) or grant this principal Create"
        )


async def _all_led(admin: AIOKafkaAdminClient, specs: dict[str, TopicSpec]) -> bool:
    """True when every topic exists with all its partitions and each has a leader."""
    described = await admin.describe_topics(list(specs))
    ready = {
        topic["topic"]
        for topic in described
        if topic["error_code"] == 0
        and len(topic["partitions"]) >= specs[topic["topic"]].partitions
        and all(p["error_code"] == 0 and p["leader"] >= 0 for p in topic["partitions"])
    }
    return ready >= set(specs)


async def topic_partitions(bootstrap_servers: str, *topics: str) -> list[TopicPartition]:
    """Every partition of ``topics`` (for readers that assign partitions themselves)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **kafka_options())
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    return [
        TopicPartition(topic["topic"], partition["partition"])
        for topic in described
        if topic["error_code"] == 0
        for partition in sorted(topic["partitions"], key=lambda p: p["partition"])
    ]


async def delete_namespace(bootstrap_servers: str, topics: Topics, groups: list[str]) -> None:
    """Delete every topic of a namespace and its consumer groups (what a replay made).

    Topics that do not exist are skipped. A group still with members, or already gone, is
    left to the broker (an empty group expires with its offsets).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **kafka_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        names = [name for name, _ in topics.specs() if name in existing]
        if names:
            await admin.delete_topics(names)
        for group in groups:
            # aiokafka's admin has no call for it: the request goes to the group's coordinator.
            try:
                node = await admin.find_coordinator(group)
                await admin._send_request_to_node(node, DeleteGroupsRequest([group]))
            except Exception as exc:  # cleanup is best effort, and said so
                log.warning("consumer group %s not deleted: %s", group, exc)
    finally:
        await admin.close()
