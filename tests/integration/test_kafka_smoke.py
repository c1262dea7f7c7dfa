"""aiokafka against the real Kafka 4.x broker: the client features stepbus relies on.

aiokafka's own CI stops at Kafka 2.8, so these prove produce with the idempotent producer,
group commit and resume, and a rebalance between two consumers on the broker we ship.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ..harness import create_topic, scratch_prefix, wait_until

pytestmark = pytest.mark.integration

SCRATCH = scratch_prefix("smoke")


async def _topic(bootstrap: str, partitions: int) -> str:
    return await create_topic(bootstrap, SCRATCH, partitions)


async def test_idempotent_producer_round_trip(kafka_bootstrap: str) -> None:
    topic = await _topic(kafka_bootstrap, 1)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all"
    )
    await producer.start()
    try:
        metadata = [
            await producer.send_and_wait(topic, f"v{i}".encode(), key=b"k") for i in range(20)
        ]
    finally:
        await producer.stop()
    assert [m.offset for m in metadata] == list(range(20))
    # The broker assigned a producer id: idempotence is really on, not silently ignored.
    assert producer._txn_manager is not None and producer._txn_manager.producer_id >= 0

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        seen: list[bytes] = []

        async def all_read() -> bool:
            batch = await consumer.getmany(timeout_ms=200)
            seen.extend(r.value for rs in batch.values() for r in rs)
            return len(seen) >= 20

        await wait_until(all_read, 30, "20 records")
    finally:
        await consumer.stop()
    assert seen == [f"v{i}".encode() for i in range(20)]


async def test_group_commit_and_resume(kafka_bootstrap: str) -> None:
    topic = await _topic(kafka_bootstrap, 1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    for i in range(10):
        await producer.send_and_wait(topic, str(i).encode())
    await producer.stop()

    async def read(count: int, commit_at: int | None) -> list[int]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        values: list[int] = []
        try:
            while len(values) < count:
                record = await asyncio.wait_for(consumer.getone(), 30)
                values.append(int(record.value))
                if commit_at is not None and record.offset == commit_at:
                    await consumer.commit({TopicPartition(topic, 0): record.offset + 1})
        finally:
            await consumer.stop()
        return values

    first = await read(6, commit_at=3)  # reads 0..5, commits after 3
    resumed = await read(6, commit_at=None)
    assert first == [0, 1, 2, 3, 4, 5]
    assert resumed == [4, 5, 6, 7, 8, 9]  # uncommitted 4 and 5 come again: at-least-once


async def test_rebalance_between_two_consumers(kafka_bootstrap: str) -> None:
    topic = await _topic(kafka_bootstrap, 4)
    group = f"g-{uuid.uuid4().hex[:8]}"

    def consumer() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )

    first, second = consumer(), consumer()
    await first.start()
    try:
        await wait_until(lambda: len(first.assignment()) == 4, 30, "first owns all partitions")
        await second.start()
        poller = asyncio.create_task(_poll_forever(first))
        try:

            async def second_has_half() -> bool:
                await second.getmany(timeout_ms=100)
                return len(second.assignment()) == 2

            await wait_until(second_has_half, 60, "second consumer gets half of the partitions")
            await wait_until(lambda: len(first.assignment()) == 2, 30, "first gives up half")
        finally:
            poller.cancel()
        assert first.assignment().isdisjoint(second.assignment())
        assert {tp.partition for tp in first.assignment() | second.assignment()} == {0, 1, 2, 3}
    finally:
        await second.stop()
        await first.stop()


async def _poll_forever(consumer: AIOKafkaConsumer) -> None:
    while True:
        await consumer.getmany(timeout_ms=100)
