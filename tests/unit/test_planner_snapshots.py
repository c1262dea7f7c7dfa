"""Bounded snapshots (hardening finding 8): a long task writes O(steps) snapshot bytes.

Before, each snapshot held the whole state, so a task of n steps wrote O(n²) bytes (a forged
loop wrote 2.96 GB to the payloads topic in three minutes). Now complete steps are sealed in
segments written once, and a snapshot holds only the open steps.
"""

from __future__ import annotations

from datetime import timedelta

from stepbus_contracts import (
    LlmDecidedData,
    PlannedToolCall,
    TaskAcceptedData,
    ToolCallCompletedData,
)
from stepbus_planner.state import TaskState
from stepbus_planner.store import SEGMENT_STAGE, SEGMENT_STEPS, SNAPSHOT_STAGE, TaskStates
from stepbus_runtime import encode

from .test_planner_handlers import NOW, TASK, TENANT, TOPICS

STEPS = 1_000


def store() -> TaskStates:
    return TaskStates("127.0.0.1:1", "t.planner.history", TOPICS.planner_snapshots)


def grow(state: TaskState, step: int) -> TaskState:
    """``state`` with step ``step`` decided (one tool call) and its outcome recorded."""
    decision = LlmDecidedData(
        step=step,
        content=f"step {step}: let me look that up " + "x" * 200,
        tool_calls=[
            PlannedToolCall(
                call_index=0, name="calculator", arguments={"expression": "1+1"},
                llm_call_id=f"c{step}",
            )
        ],
        model="m",
    )  # fmt: skip
    outcome = ToolCallCompletedData(
        step=step, call_index=0, name="calculator", idempotency_key=f"{TASK}:{step}:0", output="2"
    )
    return state.model_copy(
        update={
            "decisions": {**state.decisions, step: decision},
            "outcomes": {**state.outcomes, f"{step}:0": outcome},
        }
    )


def accepted_state() -> TaskState:
    task = TaskAcceptedData(
        input="a long task",
        tools=["calculator"],
        max_iterations=100,
        deadline_at=NOW + timedelta(hours=1),
        submitted_id="s1",
        model="m",
    )
    return TaskState(task_id=TASK, tenant=TENANT, task=task, submitted_id="s1")


def test_a_1000_step_task_writes_bounded_snapshots_and_linear_bytes() -> None:
    states, state = store(), accepted_state()
    sizes, segment_bytes, records = [], 0, []
    for step in range(STEPS):
        state = grow(state, step)
        emits = states.put(state, partition=3)
        *segments, head = emits
        assert head.stage == SNAPSHOT_STAGE and all(s.stage == SEGMENT_STAGE for s in segments)
        assert all(s.partition == 3 and s.key == f"{TASK}#{step // SEGMENT_STEPS - 1}"
                   for s in segments)  # fmt: skip
        sizes.append(len(encode(head.event)))
        segment_bytes += sum(len(encode(s.event)) for s in segments)
        records.extend(emits)
    one_step = len(grow(accepted_state(), 0).model_dump_json()) - len(
        accepted_state().model_dump_json()
    )
    # Each snapshot holds at most one segment's worth of open steps, whatever the length.
    assert max(sizes) < len(accepted_state().model_dump_json()) + 600 + SEGMENT_STEPS * one_step
    assert max(sizes[-SEGMENT_STEPS:]) <= 1.05 * max(sizes[:SEGMENT_STEPS])  # longer step keys
    # Every step is written about twice (open in snapshots until sealed, then in one segment),
    # not once per later step: the whole run is linear in the steps.
    total = sum(sizes) + segment_bytes
    assert total < 12 * STEPS * one_step, (total, one_step)
    # Restored from what was written (the latest record per key), the task is whole again.
    latest = {(r.key or r.event.subject): r for r in records}
    segments = {}
    for key, record in latest.items():
        if "#" in key:
            TaskStates._collect_segment(encode(record.event), segments)
    fresh = store()
    assert fresh._restore(encode(latest[TASK].event), 3, segments) == 1
    assert fresh.get(TASK, TENANT) == state


def test_a_missing_segment_is_reported_not_restored_half() -> None:
    states, state = store(), accepted_state()
    for step in range(SEGMENT_STEPS + 2):
        state = grow(state, step)
        *_, head = states.put(state, partition=0)
    fresh = store()
    assert fresh._restore(encode(head.event), 0, {}) == 0
    assert fresh.get(TASK, TENANT).task is None


def test_an_ended_task_remembers_its_segments_for_forgetting() -> None:
    states, state = store(), accepted_state()
    for step in range(2 * SEGMENT_STEPS + 1):
        state = grow(state, step)
        states.put(state, partition=0)
    *_, head = states.put(state.model_copy(update={"terminal": "stepbus.task.completed"}), 0)
    assert head.event.data.state["segments"] == 2  # type: ignore[attr-defined]
    fresh = store()
    assert fresh._restore(encode(head.event), 0) == 1
    assert fresh._ended[TASK].segments == 2
