"""What the planner checks before it folds a journal event: it trusts only what it can check.

``planner.history`` is written by the planner and the tool-executor (Kafka ACLs keep everyone
else out: ``docs/security.md``), but a bug or a compromised writer must not be able to end,
stretch or steer someone's task. So before folding, the planner refuses:

- any event for a task owned by another tenant (a task belongs to the tenant that submitted it);
- terminal events: the planner applies a terminal when it emits one (ADR-5), so one read back
  is either its own duplicate or forged — never folded;
- an acceptance it did not write: its task was not submitted here, it names another
  submission, or its bounds are outside what a submission may ask for;
- anything for a task it has no accepted state for (no snapshot, no progress: dropped);
- a decision that is not the task's next step, and a tool outcome for a call no decision made;
- a recall for a task that does not wait for one;
- a hold of a call no decision made or that has an outcome, and an approval's outcome for
  a call the policy did not hold for that approval;
- a critique nobody asked for: of a draft that is not the task's latest or of a task not
  judged, of a call not marked for review or already answered; and a revision (a step after
  a draft) that no low verdict asked for.

Pure functions: no Kafka, no clock of their own.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from stepbus_contracts import (
    MAX_DEADLINE_SECONDS,
    ApprovalResolved,
    CritiqueCompleted,
    CritiqueFailed,
    LlmDecided,
    MemoryRecalled,
    TaskAccepted,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallHeld,
    derive_id,
    idempotency_key,
)

from .state import HistoryEventT, TaskState, critique_key

__all__ = ["CLOCK_SKEW", "owner", "refusal"]

CLOCK_SKEW = timedelta(minutes=5)
"""Tolerance on a deadline read back: replicas' clocks differ a little."""


def owner(state: TaskState) -> str | None:
    """The tenant the task belongs to, or None for a task this planner never took."""
    known = state.submitted_id is not None or state.task is not None or state.ended
    return state.tenant if known else None


def refusal(state: TaskState, event: HistoryEventT, now: datetime) -> str | None:
    """Why ``event`` must not be folded into ``state`` (a metric label), or None to fold it.

    A duplicate of something already folded is not refused: the fold ignores it.
    """
    holder = owner(state)
    if holder is not None and holder != event.tenant:
        return "foreign_tenant"
    if isinstance(event, TaskCompleted | TaskFailed | TaskCancelled):
        return "journal_terminal"
    if isinstance(event, TaskAccepted):
        return None if state.task is not None else _acceptance_refusal(state, event, now)
    task = state.task
    if task is None:
        return "unknown_task"
    if isinstance(event, MemoryRecalled):
        if state.recall is not None:
            return None  # a second answer (late, or after a timeout): the first one stands
        return None if state.awaiting_recall else "unexpected_recall"
    if isinstance(event, LlmDecided):
        step = event.data.step
        if step in state.decisions:
            return None
        if step != state.step + 1 or step >= state.step_limit + state.revision_due:
            return "unexpected_step"
        if step == 0 and state.awaiting_recall:
            return "unexpected_step"  # step 0 is asked only once the recall is recorded
        if step > 0 and not state.step_complete(step - 1):
            return "unexpected_step"
        if step > 0 and state.is_draft(step - 1) and not state.revision_due:
            return "unexpected_step"  # after a draft only a revision the critic asked for
        return None
    if isinstance(event, CritiqueCompleted | CritiqueFailed):
        data = event.data
        if critique_key(data.kind, data.step, data.call_index) in state.critiques:
            return None  # a duplicate, or a late verdict after a timeout: the first one stands
        expected = (data.kind, data.step, data.call_index if data.kind == "tool_call" else None)
        return None if expected in state.pending_critiques else "unexpected_critique"
    if isinstance(event, ToolCallCompleted | ToolCallFailed | ToolCallHeld):
        data = event.data
        decision = state.decisions.get(data.step)
        planned = None
        if decision is not None:
            planned = next(
                (c for c in decision.tool_calls if c.call_index == data.call_index), None
            )
        key = idempotency_key(state.task_id, data.step, data.call_index)
        if planned is None or planned.name != data.name or data.idempotency_key != key:
            return "unexpected_outcome"
        if isinstance(event, ToolCallHeld) and state.outcome(data.step, data.call_index):
            return "unexpected_hold"  # a call with an outcome waits for nothing
        return None
    if isinstance(event, ApprovalResolved):
        data = event.data
        if state.approval(data.step, data.call_index) is not None:
            return None  # a duplicate: the first outcome stands
        hold = state.hold(data.step, data.call_index)
        if hold is None or hold.gate != "approval" or hold.approval_id != data.approval_id:
            return "unexpected_approval"
        return None
    return None


def _acceptance_refusal(state: TaskState, event: TaskAccepted, now: datetime) -> str | None:
    submitted = state.submitted_id
    if submitted is None or event.data.submitted_id != submitted:
        return "unsubmitted_task"
    if event.id != derive_id(submitted, "accepted"):
        return "unsubmitted_task"  # the planner derives its acceptance's id from the submission
    if event.data.deadline_at > now + timedelta(seconds=MAX_DEADLINE_SECONDS) + CLOCK_SKEW:
        return "out_of_bounds"
    return None
