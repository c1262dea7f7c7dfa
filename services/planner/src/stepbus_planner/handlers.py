"""Planner handlers: task commands and history events in, the next ReAct move out."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Literal

from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, TraceFlags
from pydantic import ValidationError
from stepbus_contracts import (
    MAX_DRAFT_LENGTH,
    MAX_OBSERVATION_LENGTH,
    MAX_OBSERVATIONS,
    ApprovalDecided,
    ApprovalRequested,
    ApprovalRequestedData,
    ApprovalResolved,
    ApprovalResolvedData,
    Clearance,
    CloudEvent,
    CriticPolicy,
    CritiqueCompleted,
    CritiqueCompletedData,
    CritiqueFailed,
    CritiqueFailedData,
    CritiqueKind,
    CritiqueRequested,
    CritiqueRequestedData,
    LlmDecided,
    MemoryRecalled,
    MemoryRecalledData,
    MemoryRecallRequested,
    MemoryRecallRequestedData,
    PlannedToolCall,
    TaskAccepted,
    TaskAcceptedData,
    TaskCancelled,
    TaskCancelledData,
    TaskCancelRequested,
    TaskCompleted,
    TaskCompletedData,
    TaskFailed,
    TaskFailedData,
    TaskInput,
    TaskProgress,
    TaskProgressData,
    TaskSubmitted,
    TaskTrace,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallFailedData,
    ToolCallHeld,
    ToolCallRequested,
    ToolCallRequestedData,
    Topics,
    derive_id,
    idempotency_key,
)
from stepbus_runtime import Emit, PermanentError, RecordContext, RetryableError, clip
from stepbus_runtime.genai import count_tokens
from stepbus_runtime.logfmt import log_context
from stepbus_runtime.metrics import DROPPED_RECORDS
from stepbus_runtime.tracing import (
    MODE,
    REPLAY,
    STEP,
    TASK_ID,
    TENANT,
    derived_span_id,
    derived_trace,
    fixed_ids,
    note_own_span,
    origin_link,
    record_root_span,
    task_context,
    task_trace,
    trace_headers,
    unix_nanos,
)

from .catalog import ToolCatalog
from .fork import FORK_SOURCE, ForkError, fork
from .metrics import (
    REPLAYED_STEPS,
    STEP_SECONDS,
    TASK_SECONDS,
    TASKS_ACCEPTED,
    TASKS_FINISHED,
)
from .ports import ChatModel, EventIds, EventIdsUnavailable, Journals, ModelError, ModelTurn
from .react import (
    SYSTEM_PROMPT,
    AskModel,
    Dispatch,
    Fail,
    Finish,
    Judge,
    Recall,
    conversation,
    decision_from_turn,
    next_move,
    observations,
    out_of_budget,
)
from .state import HistoryEventT, TaskState, critique_key, fold
from .store import TaskStates
from .trust import owner, refusal

__all__ = ["PlannerHandlers"]

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("stepbus.planner")

_SOURCE = "urn:stepbus:planner"
_RECORD, _EFFECT = 0, 1
"""Publishing stages (``Emit.stage``): decisions, then what they cause; snapshots go last."""


class PlannerHandlers:
    """The planner's two inboxes: ``tasks`` (commands) and ``planner.history`` (its journal).

    Args:
        model: The LLM.
        store: Per-task state of the owned partitions, with snapshots.
        catalog: Registered tools.
        topics: Topic names.
        max_attempts: The processor's attempts per record; the last failing LLM attempt fails
            the task instead of raising.
        tool_timeout_seconds: Time limit handed to each tool call.
        clock: Current time (injectable for tests).
        system_prompt: Overrides the default system prompt.
        event_ids: The index of public event ids seen (a reused id with another body is
            dead-lettered); None disables the check.
        memory: Whether tasks accepted from now on recall memory before step 0.
        recall_limit: Most long-term memories a recall asks for.
        recall_timeout_seconds: How long a task waits for its recall before going on without.
        critic: The deployment's switch: whether tasks accepted from now on may be judged
            (a task can still opt out with ``critic.enabled: false``).
        critic_policy: The threshold and revisions of a task that does not set its own.
        critique_timeout_seconds: How long a task waits for a verdict; then a draft is the
            answer unjudged, and a reviewed call is not run.
        journals: Reads a recorded task's journal, for forks (None: forks fail).
        mode: ``live``, or the ``replay`` or ``shadow`` planner: the ``mode`` label of its
            metrics (never counted as production work); the latter two record their spans in
            a trace of their own, linked to the original's.
        originals: For a replayed or shadow planner: the original task's span of a step
            (tenant, task id, step; step -1 is the task's root), which the run's spans link.
    """

    def __init__(
        self,
        *,
        model: ChatModel,
        store: TaskStates,
        catalog: ToolCatalog,
        topics: Topics,
        max_attempts: int,
        tool_timeout_seconds: float = 30.0,
        clock: Callable[[], datetime],
        system_prompt: str | None = None,
        event_ids: EventIds | None = None,
        memory: bool = False,
        recall_limit: int = 5,
        recall_timeout_seconds: float = 2.0,
        critic: bool = False,
        critic_policy: CriticPolicy | None = None,
        critique_timeout_seconds: float = 30.0,
        journals: Journals | None = None,
        mode: Literal["live", "replay", "shadow"] = "live",
        originals: Callable[[str, str, int], SpanContext | None] | None = None,
    ) -> None:
        self._journals = journals
        self._mode = mode
        self._originals = originals
        self._critic = critic
        self._critic_policy = critic_policy or CriticPolicy()
        self._critique_timeout = critique_timeout_seconds
        self._critiques: dict[tuple[str, str], float] = {}  # (task, critique key) -> asked at
        self._event_ids = event_ids
        self._memory = memory
        self._recall_limit = recall_limit
        self._recall_timeout = recall_timeout_seconds
        self._recalls: dict[str, float] = {}  # task id -> when its recall was asked (monotonic)
        self._model = model
        self._store = store
        self._catalog = catalog
        self._topics = topics
        self._max_attempts = max_attempts
        self._tool_timeout = tool_timeout_seconds
        self._clock = clock
        self._system_prompt = system_prompt or SYSTEM_PROMPT
        self._llm_calls: dict[str, asyncio.Future[ModelTurn]] = {}
        self._cancelling: set[str] = set()  # tasks whose cancellation arrived, not yet handled
        self._waiting_since: dict[str, float] = {}  # approval id -> first seen waiting

    # -- tasks topic ----------------------------------------------------------------------

    async def on_task(self, event: TaskInput, context: RecordContext) -> Sequence[Emit]:
        """Accept a submitted task, or cancel a running one (memory events are the memory
        service's: the planner passes them by).

        A task belongs to the tenant that submitted it: a submission of a task id another
        tenant holds fails for the submitting tenant only (``task_id_conflict``, on results,
        never on the owner's journal), and a cancellation from another tenant is refused.

        Raises:
            PermanentError: The event's id was used before for a different event.
        """
        if not isinstance(event, TaskSubmitted | TaskCancelRequested | ApprovalDecided):
            return []
        await self._check_event_id(event)
        state = self._store.get(event.subject, event.tenant)
        holder = owner(state)
        if isinstance(event, ApprovalDecided):
            return self._decided(state, event, context)
        if isinstance(event, TaskCancelRequested):
            self._cancelling.discard(event.subject)
            if holder is None or state.ended:
                return []  # finished, or never submitted: nothing to cancel
            if holder != event.tenant:
                self._refuse(event, context, "foreign_tenant")
                return []
            return self._end(
                state,
                context.partition,
                TaskCancelled(
                    **_envelope(event, "cancelled"),
                    data=TaskCancelledData(reason=event.data.reason, steps=len(state.decisions)),
                ),
            )
        if holder is not None and holder != event.tenant:
            self._refuse(event, context, "task_id_conflict")
            conflict = TaskFailed(
                **_envelope(event, "conflict"),
                data=TaskFailedData(
                    reason="task_id_conflict",
                    message=f"task id {event.subject!r} is taken; submit with another task id",
                    metadata=event.data.metadata,
                ),
            )
            return [Emit(self._topics.results, conflict)]  # to the submitter, not the journal
        if state.task is not None or state.ended or state.submitted_id not in (None, event.id):
            return []  # a duplicate submission of a task already running or finished
        # A redelivery of the submission we accepted re-emits the same (same-id) acceptance,
        # in case the first one was never acknowledged; consumers drop the duplicate.
        if event.data.fork is not None:
            return await self._fork(state, event, context)
        task = event.data
        tools = task.tools if task.tools is not None else sorted(self._catalog.names())
        unknown = sorted(set(tools) - self._catalog.names())
        if unknown and not context.last_attempt:
            # The catalog may still be catching up (an executor starting): retry with backoff.
            raise RetryableError(f"unknown tools {unknown}; waiting for the tool catalog")
        problem = None
        if unknown:
            known = ", ".join(sorted(self._catalog.names())) or "none"
            problem = f"unknown tools: {', '.join(unknown)} (available: {known})"
        else:
            try:
                data = TaskAcceptedData(
                    input=task.input,
                    session_id=task.session_id,
                    user_id=task.user_id,
                    memory=self._memory,
                    critic=self._resolve_critic(task.critic),
                    roles=task.roles,
                    tools=tools,
                    max_iterations=task.max_iterations,
                    deadline_at=self._clock() + timedelta(seconds=task.deadline_seconds),
                    token_budget=task.token_budget,
                    metadata=task.metadata,
                    submitted_id=event.id,
                    model=self._model.model,
                    trace=self._task_trace(event, context),
                )
            except ValidationError as exc:  # e.g. `tools: null` resolved to too many tools
                fields = sorted({".".join(map(str, e["loc"])) for e in exc.errors()})
                problem = f"the task cannot be run as resolved: {', '.join(fields)} out of bounds"
        if problem is not None:
            return self._end(
                state,
                context.partition,
                TaskFailed(
                    **_envelope(event, "invalid"),
                    data=TaskFailedData(
                        reason="invalid_task", message=clip(problem, 1000), metadata=task.metadata
                    ),
                ),
            )
        accepted = TaskAccepted(**_envelope(event, "accepted"), data=data)
        snapshot = self._store.put(
            state.model_copy(update={"submitted_id": event.id}), context.partition
        )
        return [Emit(self._topics.planner_history, accepted), *snapshot]

    async def _fork(
        self, state: TaskState, event: TaskSubmitted, context: RecordContext
    ) -> Sequence[Emit]:
        """Accept a fork: its acceptance and the original's history before the fork's step,
        copied from the journal, published together (``fork``); or fail it with the reason."""
        origin = event.data.fork
        assert origin is not None
        problem = None
        original = []
        try:
            if self._journals is not None:
                original = await self._journals.read(origin.task_id, event.tenant)
        except Exception as exc:
            if not context.last_attempt:
                raise RetryableError(
                    f"cannot read the journal of {origin.task_id!r}: {exc}"
                ) from exc
            problem = f"cannot fork: the journal of {origin.task_id!r} cannot be read ({exc})"
        if problem is None:
            try:
                accepted, copies = fork(
                    event,
                    original,
                    model=self._model.model,
                    trace=self._task_trace(event, context),
                    now=self._clock(),
                )
            except ForkError as exc:
                problem = str(exc)
        if problem is not None:
            failed = TaskFailed(
                **_envelope(event, "invalid"),
                data=TaskFailedData(
                    reason="invalid_task",
                    message=clip(problem, 1000),
                    metadata=event.data.metadata,
                ),
            )
            return self._end(state, context.partition, failed)
        log.info(
            "task %s forks %s at step %d (%d events copied)",
            clip(event.subject, 80), clip(origin.task_id, 80), origin.step, len(copies),
        )  # fmt: skip
        snapshot = self._store.put(
            state.model_copy(update={"submitted_id": event.id}), context.partition
        )
        history = self._topics.planner_history
        return [Emit(history, accepted), *(Emit(history, c) for c in copies), *snapshot]

    def _task_trace(self, event: TaskSubmitted, context: RecordContext) -> TaskTrace:
        """The trace a task runs in: production's, or (a replayed or shadow run) its own,
        linked to the original's root."""
        base = task_trace(
            event.subject,
            event.id,
            context.trace_parent,
            _entered_at(event, self._clock()),
            sampled=trace.get_current_span().is_recording(),
        )
        if self._mode == "live":
            return base
        origin = self._originals(event.tenant, event.subject, -1) if self._originals else None
        return derived_trace(base, origin, self._mode, self._topics.prefix)

    def _decided(
        self, state: TaskState, event: ApprovalDecided, context: RecordContext
    ) -> Sequence[Emit]:
        """Record a person's decision on a waiting approval, and act on it at once.

        A decision of another tenant, or for an approval that is not waiting (decided already,
        expired, unknown), is refused: the first decision stands.
        """
        holder = owner(state)
        if holder is None or state.ended:
            return []
        if holder != event.tenant:
            self._refuse(event, context, "foreign_tenant")
            return []
        decision = event.data
        hold = next(
            (h for h in state.pending_approvals if h.approval_id == decision.approval_id), None
        )
        if hold is None:
            self._refuse(event, context, "unexpected_approval")
            return []
        resolved = self._resolution(
            state,
            hold.approval_id or decision.approval_id,
            hold.step,
            hold.call_index,
            hold.name,
            outcome="approved" if decision.decision == "approve" else "denied",
            by=decision.by,
            reason=decision.reason,
            decided_id=event.id,
        )
        return self._resolve(state, resolved, context.partition)

    def approvals_overdue(self) -> list[tuple[TaskState, str]]:
        """Waiting approvals past their expiry (or the task's deadline): (task, approval id)."""
        now = self._clock()
        overdue = []
        for state in self._store.running():
            assert state.task is not None
            for hold in state.pending_approvals:
                expires = min(hold.expires_at or state.task.deadline_at, state.task.deadline_at)
                if now >= expires and hold.approval_id is not None:
                    overdue.append((state, hold.approval_id))
        return overdue

    def approvals_waiting(self) -> tuple[int, float]:
        """Approvals waiting now, and how long the oldest has waited in seconds (since this
        replica first saw it waiting: after a restart, since the restart)."""
        now = time.monotonic()
        waiting = {
            hold.approval_id
            for state in self._store.running()
            for hold in state.pending_approvals
            if hold.approval_id is not None
        }
        for gone in set(self._waiting_since) - waiting:
            del self._waiting_since[gone]
        oldest = min((self._waiting_since.setdefault(a, now) for a in waiting), default=now)
        return len(waiting), now - oldest

    async def approval_expired(self, task_id: str, tenant: str, approval_id: str) -> Sequence[Emit]:
        """Deny an approval nobody decided before its expiry (the model reads why)."""
        state = self._store.get(task_id, tenant)
        hold = next((h for h in state.pending_approvals if h.approval_id == approval_id), None)
        if hold is None:
            return []  # decided meanwhile
        resolved = self._resolution(
            state,
            approval_id,
            hold.step,
            hold.call_index,
            hold.name,
            outcome="expired",
            by="stepbus",
            reason="not decided before its expiry",
        )
        return self._resolve(state, resolved, None)

    def _resolution(
        self,
        state: TaskState,
        approval_id: str,
        step: int,
        call_index: int,
        tool: str,
        **outcome: str,
    ) -> ApprovalResolved:
        return ApprovalResolved(
            id=derive_id(approval_id, "resolved"),
            source=_SOURCE,
            subject=state.task_id,
            tenant=state.tenant,
            data=ApprovalResolvedData(
                approval_id=approval_id,
                step=step,
                call_index=call_index,
                tool=tool,
                **outcome,  # type: ignore[arg-type]
            ),
        )

    def _resolve(
        self, state: TaskState, resolved: ApprovalResolved, partition: int | None
    ) -> list[Emit]:
        """Fold an ended approval and make its move: the call runs, or the model reads the
        denial. The record goes to the journal and the audit trail first (stage 0)."""
        state, _ = fold(state, resolved)
        outputs = [
            Emit(self._topics.planner_history, resolved, stage=_RECORD),
            Emit(self._topics.audit, resolved, stage=_RECORD),
            Emit(self._topics.results, resolved, stage=_RECORD),
            *(Emit(self._topics.results, p, stage=_RECORD) for p in _progress(resolved)),
        ]
        move = next_move(state, resolved, self._clock())
        if isinstance(move, Dispatch):
            outputs.extend(self._dispatch(state, resolved, move))
        elif isinstance(move, Finish | Fail):
            return [*outputs, *self._end(state, partition, self._terminal(state, resolved, move))]
        return [*outputs, *self._store.put(state, partition)]

    def _resolve_critic(self, asked: CriticPolicy | None) -> CriticPolicy | None:
        """The critic policy a task runs with: None when the deployment or the task turns the
        critic off; the task's own threshold and revisions when it gives them."""
        if not self._critic or (asked is not None and not asked.enabled):
            return None
        if asked is None:
            return self._critic_policy
        given = asked.model_fields_set & {"threshold", "max_revisions"}
        return self._critic_policy.model_copy(update={k: getattr(asked, k) for k in given})

    def on_task_arrival(self, event: TaskInput) -> None:
        """A cancellation interrupts the task's running LLM call at once (not after it), if it
        comes from the task's own tenant; a call that a record queued before it has yet to
        start is not started (the record would hold the cancellation behind a whole call)."""
        if isinstance(event, TaskCancelRequested):
            state = self._store.get(event.subject, event.tenant)
            if owner(state) != event.tenant or state.ended:
                return
            self._cancelling.add(event.subject)
            call = self._llm_calls.get(event.subject)
            if call is not None:
                call.cancel()

    async def _check_event_id(
        self, event: TaskSubmitted | TaskCancelRequested | ApprovalDecided
    ) -> None:
        if self._event_ids is None:
            return
        content = event.model_dump_json(include={"type", "subject", "tenant", "data"})
        fingerprint = hashlib.blake2b(content.encode(), digest_size=16).hexdigest()
        try:
            seen = await self._event_ids.claim(event.source, event.id, fingerprint)
        except EventIdsUnavailable as exc:  # a guard, not state: go on without it
            log.warning("event id %s not checked: %s", clip(event.id, 80), exc)
            DROPPED_RECORDS.labels("planner", self._topics.tasks, "id_check_skipped").inc()
            return
        if seen is not None:
            raise PermanentError(
                f"event id {clip(event.id, 80)!r} from source {clip(event.source, 80)!r} was "
                "already used for a different event; give every event its own id"
            )

    def _refuse(self, event: CloudEvent, context: RecordContext, reason: str) -> None:
        """Log and count an event the planner will not act on."""
        log.warning(
            "%s %s for task %s (tenant %s) refused: %s",
            context.topic, event.type, clip(event.subject, 80), clip(event.tenant, 40), reason,
        )  # fmt: skip
        DROPPED_RECORDS.labels("planner", context.topic, reason).inc()

    # -- planner.history ------------------------------------------------------------------

    async def on_history(self, event: HistoryEventT, context: RecordContext) -> Sequence[Emit]:
        """Fold a journal event into the task's state and make the next move.

        Only what the planner can check is folded (``trust.refusal``): anything else is
        dropped without a snapshot or progress, logged and counted. A new decision is folded
        at once and its move made in the same pass: the decision is published first (stage 0)
        and its tool calls or terminal event only once it is acknowledged (stage 1), so a tool
        never runs for a decision that is not on the journal, and the decision's own record,
        read back later, is a duplicate (ADR-1).
        """
        state = self._store.get(event.subject, event.tenant)
        if state.ended:
            return []  # a late or duplicate event of an ended task
        problem = refusal(state, event, self._clock())
        if problem is not None:
            self._refuse(event, context, problem)
            return []
        state, changed = fold(state, event)
        if not changed:  # duplicate (e.g. a decision this planner folded when it made it)
            traced = state.task is not None and state.task.trace is not None
            if traced and self._store.redelivered(context.partition, context.offset):
                with self._step_span(state, event, context) as span:
                    span.set_attribute("stepbus.replay.outcome", "already_recorded")
            return []
        if isinstance(event, TaskAccepted):
            TASKS_ACCEPTED.labels(self._mode).inc()
        if state.task is None or state.task.trace is None:
            return await self._advance(state, event, context)
        with self._step_span(state, event, context):
            return _traced(await self._advance(state, event, context))

    @contextlib.contextmanager
    def _step_span(
        self, state: TaskState, event: HistoryEventT, context: RecordContext
    ) -> Iterator[Span]:
        """The span of one move of a task, a child of the task's root span.

        Its id derives from the event it handles, so a redelivery of that event after a crash
        (the record was in the journal's tail when this replica took the partition over) gets
        a span of its own that links to the original and is marked ``stepbus.replay``. So does
        a decision read back from the journal that this replica did not make: its effects are
        redone here, and its record's trace context is the span that made it.
        """
        assert state.task is not None and state.task.trace is not None
        root = state.task.trace
        trace_id = int(root.trace_id, 16)
        original = SpanContext(
            trace_id,
            derived_span_id(state.task_id, event.id, "step"),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED if root.sampled else TraceFlags.DEFAULT),
        )
        links = []
        redone = self._store.redelivered(context.partition, context.offset)
        copied = event.source == FORK_SOURCE  # a fork's copy of its original's history
        if isinstance(event, LlmDecided) and not copied:
            redone = True  # folded here for the first time: another replica made it
            if context.trace_parent is not None:
                original = context.trace_parent
        elif context.trace_parent is not None:
            links.append(Link(context.trace_parent, {"stepbus.link": "cause"}))
        attributes: dict[str, str | int | bool] = {
            TASK_ID: state.task_id,
            TENANT: state.tenant,
            STEP: max(state.step, 0),
            # It is the record's processing span too (the journal's route records no other).
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": context.topic,
            "messaging.destination.partition.id": str(context.partition),
            "messaging.kafka.offset": context.offset,
            "messaging.message.id": event.id,
            "cloudevents.event_type": event.type,
        }
        if copied:
            attributes["stepbus.fork.copied"] = True
        if self._mode != "live":
            attributes[MODE] = self._mode
        ids: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if redone:
            attributes[REPLAY] = True
            links.append(Link(original, {"stepbus.link": "original"}))
            REPLAYED_STEPS.labels("planner", self._mode).inc()
        else:
            ids = fixed_ids(trace_id, original.span_id)
        with ids:
            span = _tracer.start_span(
                f"step {max(state.step, 0)}",
                context=task_context(root),
                kind=trace.SpanKind.CONSUMER,
                links=links,
                attributes=attributes,
            )
        note_own_span(span.get_span_context().span_id)  # its outputs, read back, are ours
        with trace.use_span(span, end_on_exit=True), log_context(step=max(state.step, 0)):
            yield span

    async def _advance(
        self, state: TaskState, event: HistoryEventT, context: RecordContext
    ) -> list[Emit]:
        """Make the next move of a task whose state just folded ``event``."""
        outputs = [Emit(self._topics.results, p) for p in _progress(event)]
        cause: CloudEvent = event
        move = next_move(state, event, self._clock())
        span = trace.get_current_span()
        if isinstance(move, AskModel):
            span.update_name(f"step {move.step}")
            span.set_attribute(STEP, move.step)
            decided = await self._ask_model(state, event, move.step, context)
            if decided == "interrupted":
                return []  # by a cancellation, which is handled next
            if isinstance(decided, TaskFailed):
                return [*outputs, *self._end(state, context.partition, decided)]
            if decided == "recorded":  # on the journal already: moved on when it arrives
                span.set_attribute(REPLAY, True)
                REPLAYED_STEPS.labels("planner", self._mode).inc()
                return [*outputs, *self._store.put(state, context.partition)]
            state, _ = fold(state, decided)
            if self._originals is not None:
                original = self._originals(state.tenant, state.task_id, move.step)
                if original is not None:  # the original task's span of the same step
                    span.add_link(original, {"stepbus.link": "original"})
            outputs.append(
                Emit(
                    self._topics.planner_history,
                    decided,
                    stage=_RECORD,
                    on_acked=self._counter(decided, event),
                )
            )
            outputs.extend(Emit(self._topics.results, p, stage=_EFFECT) for p in _progress(decided))
            cause, move = decided, next_move(state, decided, self._clock())
        elif isinstance(move, Recall):
            span.update_name("recall")
        elif isinstance(move, Judge):
            span.update_name(f"judge step {move.step}")
        elif isinstance(move, Dispatch):
            span.update_name(f"dispatch step {move.step}")
        elif isinstance(move, Finish | Fail):
            span.update_name("finish")
        if isinstance(move, Recall):
            outputs.append(self._recall(state, cause))
        elif isinstance(move, Judge):
            outputs.extend(self._judge(state, cause, move.step))
        elif isinstance(move, Dispatch):
            outputs.extend(self._dispatch(state, cause, move))
        elif isinstance(move, Finish | Fail):
            terminal = self._terminal(state, cause, move)
            return [*outputs, *self._end(state, context.partition, terminal)]
        return [*outputs, *self._store.put(state, context.partition)]

    def _counter(self, decided: LlmDecided, cause: CloudEvent) -> Callable[[], None]:
        """What counts a decision once it is recorded: its tokens and its step's duration
        (from the event that called for it)."""
        usage, model, mode = decided.data.usage, self._model.model, self._mode
        since = cause.time

        def counted() -> None:
            count_tokens("planner", model, usage.prompt_tokens, usage.completion_tokens, mode)
            STEP_SECONDS.labels(mode).observe(max(0.0, (self._clock() - since).total_seconds()))

        return counted

    def _recall(self, state: TaskState, cause: CloudEvent) -> Emit:
        assert state.task is not None
        self._recalls[state.task_id] = time.monotonic()
        request = MemoryRecallRequested(
            **_envelope(cause, "recall"),
            data=MemoryRecallRequestedData(
                query=state.task.input,
                session_id=state.task.session_id,
                user_id=state.task.user_id,
                limit=self._recall_limit,
                answer_by=self._clock() + timedelta(seconds=self._recall_timeout),
            ),
        )
        return Emit(self._topics.memory_requests, request, stage=_EFFECT)

    def recalls_overdue(self) -> list[TaskState]:
        """Tasks that asked for their recall more than the recall timeout ago and have none.

        A task found waiting that this replica did not ask for (restored after a restart) is
        given the whole timeout from now.
        """
        now = time.monotonic()
        overdue = []
        for state in self._store.running():
            if not state.awaiting_recall or state.copying:  # a fork's recall is a copy
                self._recalls.pop(state.task_id, None)
                continue
            asked = self._recalls.setdefault(state.task_id, now)
            if now - asked >= self._recall_timeout:
                overdue.append(state)
        return overdue

    async def recall_timed_out(self, task_id: str, tenant: str) -> Sequence[Emit]:
        """Record that no recall came in time: the task goes on without memory."""
        state = self._store.get(task_id, tenant)
        if state.task is None or not state.awaiting_recall:
            return []
        self._recalls.pop(task_id, None)
        timed_out = MemoryRecalled(
            id=derive_id(state.task.submitted_id, "recall", "timed_out"),
            source=_SOURCE,
            subject=task_id,
            tenant=state.tenant,
            data=MemoryRecalledData(
                status="timed_out",
                message=f"no recall within {self._recall_timeout:g}s: going on without memory",
                recalled_at=self._clock(),
            ),
        )
        return [Emit(self._topics.planner_history, timed_out)]

    async def expire(self, task_id: str, tenant: str) -> Sequence[Emit]:
        """End a task whose deadline passed while it waited (e.g. on a tool that never answers)."""
        state = self._store.get(task_id, tenant)
        if state.task is None or state.ended or self._clock() < state.task.deadline_at:
            return []
        cause = TaskAccepted(
            id=state.task.submitted_id, subject=task_id, tenant=tenant, data=state.task
        )
        move = out_of_budget(state, self._clock())
        assert move is not None
        return self._end(state, None, self._terminal(state, cause, move))

    async def _ask_model(
        self, state: TaskState, cause: CloudEvent, step: int, context: RecordContext
    ) -> LlmDecided | TaskFailed | Literal["interrupted", "recorded"]:
        """The model's decision for ``step``, or why there is none to publish.

        ``"recorded"``: the decision is already on the journal further down (found when this
        replica took over the partition after a crash) and arrives there as an event; the
        model is not asked again. ``"interrupted"``: a cancellation stopped the call.
        """
        assert state.task is not None
        if self._store.recorded_decision(state.task_id, step):
            return "recorded"
        if state.task_id in self._cancelling:
            return "interrupted"  # its cancellation is queued behind this record
        started = time.perf_counter()
        remaining = (state.task.deadline_at - self._clock()).total_seconds()
        call = asyncio.ensure_future(
            self._model.complete(
                conversation(state, self._system_prompt),
                self._catalog.specs(state.task.tools),
                task_id=state.task_id,
                step=step,
            )
        )
        self._llm_calls[state.task_id] = call
        try:
            turn = await asyncio.wait_for(call, timeout=max(remaining, 0.001))
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this handler itself is being cancelled (shutdown, rebalance)
            return "interrupted"
        except TimeoutError:
            message = f"deadline passed at {state.task.deadline_at.isoformat()} during step {step}"
            return self._terminal(state, cause, Fail("deadline", message))
        except ModelError as exc:
            if exc.retryable and not context.last_attempt:
                raise RetryableError(str(exc)) from exc
            return self._terminal(state, cause, Fail("llm_error", f"the model failed: {exc}"))
        finally:
            if self._llm_calls.get(state.task_id) is call:
                del self._llm_calls[state.task_id]
        decision = decision_from_turn(
            step, turn, (time.perf_counter() - started) * 1000, self._catalog.reviewed()
        )
        return LlmDecided(**_envelope(cause, "decided", step), data=decision)

    def _dispatch(self, state: TaskState, cause: CloudEvent, move: Dispatch) -> list[Emit]:
        """Send the calls of a step to the tool-executor, unless one must wait: for the critic's
        review (asked here), or for a person's approval (announced here)."""
        assert state.task is not None
        outputs = []
        for call in move.calls:
            key = idempotency_key(state.task_id, move.step, call.call_index)
            ref = {"step": move.step, "call_index": call.call_index, "name": call.name}
            if call.arguments_error is not None:  # answered here, so the model can correct it
                failed = ToolCallFailed(
                    **_envelope(cause, "call", call.call_index),
                    data=ToolCallFailedData(
                        **ref,
                        idempotency_key=key,
                        error=call.arguments_error,
                        error_type="invalid_arguments",
                    ),
                )
                outputs.append(Emit(self._topics.planner_history, failed, stage=_EFFECT))
                continue
            clearance = None
            hold = state.hold(move.step, call.call_index)
            if hold is not None and hold.gate == "approval":
                resolved = state.approval(move.step, call.call_index)
                if resolved is None:  # it waits: announced once, when the hold arrives
                    if isinstance(cause, ToolCallHeld):
                        outputs.extend(self._ask_approval(state, cause, call))
                    continue
                if resolved.outcome != "approved":
                    outputs.append(self._denied_approval(cause, ref, key, resolved))
                    continue
                clearance = Clearance(
                    gate="approval",
                    approval_id=resolved.approval_id,
                    by=resolved.by,
                    reason=resolved.reason,
                )
            elif state.needs_review(move.step, call.call_index):
                verdict = state.critique("tool_call", move.step, call.call_index)
                if verdict is None:  # the critic approves or rejects it first
                    outputs.extend(self._review(state, cause, move.step, call))
                    continue
                if not (isinstance(verdict, CritiqueCompletedData) and verdict.approved):
                    outputs.append(self._rejected(cause, ref, key, verdict))
                    continue
                clearance = Clearance(gate="review", by="critic", reason=verdict.feedback[:2_000])
            request = ToolCallRequested(
                **_envelope(cause, "call", call.call_index),
                data=ToolCallRequestedData(
                    **ref,
                    idempotency_key=key,
                    arguments=call.arguments,
                    timeout_seconds=self._tool_timeout,
                    session_id=state.task.session_id,
                    user_id=state.task.user_id,
                    roles=state.task.roles,
                    offered=state.task.tools,
                    metadata=state.task.metadata,
                    flagged=state.flagged,
                    clearance=clearance,
                ),
            )
            outputs.append(Emit(self._topics.tool_calls, request, stage=_EFFECT))
        return outputs

    def _ask_approval(
        self, state: TaskState, cause: ToolCallHeld, call: PlannedToolCall
    ) -> list[Emit]:
        """Announce on ``results`` that a call waits for a person's approval."""
        assert state.task is not None
        hold = cause.data
        expires = min(hold.expires_at or state.task.deadline_at, state.task.deadline_at)
        requested = ApprovalRequested(
            **_envelope(cause, "approval"),
            data=ApprovalRequestedData(
                step=hold.step,
                call_index=hold.call_index,
                tool=call.name,
                approval_id=hold.approval_id or derive_id(hold.idempotency_key, "approval"),
                arguments=call.arguments,
                approvers=hold.approvers,
                rule=hold.rule,
                reason=hold.reason,
                expires_at=expires,
            ),
        )
        return [Emit(self._topics.results, requested, stage=_EFFECT)]

    def _denied_approval(
        self, cause: CloudEvent, ref: dict[str, object], key: str, resolved: ApprovalResolvedData
    ) -> Emit:
        """The answer to a held call whose approval was denied or expired: the model reads why."""
        if resolved.outcome == "expired":
            error = "not run: its approval expired before anyone decided; try another way"
        else:
            error = f"denied by {resolved.by}: {resolved.reason or 'no reason given'}"
        failed = ToolCallFailed(
            **_envelope(cause, "call", ref["call_index"]),
            data=ToolCallFailedData(
                **ref,  # type: ignore[arg-type]
                idempotency_key=key,
                error=clip(error, 2_000),
                error_type="denied",
            ),
        )
        return Emit(self._topics.planner_history, failed, stage=_EFFECT)

    def _judge(self, state: TaskState, cause: CloudEvent, step: int) -> list[Emit]:
        """Ask the critic to judge the draft of ``step``."""
        assert state.task is not None
        draft = state.decisions[step].content or ""
        request = CritiqueRequested(
            **_envelope(cause, "critique"),
            data=CritiqueRequestedData(
                kind="answer",
                step=step,
                round=state.revisions,
                input=state.task.input,
                draft=draft[:MAX_DRAFT_LENGTH],
                observations=_grounds(state),
                answer_by=self._asked(state, "answer", step),
            ),
        )
        progress = TaskProgressData(
            step=step,
            stage="critique",
            message=f"the critic judges the answer (round {state.revisions + 1})",
        )
        return [
            Emit(self._topics.critic_requests, request, stage=_EFFECT),
            Emit(self._topics.results, _progress_event(cause, "judging", progress), stage=_EFFECT),
        ]

    def _review(
        self, state: TaskState, cause: CloudEvent, step: int, call: PlannedToolCall
    ) -> list[Emit]:
        """Ask the critic to approve or reject a call to a reviewed tool before it runs."""
        assert state.task is not None
        request = CritiqueRequested(
            **_envelope(cause, "review", call.call_index),
            data=CritiqueRequestedData(
                kind="tool_call",
                step=step,
                call_index=call.call_index,
                input=state.task.input,
                observations=_grounds(state),
                tool=call.name,
                tool_description=(self._catalog.description(call.name) or "")[:4_000],
                arguments=call.arguments,
                answer_by=self._asked(state, "tool_call", step, call.call_index),
            ),
        )
        progress = TaskProgressData(
            step=step,
            stage="critique",
            message=f"the critic reviews {call.name} before it runs",
            tool=call.name,
        )
        return [
            Emit(self._topics.critic_requests, request, stage=_EFFECT),
            Emit(
                self._topics.results,
                _progress_event(cause, "reviewing", progress, call.call_index),
                stage=_EFFECT,
            ),
        ]

    def _rejected(
        self,
        cause: CloudEvent,
        ref: dict[str, object],
        key: str,
        verdict: CritiqueCompletedData | CritiqueFailedData,
    ) -> Emit:
        """The answer to a reviewed call that will not run: the model reads why."""
        if isinstance(verdict, CritiqueCompletedData):
            error = f"rejected by review: {verdict.feedback or 'no reason given'}"
            error_type = "denied"
        else:
            error = f"not run: its review failed ({verdict.reason}); try another way"
            error_type = "unavailable"
        failed = ToolCallFailed(
            **_envelope(cause, "call", ref["call_index"]),
            data=ToolCallFailedData(
                **ref,  # type: ignore[arg-type]
                idempotency_key=key,
                error=clip(error, 2_000),
                error_type=error_type,
            ),
        )
        return Emit(self._topics.planner_history, failed, stage=_EFFECT)

    def _asked(
        self, state: TaskState, kind: CritiqueKind, step: int, call_index: int | None = None
    ) -> datetime:
        """Note when a critique was asked; the instant after which nobody waits for it."""
        key = critique_key(kind, step, call_index)
        self._critiques[(state.task_id, key)] = time.monotonic()
        return self._clock() + timedelta(seconds=self._critique_timeout)

    def critiques_overdue(self) -> list[tuple[TaskState, CritiqueKind, int, int | None]]:
        """Critiques asked more than the critique timeout ago with no verdict yet.

        One found waiting that this replica did not ask for (restored after a restart) is
        given the whole timeout from now.
        """
        now = time.monotonic()
        overdue = []
        waiting: set[tuple[str, str]] = set()
        for state in self._store.running():
            for kind, step, call_index in state.pending_critiques:
                key = (state.task_id, critique_key(kind, step, call_index))
                waiting.add(key)
                if now - self._critiques.setdefault(key, now) >= self._critique_timeout:
                    overdue.append((state, kind, step, call_index))
        for key in set(self._critiques) - waiting:
            del self._critiques[key]
        return overdue

    async def critique_timed_out(
        self, task_id: str, tenant: str, kind: CritiqueKind, step: int, call_index: int | None
    ) -> Sequence[Emit]:
        """Record that no verdict came in time: a draft is the answer unjudged, a reviewed
        call does not run."""
        state = self._store.get(task_id, tenant)
        if state.task is None or (kind, step, call_index) not in state.pending_critiques:
            return []
        self._critiques.pop((task_id, critique_key(kind, step, call_index)), None)
        timed_out = CritiqueFailed(
            id=derive_id(state.task.submitted_id, "critique", kind, step, call_index, "timed_out"),
            source=_SOURCE,
            subject=task_id,
            tenant=state.tenant,
            data=CritiqueFailedData(
                kind=kind,
                step=step,
                call_index=call_index,
                attempts=0,
                reason="timed_out",
                message=f"no verdict within {self._critique_timeout:g}s",
            ),
        )
        return [Emit(self._topics.planner_history, timed_out)]

    def _terminal(
        self, state: TaskState, cause: CloudEvent, move: Finish | Fail
    ) -> TaskCompleted | TaskFailed:
        metadata = state.task.metadata if state.task else {}
        if isinstance(move, Finish):
            task = state.task
            return TaskCompleted(
                **_envelope(cause, "terminal"),
                data=TaskCompletedData(
                    output=move.output,
                    steps=len(state.decisions),
                    usage=state.usage,
                    metadata=metadata,
                    input=task.input if task else None,
                    session_id=task.session_id if task else None,
                    user_id=task.user_id if task else None,
                    observations=observations(state),
                    critic=move.critic,
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

    def _end(
        self,
        state: TaskState,
        partition: int | None,
        terminal: TaskCompleted | TaskFailed | TaskCancelled,
    ) -> list[Emit]:
        """Publish the terminal event to the journal and the results, and end the task here.

        The state records the end at once, so nothing handled after this (a cancellation, a
        late tool outcome) can produce a second terminal event.
        """
        self._cancelling.discard(state.task_id)
        ended, _ = fold(state, terminal)
        snapshot = self._store.put(ended, partition)
        return [
            Emit(self._topics.planner_history, terminal, stage=_EFFECT),
            Emit(
                self._topics.results,
                terminal,
                stage=_EFFECT,
                on_acked=self._ended(state, terminal),
            ),
            *snapshot,
        ]

    def _ended(
        self, state: TaskState, terminal: TaskCompleted | TaskFailed | TaskCancelled
    ) -> Callable[[], None]:
        """What records a task's end once its terminal event is: the metrics, and the task's
        root span (``invoke_agent stepbus``) over its whole life."""
        task = state.task
        if isinstance(terminal, TaskCompleted):
            outcome, reason = "completed", ""
        elif isinstance(terminal, TaskFailed):
            outcome, reason = "failed", terminal.data.reason
        else:
            outcome, reason = "cancelled", ""
        usage, steps = state.usage, len(state.decisions)

        def recorded() -> None:
            TASKS_FINISHED.labels(outcome, reason, self._mode).inc()
            if task is None or task.trace is None:
                return
            ended_at = self._clock()
            TASK_SECONDS.labels(outcome, self._mode).observe(
                max(0.0, (ended_at - task.trace.started_at).total_seconds())
            )
            record_root_span(
                _tracer,
                task.trace,
                {
                    "gen_ai.operation.name": "invoke_agent",
                    "gen_ai.agent.name": "stepbus",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": task.model,
                    "gen_ai.usage.input_tokens": usage.prompt_tokens,
                    "gen_ai.usage.output_tokens": usage.completion_tokens,
                    TASK_ID: state.task_id,
                    TENANT: state.tenant,
                    "stepbus.task.outcome": outcome,
                    "stepbus.task.steps": steps,
                    **({"stepbus.task.reason": reason} if reason else {}),
                    **({MODE: self._mode} if self._mode != "live" else {}),
                },
                ended_at_ns=unix_nanos(ended_at),
                error=reason or None,
                links=[link] if (link := origin_link(task.trace)) is not None else [],
            )

        return recorded


def _envelope(cause: CloudEvent, *parts: object) -> dict[str, object]:
    """Attributes of an event caused by ``cause``: same task and tenant, id derived from it."""
    return {
        "id": derive_id(cause.id, *parts),
        "source": _SOURCE,
        "subject": cause.subject,
        "tenant": cause.tenant,
    }


def _entered_at(event: TaskSubmitted, now: datetime) -> datetime:
    """When a task entered stepbus, for its root span: the submission's time when it is
    plausible (the last minute), else now (a producer's clock or a replayed submission must
    not stretch the span over days)."""
    return event.time if now - timedelta(minutes=1) <= event.time <= now else now


def _traced(outputs: list[Emit]) -> list[Emit]:
    """``outputs`` carrying the current span's context, so what they cause is its child."""
    headers = trace_headers()
    if not headers:
        return outputs
    return [
        emit if any(n == "traceparent" for n, _ in emit.headers) else replace(emit, headers=headers)
        for emit in outputs
    ]


def _progress(event: HistoryEventT) -> list[TaskProgress]:
    """What a journal event shows on the public progress stream."""
    items: list[TaskProgressData] = []
    if isinstance(event, TaskAccepted):
        trace_id = event.data.trace.trace_id if event.data.trace else None
        items.append(
            TaskProgressData(step=0, stage="accepted", message="task accepted", trace_id=trace_id)
        )
    elif isinstance(event, MemoryRecalled):
        recall = event.data
        message = (
            f"recalled {len(recall.turns)} turns and {len(recall.hits)} memories"
            if recall.status == "recalled"
            else f"no memory ({recall.status}): {recall.message}"
        )
        items.append(TaskProgressData(step=0, stage="memory", message=clip(message, 500)))
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
    elif isinstance(event, CritiqueCompleted | CritiqueFailed):
        items.append(_critique_progress(event))
    elif isinstance(event, ToolCallCompleted):
        items.append(
            TaskProgressData(
                step=event.data.step,
                stage="observation",
                message=f"{event.data.name} → {event.data.output}",
                tool=event.data.name,
            )
        )
    elif isinstance(event, ToolCallHeld):
        hold = event.data
        waits = "approval" if hold.gate == "approval" else "the critic's review"
        message = f"{hold.name} waits for {waits} (policy rule {hold.rule!r})"
        if hold.reason:
            message += f": {hold.reason}"
        stage: Literal["approval", "critique"] = "critique"
        if hold.gate == "approval":
            stage = "approval"
        items.append(
            TaskProgressData(
                step=hold.step, stage=stage, message=clip(message, 1_000), tool=hold.name
            )
        )
    elif isinstance(event, ApprovalResolved):
        ended = event.data
        message = f"{ended.tool} {ended.outcome}" + (f" by {ended.by}" if ended.by else "")
        if ended.reason:
            message += f": {ended.reason}"
        items.append(
            TaskProgressData(
                step=ended.step, stage="approval", message=clip(message, 1_000), tool=ended.tool
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


def _critique_progress(event: CritiqueCompleted | CritiqueFailed) -> TaskProgressData:
    data = event.data
    if isinstance(data, CritiqueFailedData):
        what = "draft" if data.kind == "answer" else "review"
        message = f"no verdict on the {what} ({data.reason}): {data.message}"
    elif data.kind == "answer":
        message = f"the critic scored the answer {data.score or 0.0:.2f}"
        if data.feedback:
            message += f": {data.feedback}"
    else:
        message = ("approved" if data.approved else "rejected") + " by review"
        if data.feedback:
            message += f": {data.feedback}"
    return TaskProgressData(step=data.step, stage="critique", message=clip(message, 1_000))


def _progress_event(
    cause: CloudEvent, what: str, data: TaskProgressData, *parts: object
) -> TaskProgress:
    return TaskProgress(**_envelope(cause, "progress", what, *parts), data=data)


def _grounds(state: TaskState) -> list[str]:
    """What a draft may rest on: the tool results the model saw, then recalled memory."""
    grounds = observations(state)
    recall = state.recall
    if recall is not None and recall.status == "recalled":
        grounds += [f"memory: {turn.role}: {turn.content}" for turn in recall.turns]
        grounds += [f"memory: {hit.text}" for hit in recall.hits]
    return [g[:MAX_OBSERVATION_LENGTH] for g in grounds[-MAX_OBSERVATIONS:]]
