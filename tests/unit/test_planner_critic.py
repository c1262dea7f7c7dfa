"""The critic in the planner's loop: drafts judged and revised, reviewed tool calls, timeouts,
and what the planner refuses to fold. Driven in memory by the ``Loop`` of the handler tests,
with a fake critic answering on the journal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

from stepbus_contracts import (
    CloudEvent,
    CriticPolicy,
    CritiqueCompleted,
    CritiqueCompletedData,
    CritiqueFailed,
    CritiqueFailedData,
    CritiqueRequested,
    LlmDecided,
    TaskCompleted,
    TaskFailed,
    TokenUsage,
    ToolCallFailed,
    derive_id,
)
from stepbus_planner.react import REVISION_PREFIX
from stepbus_planner.state import TaskState, fold
from stepbus_planner.store import TaskStates
from stepbus_runtime import Emit

from .test_planner_handlers import (
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


def judge(*scores: float, feedback: str = "cite the tool's result") -> Callable[..., CloudEvent]:
    """A critic scoring successive drafts with ``scores``; approving every reviewed call."""
    remaining: Iterator[float] = iter(scores)

    def verdict(request: CritiqueRequested) -> CloudEvent:
        data = request.data
        if data.kind == "tool_call":
            body = CritiqueCompletedData(
                kind="tool_call", step=data.step, call_index=data.call_index, approved=True
            )
        else:
            score = next(remaining)
            body = CritiqueCompletedData(
                kind="answer",
                step=data.step,
                score=score,
                relevance=score,
                completeness=score,
                groundedness=score,
                feedback="" if score >= 0.7 else feedback,
                usage=TokenUsage(prompt_tokens=100, completion_tokens=20),
            )
        return _verdict(request, body)

    return verdict


def _verdict(
    request: CritiqueRequested, body: CritiqueCompletedData | CritiqueFailedData
) -> CloudEvent:
    envelope = {
        "id": derive_id(request.id, "critique"),
        "source": "urn:test:critic",
        "subject": request.subject,
        "tenant": request.tenant,
    }
    if isinstance(body, CritiqueFailedData):
        return CritiqueFailed(**envelope, data=body)  # type: ignore[arg-type]
    return CritiqueCompleted(**envelope, data=body)  # type: ignore[arg-type]


def drafts_model(*drafts: str) -> ScriptedModel:
    """A tool step, then one final answer per draft."""
    return ScriptedModel(tool_turn(calc("17 * 23")), *(answer(d) for d in drafts))


def completed(loop: Loop) -> TaskCompleted:
    [end] = loop.terminals()
    assert isinstance(end, TaskCompleted), end
    return end


# -- judging drafts ------------------------------------------------------------------------------


async def test_a_weak_draft_goes_back_with_the_feedback_and_the_revision_passes() -> None:
    loop = Loop(drafts_model("about 400", "17 * 23 = 391"), critic=judge(0.3, 0.95))
    await loop.task(submitted())

    end = completed(loop)
    assert end.data.output == "17 * 23 = 391"
    critic = end.data.critic
    assert critic is not None
    assert (critic.judged, critic.score, critic.revisions) == (True, 0.95, 1)
    assert [(r.step, r.score) for r in critic.rounds] == [(1, 0.3), (2, 0.95)]
    # The revision was asked with the draft and the feedback as the last turns.
    revision_prompt = loop.model.calls[2][0]
    assert revision_prompt[-2] == {"role": "assistant", "content": "about 400"}
    assert revision_prompt[-1]["role"] == "user"
    assert revision_prompt[-1]["content"].startswith(REVISION_PREFIX)
    assert "cite the tool's result" in revision_prompt[-1]["content"]
    # Each draft was judged with the task, the draft and the observations it rests on.
    first, second = loop.critique_requests
    assert (first.data.kind, first.data.draft, first.data.round) == ("answer", "about 400", 0)
    assert first.data.observations == ["calculator: 391"]
    assert (second.data.draft, second.data.round) == ("17 * 23 = 391", 1)
    assert first.data.input == "What is 17 * 23?"


async def test_max_revisions_bounds_the_loop_and_the_best_draft_wins() -> None:
    loop = Loop(
        drafts_model("draft one", "draft two", "draft three"),
        critic=judge(0.5, 0.3, 0.4),
        critic_policy=CriticPolicy(max_revisions=2),
    )
    await loop.task(submitted())

    end = completed(loop)
    assert end.data.output == "draft one"
    assert end.data.critic is not None
    assert (end.data.critic.score, end.data.critic.revisions) == (0.5, 2)
    assert len(loop.critique_requests) == 3
    assert len(loop.model.calls) == 4  # the tool step and three drafts, no more


async def test_a_task_sets_its_own_threshold_and_revisions() -> None:
    loop = Loop(drafts_model("first", "second"), critic=judge(0.5, 0.6))
    await loop.task(submitted(critic=CriticPolicy(threshold=0.4, max_revisions=0)))

    end = completed(loop)
    assert end.data.output == "first"  # 0.5 passes a threshold of 0.4
    assert end.data.critic is not None and end.data.critic.revisions == 0


async def test_a_task_can_turn_the_critic_off() -> None:
    loop = Loop(drafts_model("17 * 23 = 391"), critic=judge())
    await loop.task(submitted(critic=CriticPolicy(enabled=False)))

    assert completed(loop).data.critic is None
    assert loop.critique_requests == []


async def test_the_deployment_switch_turns_the_critic_off_whatever_the_task_asks() -> None:
    loop = Loop(drafts_model("17 * 23 = 391"))  # no critic: the planner's switch is off
    await loop.task(submitted(critic=CriticPolicy(enabled=True)))

    assert completed(loop).data.critic is None
    assert loop.on(TOPICS.critic_requests) == []


async def test_revisions_do_not_count_against_max_iterations() -> None:
    model = ScriptedModel(answer("about 400"), answer("391"))
    loop = Loop(model, critic=judge(0.2, 0.9))
    await loop.task(submitted(max_iterations=1))

    end = completed(loop)
    assert (end.data.output, end.data.steps) == ("391", 2)


async def test_the_judges_tokens_count_against_the_token_budget() -> None:
    loop = Loop(drafts_model("about 400", "391"), critic=judge(0.2, 0.9))
    await loop.task(submitted(token_budget=140))

    # 11 tokens for the tool step, 12 for the draft, 120 for its critique: over budget before
    # the revision, so the task ends with the draft it has.
    end = completed(loop)
    assert end.data.output == "about 400"
    assert end.data.usage.total_tokens == 143
    assert end.data.critic is not None and end.data.critic.score == 0.2


async def test_an_answer_whose_critique_failed_completes_unjudged() -> None:
    def broken(request: CritiqueRequested) -> CloudEvent:
        return _verdict(
            request,
            CritiqueFailedData(
                kind="answer",
                step=request.data.step,
                reason="invalid_reply",
                message="not JSON, twice",
                attempts=2,
            ),
        )

    loop = Loop(drafts_model("17 * 23 = 391"), critic=broken)
    await loop.task(submitted())

    end = completed(loop)
    assert end.data.output == "17 * 23 = 391"
    assert end.data.critic is not None
    assert (end.data.critic.judged, end.data.critic.score) == (False, None)


async def test_a_critic_that_never_answers_delays_the_task_by_the_timeout_only() -> None:
    loop = Loop(drafts_model("17 * 23 = 391"), critic=lambda request: None)
    await loop.task(submitted())
    assert loop.terminals() == []

    [(state, kind, step, call)] = loop.handlers.inner.critiques_overdue()  # timeout 0 s
    outputs = await loop.handlers.inner.critique_timed_out(state.task_id, state.tenant, kind,
                                                           step, call)  # fmt: skip
    await loop.pump(outputs)

    end = completed(loop)
    assert end.data.critic is not None and end.data.critic.judged is False
    [failed] = [e for e in loop.history if isinstance(e, CritiqueFailed)]
    assert failed.data.reason == "timed_out"
    # The verdict that comes after all is not folded: the first record stands.
    late = judge(0.9)(loop.critique_requests[0])
    assert await loop.deliver(late) == []
    assert len(loop.terminals()) == 1


async def test_a_deadline_passing_during_a_revision_ends_with_the_best_draft() -> None:
    loop = Loop(drafts_model("about 400", "391"), critic=lambda request: None)
    await loop.task(submitted(deadline_seconds=60))
    [request] = loop.critique_requests
    loop.now += timedelta(seconds=61)
    outputs = await loop.handlers.inner.expire(TASK, TENANT)
    await loop.pump(o for o in outputs if o.topic != TOPICS.planner_snapshots)

    end = completed(loop)
    assert end.data.output == "about 400"
    assert end.data.critic is not None and end.data.critic.judged is False
    assert request.data.draft == "about 400"


# -- reviewed tool calls ----------------------------------------------------------------------


def reviewer(approve: bool, reason: str = "") -> Callable[[CritiqueRequested], CloudEvent]:
    def verdict(request: CritiqueRequested) -> CloudEvent:
        data = request.data
        if data.kind == "answer":
            return judge(1.0)(request)
        return _verdict(
            request,
            CritiqueCompletedData(
                kind="tool_call",
                step=data.step,
                call_index=data.call_index,
                approved=approve,
                feedback=reason,
            ),
        )

    return verdict


async def test_a_rejected_tool_call_never_reaches_the_executor_and_the_model_reads_why() -> None:
    model = ScriptedModel(tool_turn(calc("17 * 23")), answer("I was not allowed to compute"))
    loop = Loop(model, critic=reviewer(False, "not needed"), reviewed=["calculator"])
    await loop.task(submitted())

    assert loop.on(TOPICS.tool_calls) == []
    [decision] = [e for e in loop.history if isinstance(e, LlmDecided) and e.data.tool_calls]
    assert decision.data.tool_calls[0].review is True
    [review] = [r for r in loop.critique_requests if r.data.kind == "tool_call"]
    assert (review.data.tool, review.data.arguments) == ("calculator", {"expression": "17 * 23"})
    assert review.data.tool_description == "the calculator tool"
    [rejected] = [e for e in loop.history if isinstance(e, ToolCallFailed)]
    assert rejected.data.error_type == "denied"
    assert "not needed" in rejected.data.error
    tool_message = [m for m in loop.model.calls[1][0] if m["role"] == "tool"]
    assert tool_message[0]["content"] == "error: rejected by review: not needed"
    assert completed(loop).data.output == "I was not allowed to compute"


async def test_an_approved_tool_call_runs_once() -> None:
    model = ScriptedModel(tool_turn(calc("17 * 23")), answer("17 * 23 = 391"))
    loop = Loop(model, critic=reviewer(True), reviewed=["calculator"], deliveries=2)
    await loop.task(submitted())

    assert len(loop.on(TOPICS.tool_calls)) == 1
    assert completed(loop).data.output == "17 * 23 = 391"
    assert len([r for r in loop.critique_requests if r.data.kind == "tool_call"]) == 1


async def test_a_reviewed_call_whose_review_times_out_is_not_run() -> None:
    def answers_only(request: CritiqueRequested) -> CloudEvent | None:
        return judge(1.0)(request) if request.data.kind == "answer" else None

    model = ScriptedModel(tool_turn(calc("17 * 23")), answer("no tool"))
    loop = Loop(model, critic=answers_only, reviewed=["calculator"])
    await loop.task(submitted())
    [(_, kind, step, call)] = loop.handlers.inner.critiques_overdue()
    assert (kind, step, call) == ("tool_call", 0, 0)
    await loop.pump(await loop.handlers.inner.critique_timed_out(TASK, TENANT, kind, step, call))

    assert loop.on(TOPICS.tool_calls) == []
    [failed] = [e for e in loop.history if isinstance(e, ToolCallFailed)]
    assert failed.data.error_type == "unavailable"
    assert completed(loop).data.output == "no tool"


# -- trust and replay -------------------------------------------------------------------------


async def test_a_critique_nobody_asked_for_is_refused() -> None:
    loop = Loop(drafts_model("17 * 23 = 391"), critic=lambda request: None)
    await loop.task(submitted())
    [request] = loop.critique_requests
    forged = _verdict(
        request,
        CritiqueCompletedData(kind="answer", step=request.data.step + 1, score=0.1),
    )
    assert await loop.deliver(forged) == []
    tool_verdict = _verdict(
        request, CritiqueCompletedData(kind="tool_call", step=0, call_index=0, approved=True)
    )
    assert await loop.deliver(tool_verdict) == []  # the calculator is not reviewed
    assert loop.terminals() == []


async def test_a_revision_no_low_verdict_asked_for_is_refused() -> None:
    loop = Loop(drafts_model("17 * 23 = 391"), critic=lambda request: None)
    await loop.task(submitted())
    [request] = loop.critique_requests
    forged = LlmDecided(
        id="forged-step",
        source="urn:test",
        subject=TASK,
        tenant=TENANT,
        data={"step": request.data.step + 1, "content": "forged", "model": "m"},  # type: ignore[arg-type]
    )
    assert await loop.deliver(forged) == []
    passed = judge(0.9)(request)
    await loop.pump([_emit(passed)])
    assert completed(loop).data.output == "17 * 23 = 391"


def _emit(event: CloudEvent) -> Emit:
    return Emit(TOPICS.planner_history, event)


async def test_replaying_the_journal_rebuilds_the_judged_state_in_any_order() -> None:
    loop = Loop(drafts_model("about 400", "391"), critic=judge(0.3, 0.9), deliveries=2)
    await loop.task(submitted())
    assert len(loop.terminals()) == 1

    def replay(events: list[CloudEvent]) -> TaskState:
        state = TaskState(task_id=TASK, tenant=TENANT)
        for event in events:
            if not isinstance(event, TaskCompleted | TaskFailed):
                state, _ = fold(state, event)  # type: ignore[arg-type]
        return state

    forward, backward = replay(loop.history), replay(list(reversed(loop.history)))
    assert forward.critiques == backward.critiques
    assert sorted(forward.critiques) == ["answer:1", "answer:2"]
    assert forward.revisions == 1
    # Two deliveries of every record, one request per draft: nothing judged twice.
    assert len(loop.critique_requests) == 2


async def test_a_snapshot_keeps_the_critiques() -> None:
    loop = Loop(drafts_model("about 400", "391"), critic=lambda request: None)
    await loop.task(submitted())
    [request] = loop.critique_requests
    state = loop.store.get(TASK, TENANT)
    state, _ = fold(state, judge(0.3)(request))  # type: ignore[arg-type]
    [*_, snapshot] = loop.store.put(state, 0)
    restored = TaskStates("127.0.0.1:1", "t.planner.history", TOPICS.planner_snapshots)
    assert restored._restore(snapshot.event.model_dump_json().encode(), 0) == 1
    again = restored.get(TASK, TENANT)
    assert again.critiques == state.critiques
    assert again.pending_critiques == []
    assert isinstance(again.critique("answer", 1), CritiqueCompletedData)
