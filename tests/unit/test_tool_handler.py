"""ToolCallHandler: one run per idempotency key, every outcome reported, ids from the call."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from stepbus_contracts import (
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallRequested,
    ToolCallRequestedData,
    Topics,
    derive_id,
)
from stepbus_runtime import RecordContext
from stepbus_tool_executor.app import catalog_events
from stepbus_tool_executor.audit import ExecutionLog
from stepbus_tool_executor.handlers import ToolCallHandler
from stepbus_tool_executor.ledger import Ledger
from stepbus_tool_executor.registry import Tool, ToolRegistry, builtin_registry
from stepbus_tool_executor.settings import ToolExecutorSettings

TOPICS = Topics("t.")
TASK = "task-1"
TENANT = "acme"
MAX_ATTEMPTS = 3


def new_ledger() -> Ledger:
    """The real ledger, used in memory (it only talks to Kafka when partitions are assigned)."""
    return Ledger("127.0.0.1:1", TOPICS.tool_calls, TOPICS.tool_ledger)


class Counted:
    """The builtin registry with the calculator wrapped to count its runs."""

    def __init__(self) -> None:
        self.registry = builtin_registry()
        calculator = self.registry.get("calculator")
        assert calculator is not None
        self.runs: list[str] = []

        async def run(arguments: dict[str, Any], idempotency_key: str) -> str:
            self.runs.append(idempotency_key)
            return await calculator.run(arguments, idempotency_key)

        self.registry.add(dataclasses.replace(calculator, run=run))


def command(
    arguments: dict[str, Any] | None = None,
    *,
    name: str = "calculator",
    command_id: str = "cmd-1",
    step: int = 0,
    call_index: int = 0,
    timeout_seconds: float = 5.0,
) -> ToolCallRequested:
    return ToolCallRequested(
        id=command_id,
        source="urn:test:planner",
        subject=TASK,
        tenant=TENANT,
        data=ToolCallRequestedData(
            step=step,
            call_index=call_index,
            name=name,
            idempotency_key=f"{TASK}:{step}:{call_index}",
            arguments={"expression": "17 * 23"} if arguments is None else arguments,
            timeout_seconds=timeout_seconds,
        ),
    )


def context(attempt: int = 1) -> RecordContext:
    return RecordContext(TOPICS.tool_calls, 0, 0, TASK, attempt, MAX_ATTEMPTS)


def handler(
    registry: ToolRegistry | None = None,
    ledger: Ledger | None = None,
    executions: ExecutionLog | None = None,
) -> Any:
    return ToolCallHandler(
        registry or builtin_registry(), ledger or new_ledger(), TOPICS, executions
    )


async def outcome(
    call: ToolCallHandler, cmd: ToolCallRequested, attempt: int = 1
) -> ToolCallCompleted | ToolCallFailed:
    emits = await call(cmd, context(attempt))
    *earlier, emit = emits
    ledger_entries = [e for e in earlier if e.topic == TOPICS.tool_ledger]
    assert all(e.topic in (TOPICS.tool_ledger, TOPICS.audit) for e in earlier)
    assert emit.topic == TOPICS.planner_history
    assert isinstance(emit.event, ToolCallCompleted | ToolCallFailed)
    if ledger_entries:  # a real run: recorded first, its outcome sent once that is acked
        [entry] = ledger_entries
        assert entry.topic == TOPICS.tool_ledger and entry.stage < emit.stage
    else:  # a replay records nothing new
        assert emit.stage == 0
    return emit.event


# -- success and replay -----------------------------------------------------------------------


async def test_a_successful_call_reports_its_output_on_the_history() -> None:
    counted = Counted()
    event = await outcome(handler(counted.registry), command())

    assert isinstance(event, ToolCallCompleted)
    assert event.data.output == "391"
    assert event.data.replayed is False
    assert (event.data.step, event.data.call_index, event.data.name) == (0, 0, "calculator")
    assert event.data.idempotency_key == f"{TASK}:0:0"
    assert (event.subject, event.tenant) == (TASK, TENANT)
    assert counted.runs == [f"{TASK}:0:0"]  # the tool receives the idempotency key


async def test_the_outcome_is_recorded_in_the_ledger_under_the_idempotency_key() -> None:
    ledger = new_ledger()
    await outcome(handler(ledger=ledger), command())
    recorded = ledger.recorded(TASK, f"{TASK}:0:0")
    assert recorded is not None and recorded["output"] == "391"


async def test_a_ledger_loaded_from_its_topic_replays_without_running() -> None:
    first = new_ledger()
    emits = await handler(ledger=first)(command(), context())
    entry = emits[0].event.model_dump_json().encode()

    restarted = new_ledger()  # another replica, after the first one crashed
    assert restarted._load(TASK.encode(), entry, partition=0) == 1
    counted = Counted()
    again = await outcome(handler(counted.registry, restarted), command())
    assert isinstance(again, ToolCallCompleted)
    assert (again.data.output, again.data.replayed) == ("391", True)
    assert counted.runs == []


async def test_every_real_execution_is_written_to_the_execution_log(tmp_path: Path) -> None:
    log_path = tmp_path / "executions.jsonl"
    call = handler(executions=ExecutionLog(str(log_path)))
    await outcome(call, command())
    await outcome(call, command())  # replayed: not executed again
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [(line["idempotency_key"], line["tool"]) for line in lines] == [
        (f"{TASK}:0:0", "calculator")
    ]


async def test_a_redelivered_call_replays_the_recorded_outcome_without_running_again() -> None:
    counted = Counted()
    call = handler(counted.registry)
    first = await outcome(call, command())
    again = await outcome(call, command())

    assert isinstance(again, ToolCallCompleted)
    assert again.data.output == "391"
    assert again.data.replayed is True
    assert again.id == first.id
    assert len(counted.runs) == 1


async def test_a_re_dispatched_call_with_the_same_key_runs_once() -> None:
    counted = Counted()
    call = handler(counted.registry)
    await outcome(call, command(command_id="cmd-1"))
    again = await outcome(call, command({"expression": "1 + 1"}, command_id="cmd-2"))

    assert isinstance(again, ToolCallCompleted)
    assert (again.data.output, again.data.replayed) == ("391", True)
    assert len(counted.runs) == 1


async def test_calls_with_different_keys_each_run() -> None:
    counted = Counted()
    call = handler(counted.registry)
    await outcome(call, command(command_id="a", call_index=0))
    second = await outcome(call, command({"expression": "2 ^ 10"}, command_id="b", call_index=1))

    assert isinstance(second, ToolCallCompleted)
    assert (second.data.output, second.data.replayed) == ("1024", False)
    assert counted.runs == [f"{TASK}:0:0", f"{TASK}:0:1"]


# -- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments",
    [
        {},
        {"expression": 17},
        {"expression": "   "},
        {"expression": "1 / 0"},
        {"expression": "__import__('os')"},
    ],
)
async def test_invalid_arguments_are_reported_as_invalid_arguments(
    arguments: dict[str, Any],
) -> None:
    event = await outcome(handler(), command(arguments))

    assert isinstance(event, ToolCallFailed)
    assert event.data.error_type == "invalid_arguments"
    assert event.data.error


async def test_a_failure_is_recorded_and_replayed_too() -> None:
    counted = Counted()
    call = handler(counted.registry)
    first = await outcome(call, command({"expression": "1 / 0"}))
    again = await outcome(call, command({"expression": "1 / 0"}))

    assert isinstance(again, ToolCallFailed)
    assert again.data == first.data
    assert len(counted.runs) == 1


async def test_an_unknown_tool_is_reported_as_unknown_tool() -> None:
    event = await outcome(handler(), command(name="shell"))

    assert isinstance(event, ToolCallFailed)
    assert event.data.error_type == "unknown_tool"
    assert "shell" in event.data.error and "calculator" in event.data.error


async def test_a_tool_over_its_time_limit_is_reported_as_a_timeout() -> None:
    async def slow(arguments: dict[str, Any], idempotency_key: str) -> str:
        await asyncio.sleep(5)
        return "too late"

    registry = ToolRegistry()
    registry.add(Tool(name="slow", description="", parameters={}, run=slow))
    event = await outcome(handler(registry), command(name="slow", timeout_seconds=0.01))

    assert isinstance(event, ToolCallFailed)
    assert event.data.error_type == "timeout"


async def test_a_crashing_idempotent_tool_is_retried_before_the_last_attempt() -> None:
    async def broken(arguments: dict[str, Any], idempotency_key: str) -> str:
        raise RuntimeError("boom")

    registry = ToolRegistry()
    registry.add(Tool(name="broken", description="", parameters={}, run=broken, idempotent=True))
    with pytest.raises(RuntimeError, match="boom"):
        await handler(registry)(command(name="broken"), context(attempt=1))


async def test_a_crashing_tool_on_the_last_attempt_reports_a_tool_error() -> None:
    async def broken(arguments: dict[str, Any], idempotency_key: str) -> str:
        raise RuntimeError("boom")

    registry = ToolRegistry()
    registry.add(Tool(name="broken", description="", parameters={}, run=broken))
    event = await outcome(handler(registry), command(name="broken"), MAX_ATTEMPTS)

    assert isinstance(event, ToolCallFailed)
    assert event.data.error_type == "tool_error"


async def test_a_calculator_call_with_the_wrong_arity_is_invalid_arguments() -> None:
    event = await outcome(handler(), command({"expression": "max()"}), MAX_ATTEMPTS)

    assert isinstance(event, ToolCallFailed)
    assert event.data.error_type == "invalid_arguments"


# -- ids --------------------------------------------------------------------------------------


async def test_the_outcome_id_is_derived_from_the_command_id() -> None:
    first = await outcome(handler(), command(command_id="cmd-1"))
    same = await outcome(handler(), command(command_id="cmd-1"))
    other = await outcome(handler(), command(command_id="cmd-2"))

    assert first.id == same.id == derive_id("cmd-1", "outcome")
    assert other.id != first.id


async def test_a_failure_id_is_derived_from_the_command_id_as_well() -> None:
    event = await outcome(handler(), command(name="shell", command_id="cmd-9"), MAX_ATTEMPTS)
    assert event.id == derive_id("cmd-9", "outcome")


class RecordingPublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []

    async def send_raw(
        self, topic: str, value: bytes | None, key: bytes | None, _: Any, partition: Any = None
    ) -> None:
        self.sent.append((topic, value, key))


async def test_an_idle_task_ledger_is_forgotten_with_a_tombstone() -> None:
    ledger = new_ledger()
    await outcome(handler(ledger=ledger), command())
    base = command(command_id="cmd-2")
    other = base.model_copy(
        update={
            "subject": "task-other",
            "data": base.data.model_copy(update={"idempotency_key": "task-other:0:0"}),
        }
    )
    await outcome(handler(ledger=ledger), other)
    assert ledger.idle(max_age=3600) == []  # recorded just now

    assert ledger.idle(max_age=0) == [TASK, "task-other"]  # least recently recorded first
    assert ledger.idle(max_age=0, limit=1) == [TASK]  # a sweep takes a bounded batch
    publisher = RecordingPublisher()
    await ledger.forget(TASK, 3600, publisher)  # type: ignore[arg-type]
    assert publisher.sent == []  # not idle for an hour: kept
    await ledger.forget(TASK, 0, publisher)  # type: ignore[arg-type]
    assert publisher.sent == [  # the outcome's record, and the task's key of older versions
        (TOPICS.tool_ledger, None, f"{TASK}#{TASK}:0:0".encode()),
        (TOPICS.tool_ledger, None, TASK.encode()),
    ]
    assert ledger.recorded(TASK, f"{TASK}:0:0") is None
    assert ledger.recorded("task-other", "task-other:0:0") is not None


async def test_a_loaded_ledger_ages_from_when_it_was_recorded_not_loaded() -> None:
    first = new_ledger()
    entry = (await handler(ledger=first)(command(), context()))[0].event
    old = entry.model_copy(update={"time": entry.time - timedelta(hours=2)})
    restarted = new_ledger()
    assert restarted._load(TASK.encode(), old.model_dump_json().encode(), partition=0) == 1
    assert restarted.idle(max_age=3600) == [TASK]  # idle for two hours, restart or not


async def test_each_outcome_is_its_own_ledger_record_on_the_tasks_partition() -> None:
    ledger = new_ledger()
    call = handler(ledger=ledger)
    sizes = []
    for step in range(30):  # a long task: the record of a call does not carry the earlier ones
        [entry, _audit, _] = await call(command(command_id=f"cmd-{step}", step=step), context())
        assert (entry.key, entry.partition) == (f"{TASK}#{TASK}:{step}:0", 0)
        sizes.append(len(entry.event.model_dump_json()))
    assert max(sizes) - min(sizes) < 20  # constant size, not growing with the task


async def test_a_call_from_another_tenant_neither_runs_nor_reads_the_recorded_outcome() -> None:
    counted = Counted()
    call = handler(counted.registry)
    await outcome(call, command())
    foreign = command().model_copy(update={"tenant": "intruder"})
    assert await call(foreign, context()) == []
    assert len(counted.runs) == 1


def test_the_catalog_marks_the_tools_the_operator_named_for_review() -> None:
    reviewed = ToolExecutorSettings(review_tools=" remember , ").reviewed()
    assert reviewed == frozenset({"remember"})
    flags = {
        emit.event.data.name: emit.event.data.review  # type: ignore[attr-defined]
        for emit in catalog_events(builtin_registry(), "t.tool.catalog", reviewed)
    }
    assert flags == {"calculator": False, "remember": True}
