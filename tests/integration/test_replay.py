"""Rebuilding state from Kafka: reading partitions to their end, and the latest value per key."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from stepbus_runtime import iter_latest, read_latest, read_to_end

from ..harness import create_topic, produce, scratch_prefix

pytestmark = pytest.mark.integration

SCRATCH = scratch_prefix("replay")


async def _topic(bootstrap: str, partitions: int) -> list[TopicPartition]:
    name = await create_topic(bootstrap, SCRATCH, partitions)
    return [TopicPartition(name, p) for p in range(partitions)]


async def test_read_latest_keeps_the_last_value_of_each_key_and_drops_tombstoned_keys(
    kafka_bootstrap: str,
) -> None:
    partitions = await _topic(kafka_bootstrap, 2)
    topic = partitions[0].topic
    versions = [(f"task-{i % 50}".encode(), f"v{i}".encode()) for i in range(5000)]
    await produce(kafka_bootstrap, topic, versions)
    await produce(kafka_bootstrap, topic, [(b"task-7", None)])  # type: ignore[list-item]
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        latest = await read_latest(consumer, partitions)
        everything = await read_to_end(consumer, partitions)
        loaded = {record.key: value async for record, value in iter_latest(consumer, partitions)}
    finally:
        await consumer.stop()
    assert len(everything) == 5001
    expected = {f"task-{k}".encode(): f"v{4950 + k}".encode() for k in range(50) if k != 7}
    assert {key: record.value for key, record in latest.items()} == expected
    assert loaded == expected  # what a service loading the topic decodes


async def test_read_to_end_starts_at_the_given_offset(kafka_bootstrap: str) -> None:
    partitions = await _topic(kafka_bootstrap, 1)
    await produce(
        kafka_bootstrap, partitions[0].topic, [(b"k", str(i).encode()) for i in range(10)]
    )
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tail = await read_to_end(consumer, partitions, {partitions[0]: 7})
    finally:
        await consumer.stop()
    assert [record.value for record in tail] == [b"7", b"8", b"9"]
