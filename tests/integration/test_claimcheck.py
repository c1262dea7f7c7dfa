"""Claim check against the real broker: big events travel by reference and arrive intact."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from stepbus_contracts import (
    ToolCallCompleted,
    ToolCallCompletedData,
    Topics,
    history_adapter,
)
from stepbus_runtime import (
    ClaimCheckError,
    Emit,
    EventPublisher,
    PayloadStore,
    RecordContext,
    Route,
)
from stepbus_runtime.claimcheck import CHUNK_BYTES, PayloadRef

from ..harness import TopicReader, running_processor, wait_until

pytestmark = pytest.mark.integration

THRESHOLD = 64 * 1024


def completed(task_id: str, output: str) -> ToolCallCompleted:
    return ToolCallCompleted(
        subject=task_id,
        tenant="acme",
        data=ToolCallCompletedData(
            step=0, call_index=0, name="fetch", idempotency_key=f"{task_id}:0:0", output=output
        ),
    )


@contextlib.asynccontextmanager
async def running(bootstrap: str, topics: Topics) -> AsyncIterator[tuple[EventPublisher, dict]]:
    """A publisher with claim checks on and a processor that records what it handles."""
    publisher = EventPublisher(
        bootstrap, "test", payloads_topic=topics.payloads, claim_check_threshold=THRESHOLD
    )
    await publisher.start()
    handled: dict[str, Any] = {}

    async def handler(event: Any, context: RecordContext) -> Sequence[Emit]:
        handled[event.subject] = event
        return []

    routes = {topics.planner_history: Route(history_adapter, handler)}
    try:
        async with running_processor(
            bootstrap,
            routes,
            topics.dlq,
            publisher=publisher,
            max_attempts=2,
            payloads=publisher.payloads,
        ):
            yield publisher, handled
    finally:
        await publisher.stop()


async def test_big_event_travels_by_reference_and_arrives_intact(
    kafka_bootstrap: str, topics: Topics
) -> None:
    output = os.urandom(3 * 1024 * 1024 // 2).hex()  # 3 MiB, incompressible
    big, small = completed("big", output), completed("small", "391")
    async with running(kafka_bootstrap, topics) as (publisher, handled):
        await publisher.publish([Emit(topics.planner_history, big)])
        await publisher.publish([Emit(topics.planner_history, small)])
        await wait_until(lambda: {"big", "small"} <= set(handled), 60, "both events handled")
    assert handled["big"].data.output == output  # byte for byte, not truncated
    assert handled["big"] == big
    assert handled["small"] == small

    async with TopicReader(kafka_bootstrap, topics.planner_history) as wire:
        await wire.wait_for(lambda events: len(events) == 2, 30, "two records")
    records = {r.key: r for r in wire.records}
    claim = json.loads(records[b"big"].value)
    assert len(records[b"big"].value) < 2048
    assert "data" not in claim
    assert {k: claim[k] for k in ("type", "id", "subject", "tenant", "source", "specversion")} == {
        "type": "stepbus.tool.call_completed", "id": big.id, "subject": "big",
        "tenant": "acme", "source": big.source, "specversion": "1.0",
    }  # fmt: skip
    ref = PayloadRef.model_validate(claim["claimcheck"])
    assert ref.topic == topics.payloads
    assert ref.size > 3 * 1024 * 1024
    assert len(ref.offsets) == math.ceil(ref.size / CHUNK_BYTES)
    small_event = json.loads(records[b"small"].value)
    assert "claimcheck" not in small_event and small_event["data"]["output"] == "391"


async def test_bad_claim_references_are_dead_lettered_with_a_clear_error(
    kafka_bootstrap: str, topics: Topics
) -> None:
    store = PayloadStore(kafka_bootstrap, topics.payloads)
    await store.start()
    try:
        ref = await store.put(os.urandom(700 * 1024))
        assert len(ref.offsets) == 2
        assert len(await store.fetch(ref)) == 700 * 1024
    finally:
        await store.stop()
    event = completed("x", "placeholder")
    attributes = event.model_dump(mode="json", exclude={"data", "datacontenttype"})
    bad_refs = {
        b"corrupt": {**ref.model_dump(), "sha256": "0" * 64},
        b"missing": {**ref.model_dump(), "offsets": [o + 1000 for o in ref.offsets]},
        b"malformed": {"topic": topics.payloads},
        b"elsewhere": {**ref.model_dump(), "topic": topics.results},
    }
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for key, bad in bad_refs.items():
            claim = {**attributes, "subject": key.decode(), "claimcheck": bad}
            await producer.send_and_wait(
                topics.planner_history, json.dumps(claim).encode(), key=key
            )
    finally:
        await producer.stop()

    async with running(kafka_bootstrap, topics):
        async with TopicReader(kafka_bootstrap, topics.dlq) as dlq:
            await dlq.wait_for(lambda _: len(dlq.records) == 4, 60, "four dead letters")
    errors = {r.key: dict(r.headers)["stepbus.error"].decode() for r in dlq.records}
    types = {dict(r.headers)["stepbus.error.type"] for r in dlq.records}
    assert types == {ClaimCheckError.__name__.encode()}
    assert errors[b"corrupt"].startswith(f"payload {ref.id} is corrupt")
    assert errors[b"missing"].startswith(f"payload {ref.id} missing")
    assert errors[b"malformed"].startswith("malformed claim check reference")
    assert "not the payloads topic" in errors[b"elsewhere"]


async def test_expired_payload_is_reported_as_expired(kafka_bootstrap: str, topics: Topics) -> None:
    store = PayloadStore(kafka_bootstrap, topics.payloads)
    await store.start()
    try:
        ref = await store.put(b"x" * 1000)
        tp = TopicPartition(topics.payloads, ref.partition)
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:  # what retention does after 7 days
            await admin.delete_records({tp: RecordsToDelete(ref.offsets[-1] + 1)})
        finally:
            await admin.close()
        with pytest.raises(ClaimCheckError, match="expired"):
            await store.fetch(ref)
    finally:
        await store.stop()


async def test_small_events_are_not_claim_checked(kafka_bootstrap: str, topics: Topics) -> None:
    publisher = EventPublisher(
        kafka_bootstrap, "test", payloads_topic=topics.payloads, claim_check_threshold=THRESHOLD
    )
    await publisher.start()
    try:
        under = completed("under", "y" * (THRESHOLD - 2048))
        await publisher.publish([Emit(topics.results, under)])
    finally:
        await publisher.stop()
    async with TopicReader(kafka_bootstrap, topics.results) as wire:
        await wire.wait_for(lambda events: len(events) == 1, 30, "one record")
    assert json.loads(wire.records[0].value)["data"]["output"] == under.data.output
    async with TopicReader(kafka_bootstrap, topics.payloads) as payloads:
        await asyncio.sleep(0.5)
        assert await payloads.poll() == []
