"""No record stops the processor (hardening findings 1-4 and 11), on the real broker.

Each test sends what an attacker would, then a valid record behind it, and checks that the bad
record ended in the DLQ (or a counted drop), the valid one was handled, the processor kept
running and the partition's committed offset moved past both.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from stepbus_contracts import TaskSubmitted, TaskSubmittedData, Topics, tasks_adapter
from stepbus_runtime import Emit, EventPublisher, RecordContext, Route, encode
from stepbus_runtime.logs import MAX_LOG_LINE

from ..harness import TopicReader, create_topic, running_processor, scratch_prefix, wait_until

pytestmark = pytest.mark.integration

SCRATCH = scratch_prefix("hard")


def task(task_id: str) -> TaskSubmitted:
    return TaskSubmitted(subject=task_id, data=TaskSubmittedData(input="What is 1 + 1?"))


class Handled:
    def __init__(self) -> None:
        self.subjects: list[str] = []

    async def __call__(self, event: Any, context: RecordContext) -> Sequence[Emit]:
        self.subjects.append(event.subject)
        return []


async def send_null_record(bootstrap: str, topic: str) -> None:
    """A record with neither key nor value. ``send()`` refuses one, but other clients write
    them, and so does aiokafka's batch API."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        batch = producer.create_batch()
        batch.append(key=None, value=None, timestamp=None)
        await (await producer.send_batch(batch, topic, partition=0))
    finally:
        await producer.stop()


async def send(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=2_000_000)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value=value, key=key)
    finally:
        await producer.stop()


async def dead_letters(bootstrap: str, topic: str, count: int) -> list[Any]:
    async with TopicReader(bootstrap, f"{topic}.dlq") as dlq:
        await dlq.wait_for(lambda _: len(dlq.records) >= count, 30, f"{count} dead letters")
    return dlq.records


def routes(topic: str, handler: Handled) -> dict[str, Route]:
    return {topic: Route(tasks_adapter, handler)}


async def test_a_record_without_key_or_value_is_dead_lettered_and_the_commit_moves_on(
    kafka_bootstrap: str,
) -> None:
    topic = await create_topic(kafka_bootstrap, SCRATCH, with_dlq=True)
    await send_null_record(kafka_bootstrap, topic)
    await send(kafka_bootstrap, topic, [(b"after", encode(task("after")))])
    handled = Handled()
    async with running_processor(kafka_bootstrap, routes(topic, handled), f"{topic}.dlq") as proc:
        await wait_until(lambda: handled.subjects == ["after"], 30, "the record after it")
        await wait_until(lambda: list(proc.committed_offsets().values()) == [2], 30, "commit 2")
    [letter] = await dead_letters(kafka_bootstrap, topic, 1)
    headers = dict(letter.headers)
    assert (letter.key, letter.value) == (None, b"")
    assert headers["stepbus.origin.null"] == b"true"
    assert headers["stepbus.origin.offset"] == b"0"


async def test_a_deeply_nested_record_is_dead_lettered_and_the_processor_lives_on(
    kafka_bootstrap: str,
) -> None:
    topic = await create_topic(kafka_bootstrap, SCRATCH, with_dlq=True)
    deep = ('{"claimcheck": ' + "[" * 10_000 + "]" * 10_000 + "}").encode()
    nested = ('{"data": ' + '{"a": ' * 5_000 + "1" + "}" * 5_000 + "}").encode()
    await send(
        kafka_bootstrap,
        topic,
        [(b"deep-1", deep), (b"deep-2", nested), (b"after", encode(task("after")))],
    )
    handled = Handled()
    async with running_processor(kafka_bootstrap, routes(topic, handled), f"{topic}.dlq") as proc:
        await wait_until(lambda: handled.subjects == ["after"], 30, "the record after them")
        await wait_until(lambda: list(proc.committed_offsets().values()) == [3], 30, "commit 3")
        assert proc.health()[0]
    letters = await dead_letters(kafka_bootstrap, topic, 2)
    assert [r.key for r in letters] == [b"deep-1", b"deep-2"]
    assert all(dict(r.headers)["stepbus.error.type"] == b"DecodeError" for r in letters)


async def test_a_keyless_record_near_the_size_limit_is_dead_lettered_truncated(
    kafka_bootstrap: str,
) -> None:
    topic = await create_topic(kafka_bootstrap, SCRATCH, with_dlq=True)
    big = b"x" * 1_048_400  # the broker accepts it; its copy with our headers would not fit
    await send(kafka_bootstrap, topic, [(None, big), (None, b"{}"), (b"ok", encode(task("ok")))])
    handled = Handled()
    async with running_processor(kafka_bootstrap, routes(topic, handled), f"{topic}.dlq") as proc:
        await wait_until(lambda: handled.subjects == ["ok"], 30, "the keyed record")
        await wait_until(lambda: list(proc.committed_offsets().values()) == [3], 30, "commit 3")
    first, second = await dead_letters(kafka_bootstrap, topic, 2)
    headers = dict(first.headers)
    assert headers["stepbus.truncated"] == b"true"
    assert headers["stepbus.origin.size"] == str(len(big)).encode()
    assert (headers["stepbus.origin.topic"], headers["stepbus.origin.offset"]) == (
        topic.encode(),
        b"0",
    )
    assert 0 < len(first.value) < len(big) and big.startswith(first.value)
    assert second.value == b"{}"  # the next keyless record was not blocked behind the first


async def test_a_claim_to_a_missing_partition_fails_at_once_and_blocks_no_one(
    kafka_bootstrap: str, topics: Topics
) -> None:
    publisher = EventPublisher(
        kafka_bootstrap, "test", payloads_topic=topics.payloads, claim_check_threshold=64 * 1024
    )
    await publisher.start()
    try:
        attributes = task("x").model_dump(mode="json", exclude={"data"})
        ghost = {
            **attributes,
            "subject": "ghost",
            "claimcheck": {
                "id": "0" * 32, "topic": topics.payloads, "partition": 999, "offsets": [0],
                "size": 10, "sha256": "0" * 64,
            },
        }  # fmt: skip
        await send(kafka_bootstrap, topics.tasks, [(b"ghost", json.dumps(ghost).encode())])
        big = TaskSubmitted(subject="big", data=TaskSubmittedData(input="y" * 90_000))
        await publisher.publish([Emit(topics.tasks, big)])  # a legitimate claim behind it
        handled = Handled()
        started = time.monotonic()
        async with running_processor(
            kafka_bootstrap,
            routes(topics.tasks, handled),
            topics.dlq,
            publisher=publisher,
            payloads=publisher.payloads,
            retry_backoff=(0.2, 10.0),  # the services' own backoff
        ):
            await wait_until(lambda: handled.subjects == ["big"], 30, "the legitimate claim")
            took = time.monotonic() - started
        async with TopicReader(kafka_bootstrap, topics.dlq) as dlq:
            await dlq.wait_for(lambda _: len(dlq.records) >= 1, 30, "the dead letter")
    finally:
        await publisher.stop()
    headers = dict(dlq.records[0].headers)
    assert headers["stepbus.error.type"] == b"ClaimCheckError"
    assert b"has no partition 999" in headers["stepbus.error"]
    assert headers["stepbus.attempts"] == b"1"  # refused unread, not fetched five times
    assert took < 15, f"the legitimate claim took {took:.1f}s"  # was 5 x 30 s before


async def test_log_lines_stay_bounded_whatever_the_record_holds(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic = await create_topic(kafka_bootstrap, SCRATCH, with_dlq=True)
    huge_type = json.dumps({"type": "t" * 900_000, "subject": "big", "data": {}}).encode()

    async def failing(event: Any, context: RecordContext) -> Sequence[Emit]:
        raise RuntimeError("z" * 500_000)

    await send(
        kafka_bootstrap,
        topic,
        [(b"big", huge_type), (b"boom", encode(task("boom"))), (b"x" * 900_000, b"{}")],
    )
    caplog.set_level(logging.INFO)
    async with running_processor(
        kafka_bootstrap, {topic: Route(tasks_adapter, failing)}, f"{topic}.dlq", max_attempts=2
    ):
        await dead_letters(kafka_bootstrap, topic, 3)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("stepbus")]
    assert lines, "the dead letters were logged"
    assert max(len(line) for line in lines) < MAX_LOG_LINE


async def test_a_record_keyed_other_than_by_its_subject_is_dead_lettered_not_run(
    kafka_bootstrap: str,
) -> None:
    topic = await create_topic(kafka_bootstrap, SCRATCH, with_dlq=True)
    await send(
        kafka_bootstrap,
        topic,
        [(b"someone-else", encode(task("mine"))), (None, encode(task("keyless"))),
         (b"ok", encode(task("ok")))],
    )  # fmt: skip
    handled = Handled()
    async with running_processor(kafka_bootstrap, routes(topic, handled), f"{topic}.dlq"):
        await wait_until(lambda: handled.subjects == ["ok"], 30, "the well-keyed record")
    letters = await dead_letters(kafka_bootstrap, topic, 2)
    errors = [dict(r.headers)["stepbus.error"] for r in letters]
    assert all(b"is not the event's subject" in e for e in errors), errors
    assert handled.subjects == ["ok"]
