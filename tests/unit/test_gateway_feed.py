"""The results feed's loop with a scripted consumer: poison skipped, failed batches re-read."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from stepbus_contracts import TaskCompleted, TaskCompletedData, TaskProgress, TaskProgressData
from stepbus_gateway.feed import ResultsFeed, Subscribers
from stepbus_runtime import encode

from ..harness import wait_until

TP = TopicPartition("t.results", 0)


def _record(offset: int, value: bytes) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=TP.topic,
        partition=TP.partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"t1",
        value=value,
        checksum=None,
        serialized_key_size=2,
        serialized_value_size=len(value),
        headers=(),
    )


class ScriptedConsumer:
    """Serves one partition's records from its position, like a consumer after seek()."""

    def __init__(self, values: list[bytes]) -> None:
        self.records = [_record(offset, value) for offset, value in enumerate(values)]
        self.position = 0
        self.committed: list[int] = []

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        await asyncio.sleep(0)
        batch, self.position = self.records[self.position :], len(self.records)
        return {TP: batch} if batch else {}

    async def commit(self) -> None:
        self.committed.append(self.position)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.position = offset


class FlakyProjection:
    """Fails once with an unexpected error on the event it is told to, then works."""

    def __init__(self, fail_on: str) -> None:
        self.fail_on: str | None = fail_on
        self.applied: list[str] = []

    async def apply(self, event: Any) -> bool:
        if event.id == self.fail_on:
            self.fail_on = None
            raise RuntimeError("unexpected")
        first = event.id not in self.applied
        self.applied.append(event.id)
        return first


async def test_poison_is_skipped_and_a_failed_batch_is_read_again_before_commit() -> None:
    progress = TaskProgress(
        subject="t1", data=TaskProgressData(step=0, stage="thought", message="m")
    )
    completed = TaskCompleted(subject="t1", data=TaskCompletedData(output="391", steps=1))
    consumer = ScriptedConsumer([encode(progress), b"\x00poison", encode(completed)])
    projection = FlakyProjection(fail_on=completed.id)
    subscribers = Subscribers()
    feed = ResultsFeed(
        bootstrap_servers="unused:9092",
        topic=TP.topic,
        group_id="g",
        projection=projection,  # type: ignore[arg-type]
        subscribers=subscribers,
    )
    feed._consumer = consumer

    with subscribers.subscribe("default", "t1") as sub:
        run = asyncio.create_task(feed._run())
        try:
            await wait_until(lambda: consumer.committed, 10, "a commit")
        finally:
            run.cancel()
        delivered = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]

    # Nothing was committed before the failed batch was applied in full.
    assert consumer.committed == [3]
    assert projection.applied == [progress.id, progress.id, completed.id]
    assert [event.id for event in delivered] == [progress.id, progress.id, completed.id]
