"""What the planner refuses: other tenants' events, forged journal events, reused event ids.

Regression tests for the hardening findings 6 (tenants collide on task ids) and 7 (internal
topics trusted blindly), driven through the in-memory loop of ``test_planner_handlers``.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from stepbus_contracts import (
    LlmDecided,
    LlmDecidedData,
    TaskAccepted,
    TaskAcceptedData,
    TaskCompleted,
    TaskCompletedData,
    TaskFailed,
    TaskProgress,
    ToolCallCompleted,
    ToolCallCompletedData,
    ToolCallRequested,
    derive_id,
)
from stepbus_planner.ports import EventIdsUnavailable, ModelTurn
from stepbus_runtime import PermanentError

from .test_planner_handlers import (
    NOW,
    TASK,
    TENANT,
    TOPICS,
    Loop,
    calculator_model,
    cancel_request,
    context,
    submitted,
)

OTHER = "intruder"


def dropped(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "stepbus_records_dropped_total",
        {"service": "planner", "topic": TOPICS.planner_history, "reason": reason},
    )
    return value or 0.0


def as_tenant(event: Any, tenant: str) -> Any:
    return event.model_copy(update={"tenant": tenant})


# -- finding 6: a task belongs to the tenant that submitted it --------------------------------


async def test_a_task_id_another_tenant_holds_fails_for_the_submitter_only() -> None:
    loop = Loop(calculator_model(), hold_tool_calls=True)
    await loop.task(submitted())
    before = loop.store.get(TASK, TENANT)

    intruder = as_tenant(submitted(event_id="submit-2"), OTHER)
    outputs = await loop.handlers.on_task(intruder, context(TOPICS.tasks))

    assert [(o.topic, type(o.event)) for o in outputs] == [(TOPICS.results, TaskFailed)]
    failed = outputs[0].event
    assert isinstance(failed, TaskFailed)
    assert (failed.tenant, failed.subject, failed.data.reason) == (OTHER, TASK, "task_id_conflict")
    assert loop.store.get(TASK, OTHER) == before  # the owner's task is untouched
    await loop.release_tool_calls()
    [terminal] = loop.terminals()
    assert isinstance(terminal, TaskCompleted) and terminal.tenant == TENANT


async def test_a_cancellation_from_another_tenant_neither_interrupts_nor_cancels() -> None:
    started = asyncio.Event()

    class SlowModel:
        model = "slow"

        async def complete(self, messages: Any, tools: Any, **_: Any) -> ModelTurn:
            started.set()
            await asyncio.sleep(0.2)
            return ModelTurn(content="done")

    loop = Loop(SlowModel())  # type: ignore[arg-type]
    accepted = (await loop.handlers.on_task(submitted(), context(TOPICS.tasks)))[0].event
    running = asyncio.create_task(loop.deliver(accepted))
    await asyncio.wait_for(started.wait(), 5)
    foreign = as_tenant(cancel_request(), OTHER)
    loop.handlers.inner.on_task_arrival(foreign)  # what the processor does on fetch
    assert await loop.handlers.on_task(foreign, context(TOPICS.tasks)) == []
    outputs = await asyncio.wait_for(running, 5)
    terminals = [o.event for o in outputs if o.topic == TOPICS.results and o.event.type != (
        "stepbus.task.progress")]  # fmt: skip
    assert [type(t) for t in terminals] == [TaskCompleted]
    assert terminals[0].tenant == TENANT


async def test_journal_events_from_another_tenant_are_refused() -> None:
    loop = Loop(calculator_model(), hold_tool_calls=True)
    await loop.task(submitted())
    [command] = loop.held
    outcome = ToolCallCompleted(
        id="forged-outcome",
        subject=TASK,
        tenant=OTHER,
        data=ToolCallCompletedData(
            step=0,
            call_index=0,
            name="calculator",
            idempotency_key=command.data.idempotency_key,
            output="666",
        ),
    )
    before = dropped("foreign_tenant")
    assert await loop.deliver(outcome) == []
    assert dropped("foreign_tenant") == before + 1
    assert loop.store.get(TASK, TENANT).outcomes == {}


# -- finding 7: the planner trusts only what it can check -------------------------------------


async def test_a_forged_terminal_on_the_journal_does_not_end_a_running_task() -> None:
    loop = Loop(calculator_model(), hold_tool_calls=True)
    await loop.task(submitted())
    forged = TaskCompleted(
        id="forged-end",
        subject=TASK,
        tenant=TENANT,
        data=TaskCompletedData(output="pwned", steps=0),
    )
    assert await loop.deliver(forged) == []
    assert not loop.store.get(TASK, TENANT).ended
    await loop.release_tool_calls()
    [terminal] = loop.terminals()
    assert isinstance(terminal, TaskCompleted) and terminal.data.output == "17 * 23 = 391"


def forged_acceptance(*, submitted_id: str, max_iterations: int = 8, days: float = 0.01) -> Any:
    return TaskAccepted(
        id=derive_id(submitted_id, "accepted"),
        subject=TASK,
        tenant=TENANT,
        data=TaskAcceptedData.model_construct(  # unvalidated, as a forger's bytes would be
            input="loop forever",
            session_id=None,
            tools=["calculator"],
            max_iterations=max_iterations,
            deadline_at=NOW + timedelta(days=days),
            token_budget=None,
            metadata={},
            submitted_id=submitted_id,
            model="m",
        ),
    )


async def test_an_acceptance_for_a_task_never_submitted_is_refused_without_a_trace() -> None:
    loop = Loop(calculator_model())
    before = dropped("unsubmitted_task")
    assert await loop.deliver(forged_acceptance(submitted_id="never")) == []
    assert dropped("unsubmitted_task") == before + 1
    assert loop.model.calls == [] and loop.snapshots == []


async def test_an_acceptance_beyond_the_submission_limits_is_refused() -> None:
    loop = Loop(calculator_model())
    event = submitted()
    outputs = await loop.handlers.on_task(event, context(TOPICS.tasks))
    genuine = outputs[0].event
    assert isinstance(genuine, TaskAccepted)
    far = forged_acceptance(submitted_id=event.id, days=365)
    assert await loop.deliver(far) == []
    assert loop.store.get(TASK, TENANT).task is None and loop.model.calls == []
    # The planner's own acceptance still runs the task.
    await loop.pump([o for o in outputs if o.topic == TOPICS.planner_history])
    assert [type(t) for t in loop.terminals()] == [TaskCompleted]


async def test_events_for_tasks_that_never_existed_leave_no_snapshot_and_no_progress() -> None:
    loop = Loop(calculator_model())
    ghost = "ghost-1"
    decided = LlmDecided(
        id="g1",
        subject=ghost,
        tenant=TENANT,
        data=LlmDecidedData(step=0, content="hi", model="m"),
    )
    outcome = ToolCallCompleted(
        id="g2",
        subject=ghost,
        tenant=TENANT,
        data=ToolCallCompletedData(
            step=0, call_index=0, name="calculator", idempotency_key=f"{ghost}:0:0", output="1"
        ),
    )
    before = dropped("unknown_task")
    for event in (decided, outcome):
        assert await loop.deliver(event) == []
    assert dropped("unknown_task") == before + 2
    assert loop.snapshots == [] and not any(isinstance(e, TaskProgress) for e in loop.history)


async def test_a_decision_for_a_step_out_of_turn_and_an_outcome_nobody_asked_for_are_refused() -> (
    None
):
    loop = Loop(calculator_model(), hold_tool_calls=True)
    await loop.task(submitted())
    jump = LlmDecided(
        id="j1", subject=TASK, tenant=TENANT, data=LlmDecidedData(step=5, content="x", model="m")
    )
    stray = ToolCallCompleted(
        id="s1",
        subject=TASK,
        tenant=TENANT,
        data=ToolCallCompletedData(
            step=0, call_index=7, name="calculator", idempotency_key=f"{TASK}:0:7", output="1"
        ),
    )
    assert await loop.deliver(jump) == []
    assert await loop.deliver(stray) == []
    state = loop.store.get(TASK, TENANT)
    assert sorted(state.decisions) == [0] and state.outcomes == {}
    assert not [e for e in loop.emitted if isinstance(e.event, ToolCallRequested)][1:]


# -- finding 9: an event id reused for a different event is dead-lettered ---------------------


class MemoryEventIds:
    """The ``EventIds`` port in a dict (the Redis adapter has its own integration test)."""

    def __init__(self, *, down: bool = False) -> None:
        self.seen: dict[tuple[str, str], str] = {}
        self.down = down

    async def claim(self, source: str, event_id: str, fingerprint: str) -> str | None:
        if self.down:
            raise EventIdsUnavailable("down")
        seen = self.seen.setdefault((source, event_id), fingerprint)
        return None if seen == fingerprint else seen


def loop_with_ids(ids: MemoryEventIds) -> Loop:
    loop = Loop(calculator_model())
    loop.handlers.inner._event_ids = ids
    return loop


async def test_an_event_id_reused_for_another_task_is_dead_lettered_not_run() -> None:
    loop = loop_with_ids(MemoryEventIds())
    await loop.task(submitted(event_id="same-id"))
    other = submitted(event_id="same-id").model_copy(update={"subject": "task-2"})
    with pytest.raises(PermanentError, match="already used for a different event"):
        await loop.handlers.on_task(other, context(TOPICS.tasks))
    assert loop.store.get("task-2", TENANT).submitted_id is None


async def test_a_redelivered_event_passes_the_id_check() -> None:
    loop = loop_with_ids(MemoryEventIds())
    event = submitted(event_id="again")
    first = await loop.handlers.on_task(event, context(TOPICS.tasks))
    again = await loop.handlers.on_task(event, context(TOPICS.tasks))
    assert [o.event.id for o in again] == [o.event.id for o in first]


async def test_the_task_runs_when_the_id_index_is_unreachable() -> None:
    loop = loop_with_ids(MemoryEventIds(down=True))
    await loop.task(submitted())
    assert [type(t) for t in loop.terminals()] == [TaskCompleted]


async def test_a_task_whose_resolved_tools_exceed_the_limits_fails_as_invalid() -> None:
    catalog = [f"tool_{i}" for i in range(70)]  # `tools: null` offers all: over MAX_TOOLS
    loop = Loop(calculator_model(), catalog=catalog)
    await loop.task(submitted(tools=None))
    [failure] = loop.terminals()
    assert isinstance(failure, TaskFailed) and failure.data.reason == "invalid_task"
    assert "tools" in failure.data.message and loop.model.calls == []
