"""Forks: a new task continues a recorded one from a step, with the history before it copied
from the planner's own journal (``stepbus_planner.fork``), driven through the handlers."""

from __future__ import annotations

from typing import Any

import pytest
from stepbus_contracts import (
    ForkOrigin,
    JournalEvent,
    LlmDecided,
    TaskAccepted,
    TaskCompleted,
    TaskFailed,
    TaskSubmitted,
    TaskSubmittedData,
    ToolCallCompleted,
)
from stepbus_planner.fork import FORK_SOURCE, ForkError, fork
from stepbus_planner.react import AskModel, Wait, next_move
from stepbus_planner.state import TaskState, fold

from .test_planner_handlers import (
    NOW,
    TASK,
    TENANT,
    TOPICS,
    Loop,
    ScriptedModel,
    answer,
    calc,
    submitted,
    tool_turn,
)

FORK = "task-1.fork"


class LoopJournals:
    """``Journals`` over what the loop's journal holds."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.reads: list[tuple[str, str]] = []

    async def read(self, task_id: str, tenant: str) -> list[JournalEvent]:
        self.reads.append((task_id, tenant))
        return [
            e  # type: ignore[misc]
            for e in self.loop.history
            if e.subject == task_id and e.tenant == tenant
        ]


def fork_of(step: int, *, text: str | None = None, tenant: str = TENANT) -> TaskSubmitted:
    return TaskSubmitted(
        id=f"fork-submit-{step}",
        source="urn:test",
        subject=FORK,
        tenant=tenant,
        data=TaskSubmittedData(
            input="(the original's)", fork=ForkOrigin(task_id=TASK, step=step, input=text)
        ),
    )


async def original_then(*fork_script: Any) -> Loop:
    """A three-step task (two calculator calls, an answer), run to its end; the model then
    answers the fork with ``fork_script``."""
    model = ScriptedModel(
        tool_turn(calc("17 * 23")), tool_turn(calc("391 + 1")), answer("392"), *fork_script
    )
    loop = Loop(model)
    loop.handlers.inner._journals = LoopJournals(loop)
    await loop.task(submitted())
    assert [type(t) for t in loop.terminals()] == [TaskCompleted]
    return loop


def journal(loop: Loop, task_id: str) -> list[Any]:
    return [e for e in loop.history if e.subject == task_id]


async def test_a_fork_copies_the_steps_before_its_step_and_asks_the_model_for_that_one() -> None:
    loop = await original_then(answer("392, forked"))
    before = [e.model_dump_json() for e in journal(loop, TASK)]
    tool_calls_before = len(loop.on(TOPICS.tool_calls))

    await loop.task(fork_of(2))

    forked = journal(loop, FORK)
    accepted = forked[0]
    assert isinstance(accepted, TaskAccepted)
    assert accepted.data.fork == ForkOrigin(task_id=TASK, step=2)
    assert accepted.data.input == "What is 17 * 23?"  # the original's task, not the submission's
    copies = [e for e in forked if e.source == FORK_SOURCE]
    assert [(e.type, e.data.step) for e in copies] == [
        ("stepbus.llm.decided", 0),
        ("stepbus.tool.call_completed", 0),
        ("stepbus.llm.decided", 1),
        ("stepbus.tool.call_completed", 1),
    ]
    outcomes = [e for e in copies if isinstance(e, ToolCallCompleted)]
    assert [o.data.idempotency_key for o in outcomes] == [f"{FORK}:0:0", f"{FORK}:1:0"]
    # Step 2 is the model's, live: asked once, with the copied conversation.
    live = [e for e in forked if isinstance(e, LlmDecided) and e.source != FORK_SOURCE]
    assert [d.data.step for d in live] == [2]
    messages = loop.model.calls[-1][0]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"] * 1 + [
        "assistant",
        "tool",
    ]
    assert len(loop.model.calls) == 4
    # No copied call ran again, and the original is untouched.
    assert len(loop.on(TOPICS.tool_calls)) == tool_calls_before
    ends = [t for t in loop.terminals() if t.subject == FORK]
    assert isinstance(ends[0], TaskCompleted) and ends[0].data.output == "392, forked"
    assert ends[0].data.steps == 3
    assert [e.model_dump_json() for e in journal(loop, TASK)] == before


async def test_the_forks_input_is_a_new_user_turn_after_the_copied_steps() -> None:
    loop = await original_then(tool_turn(calc("17 * 23")), answer("twice 391"))
    await loop.task(fork_of(1, text="Now double-check the first product."))
    messages = loop.model.calls[3][0]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "user"]
    assert messages[-1]["content"] == "Now double-check the first product."
    later = loop.model.calls[4][0]  # the turn stays where it was given, before step 1
    assert [m["role"] for m in later][4:] == ["user", "assistant", "tool"]
    end = next(t for t in loop.terminals() if t.subject == FORK)
    assert isinstance(end, TaskCompleted) and end.data.output == "twice 391"


async def test_a_fork_acts_with_the_submitters_roles_not_the_originals() -> None:
    model = ScriptedModel(tool_turn(calc("17 * 23")), answer("391"), answer("391 again"))
    loop = Loop(model)
    loop.handlers.inner._journals = LoopJournals(loop)
    await loop.task(submitted(roles=["admin"]))
    lesser = fork_of(1).model_copy(
        update={"data": fork_of(1).data.model_copy(update={"roles": ["viewer"]})}
    )
    await loop.task(lesser)
    accepted = journal(loop, FORK)[0]
    assert isinstance(accepted, TaskAccepted) and accepted.data.roles == ["viewer"]


async def test_a_fork_at_step_zero_copies_nothing_but_the_task() -> None:
    loop = await original_then(answer("straight away"))
    await loop.task(fork_of(0))
    assert [m["role"] for m in loop.model.calls[3][0]] == ["system", "user"]
    assert not [e for e in journal(loop, FORK) if e.source == FORK_SOURCE]


@pytest.mark.parametrize(
    ("submission", "message"),
    [
        (fork_of(3), "cannot fork task 'task-1' at step 3: it has steps 0-2"),
        (fork_of(1, tenant="globex"), "cannot fork: no task 'task-1' on the journal"),
    ],
)
async def test_a_fork_past_the_last_step_or_of_another_tenants_task_fails_with_the_reason(
    submission: TaskSubmitted, message: str
) -> None:
    loop = await original_then()
    await loop.task(submission)
    end = next(t for t in loop.terminals() if t.subject == FORK)
    assert isinstance(end, TaskFailed) and end.data.reason == "invalid_task"
    assert end.data.message == message
    assert [type(e) for e in journal(loop, FORK)] == [TaskFailed]  # nothing copied or accepted


async def test_a_history_with_an_incomplete_step_is_refused_not_half_copied() -> None:
    loop = await original_then()
    history = journal(loop, TASK)
    no_outcomes = [e for e in history if not isinstance(e, ToolCallCompleted)]
    with pytest.raises(ForkError, match=r"its stepbus\.llm\.decided at step 1 does not fold"):
        fork(fork_of(2), no_outcomes, model="m", trace=None, now=NOW)
    last_open = [e for e in history if not (isinstance(e, ToolCallCompleted) and e.data.step)]
    with pytest.raises(ForkError, match="step 1 is not complete"):
        fork(fork_of(2), last_open, model="m", trace=None, now=NOW)


async def test_the_fork_waits_for_its_copy_then_asks_for_its_step_once() -> None:
    loop = await original_then()
    accepted, copies = fork(fork_of(2), journal(loop, TASK), model="m", trace=None, now=NOW)
    state = TaskState(task_id=FORK, tenant=TENANT, submitted_id="fork-submit-2")
    moves = []
    for event in [accepted, *copies]:
        state, _ = fold(state, event)
        moves.append(next_move(state, event, NOW))
    assert moves[:-1] == [Wait()] * len(copies)
    assert moves[-1] == AskModel(2)
    assert not state.copying
