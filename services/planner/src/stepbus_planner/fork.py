"""Forking a recorded task: a new task whose history before a step is copied from the
original's journal, continued live from that step. Pure functions, no Kafka.

The copy comes from the planner's own journal, never from the submission, so a fork cannot
smuggle in a tool result or a verdict that was never recorded; and only a task of the
submitting tenant can be forked (another tenant's task reads as absent). The copied events
are rewritten for the new task (its id, the idempotency keys of its calls) and folded through
the same trust rules as any journal event before the fork is accepted: a history that does
not fold is refused with the reason, never half copied. The copied calls all have outcomes,
so none runs again.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from stepbus_contracts import (
    ApprovalResolved,
    CritiqueCompleted,
    CritiqueFailed,
    EventData,
    ForkOrigin,
    JournalEvent,
    LlmDecided,
    MemoryRecalled,
    TaskAccepted,
    TaskAcceptedData,
    TaskSubmitted,
    TaskTrace,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallHeld,
    derive_id,
    idempotency_key,
)

from .state import TaskState, fold
from .trust import refusal

__all__ = ["FORK_SOURCE", "ForkError", "fork"]

FORK_SOURCE = "urn:stepbus:fork"
"""``source`` of the copied events on a fork's journal."""

_Stepped = LlmDecided | ApprovalResolved | CritiqueCompleted | CritiqueFailed


class ForkError(Exception):
    """The task cannot be forked as asked (the message says why, for the submitter)."""


def fork(
    submission: TaskSubmitted,
    original: list[JournalEvent],
    *,
    model: str,
    trace: TaskTrace | None,
    now: datetime,
) -> tuple[TaskAccepted, list[JournalEvent]]:
    """The fork's acceptance and the copied events that follow it on its journal.

    Args:
        submission: The fork's submission (``data.fork`` set).
        original: The original's journal events of the submitting tenant, in order.
        model: The model the planner asks for the fork's live steps.
        trace: The fork's own trace.
        now: The current time (the copies are stamped with it).

    Raises:
        ForkError: No such task, a step out of range, or a history that does not fold.
    """
    origin = submission.data.fork
    assert origin is not None
    base = next((e for e in original if isinstance(e, TaskAccepted)), None)
    if base is None:
        raise ForkError(f"cannot fork: no task {origin.task_id!r} on the journal")
    decided = sorted({e.data.step for e in original if isinstance(e, LlmDecided)})
    if not decided or origin.step > decided[-1]:
        steps = f"steps 0-{decided[-1]}" if decided else "no steps"
        raise ForkError(
            f"cannot fork task {origin.task_id!r} at step {origin.step}: it has {steps}"
        )
    task = submission.data
    data = base.data.model_copy(
        update={
            "deadline_at": now + timedelta(seconds=task.deadline_seconds),
            "metadata": task.metadata or base.data.metadata,
            # The submitter's roles, never the original's: a fork must not act with more
            # rights than whoever asked for it (the gateway sets them from the caller's key).
            "roles": task.roles,
            "submitted_id": submission.id,
            "model": model,
            "trace": trace,
            "fork": origin,
        }
    )
    accepted = TaskAccepted(
        id=derive_id(submission.id, "accepted"),  # as any acceptance (``trust``)
        source=base.source,
        subject=submission.subject,
        tenant=submission.tenant,
        data=TaskAcceptedData.model_validate(data.model_dump()),
    )
    copies = _copies(submission, original, origin, now)
    _check(submission, accepted, copies, origin, now)
    return accepted, copies


def _copies(
    submission: TaskSubmitted, original: list[JournalEvent], origin: ForkOrigin, now: datetime
) -> list[JournalEvent]:
    """The original's recall and its step events before ``origin.step``, rewritten for the
    fork, in journal order (a redelivered record once)."""
    copies: list[JournalEvent] = []
    seen: set[str] = set()
    recalled = False
    for event in original:
        if event.id in seen:
            continue
        seen.add(event.id)
        data: EventData
        if isinstance(event, MemoryRecalled):
            if recalled:
                continue
            recalled = True
            data = event.data
        elif isinstance(event, ToolCallCompleted | ToolCallFailed | ToolCallHeld):
            if event.data.step >= origin.step:
                continue
            key = idempotency_key(submission.subject, event.data.step, event.data.call_index)
            data = event.data.model_copy(update={"idempotency_key": key})
        elif isinstance(event, _Stepped) and event.data.step < origin.step:
            data = event.data
        else:
            continue
        copies.append(
            type(event)(
                id=derive_id(submission.id, "forked", event.id),
                source=FORK_SOURCE,
                subject=submission.subject,
                tenant=submission.tenant,
                time=now,
                data=data,  # type: ignore[arg-type]
            )
        )
    return copies


def _check(
    submission: TaskSubmitted,
    accepted: TaskAccepted,
    copies: list[JournalEvent],
    origin: ForkOrigin,
    now: datetime,
) -> None:
    """Fold the fork's history as the planner will read it back; refuse it unless every
    event folds and the copy ends with a complete step."""
    state = TaskState(
        task_id=submission.subject, tenant=submission.tenant, submitted_id=submission.id
    )
    for event in [accepted, *copies]:
        problem = refusal(state, event, now)
        if problem is not None:
            step = getattr(event.data, "step", None)
            where = f" at step {step}" if step is not None else ""
            raise ForkError(
                f"cannot fork task {origin.task_id!r}: its {event.type}{where} does not fold "
                f"({problem})"
            )
        state, _ = fold(state, event)
    if state.copying:
        raise ForkError(
            f"cannot fork task {origin.task_id!r} at step {origin.step}: step "
            f"{origin.step - 1} is not complete (a call without an outcome, or a draft "
            "without its verdict); fork at an earlier step"
        )
