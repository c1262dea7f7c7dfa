"""CriticHandlers with a fake judge: verdicts, retries, failures, late requests, ids, usage."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from stepbus_contracts import (
    MAX_FEEDBACK_LENGTH,
    CritiqueCompleted,
    CritiqueFailed,
    CritiqueRequested,
    CritiqueRequestedData,
    TokenUsage,
    Topics,
    derive_id,
    history_adapter,
)
from stepbus_critic.handlers import SOURCE, CriticHandlers
from stepbus_critic.ports import JudgeError, JudgeReply
from stepbus_critic.rubric import JUDGE_MARKER
from stepbus_runtime import RecordContext, RetryableError

TOPICS = Topics("critic-test.")
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
GOOD = {"score": 0.9, "relevance": 1, "completeness": 0.9, "groundedness": 1, "feedback": "ok"}


class FakeJudge:
    """Answers from a script, one item per call: a reply text, or a ``JudgeError`` to raise;
    ``after_call`` runs during each call (time passing while the model thinks)."""

    model = "judge-default"

    def __init__(self, *script: str | JudgeError) -> None:
        self._script = list(script)
        self.calls: list[tuple[list[dict[str, Any]], str, dict[str, Any]]] = []
        self.after_call: Any = None

    async def judge(
        self, messages: Sequence[dict[str, Any]], schema_name: str, schema: dict[str, Any]
    ) -> JudgeReply:
        self.calls.append((list(messages), schema_name, schema))
        assert self._script, "the judge was asked more often than scripted"
        item = self._script.pop(0)
        if self.after_call is not None:
            self.after_call()
        if isinstance(item, JudgeError):
            raise item
        return JudgeReply(item, TokenUsage(prompt_tokens=100, completion_tokens=10), "judge-1")


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def handlers_with(judge: FakeJudge, clock: Clock | None = None) -> CriticHandlers:
    return CriticHandlers(judge=judge, topics=TOPICS, clock=clock or Clock())


def context(attempt: int = 1, max_attempts: int = 5) -> RecordContext:
    return RecordContext(TOPICS.critic_requests, 0, 7, "task-1", attempt, max_attempts)


def answer_request(**data: Any) -> CritiqueRequested:
    fields: dict[str, Any] = {
        "kind": "answer",
        "step": 2,
        "round": 0,
        "input": "What is 17 * 23?",
        "draft": "391",
        "observations": ["calculator: 391"],
        **data,
    }
    return CritiqueRequested(
        id="req-1", subject="task-1", tenant="acme", data=CritiqueRequestedData(**fields)
    )


def tool_request(**data: Any) -> CritiqueRequested:
    fields: dict[str, Any] = {
        "kind": "tool_call",
        "step": 1,
        "call_index": 1,
        "input": "Tidy up",
        "tool": "shell",
        "tool_description": "Runs a command.",
        "arguments": {"command": "rm -rf /"},
        **data,
    }
    return CritiqueRequested(
        id="req-2", subject="task-1", tenant="acme", data=CritiqueRequestedData(**fields)
    )


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def only(emits: Sequence[Any]) -> Any:
    [emit] = emits
    assert emit.topic == TOPICS.planner_history
    # What goes on the journal is a valid journal event.
    history_adapter.validate_json(emit.event.model_dump_json())
    return emit.event


async def test_a_scored_answer() -> None:
    judge = FakeJudge(json.dumps(GOOD))
    before = sample("stepbus_critiques_total", kind="answer", outcome="scored")
    request = answer_request()
    event = only(await handlers_with(judge).on_request(request, context()))
    assert isinstance(event, CritiqueCompleted)
    assert (event.id, event.source, event.subject, event.tenant) == (
        derive_id("req-1", "critique"),
        SOURCE,
        "task-1",
        "acme",
    )
    data = event.data
    assert (data.kind, data.step, data.call_index) == ("answer", 2, None)
    assert (data.score, data.relevance, data.completeness, data.groundedness) == (
        0.9,
        1.0,
        0.9,
        1.0,
    )
    assert (data.feedback, data.approved) == ("ok", None)
    assert (data.model, data.attempts) == ("judge-1", 1)
    assert data.usage == TokenUsage(prompt_tokens=100, completion_tokens=10)
    assert data.duration_ms >= 0
    [(messages, name, schema)] = judge.calls
    assert messages[0]["content"].startswith(JUDGE_MARKER)
    assert messages[1]["content"].startswith("## Task\nWhat is 17 * 23?")
    assert name == "critic_reply"
    assert schema["additionalProperties"] is False
    assert sample("stepbus_critiques_total", kind="answer", outcome="scored") == before + 1


async def test_long_feedback_is_cut() -> None:
    judge = FakeJudge(json.dumps({**GOOD, "feedback": "x" * (MAX_FEEDBACK_LENGTH + 50)}))
    event = only(await handlers_with(judge).on_request(answer_request(), context()))
    assert event.data.feedback == "x" * MAX_FEEDBACK_LENGTH


@pytest.mark.parametrize(
    ("reply", "approved", "outcome"),
    [
        ('{"approved": true, "reason": "fine"}', True, "approved"),
        ('{"approved": false, "reason": "deletes everything"}', False, "rejected"),
    ],
)
async def test_a_tool_review(reply: str, approved: bool, outcome: str) -> None:
    judge = FakeJudge(reply)
    before = sample("stepbus_critiques_total", kind="tool_call", outcome=outcome)
    event = only(await handlers_with(judge).on_request(tool_request(), context()))
    assert isinstance(event, CritiqueCompleted)
    data = event.data
    assert (data.kind, data.step, data.call_index, data.approved) == ("tool_call", 1, 1, approved)
    assert data.feedback == json.loads(reply)["reason"]
    assert data.score is None
    assert event.id == derive_id("req-2", "critique")
    [(messages, name, _)] = judge.calls
    assert name == "tool_review_reply"
    assert "## Tool\nshell\nRuns a command." in messages[1]["content"]
    assert sample("stepbus_critiques_total", kind="tool_call", outcome=outcome) == before + 1


async def test_an_invalid_reply_is_shown_to_the_judge_and_asked_again_once() -> None:
    judge = FakeJudge("I think it is fine.", "```json\n" + json.dumps(GOOD) + "\n```")
    event = only(await handlers_with(judge).on_request(answer_request(), context()))
    assert isinstance(event, CritiqueCompleted)
    assert event.data.attempts == 2
    assert event.data.usage == TokenUsage(prompt_tokens=200, completion_tokens=20)
    first, second = (messages for messages, _, _ in judge.calls)
    assert second[: len(first)] == first
    assert second[len(first)] == {"role": "assistant", "content": "I think it is fine."}
    assert "no JSON object" in second[len(first) + 1]["content"]


async def test_two_invalid_replies_fail_the_critique() -> None:
    judge = FakeJudge("nope", json.dumps({**GOOD, "score": 2}))
    before = sample("stepbus_critiques_total", kind="answer", outcome="invalid_reply")
    event = only(await handlers_with(judge).on_request(answer_request(), context()))
    assert isinstance(event, CritiqueFailed)
    assert event.id == derive_id("req-1", "critique")  # the id a verdict would have had
    data = event.data
    assert (data.reason, data.attempts, data.kind, data.step) == ("invalid_reply", 2, "answer", 2)
    assert "'score' is invalid" in data.message
    assert data.usage == TokenUsage(prompt_tokens=200, completion_tokens=20)
    assert data.model == "judge-1"
    assert len(judge.calls) == 2
    assert sample("stepbus_critiques_total", kind="answer", outcome="invalid_reply") == before + 1


async def test_a_retryable_judge_error_retries_the_record_until_its_last_attempt() -> None:
    error = JudgeError("HTTP 503: overloaded", retryable=True)
    with pytest.raises(RetryableError, match="overloaded"):
        await handlers_with(FakeJudge(error)).on_request(answer_request(), context(attempt=4))
    event = only(
        await handlers_with(FakeJudge(error)).on_request(answer_request(), context(attempt=5))
    )
    assert isinstance(event, CritiqueFailed)
    assert (event.data.reason, event.data.attempts) == ("model_error", 1)
    assert "overloaded" in event.data.message
    assert event.data.model == "judge-default"


async def test_a_retryable_error_on_the_retry_after_an_invalid_reply_keeps_the_usage() -> None:
    judge = FakeJudge("nope", JudgeError("timed out", retryable=True))
    event = only(await handlers_with(judge).on_request(answer_request(), context(5, 5)))
    assert (event.data.reason, event.data.attempts) == ("model_error", 2)
    assert event.data.usage == TokenUsage(prompt_tokens=100, completion_tokens=10)


async def test_a_non_retryable_judge_error_fails_at_once() -> None:
    judge = FakeJudge(JudgeError("HTTP 401: bad key", retryable=False))
    event = only(await handlers_with(judge).on_request(tool_request(), context(attempt=1)))
    assert isinstance(event, CritiqueFailed)
    assert (event.data.reason, event.data.kind, event.data.call_index) == (
        "model_error",
        "tool_call",
        1,
    )
    assert len(judge.calls) == 1


async def test_a_bug_never_escapes_as_an_exception() -> None:
    class Broken(FakeJudge):
        async def judge(self, *args: Any) -> JudgeReply:
            raise KeyError("boom")

    event = only(await handlers_with(Broken()).on_request(answer_request(), context()))
    assert isinstance(event, CritiqueFailed)
    assert event.data.reason == "model_error"
    assert "KeyError" in event.data.message


async def test_a_request_nobody_waits_for_is_skipped_without_asking() -> None:
    judge = FakeJudge()
    before = sample(
        "stepbus_records_dropped_total",
        service="critic",
        topic=TOPICS.critic_requests,
        reason="critique_too_late",
    )
    late = answer_request(answer_by=NOW - timedelta(seconds=1))
    assert await handlers_with(judge).on_request(late, context()) == []
    assert judge.calls == []
    after = sample(
        "stepbus_records_dropped_total",
        service="critic",
        topic=TOPICS.critic_requests,
        reason="critique_too_late",
    )
    assert after == before + 1


async def test_a_verdict_that_comes_after_answer_by_is_not_published() -> None:
    clock = Clock()
    judge = FakeJudge(json.dumps(GOOD))

    def slow() -> None:
        clock.now = NOW + timedelta(seconds=30)

    judge.after_call = slow
    request = answer_request(answer_by=NOW + timedelta(seconds=10))
    before = sample("stepbus_critiques_total", kind="answer", outcome="too_late")
    assert await handlers_with(judge, clock).on_request(request, context()) == []
    assert len(judge.calls) == 1
    assert sample("stepbus_critiques_total", kind="answer", outcome="too_late") == before + 1


async def test_in_time_requests_are_judged_and_a_redelivery_gives_the_same_id() -> None:
    request = answer_request(answer_by=NOW + timedelta(seconds=10))
    first = only(await handlers_with(FakeJudge(json.dumps(GOOD))).on_request(request, context()))
    again = only(await handlers_with(FakeJudge("x", "y")).on_request(request, context(2)))
    assert isinstance(first, CritiqueCompleted) and isinstance(again, CritiqueFailed)
    assert first.id == again.id == derive_id(request.id, "critique")
    other = answer_request().model_copy(update={"id": "req-other"})
    third = only(await handlers_with(FakeJudge(json.dumps(GOOD))).on_request(other, context()))
    assert third.id != first.id
