"""DLQ re-drive against the real broker: dead letters go back to their origin topic once."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from stepbus_contracts import TaskSubmitted, TaskSubmittedData, Topics, tasks_adapter
from stepbus_runtime import (
    Emit,
    Processor,
    RecordContext,
    Route,
    encode,
)
from stepbus_runtime.redrive import RedriveFilter, redrive

from ..harness import TopicReader, produce, running_processor, wait_until

pytestmark = pytest.mark.integration

HandlerFn = Callable[[Any, RecordContext], Awaitable[Sequence[Emit]]]


def task(task_id: str) -> TaskSubmitted:
    return TaskSubmitted(subject=task_id, data=TaskSubmittedData(input=f"input of {task_id}"))


def running(
    bootstrap: str, topics: Topics, handler: HandlerFn, group_id: str
) -> contextlib.AbstractAsyncContextManager[Processor]:
    routes = {topics.tasks: Route(tasks_adapter, handler)}
    return running_processor(bootstrap, routes, topics.dlq, group_id=group_id, max_attempts=2)


async def read_all(bootstrap: str, topic: str, count: int) -> list[Any]:
    async with TopicReader(bootstrap, topic) as reader:
        await reader.wait_for(lambda _: len(reader.records) >= count, 30, f"{count} in {topic}")
        await asyncio.sleep(0.3)  # anything beyond ``count`` would show up now
        await reader.poll()
        return reader.records


async def make_dead_letters(bootstrap: str, topics: Topics, group_id: str) -> dict[bytes, bytes]:
    """Runs a processor whose handler fails for ``bad-*``; returns the original values by key."""
    handled: list[str] = []

    async def broken(event: TaskSubmitted, context: RecordContext) -> Sequence[Emit]:
        if event.subject.startswith("bad-"):
            raise RuntimeError(f"tool backend down for {event.subject}")
        handled.append(event.subject)
        return []

    originals = {k.encode(): encode(task(k)) for k in ("ok-1", "bad-1", "bad-2")}
    originals[b"junk"] = b"{not json"
    async with running(bootstrap, topics, broken, group_id):
        await produce(bootstrap, topics.tasks, list(originals.items()), [("x-custom", b"v1")])
        await read_all(bootstrap, topics.dlq, 3)
        await wait_until(lambda: handled == ["ok-1"], 30, "the valid task handled")
    return originals


async def test_redrive_republishes_selected_dead_letters_once_and_they_are_processed(
    kafka_bootstrap: str, topics: Topics
) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    originals = await make_dead_letters(kafka_bootstrap, topics, group)
    dlq = {r.key: r for r in await read_all(kafka_bootstrap, topics.dlq, 3)}
    assert set(dlq) == {b"bad-1", b"bad-2", b"junk"}
    lines: list[str] = []

    # Dry run: lists the matching dead letters, sends nothing.
    report = await redrive(
        kafka_bootstrap, topics, RedriveFilter(error_contains="tool backend down"),
        mode="dry-run", out=lines.append,
    )  # fmt: skip
    assert sorted(letter.key for letter in report.selected) == [b"bad-1", b"bad-2"]
    assert (report.total, report.filtered_out, report.already_redriven) == (3, 1, 0)
    assert report.summary() == (
        "would re-drive 2 of 3 dead letters (0 skipped: already re-driven, 1 filtered out)"
    )
    assert len(lines) == 2 and all("attempts=2" in line for line in lines)
    assert f"origin={topics.tasks}[" in lines[0] and "tool backend down" in lines[0]
    assert len(await read_all(kafka_bootstrap, topics.tasks, 4)) == 4

    # Re-drive one task by key: back on its origin topic with its key, value and headers.
    report = await redrive(kafka_bootstrap, topics, RedriveFilter(key="bad-1"), out=lines.append)
    assert [letter.key for letter in report.selected] == [b"bad-1"]
    assert report.filtered_out == 2
    tasks = await read_all(kafka_bootstrap, topics.tasks, 5)
    assert len(tasks) == 5
    redriven = [r for r in tasks if dict(r.headers).get("stepbus.redriven-from")]
    assert len(redriven) == 1
    record = redriven[0]
    assert record.key == b"bad-1"
    assert record.value == originals[b"bad-1"]
    headers = dict(record.headers)
    assert headers["x-custom"] == b"v1"
    assert headers["stepbus.redriven-from"] == f"{topics.dlq}:0:{dlq[b'bad-1'].offset}".encode()
    assert not [k for k in headers if k.startswith("stepbus.") and k != "stepbus.redriven-from"]

    # Another filter finds the dead letters the first run left behind, and skips bad-1.
    report = await redrive(
        kafka_bootstrap, topics, RedriveFilter(origin_topic=topics.tasks), out=lines.append
    )
    assert sorted(letter.key for letter in report.selected) == [b"bad-2", b"junk"]
    assert report.summary() == (
        "re-drove 2 of 3 dead letters (1 skipped: already re-driven, 0 filtered out)"
    )

    # A second run re-drives nothing.
    report = await redrive(kafka_bootstrap, topics, out=lines.append)
    assert report.selected == []
    assert report.already_redriven == 3
    assert len(await read_all(kafka_bootstrap, topics.tasks, 7)) == 7

    # With the cause fixed, the same group handles the re-driven records (and only those).
    handled: list[str] = []

    async def fixed(event: TaskSubmitted, context: RecordContext) -> Sequence[Emit]:
        handled.append(event.subject)
        return []

    async with running(kafka_bootstrap, topics, fixed, group):
        await wait_until(lambda: sorted(handled) == ["bad-1", "bad-2"], 30, "re-driven tasks")
        # Still invalid JSON: dead-lettered again, as a new dead letter a later run can pick.
        dead = await read_all(kafka_bootstrap, topics.dlq, 4)
    assert [r.key for r in dead[3:]] == [b"junk"]
    assert sorted(handled) == ["bad-1", "bad-2"]


async def test_redrive_command_line(kafka_bootstrap: str, topics: Topics) -> None:
    await make_dead_letters(kafka_bootstrap, topics, f"g-{uuid.uuid4().hex[:8]}")

    async def command(*args: str) -> tuple[int, list[str]]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "stepbus_runtime.redrive",
            "--bootstrap", kafka_bootstrap, "--prefix", topics.prefix, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        assert process.returncode == 0, stderr.decode()
        return process.returncode, stdout.decode().splitlines()

    _, listing = await command("--dry-run", "--key", "bad-2")
    assert len(listing) == 2 and "key=bad-2" in listing[0]
    assert listing[-1] == (
        "would re-drive 1 of 3 dead letters (0 skipped: already re-driven, 2 filtered out)"
    )

    _, output = await command("--error-contains", "invalid event")
    assert "key=junk" in output[0]
    assert output[-1] == (
        "re-drove 1 of 3 dead letters (0 skipped: already re-driven, 2 filtered out)"
    )

    _, listing = await command("--list")
    assert sorted(line.rsplit(" ", 1)[-1] for line in listing[:-1]) == [
        "[pending]", "[pending]", "[re-driven]",
    ]  # fmt: skip
    assert listing[-1] == "3 dead letters: 2 pending, 1 already re-driven, 0 filtered out"

    _, output = await command()
    assert output[-1] == (
        "re-drove 2 of 3 dead letters (1 skipped: already re-driven, 0 filtered out)"
    )
    _, output = await command()
    assert output == ["re-drove 0 of 3 dead letters (3 skipped: already re-driven, 0 filtered out)"]


async def test_a_truncated_dead_letter_is_redriven_from_its_full_original(
    kafka_bootstrap: str, topics: Topics
) -> None:
    original = b'{"junk": "' + b"x" * 1_048_300 + b'"}'  # too big for the DLQ with headers
    handled: list[str] = []

    async def record(event: TaskSubmitted, context: RecordContext) -> Sequence[Emit]:
        handled.append(event.subject)
        return []

    async with running(kafka_bootstrap, topics, record, f"g-{uuid.uuid4().hex[:6]}"):
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=2_000_000)
        await producer.start()
        try:
            await producer.send_and_wait(topics.tasks, original, key=b"huge")
        finally:
            await producer.stop()
        [letter] = await read_all(kafka_bootstrap, topics.dlq, 1)
    assert dict(letter.headers)["stepbus.truncated"] == b"true"
    assert len(letter.value) < len(original)

    report = await redrive(kafka_bootstrap, topics, out=lambda _: None)
    assert len(report.selected) == 1
    again = [r for r in await read_all(kafka_bootstrap, topics.tasks, 2) if r.offset == 1]
    assert [(r.key, r.value) for r in again] == [(b"huge", original)]


async def test_a_record_dead_lettered_by_two_groups_is_redriven_once(
    kafka_bootstrap: str, topics: Topics
) -> None:
    # Two consumer groups of the same topic (the planner and the memory service both read
    # `tasks`) each dead-letter the same poison record.
    async def nothing(event: TaskSubmitted, context: RecordContext) -> Sequence[Emit]:
        return []

    await produce(kafka_bootstrap, topics.tasks, [(b"junk", b"{not json")])
    for group in ("g-one", "g-two"):
        async with running(kafka_bootstrap, topics, nothing, f"{group}-{uuid.uuid4().hex[:6]}"):
            await read_all(kafka_bootstrap, topics.dlq, 1 if group == "g-one" else 2)
    report = await redrive(kafka_bootstrap, topics, out=lambda _: None)
    assert len(report.selected) == 1
    again = await read_all(kafka_bootstrap, topics.tasks, 2)
    assert [r.value for r in again] == [b"{not json", b"{not json"]  # the original, once more
    assert len((await redrive(kafka_bootstrap, topics, out=lambda _: None)).selected) == 0
