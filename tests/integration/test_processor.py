"""The Kafka processor against the real broker: DLQ, retries, concurrency, order, commits."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from stepbus_contracts import TaskSubmitted, TaskSubmittedData, tasks_adapter
from stepbus_runtime import (
    Emit,
    PermanentError,
    Processor,
    RecordContext,
    Route,
    encode,
    setup_telemetry,
)

from ..harness import (
    TopicReader,
    create_topic,
    produce,
    running_processor,
    scratch_prefix,
    wait_until,
)

pytestmark = pytest.mark.integration

SCRATCH = scratch_prefix("proc")


HandlerFn = Callable[[Any, RecordContext], Awaitable[Sequence[Emit]]]


def task(task_id: str, text: str = "What is 1 + 1?") -> TaskSubmitted:
    return TaskSubmitted(subject=task_id, data=TaskSubmittedData(input=text))


async def make_topic(bootstrap: str, partitions: int = 1) -> str:
    return await create_topic(bootstrap, SCRATCH, partitions, with_dlq=True)


def running(
    bootstrap: str, topic: str, handler: HandlerFn, **options: Any
) -> contextlib.AbstractAsyncContextManager[Processor]:
    routes = {topic: Route(tasks_adapter, handler)}
    return running_processor(bootstrap, routes, f"{topic}.dlq", group_id=f"g-{topic}", **options)


async def test_poison_records_go_to_dlq_and_the_next_valid_record_is_handled(
    kafka_bootstrap: str,
) -> None:
    topic = await make_topic(kafka_bootstrap)
    handled: list[str] = []

    async def handler(event: TaskSubmitted, context: RecordContext) -> Sequence[Emit]:
        handled.append(event.subject)
        return []

    async with running(kafka_bootstrap, topic, handler):
        await produce(
            kafka_bootstrap,
            topic,
            [
                (b"bad-json", b"{not json"),
                (b"bad-schema", b'{"type": "stepbus.task.submitted", "subject": "x", "data": {}}'),
                (b"good", encode(task("good"))),
            ],
        )
        await wait_until(lambda: handled == ["good"], 30, "the valid task to be handled")
        async with TopicReader(kafka_bootstrap, f"{topic}.dlq") as dlq:
            await dlq.wait_for(lambda _: len(dlq.records) >= 2, 30, "two dead letters")
            # Records of different keys are processed concurrently: their dead letters
            # may land in either order.
            records = sorted(dlq.records, key=lambda r: r.key or b"")
    assert [r.key for r in records] == [b"bad-json", b"bad-schema"]
    headers = [dict(r.headers) for r in records]
    assert headers[0]["stepbus.origin.topic"] == topic.encode()
    assert headers[0]["stepbus.origin.offset"] == b"0"
    assert b"invalid event" in headers[0]["stepbus.error"]
    assert b"data.input" in headers[1]["stepbus.error"]
    assert records[0].value == b"{not json"  # the original bytes, for re-drive after a fix


async def test_failing_handler_is_retried_then_dead_lettered_with_attempts(
    kafka_bootstrap: str,
) -> None:
    topic = await make_topic(kafka_bootstrap)
    attempts: dict[str, int] = {}

    async def handler(event: TaskSubmitted, context: RecordContext) -> Sequence[Emit]:
        attempts[event.subject] = context.attempt
        if event.subject == "flaky" and context.attempt < 3:
            raise ConnectionError("transient")
        if event.subject == "broken":
            raise RuntimeError("always fails")
        if event.subject == "permanent":
            raise PermanentError("cannot ever work")
        return []

    async with running(kafka_bootstrap, topic, handler, max_attempts=4):
        await produce(
            kafka_bootstrap,
            topic,
            [(k.encode(), encode(task(k))) for k in ("flaky", "broken", "permanent", "ok")],
        )
        async with TopicReader(kafka_bootstrap, f"{topic}.dlq") as dlq:
            await dlq.wait_for(lambda _: len(dlq.records) >= 2, 30, "two dead letters")
            await wait_until(lambda: "ok" in attempts, 30, "the last record")
    assert attempts == {"flaky": 3, "broken": 4, "permanent": 1, "ok": 1}
    by_key = {r.key: dict(r.headers) for r in dlq.records}
    assert set(by_key) == {b"broken", b"permanent"}
    assert by_key[b"broken"]["stepbus.attempts"] == b"4"
    assert by_key[b"permanent"]["stepbus.attempts"] == b"1"


async def test_slow_task_does_not_delay_other_tasks_on_its_partition(
    kafka_bootstrap: str,
) -> None:
    topic = await make_topic(kafka_bootstrap, partitions=1)  # every key on one partition
    finished: dict[str, float] = {}
    release = asyncio.Event()

    async def handler(event: TaskSubmitted, context: RecordContext) -> Sequence[Emit]:
        if event.subject == "slow":
            await release.wait()
        finished[event.subject] = time.monotonic()
        return []

    async with running(kafka_bootstrap, topic, handler):
        await produce(
            kafka_bootstrap,
            topic,
            [(b"slow", encode(task("slow")))]
            + [(f"fast-{i}".encode(), encode(task(f"fast-{i}"))) for i in range(20)],
        )
        await wait_until(lambda: len(finished) == 20, 30, "all fast tasks while slow waits")
        assert "slow" not in finished
        release.set()
        await wait_until(lambda: "slow" in finished, 30, "the slow task")


async def test_events_of_one_task_are_handled_in_order(kafka_bootstrap: str) -> None:
    topic = await make_topic(kafka_bootstrap, partitions=1)
    seen: dict[str, list[str]] = {"a": [], "b": []}

    async def handler(event: TaskSubmitted, context: RecordContext) -> Sequence[Emit]:
        # Earlier events sleep longer: without per-key ordering they would finish last.
        number = int(event.data.input)
        await asyncio.sleep((10 - number) * 0.01)
        seen[event.subject].append(event.data.input)
        return []

    async with running(kafka_bootstrap, topic, handler):
        await produce(
            kafka_bootstrap,
            topic,
            [(key.encode(), encode(task(key, str(i)))) for i in range(10) for key in ("a", "b")],
        )
        await wait_until(lambda: len(seen["a"]) == 10 and len(seen["b"]) == 10, 30, "20 events")
    assert seen["a"] == [str(i) for i in range(10)]
    assert seen["b"] == [str(i) for i in range(10)]


async def test_outputs_are_published_and_offsets_committed_only_when_finished(
    kafka_bootstrap: str,
) -> None:
    topic = await make_topic(kafka_bootstrap, partitions=1)
    out_topic = f"{topic}.dlq"  # any existing topic works as an output here
    release = asyncio.Event()
    calls: list[str] = []

    async def handler(event: TaskSubmitted, context: RecordContext) -> Sequence[Emit]:
        calls.append(event.subject)
        if event.subject == "blocked" and not release.is_set():
            await release.wait()
        return [Emit(out_topic, task(f"out-{event.subject}"))]

    # A short revoke grace: stopping does not wait for "blocked" to finish.
    async with running(kafka_bootstrap, topic, handler, revoke_grace=0.1) as processor:
        await produce(
            kafka_bootstrap,
            topic,
            [(b"first", encode(task("first"))), (b"blocked", encode(task("blocked"))),
             (b"third", encode(task("third")))],
        )  # fmt: skip
        await wait_until(lambda: "third" in calls, 30, "third handled")
        committed = processor.committed_offsets
        await wait_until(lambda: list(committed().values()) == [1], 30, "commit up to offset 1")
        # "blocked" (offset 1) is unfinished: over further commit rounds the commit stays there
        # although "third" (offset 2) is done.
        await asyncio.sleep(3 * 0.5)
        assert list(committed().values()) == [1]
    # Restart: the unfinished record (and the one after it) are delivered again.
    calls.clear()
    release.set()
    async with running(kafka_bootstrap, topic, handler):
        await wait_until(lambda: calls == ["blocked", "third"], 30, "redelivery from offset 1")
    async with TopicReader(kafka_bootstrap, out_topic) as outputs:
        await outputs.wait_for(lambda events: len(events) >= 4, 30, "outputs")
    subjects = [e["subject"] for e in outputs.events()]
    assert subjects.count("out-first") == 1
    assert subjects.count("out-blocked") == 1


async def test_trace_context_flows_from_a_record_to_its_outputs(kafka_bootstrap: str) -> None:
    setup_telemetry("test")  # what every service does at start: real spans, not no-ops
    topic = await make_topic(kafka_bootstrap, partitions=1)
    out_topic = f"{topic}.dlq"
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    incoming = f"00-{trace_id}-00f067aa0ba902b7-01".encode()

    async def handler(event: TaskSubmitted, context: RecordContext) -> Sequence[Emit]:
        return [Emit(out_topic, task(f"out-{event.subject}"))]

    async with running(kafka_bootstrap, topic, handler):
        await produce(
            kafka_bootstrap,
            topic,
            [(b"traced", encode(task("traced")))],
            [("traceparent", incoming)],
        )
        async with TopicReader(kafka_bootstrap, out_topic) as outputs:
            await outputs.wait_for(lambda events: len(events) >= 1, 30, "the output")
    headers = dict(outputs.records[0].headers)
    _, out_trace, span, _ = headers["traceparent"].decode().split("-")
    assert out_trace == trace_id  # same trace: one trace per task across services
    assert span != "00f067aa0ba902b7"  # a new span (the processing span), child of the record's
