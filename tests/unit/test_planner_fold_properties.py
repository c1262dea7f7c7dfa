"""The planner's fold, by property: any reordering and duplication of a valid history folds to
the state the history folds to in order (what makes redelivery and replay harmless)."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from stepbus_contracts import (
    CritiqueCompleted,
    CritiqueCompletedData,
    CritiqueFailed,
    CritiqueFailedData,
    LlmDecided,
    LlmDecidedData,
    PlannedToolCall,
    TaskAccepted,
    TaskAcceptedData,
    TaskCompleted,
    TaskCompletedData,
    ToolCallCompleted,
    ToolCallCompletedData,
    ToolCallFailed,
    ToolCallFailedData,
)
from stepbus_planner.state import HistoryEventT, TaskState, fold

from .test_planner_handlers import NOW, TASK, TENANT


@st.composite
def histories(draw: st.DrawFn) -> list[HistoryEventT]:
    """A valid journal: accepted, then steps of decisions (reviewed calls with their verdicts,
    judged drafts with theirs) and their outcomes, maybe an end."""
    steps = draw(st.integers(min_value=0, max_value=6))
    events: list[HistoryEventT] = [
        TaskAccepted(
            id="a",
            subject=TASK,
            tenant=TENANT,
            data=TaskAcceptedData(
                input="q",
                tools=["calculator"],
                max_iterations=10,
                deadline_at=NOW + timedelta(hours=1),
                submitted_id="s",
                model="m",
            ),
        )
    ]
    for step in range(steps):
        calls = draw(st.integers(min_value=0, max_value=3))
        planned = [
            PlannedToolCall(
                call_index=i,
                name="calculator",
                llm_call_id=f"c{step}{i}",
                review=draw(st.booleans()),
            )
            for i in range(calls)
        ]
        events.append(
            LlmDecided(
                id=f"d{step}",
                subject=TASK,
                tenant=TENANT,
                data=LlmDecidedData(step=step, content=f"t{step}", tool_calls=planned, model="m"),
            )
        )
        envelope = {"id": f"v{step}", "subject": TASK, "tenant": TENANT}
        if not planned and draw(st.booleans()):  # a judged draft
            if draw(st.booleans()):
                score = draw(st.floats(min_value=0, max_value=1))
                verdict = CritiqueCompletedData(kind="answer", step=step, score=score)
                events.append(CritiqueCompleted(**envelope, data=verdict))
            else:
                failure = CritiqueFailedData(kind="answer", step=step, reason="timed_out")
                events.append(CritiqueFailed(**envelope, data=failure))
        for call in planned:
            if call.review:
                review = CritiqueCompletedData(kind="tool_call", step=step,
                                               call_index=call.call_index,
                                               approved=draw(st.booleans()))  # fmt: skip
                events.append(CritiqueCompleted(**{**envelope, "id": f"r{step}{call.call_index}"},
                                                data=review))  # fmt: skip
            ref = {"step": step, "call_index": call.call_index, "name": "calculator",
                   "idempotency_key": f"{TASK}:{step}:{call.call_index}"}  # fmt: skip
            envelope = {"id": f"o{step}{call.call_index}", "subject": TASK, "tenant": TENANT}
            if draw(st.booleans()):
                output = draw(st.text(max_size=5))
                events.append(
                    ToolCallCompleted(**envelope, data=ToolCallCompletedData(**ref, output=output))
                )
            else:
                events.append(ToolCallFailed(**envelope, data=ToolCallFailedData(**ref, error="x")))
    if draw(st.booleans()):
        done = TaskCompletedData(output="done", steps=steps)
        events.append(TaskCompleted(id="end", subject=TASK, tenant=TENANT, data=done))
    return events


def fold_all(events: list[HistoryEventT]) -> TaskState:
    state = TaskState(task_id=TASK, tenant=TENANT)
    for event in events:
        state, _ = fold(state, event)
    return state


@settings(max_examples=200, deadline=None)
@given(data=st.data(), history=histories())
def test_reordered_and_duplicated_histories_fold_to_the_same_state(
    data: st.DataObject, history: list[HistoryEventT]
) -> None:
    in_order = fold_all(history)
    redelivered = data.draw(
        st.lists(st.sampled_from(history), max_size=2 * len(history)), label="duplicates"
    )
    shuffled = data.draw(st.permutations([*history, *redelivered]), label="order")
    assert fold_all(shuffled) == in_order


@settings(max_examples=100, deadline=None)
@given(history=histories())
def test_folding_a_history_twice_changes_nothing_the_second_time(
    history: list[HistoryEventT],
) -> None:
    state = fold_all(history)
    for event in history:
        again, changed = fold(state, event)
        assert not changed and again == state
