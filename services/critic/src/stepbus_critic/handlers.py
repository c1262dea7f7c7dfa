"""Critic handlers: a critique request in, one verdict (or failure) on the task's journal out.

Every request is answered on ``planner.history`` with exactly one event whose id is derived
from the request's (``derive_id(request.id, "critique")``, the same for a verdict and for a
failure), so a redelivered request, judged again, changes nothing: the planner folds the first
event per id. A request nobody waits for any more (its ``answer_by`` passed: the planner
recorded a timeout) is skipped, before and after asking the judge.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from opentelemetry import trace
from opentelemetry.trace import Span, StatusCode
from stepbus_contracts import (
    MAX_DURATION_MS,
    MAX_FEEDBACK_LENGTH,
    MAX_MODEL_NAME_LENGTH,
    CriticReply,
    CritiqueCompleted,
    CritiqueCompletedData,
    CritiqueFailed,
    CritiqueFailedData,
    CritiqueFailure,
    CritiqueRequested,
    TokenUsage,
    ToolReviewReply,
    Topics,
    derive_id,
)
from stepbus_runtime import Emit, RecordContext, RetryableError, clip
from stepbus_runtime.genai import count_tokens
from stepbus_runtime.metrics import DROPPED_RECORDS

from .metrics import CRITIQUES, JUDGE_SECONDS, SCORES
from .ports import InvalidReplyError, Judge, JudgeError
from .rubric import (
    DEFAULT_ANSWER_RUBRIC,
    parse_reply,
    reply_schema,
    request_messages,
    retry_messages,
)

__all__ = ["JUDGE_ATTEMPTS", "SOURCE", "CriticHandlers"]

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("stepbus.critic")

SOURCE = "urn:stepbus:critic"
JUDGE_ATTEMPTS = 2
"""Judge calls per critique: an invalid reply is shown to the judge and asked for once more."""

_MAX_MESSAGE = 1_900  # CritiqueFailedData.message holds 2,000; clip notes what it cut


class CriticHandlers:
    """What the critic does with each critique request.

    Args:
        judge: The judge model.
        topics: Topic names.
        clock: Current time (``answer_by`` is compared with it).
        rubric: The answer rubric (the criteria; the reply's shape is always asked for).
    """

    def __init__(
        self,
        *,
        judge: Judge,
        topics: Topics,
        clock: Callable[[], datetime],
        rubric: str = DEFAULT_ANSWER_RUBRIC,
    ) -> None:
        self._judge = judge
        self._topics = topics
        self._clock = clock
        self._rubric = rubric

    async def on_request(self, event: CritiqueRequested, context: RecordContext) -> Sequence[Emit]:
        """Judge a draft or review a tool call; the verdict goes to the task's journal.

        Raises:
            RetryableError: The judge model is unreachable for now and this is not the
                record's last attempt (on the last one a ``model_error`` failure is recorded).
        """
        if self._too_late(event):
            return []
        started = time.perf_counter()
        data = event.data
        with _tracer.start_as_current_span(
            f"critique {data.kind}",
            attributes={
                "stepbus.critic.kind": data.kind,
                "stepbus.step": data.step,
                "stepbus.critic.round": data.round,
            },
        ) as span:
            try:
                answer = await self._critique(event, context, started)
            except RetryableError:
                raise
            except Exception as exc:  # a bug must not dead-letter the request: the task waits
                log.exception("critique of %s failed", clip(event.subject, 80))
                answer = self._failed(
                    event,
                    "model_error",
                    f"critic error: {type(exc).__name__}",
                    TokenUsage(),
                    self._judge.model,
                    0,
                    started,
                )
            _describe(span, answer)
        if self._too_late(event):  # the planner recorded a timeout meanwhile: first one wins
            return []
        verdict = answer.data
        model = verdict.model or self._judge.model

        def counted() -> None:  # once the verdict is recorded: a redone critique counts once
            count_tokens(
                "critic", model, verdict.usage.prompt_tokens, verdict.usage.completion_tokens
            )

        return [Emit(self._topics.planner_history, answer, on_acked=counted)]

    async def _critique(
        self, request: CritiqueRequested, context: RecordContext, started: float
    ) -> CritiqueCompleted | CritiqueFailed:
        data = request.data
        name, schema = reply_schema(data.kind)
        messages = request_messages(data, self._rubric)
        usage, model = TokenUsage(), self._judge.model
        for attempt in range(1, JUDGE_ATTEMPTS + 1):
            asked = time.perf_counter()
            try:
                reply = await self._judge.judge(messages, name, schema)
            except JudgeError as exc:
                if exc.retryable and not context.last_attempt:
                    raise RetryableError(f"judge unavailable: {exc}") from exc
                return self._failed(
                    request, "model_error", str(exc), usage, model, attempt, started
                )
            finally:
                JUDGE_SECONDS.observe(time.perf_counter() - asked)
            usage, model = usage + reply.usage, reply.model or model
            try:
                verdict = parse_reply(reply.text, data.kind)
            except InvalidReplyError as exc:
                if attempt == JUDGE_ATTEMPTS:
                    return self._failed(
                        request,
                        "invalid_reply",
                        f"judge reply: {exc}",
                        usage,
                        model,
                        attempt,
                        started,
                    )
                log.info(
                    "judge reply for %s invalid, asking again: %s",
                    clip(request.subject, 80),
                    clip(str(exc), 200),
                )
                messages = retry_messages(messages, reply.text, str(exc), data.kind)
                continue
            return self._completed(request, verdict, usage, model, attempt, started)
        raise AssertionError("unreachable: the last attempt returns")

    def _completed(
        self,
        request: CritiqueRequested,
        verdict: CriticReply | ToolReviewReply,
        usage: TokenUsage,
        model: str,
        attempts: int,
        started: float,
    ) -> CritiqueCompleted:
        data = request.data
        result = CritiqueCompletedData(
            kind=data.kind,
            step=data.step,
            call_index=data.call_index,
            model=model[:MAX_MODEL_NAME_LENGTH] or None,
            usage=usage,
            attempts=attempts,
            duration_ms=_elapsed_ms(started),
        )
        if isinstance(verdict, ToolReviewReply):
            outcome = "approved" if verdict.approved else "rejected"
            result = result.model_copy(
                update={
                    "approved": verdict.approved,
                    "feedback": verdict.reason[:MAX_FEEDBACK_LENGTH],
                }
            )
        else:
            outcome = "scored"
            SCORES.observe(verdict.score)
            result = result.model_copy(
                update={
                    "score": verdict.score,
                    "relevance": verdict.relevance,
                    "completeness": verdict.completeness,
                    "groundedness": verdict.groundedness,
                    "feedback": verdict.feedback[:MAX_FEEDBACK_LENGTH],
                }
            )
        CRITIQUES.labels(data.kind, outcome).inc()
        return CritiqueCompleted(
            id=_verdict_id(request),
            source=SOURCE,
            subject=request.subject,
            tenant=request.tenant,
            data=result,
        )

    def _failed(
        self,
        request: CritiqueRequested,
        reason: CritiqueFailure,
        message: str,
        usage: TokenUsage,
        model: str,
        attempts: int,
        started: float,
    ) -> CritiqueFailed:
        data = request.data
        log.warning(
            "critique of %s failed (%s): %s", clip(request.subject, 80), reason, clip(message, 300)
        )
        CRITIQUES.labels(data.kind, reason).inc()
        result = CritiqueFailedData(
            kind=data.kind,
            step=data.step,
            call_index=data.call_index,
            model=model[:MAX_MODEL_NAME_LENGTH] or None,
            usage=usage,
            attempts=attempts,
            duration_ms=_elapsed_ms(started),
            reason=reason,
            message=clip(message, _MAX_MESSAGE),
        )
        return CritiqueFailed(
            id=_verdict_id(request),
            source=SOURCE,
            subject=request.subject,
            tenant=request.tenant,
            data=result,
        )

    def _too_late(self, request: CritiqueRequested) -> bool:
        """Whether nobody waits for this verdict any more (the task went on without it)."""
        answer_by = request.data.answer_by
        if answer_by is None or self._clock() <= answer_by:
            return False
        topic = self._topics.critic_requests
        DROPPED_RECORDS.labels("critic", topic, "critique_too_late").inc()
        CRITIQUES.labels(request.data.kind, "too_late").inc()
        return True


def _describe(span: Span, answer: CritiqueCompleted | CritiqueFailed) -> None:
    """The verdict on the critique's span."""
    if not span.is_recording():
        return
    data = answer.data
    if isinstance(data, CritiqueCompletedData):
        if data.score is not None:
            span.set_attribute("stepbus.critic.score", data.score)
        if data.approved is not None:
            span.set_attribute("stepbus.critic.approved", data.approved)
        span.set_attribute("stepbus.critic.attempts", data.attempts)
    else:
        span.set_attribute("stepbus.critic.failure", data.reason)
        span.set_status(StatusCode.ERROR, data.reason)


def _verdict_id(request: CritiqueRequested) -> str:
    """One id per request, verdict or failure alike: a request yields one answer."""
    return derive_id(request.id, "critique")


def _elapsed_ms(started: float) -> float:
    return min((time.perf_counter() - started) * 1000, MAX_DURATION_MS)
