"""stepbus-client against the real broker: submit, typed results, poison, claims, crashes.

The results are produced as the planner produces them (raw aiokafka, or the runtime's
``EventPublisher`` for claim checks); the example service runs as separate processes and is
SIGKILLed mid-handler.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from faststream.kafka import KafkaBroker
from stepbus_client import (
    CONTENT_TYPE,
    NotConnectedError,
    Result,
    StepbusRouter,
    TaskCancelled,
    TaskCancelledData,
    TaskCompleted,
    TaskCompletedData,
    TaskFailed,
    TaskFailedData,
    TaskProgress,
    TaskProgressData,
    TaskSubmittedData,
    Terminal,
    tasks_adapter,
    validate_wire,
)
from stepbus_contracts import (
    ApprovalDecided,
    CloudEvent,
    TaskCancelRequested,
    TaskSubmitted,
    Topics,
)
from stepbus_runtime import Emit, EventPublisher

from ..harness import LOGS, REPO, TopicReader, wait_until

pytestmark = pytest.mark.integration

EXAMPLE = REPO / "examples" / "upstream-faststream" / "app.py"


def completed(task_id: str, output: str = "391", tenant: str = "acme") -> TaskCompleted:
    return TaskCompleted(
        subject=task_id, tenant=tenant, data=TaskCompletedData(output=output, steps=1)
    )


def failed(task_id: str, tenant: str = "acme") -> TaskFailed:
    return TaskFailed(
        subject=task_id,
        tenant=tenant,
        data=TaskFailedData(reason="deadline", message="ran out of time"),
    )


def cancelled(task_id: str, tenant: str = "acme") -> TaskCancelled:
    return TaskCancelled(subject=task_id, tenant=tenant, data=TaskCancelledData(reason="user"))


def progress(task_id: str, tenant: str = "acme") -> TaskProgress:
    return TaskProgress(
        subject=task_id,
        tenant=tenant,
        data=TaskProgressData(step=0, stage="accepted", message="task accepted"),
    )


def value(event: CloudEvent) -> bytes:
    return event.model_dump_json().encode()


async def produce(
    bootstrap: str,
    topic: str,
    records: Sequence[bytes | tuple[bytes, list[tuple[str, bytes]]]],
    partition: int = 0,
) -> None:
    """Send raw record values, in order, to one partition (so their order is the test's)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for record in records:
            body, headers = record if isinstance(record, tuple) else (record, [])
            await producer.send_and_wait(
                topic, body, key=b"task", partition=partition, headers=headers
            )
    finally:
        await producer.stop()


async def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of ``topic``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


@contextlib.asynccontextmanager
async def running(bootstrap: str, router: StepbusRouter) -> AsyncIterator[KafkaBroker]:
    """A started broker with ``router`` in it."""
    broker = KafkaBroker(bootstrap, enable_idempotence=True)
    broker.include_router(router)
    async with broker:
        await broker.start()
        yield broker


def group() -> str:
    return f"g-{uuid.uuid4().hex[:8]}"


async def test_submit_publishes_task_events_keyed_by_task_id(
    kafka_bootstrap: str, topics: Topics
) -> None:
    router = StepbusRouter(topics.prefix, tenant="acme", source="urn:example:billing")
    with pytest.raises(NotConnectedError, match="include_router"):
        await router.submit("task-early", "too soon")

    async with running(kafka_bootstrap, router):
        first = await router.submit("task-42", TaskSubmittedData(input="What is 17 * 23?"))
        retry = await router.submit("task-42", TaskSubmittedData(input="What is 17 * 23?"))
        other = await router.submit("task-43", "What is 2 + 2?", tenant="globex")
        cancel = await router.cancel("task-42", reason="changed my mind")
        decision = await router.decide("task-42", "appr-1", "approve", by="alice")

    assert retry.id == first.id, "a retried submit must be a duplicate the planner drops"
    assert len({first.id, other.id, cancel.id, decision.id}) == 4
    async with TopicReader(kafka_bootstrap, topics.tasks) as reader:
        records = await wait_until(
            lambda: _at_least(reader, 5), 30, "the five task events on the tasks topic"
        )
    events = [validate_wire(tasks_adapter, record.value) for record in records]
    by_id: dict[str, list[Any]] = {}
    for record, event in zip(records, events, strict=True):
        assert record.key == event.subject.encode(), "the record key is the task id"
        assert dict(record.headers)["content-type"] == CONTENT_TYPE.encode()
        by_id.setdefault(event.id, []).append(event)
    submitted = by_id[first.id]
    assert len(submitted) == 2 and all(isinstance(e, TaskSubmitted) for e in submitted)
    assert submitted[0].subject == "task-42" and submitted[0].tenant == "acme"
    assert submitted[0].source == "urn:example:billing"
    assert submitted[0].data.input == "What is 17 * 23?"
    assert by_id[other.id][0].tenant == "globex"
    assert isinstance(by_id[cancel.id][0], TaskCancelRequested)
    assert by_id[cancel.id][0].data.reason == "changed my mind"
    decided = by_id[decision.id][0]
    assert isinstance(decided, ApprovalDecided)
    assert (decided.data.approval_id, decided.data.decision, decided.data.by) == (
        "appr-1",
        "approve",
        "alice",
    )


async def _at_least(reader: TopicReader, count: int) -> list[Any] | None:
    records = await reader.poll()
    return records if len(records) >= count else None


async def test_results_reach_handlers_typed_and_poison_is_skipped(
    kafka_bootstrap: str, topics: Topics
) -> None:
    router = StepbusRouter(topics.prefix)
    terminals: list[Terminal] = []
    everything: list[Result] = []
    terminal_group, all_group = group(), group()

    @router.on_result(tenant="acme", group_id=terminal_group)
    async def on_terminal(event: TaskCompleted | TaskFailed | TaskCancelled) -> None:
        terminals.append(event)

    @router.on_result(terminal_only=False, group_id=all_group)
    async def on_any(event: Result) -> None:
        everything.append(event)

    not_an_event = json.dumps({"specversion": "1.0", "type": "stepbus.task.completed"})
    unknown = completed("task-x").model_dump(mode="json") | {"type": "stepbus.task.exploded"}
    records: list[bytes | tuple[bytes, list[tuple[str, bytes]]]] = [
        value(progress("task-1")),
        b"{not json",
        (b"{not json either", [("content-type", b"application/json")]),
        b"\xff\xfe\x00",
        b"",
        not_an_event.encode(),
        json.dumps(unknown).encode(),
        (value(completed("task-0")), [("x-binary", b"\xff\x00\xfe")]),
        value(completed("task-1")),
        value(completed("task-2", tenant="other")),
        value(failed("task-3")),
        value(cancelled("task-4")),
    ]
    await produce(kafka_bootstrap, topics.results, records)
    async with running(kafka_bootstrap, router):
        await wait_until(lambda: len(terminals) >= 4, 30, "four terminal results")
        await wait_until(lambda: len(everything) >= 6, 30, "six results of any tenant")
        # The poison records were committed with the rest: nothing is left to stall on.
        for name in (terminal_group, all_group):
            await wait_until(
                lambda name=name: _committed_to(kafka_bootstrap, name, topics.results, 12),
                30,
                f"{name} committed past every record",
            )

    assert [(type(e), e.subject) for e in terminals] == [
        (TaskCompleted, "task-0"),
        (TaskCompleted, "task-1"),
        (TaskFailed, "task-3"),
        (TaskCancelled, "task-4"),
    ]
    assert isinstance(terminals[1], TaskCompleted) and terminals[1].data.output == "391"
    assert [(type(e), e.subject, e.tenant) for e in everything] == [
        (TaskProgress, "task-1", "acme"),
        (TaskCompleted, "task-0", "acme"),
        (TaskCompleted, "task-1", "acme"),
        (TaskCompleted, "task-2", "other"),
        (TaskFailed, "task-3", "acme"),
        (TaskCancelled, "task-4", "acme"),
    ]


async def _committed_to(bootstrap: str, name: str, topic: str, offset: int) -> bool:
    return (await committed(bootstrap, name, topic)).get(0) == offset


def test_on_result_refuses_a_subscription_it_cannot_commit_for() -> None:
    router = StepbusRouter(group_id="shared")

    async def handle(event: Terminal) -> None: ...

    router.on_result()(handle)
    with pytest.raises(ValueError, match="already has a subscription"):
        router.on_result()(handle)
    with pytest.raises(ValueError, match="needs a group_id"):
        StepbusRouter().on_result()(handle)


async def test_a_failing_handler_gets_the_result_again(
    kafka_bootstrap: str, topics: Topics
) -> None:
    """The record is not committed when the handler raises (FastStream's ACK would commit it
    anyway, and a result would be lost to a passing database error)."""
    router = StepbusRouter(topics.prefix, group_id=group())
    calls: list[str] = []

    @router.on_result()
    async def flaky(event: Terminal) -> None:
        calls.append(event.subject)
        if calls.count(event.subject) == 1 and event.subject == "task-1":
            raise RuntimeError("database is locked")

    await produce(
        kafka_bootstrap, topics.results, [value(completed("task-1")), value(failed("task-2"))]
    )
    async with running(kafka_bootstrap, router):
        await wait_until(lambda: "task-2" in calls, 30, "the result after the failing one")
    assert calls == ["task-1", "task-1", "task-2"]


async def test_claim_checked_results_arrive_whole(kafka_bootstrap: str, topics: Topics) -> None:
    big = "x" * (700 * 1024)  # two chunks
    publisher = EventPublisher(
        kafka_bootstrap, "test", payloads_topic=topics.payloads, claim_check_threshold=1024
    )
    await publisher.start()
    try:
        await publisher.publish([Emit(topics.results, completed("task-big", output=big))])
    finally:
        await publisher.stop()
    async with TopicReader(kafka_bootstrap, topics.results) as reader:
        (record,) = await wait_until(lambda: _at_least(reader, 1), 30, "the claim")
    claim = json.loads(record.value)
    assert "data" not in claim and claim["claimcheck"]["size"] > len(big)
    corrupt = {**claim, "claimcheck": {**claim["claimcheck"], "sha256": "0" * 64}}
    elsewhere = {**claim, "claimcheck": {**claim["claimcheck"], "topic": topics.tasks}}
    missing = {**claim, "claimcheck": {**claim["claimcheck"], "partition": 999}}
    await produce(
        kafka_bootstrap,
        topics.results,
        [json.dumps(c).encode() for c in (corrupt, elsewhere, missing)]
        + [value(completed("task-after"))],
        partition=record.partition,
    )

    router = StepbusRouter(topics.prefix, group_id=group())
    received: list[Terminal] = []

    @router.on_result()
    async def handle(event: Terminal) -> None:
        received.append(event)

    async with running(kafka_bootstrap, router):
        await wait_until(
            lambda: any(e.subject == "task-after" for e in received), 60, "the plain result"
        )
    assert [e.subject for e in received] == ["task-big", "task-after"]
    assert isinstance(received[0], TaskCompleted) and received[0].data.output == big
    assert received[0].id == claim["id"]


@pytest.mark.parametrize("crash", ["before-record", "after-record"])
async def test_example_records_each_result_once_across_a_crash(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, crash: str
) -> None:
    """SIGKILL while handling the first result: before the row is written (with a slow
    handler, so FastStream's ACK_FIRST would have auto-committed it: lost), or after it is
    written but before the commit (redelivered: one row, two deliveries)."""
    name, db = group(), tmp_path / "results.sqlite"
    records = [
        value(completed("task-1")),
        value(progress("task-2")),
        value(failed("task-2")),
        value(completed("task-3", tenant="other")),
    ]
    await produce(kafka_bootstrap, topics.results, records)
    args = ["--bootstrap", kafka_bootstrap, "--prefix", topics.prefix, "--group", name]
    args += ["--db", str(db), "--tenant", "acme", "run"]
    crash_env = {"STEPBUS_EXAMPLE_CRASH": crash}
    if crash == "before-record":
        crash_env["STEPBUS_EXAMPLE_CRASH_DELAY"] = "6"  # past aiokafka's 5 s auto-commit

    first = example(args, crash_env, f"{crash}-1")
    try:
        await wait_until(lambda: first.poll() is not None, 90, "the example to crash")
    finally:
        stop(first)
    assert first.returncode == -signal.SIGKILL, _log(f"{crash}-1")
    before = rows(db)
    assert before == ({} if crash == "before-record" else {"task-1": ("stepbus.task.completed", 1)})

    second = example(args, {}, f"{crash}-2")
    try:
        await wait_until(
            lambda: _committed_to(kafka_bootstrap, name, topics.results, len(records)),
            90,
            "the restarted example to commit every result",
        )
        assert second.poll() is None, _log(f"{crash}-2")
    finally:
        stop(second)
    deliveries = 1 if crash == "before-record" else 2
    assert rows(db) == {
        "task-1": ("stepbus.task.completed", deliveries),
        "task-2": ("stepbus.task.failed", 1),
    }


def example(args: list[str], env: dict[str, str], label: str) -> subprocess.Popen[bytes]:
    LOGS.mkdir(parents=True, exist_ok=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STEPBUS_EXAMPLE_")}
    with (LOGS / f"example-{label}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, str(EXAMPLE), *args],
            env={**clean, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def rows(db: Path) -> dict[str, tuple[str, int]]:
    if not db.exists():
        return {}
    with contextlib.closing(sqlite3.connect(db)) as conn:
        try:
            found = conn.execute("SELECT task_id, type, deliveries FROM results").fetchall()
        except sqlite3.OperationalError:  # not created yet
            return {}
    return {task_id: (kind, deliveries) for task_id, kind, deliveries in found}


def _log(label: str) -> str:
    path = LOGS / f"example-{label}.log"
    return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"
