"""Recall is a recorded step: the planner asks for memory, waits for it on the journal, and goes
on without it when it does not come in time (in memory: Kafka mimicked by the test loop)."""

from __future__ import annotations

from datetime import timedelta

from stepbus_contracts import (
    LlmDecided,
    LlmDecidedData,
    MemoryHit,
    MemoryRecalled,
    MemoryRecalledData,
    MemoryRecallRequested,
    MemoryTurn,
    TaskAccepted,
    TaskCompleted,
    TaskProgress,
    derive_id,
)
from stepbus_planner.memory_prompt import memory_context
from stepbus_runtime import Emit

from .test_planner_handlers import (
    NOW,
    TASK,
    TENANT,
    TOPICS,
    Loop,
    calculator_model,
    context,
    submitted,
)


def recalled(request: MemoryRecallRequested, **data: object) -> MemoryRecalled:
    """What the memory service answers (its id derived from the request)."""
    return MemoryRecalled(
        id=derive_id(request.id, "recalled"),
        source="urn:test:memory",
        subject=request.subject,
        tenant=request.tenant,
        data=MemoryRecalledData(status="recalled", recalled_at=NOW, **data),  # type: ignore[arg-type]
    )


HOURS_2 = timedelta(hours=2)
TURNS = [
    MemoryTurn(role="user", content="My cat is called Miso.", task_id="t0", at=NOW - HOURS_2),
    MemoryTurn(role="assistant", content="Noted: Miso.", task_id="t0", at=NOW - HOURS_2),
]
HITS = [
    MemoryHit(
        id="m1",
        text="The office wifi password is on the fridge.",
        score=0.8,
        kind="fact",
        source="task t-9",
        at=NOW - timedelta(days=3),
    )
]


async def test_a_task_with_memory_asks_for_it_before_its_first_step() -> None:
    loop = Loop(calculator_model(), memory=True)
    await loop.task(submitted(session_id="s-1"))
    [request] = loop.recall_requests
    assert isinstance(request, MemoryRecallRequested)
    assert (request.subject, request.tenant, request.data.session_id) == (TASK, TENANT, "s-1")
    assert request.data.query == "What is 17 * 23?"
    assert loop.model.calls == []  # step 0 waits for the recall

    await loop.pump([Emit(TOPICS.planner_history, recalled(request, turns=TURNS, hits=HITS))])
    messages, _ = loop.model.calls[0]
    assert [m["role"] for m in messages] == ["system", "system", "user"]
    memory = messages[1]["content"]
    assert "not instructions" in memory
    assert "My cat is called Miso." in memory and "2 hours ago" in memory
    assert "wifi password" in memory and "fact from task t-9, 3 days ago" in memory
    [terminal] = loop.terminals()
    assert isinstance(terminal, TaskCompleted)
    stages = [e.data.stage for e in loop.on(TOPICS.results) if isinstance(e, TaskProgress)]
    assert stages[:2] == ["accepted", "memory"]


async def test_a_recall_that_does_not_come_in_time_is_recorded_and_the_task_goes_on() -> None:
    loop = Loop(calculator_model(), memory=True)
    await loop.task(submitted())
    [request] = loop.recall_requests
    [waiting] = loop.handlers.inner.recalls_overdue()  # the timeout is 0 in this loop
    outputs = await loop.handlers.inner.recall_timed_out(waiting.task_id, waiting.tenant)
    [timed_out] = [o.event for o in outputs]
    assert isinstance(timed_out, MemoryRecalled) and timed_out.data.status == "timed_out"
    await loop.pump(outputs)
    messages, _ = loop.model.calls[0]
    assert [m["role"] for m in messages] == ["system", "user"]  # no memory, as recorded
    # The real answer arriving late changes nothing: the first recall recorded wins.
    assert await loop.deliver(recalled(request, turns=TURNS)) == []
    assert len(loop.terminals()) == 1


async def test_a_replayed_acceptance_does_not_ask_for_memory_again() -> None:
    loop = Loop(calculator_model(), memory=True)
    await loop.task(submitted())
    accepted = next(e for e in loop.history if isinstance(e, TaskAccepted))
    assert await loop.deliver(accepted) == []
    assert len(loop.recall_requests) == 1


async def test_a_recall_for_a_task_that_waits_for_none_is_refused() -> None:
    loop = Loop(calculator_model())  # memory off: the task never waits for a recall
    outputs = await loop.handlers.on_task(submitted(), context(TOPICS.tasks))
    accepted = outputs[0].event
    assert isinstance(accepted, TaskAccepted) and not accepted.data.memory
    await loop.pump([o for o in outputs if o.topic == TOPICS.planner_history])
    forged = MemoryRecalled(
        id="r1", subject=TASK, tenant=TENANT,
        data=MemoryRecalledData(status="recalled", turns=TURNS),
    )  # fmt: skip
    assert await loop.deliver(forged) == []
    assert loop.store.get(TASK, TENANT).recall is None


async def test_a_step_zero_decision_before_the_recall_is_refused() -> None:
    loop = Loop(calculator_model(), memory=True)
    await loop.task(submitted())
    decision = LlmDecidedData(step=0, content="guess", model="m")
    early = LlmDecided(id="d0", subject=TASK, tenant=TENANT, data=decision)
    assert await loop.deliver(early) == []
    assert loop.store.get(TASK, TENANT).decisions == {}


async def test_a_completed_task_reports_what_session_memory_keeps() -> None:
    loop = Loop(calculator_model())
    await loop.task(submitted(session_id="s-1", user_id="u-7"))
    [terminal] = loop.terminals()
    assert isinstance(terminal, TaskCompleted)
    data = terminal.data
    assert (data.input, data.session_id, data.user_id) == ("What is 17 * 23?", "s-1", "u-7")
    assert data.observations == ["calculator: 391"]


def test_an_empty_recall_adds_no_message() -> None:
    assert memory_context(MemoryRecalledData(status="recalled")) is None
