"""Planner handlers: task commands and history events in, the next ReAct move out."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from stepbus_contracts import (
    CloudEvent,
    LlmDecided,
    TaskAccepted,
    TaskAcceptedData,
    TaskCancelled,
    TaskCancelledData,
    TaskCancelRequested,
    TaskCompleted,
    TaskCompletedData,
    TaskFailed,
    TaskFailedData,
    TaskProgress,
    TaskProgressData,
    TaskSubmitted,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallFailedData,
    ToolCallRequested,
    ToolCallRequestedData,
    Topics,
    derive_id,
    idempotency_key,
)
from stepbus_runtime import Emit, RecordContext, RetryableError

from .catalog import ToolCatalog
from .ports import ChatModel, ModelError
from .react import (
    SYSTEM_PROMPT,
    AskModel,
    Dispatch,
    Fail,
    Finish,
    conversation,
    decision_from_turn,
    next_move,
)
from .state import HistoryEventT, TaskState, fold
from .store import StateStore

__all__ = ["PlannerHandlers"]

_SOURCE = "urn:stepbus:planner"


class PlannerHandlers:
    """The planner's two inboxes: ``tasks`` (commands) and ``planner.history`` (its journal).

    Args:
        model: The LLM.
        store: Per-task state.
        catalog: Registered tools.
        topics: Topic names.
        max_attempts: The processor's attempts per record; the last failing LLM attempt fails
            the task instead of raising.
        tool_timeout_seconds: Time limit handed to each tool call.
        clock: Current time (injectable for tests).
        system_prompt: Overrides the default system prompt.
    """

    def __init__(
        self,
        *,
        model: ChatModel,
        store: StateStore,
        catalog: ToolCatalog,
        topics: Topics,
        max_attempts: int,
        tool_timeout_seconds: float = 30.0,
        clock: Callable[[], datetime],
        system_prompt: str | None = None,
    ) -> None:
        self._model = model
        self._store = store
        self._catalog = catalog
        self._topics = topics
        self._max_attempts = max_attempts
        self._tool_timeout = tool_timeout_seconds
        self._clock = clock
        self._system_prompt = system_prompt or SYSTEM_PROMPT

    # -- tasks topic ----------------------------------------------------------------------

    async def on_task(
        self, event: TaskSubmitted | TaskCancelRequested, context: RecordContext
    ) -> Sequence[Emit]:
        """Accept a submitted task, or cancel a running one."""
        state = await self._store.get(event.subject, event.tenant)
        if isinstance(event, TaskCancelRequested):
            if state.ended or (state.task is None and state.submitted_id is None):
                return []  # finished, or never submitted: nothing to cancel
            return await self._end(
                state,
                TaskCancelled(
                    **_envelope(event, "cancelled"),
                    data=TaskCancelledData(reason=event.data.reason, steps=len(state.decisions)),
                ),
            )
        if state.task is not None or state.ended or state.submitted_id not in (None, event.id):
            return []  # a duplicate submission of a task already running or finished
        # A redelivery of the submission we accepted re-emits the same (same-id) acceptance,
        # in case the first one was never acknowledged; consumers drop the duplicate.
        task = event.data
        tools = task.tools if task.tools is not None else sorted(self._catalog.names())
        unknown = sorted(set(tools) - self._catalog.names())
        if unknown and not context.last_attempt:
            # The catalog may still be catching up (an executor starting): retry with backoff.
            raise RetryableError(f"unknown tools {unknown}; waiting for the tool catalog")
        if unknown:
            known = ", ".join(sorted(self._catalog.names())) or "none"
            return await self._end(
                state,
                TaskFailed(
                    **_envelope(event, "invalid"),
                    data=TaskFailedData(
                        reason="invalid_task",
                        message=f"unknown tools: {', '.join(unknown)} (available: {known})",
                        metadata=task.metadata,
                    ),
                ),
            )
        accepted = TaskAccepted(
            **_envelope(event, "accepted"),
            data=TaskAcceptedData(
                input=task.input,
                session_id=task.session_id,
                tools=tools,
                max_iterations=task.max_iterations,
                deadline_at=self._clock() + timedelta(seconds=task.deadline_seconds),
                token_budget=task.token_budget,
                metadata=task.metadata,
                submitted_id=event.id,
                model=self._model.model,
            ),
        )
        await self._store.put(state.model_copy(update={"submitted_id": event.id}))
        return [Emit(self._topics.planner_history, accepted)]

    # -- planner.history ------------------------------------------------------------------

    async def on_history(self, event: HistoryEventT, context: RecordContext) -> Sequence[Emit]:
        """Fold a journal event into the task's state and make the next move."""
        state, changed = fold(await self._store.get(event.subject, event.tenant), event)
        if not changed:
            return []  # duplicate, or the task already ended
        outputs = [Emit(self._topics.results, p) for p in _progress(event)]
        move = next_move(state, event, self._clock())
        if isinstance(move, AskModel):
            decided = await self._ask_model(state, event, move.step, context)
            if isinstance(decided, LlmDecided):
                outputs.append(Emit(self._topics.planner_history, decided))
            else:
                return [*outputs, *await self._end(state, decided)]
        elif isinstance(move, Dispatch):
            outputs.extend(self._dispatch(state, event, move))
        elif isinstance(move, Finish | Fail):
            return [*outputs, *await self._end(state, self._terminal(state, event, move))]
        await self._store.put(state)
        return outputs

    async def _ask_model(
        self, state: TaskState, cause: CloudEvent, step: int, context: RecordContext
    ) -> LlmDecided | TaskFailed:
        assert state.task is not None
        started = time.perf_counter()
        try:
            turn = await self._model.complete(
                conversation(state, self._system_prompt), self._catalog.specs(state.task.tools)
            )
        except ModelError as exc:
            if exc.retryable and context.attempt < self._max_attempts:
                raise RetryableError(str(exc)) from exc
            return self._terminal(state, cause, Fail("llm_error", f"the model failed: {exc}"))
        decision = decision_from_turn(step, turn, (time.perf_counter() - started) * 1000)
        return LlmDecided(**_envelope(cause, "decided", step), data=decision)

    def _dispatch(self, state: TaskState, cause: CloudEvent, move: Dispatch) -> list[Emit]:
        assert state.task is not None
        outputs = []
        for call in move.calls:
            key = idempotency_key(state.task_id, move.step, call.call_index)
            ref = {"step": move.step, "call_index": call.call_index, "name": call.name}
            problem = call.arguments_error or (
                None if call.name in state.task.tools else f"tool {call.name!r} is not offered"
            )
            if problem is not None:  # answered by the planner, so the model can correct itself
                failed = ToolCallFailed(
                    **_envelope(cause, "call", call.call_index),
                    data=ToolCallFailedData(
                        **ref,
                        idempotency_key=key,
                        error=problem,
                        error_type="invalid_arguments" if call.arguments_error else "unknown_tool",
                    ),
                )
                outputs.append(Emit(self._topics.planner_history, failed))
                continue
            request = ToolCallRequested(
                **_envelope(cause, "call", call.call_index),
                data=ToolCallRequestedData(
                    **ref,
                    idempotency_key=key,
                    arguments=call.arguments,
                    timeout_seconds=self._tool_timeout,
                ),
            )
            outputs.append(Emit(self._topics.tool_calls, request))
        return outputs

    def _terminal(
        self, state: TaskState, cause: CloudEvent, move: Finish | Fail
    ) -> TaskCompleted | TaskFailed:
        metadata = state.task.metadata if state.task else {}
        if isinstance(move, Finish):
            return TaskCompleted(
                **_envelope(cause, "terminal"),
                data=TaskCompletedData(
                    output=move.output,
                    steps=len(state.decisions),
                    usage=state.usage,
                    metadata=metadata,
                ),
            )
        return TaskFailed(
            **_envelope(cause, "terminal"),
            data=TaskFailedData(
                reason=move.reason,
                message=move.message,
                steps=len(state.decisions),
                usage=state.usage,
                metadata=metadata,
            ),
        )

    async def _end(
        self, state: TaskState, terminal: TaskCompleted | TaskFailed | TaskCancelled
    ) -> list[Emit]:
        """Publish the terminal event to the journal and the results, and end the task here.

        The state records the end at once, so nothing handled after this (a cancellation, a
        late tool outcome) can produce a second terminal event.
        """
        ended, _ = fold(state, terminal)
        await self._store.put(ended)
        return [Emit(self._topics.planner_history, terminal), Emit(self._topics.results, terminal)]


def _envelope(cause: CloudEvent, *parts: object) -> dict[str, object]:
    """Attributes of an event caused by ``cause``: same task and tenant, id derived from it."""
    return {
        "id": derive_id(cause.id, *parts),
        "source": _SOURCE,
        "subject": cause.subject,
        "tenant": cause.tenant,
    }


def _progress(event: HistoryEventT) -> list[TaskProgress]:
    """What a journal event shows on the public progress stream."""
    items: list[TaskProgressData] = []
    if isinstance(event, TaskAccepted):
        items.append(TaskProgressData(step=0, stage="accepted", message="task accepted"))
    elif isinstance(event, LlmDecided):
        data = event.data
        if data.content and data.tool_calls:
            items.append(TaskProgressData(step=data.step, stage="thought", message=data.content))
        for call in data.tool_calls:
            args = ", ".join(f"{k}={v!r}" for k, v in call.arguments.items())
            items.append(
                TaskProgressData(
                    step=data.step, stage="action", message=f"{call.name}({args})", tool=call.name
                )
            )
    elif isinstance(event, ToolCallCompleted):
        items.append(
            TaskProgressData(
                step=event.data.step,
                stage="observation",
                message=f"{event.data.name} → {event.data.output}",
                tool=event.data.name,
            )
        )
    elif isinstance(event, ToolCallFailed):
        items.append(
            TaskProgressData(
                step=event.data.step,
                stage="observation",
                message=f"{event.data.name} failed: {event.data.error}",
                tool=event.data.name,
            )
        )
    return [
        TaskProgress(**_envelope(event, "progress", index), data=item)
        for index, item in enumerate(items)
    ]
