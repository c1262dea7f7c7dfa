"""Crash-safety of the planner without Kafka: snapshots, recorded decisions, interrupts, timers.

Reuses the in-memory loop of ``test_planner_handlers`` (Kafka mimicked by feeding the
planner's journal outputs back to it).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from stepbus_contracts import (
    LlmDecided,
    TaskCancelled,
    TaskFailed,
    TaskProgress,
    ToolCallRequested,
)
from stepbus_planner.ports import ModelTurn
from stepbus_planner.state import TaskState
from stepbus_planner.store import TaskStates

from .test_planner_handlers import (
    TASK,
    TENANT,
    TOPICS,
    Loop,
    ScriptedModel,
    answer,
    calc,
    calculator_model,
    cancel_request,
    submitted,
    tool_turn,
)


def latest_snapshot(loop: Loop) -> TaskState:
    return TaskState.model_validate(loop.snapshots[-1].event.data.state)  # type: ignore[attr-defined]


async def test_every_state_change_is_snapshotted_and_the_last_snapshot_is_the_state() -> None:
    loop = Loop(calculator_model(), hold_tool_calls=True)
    await loop.task(submitted())
    mid = latest_snapshot(loop)
    assert mid.task is not None and mid.step == 0 and not mid.ended
    assert mid == loop.store.get(TASK, TENANT)
    await loop.release_tool_calls()
    end = latest_snapshot(loop)
    assert end.terminal == "stepbus.task.completed"
    assert end.decisions == {} and end.task is None  # ended tasks keep only their end marker


async def test_a_restored_snapshot_lets_a_new_replica_continue_the_task() -> None:
    first = Loop(calculator_model(), hold_tool_calls=True)
    await first.task(submitted())
    snapshot = first.snapshots[-1]

    # A second replica takes over: it restores the snapshot and gets the pending tool outcome.
    second = Loop(ScriptedModel(answer("17 * 23 = 391")), hold_tool_calls=True)
    restored = second.store._restore(snapshot.event.model_dump_json().encode(), partition=0)
    assert restored == 1
    second.held = first.held
    await second.release_tool_calls()
    assert [t.data.output for t in second.terminals()] == ["17 * 23 = 391"]  # type: ignore[attr-defined]
    assert len(second.model.calls) == 1


async def test_a_decision_recorded_further_down_the_journal_is_not_asked_again() -> None:
    loop = Loop(calculator_model(), hold_tool_calls=True)
    await loop.task(submitted())
    decided = next(e for e in loop.history if isinstance(e, LlmDecided))
    calls_before = len(loop.model.calls)

    # Recovery: a replica restored from a snapshot taken *before* step 0 was decided (the one
    # written when the task was accepted), and found the step 0 decision in the journal tail
    # while taking over the partition.
    fresh = Loop(calculator_model(), hold_tool_calls=True)
    assert fresh.store._restore(loop.snapshots[0].event.model_dump_json().encode(), 0) == 1
    fresh.store._remember(decided.model_dump_json().encode())
    accepted = next(e for e in loop.history if e.type == "stepbus.task.accepted")
    outputs = await fresh.deliver(accepted)
    assert not [o for o in outputs if isinstance(o.event, LlmDecided)]
    assert fresh.model.calls == []  # the model was not asked for the recorded step
    assert calls_before == 1

    # The crash fell between the decision's acknowledgement and its tool calls: read back from
    # the journal, the decision dispatches the very commands the first replica would have.
    dispatched = await fresh.deliver(decided)
    first = [e.event.id for e in loop.emitted if isinstance(e.event, ToolCallRequested)]
    again = [e.event.id for e in dispatched if isinstance(e.event, ToolCallRequested)]
    assert again and again == first


async def test_a_cancellation_interrupts_a_running_llm_call() -> None:
    started = asyncio.Event()

    class SlowModel:
        model = "slow"
        calls: list[Any] = []

        async def complete(self, messages: Any, tools: Any, **_: Any) -> ModelTurn:
            self.calls.append(messages)
            started.set()
            await asyncio.sleep(30)
            raise AssertionError("the call should have been interrupted")

    loop = Loop(SlowModel())  # type: ignore[arg-type]
    accepted = (await loop.handlers.on_task(submitted(), _ctx()))[0].event
    running = asyncio.create_task(loop.deliver(accepted))
    await asyncio.wait_for(started.wait(), 5)
    loop.handlers.inner.on_task_arrival(cancel_request())  # what the processor does on fetch
    assert await asyncio.wait_for(running, 5) == []
    outputs = await loop.handlers.on_task(cancel_request(), _ctx())
    assert [type(o.event) for o in outputs if o.topic == TOPICS.results] == [TaskCancelled]


async def test_a_task_waiting_past_its_deadline_is_expired_by_the_timer() -> None:
    loop = Loop(calculator_model(), hold_tool_calls=True)
    await loop.task(submitted(deadline_seconds=60))
    assert await loop.handlers.inner.expire(TASK, TENANT) == []  # not yet due
    loop.now += timedelta(seconds=61)
    outputs = await loop.handlers.inner.expire(TASK, TENANT)
    failed = [o.event for o in outputs if o.topic == TOPICS.results]
    assert len(failed) == 1 and isinstance(failed[0], TaskFailed)
    assert failed[0].data.reason == "deadline"
    assert await loop.handlers.inner.expire(TASK, TENANT) == []  # ended once


async def test_a_slow_llm_call_is_cut_at_the_deadline() -> None:
    class SlowModel:
        model = "slow"

        async def complete(self, messages: Any, tools: Any, **_: Any) -> ModelTurn:
            await asyncio.sleep(30)
            return tool_turn(calc("17 * 23"))

    loop = Loop(SlowModel())  # type: ignore[arg-type]
    accepted = (await loop.handlers.on_task(submitted(deadline_seconds=0.2), _ctx()))[0].event
    outputs = await asyncio.wait_for(loop.deliver(accepted), 5)
    failed = [
        o.event
        for o in outputs
        if o.topic == TOPICS.results and not isinstance(o.event, TaskProgress)
    ]
    assert len(failed) == 1 and isinstance(failed[0], TaskFailed)
    assert failed[0].data.reason == "deadline"


def test_revoking_a_partition_forgets_its_tasks() -> None:
    store = TaskStates("127.0.0.1:1", TOPICS.planner_history, TOPICS.planner_snapshots)
    store.put(TaskState(task_id="a", tenant="t"), partition=0)
    store.put(TaskState(task_id="b", tenant="t"), partition=1)
    from aiokafka import TopicPartition

    asyncio.run(store.revoked({TopicPartition(TOPICS.planner_history, 0)}))
    assert store.get("a", "t") == TaskState(task_id="a", tenant="t")  # empty again
    assert store.get("b", "t") is store._states["b"]


def _ctx() -> Any:
    from .test_planner_handlers import context

    return context(TOPICS.tasks)


class RecordingPublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []

    async def send_raw(
        self, topic: str, value: bytes | None, key: bytes | None, headers: Any
    ) -> None:
        self.sent.append((topic, value, key))


async def test_an_ended_task_is_forgotten_after_the_retention_with_a_tombstone() -> None:
    loop = Loop(calculator_model())
    await loop.task(submitted())
    assert loop.store.get(TASK, TENANT).ended
    assert loop.store.ended_before(max_age=3600) == []  # ended just now: still remembered
    assert await loop.deliver(loop.history[0]) == []  # so a late duplicate changes nothing

    assert loop.store.ended_before(max_age=0) == [TASK]
    assert loop.store.ended_before(max_age=0, limit=0) == []  # a sweep takes a bounded batch
    publisher = RecordingPublisher()
    await loop.store.forget(TASK, publisher)  # type: ignore[arg-type]
    assert publisher.sent == [(TOPICS.planner_snapshots, None, TASK.encode())]
    assert loop.store.get(TASK, TENANT) == TaskState(task_id=TASK, tenant=TENANT)
    assert loop.store.ended_before(max_age=0) == []
    await loop.store.forget(TASK, publisher)  # type: ignore[arg-type]
    assert len(publisher.sent) == 1  # forgetting twice tombstones once


async def test_a_running_task_is_never_forgotten() -> None:
    loop = Loop(calculator_model(), hold_tool_calls=True)
    await loop.task(submitted())
    assert loop.store.ended_before(max_age=0) == []
    publisher = RecordingPublisher()
    await loop.store.forget(TASK, publisher)  # type: ignore[arg-type]
    assert publisher.sent == [] and loop.store.get(TASK, TENANT).task is not None


async def test_a_restored_ended_task_ages_from_when_it_ended_not_when_restored() -> None:
    loop = Loop(calculator_model())
    await loop.task(submitted())
    ended = loop.snapshots[-1].event
    old = ended.model_copy(update={"time": ended.time - timedelta(hours=2)})
    restarted = TaskStates("127.0.0.1:1", "t.planner.history", TOPICS.planner_snapshots)
    assert restarted._restore(old.model_dump_json().encode(), partition=0) == 1
    assert restarted.get(TASK, TENANT).ended
    assert restarted.ended_before(max_age=3600) == [TASK]
