"""Trace context in Kafka record headers, and the one trace of a task.

Propagation: W3C ``traceparent``/``tracestate`` in record headers, extracted per record and
injected per output (never per batch).

The task's trace (``TaskTrace`` on ``task.accepted``) is decided once, where the task enters:

- the gateway makes the root's ids and says so in ``tracestate`` (``stepbus=r<root>``, with
  ``p<parent>`` when the HTTP request continued an upstream trace);
- a submission published straight to Kafka with an upstream ``traceparent`` continues that
  trace: the root is a child of the upstream span;
- a submission without one starts a trace whose ids derive from the submission's id, so a
  redelivered submission yields the same acceptance.

Every span a service makes for the task is under the root (``task_context``); the root itself,
``invoke_agent stepbus``, is recorded by the planner when the task ends, with those ids and the
task's whole duration (``record_root_span``): a span cannot stay open across processes, and
the task outlives any one of them.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import hashlib
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue
from stepbus_contracts import TaskTrace

__all__ = [
    "MODE",
    "REPLAY",
    "STEP",
    "TASK_ID",
    "TENANT",
    "Headers",
    "derived_span_id",
    "derived_trace",
    "extract_context",
    "fixed_id_override",
    "fixed_ids",
    "header_span_context",
    "inject_context",
    "is_own_span",
    "new_root",
    "note_own_span",
    "origin_link",
    "record_root_span",
    "task_context",
    "task_trace",
    "trace_headers",
    "unix_nanos",
]

TASK_ID = "stepbus.task.id"
TENANT = "stepbus.tenant"
STEP = "stepbus.step"
REPLAY = "stepbus.replay"
"""True on a span that redoes, after a crash or a redelivery, a step recorded before."""
MODE = "stepbus.mode"
"""``replay`` or ``shadow`` on the spans of a replayed or shadow run (absent on production's)."""

Headers = list[tuple[str, bytes]]


class _HeaderGetter(Getter[Sequence[tuple[str, bytes]]]):
    def get(self, carrier: Sequence[tuple[str, bytes]], key: str) -> list[str] | None:
        # A header may have a null value (a crafted record): it carries no context.
        values = [
            value.decode(errors="replace")
            for name, value in carrier
            if name == key and isinstance(value, bytes)
        ]
        return values or None

    def keys(self, carrier: Sequence[tuple[str, bytes]]) -> list[str]:
        return [name for name, _ in carrier]


class _HeaderSetter(Setter[Headers]):
    def set(self, carrier: Headers, key: str, value: str) -> None:
        carrier[:] = [(name, v) for name, v in carrier if name != key]
        carrier.append((key, value.encode()))


_GETTER = _HeaderGetter()
_SETTER = _HeaderSetter()
# W3C trace context only: the composite global propagator (with baggage) costs twice as much
# per record and stepbus carries no baggage.
_PROPAGATOR = TraceContextTextMapPropagator()
_STATE_KEY = "stepbus"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def extract_context(headers: Iterable[tuple[str, bytes]] | None) -> otel_context.Context:
    """The trace context a record carries (an empty context when it carries none)."""
    return _PROPAGATOR.extract(list(headers or ()), getter=_GETTER)


def header_span_context(headers: Iterable[tuple[str, bytes]] | None) -> SpanContext | None:
    """The span context in a record's ``traceparent`` (None when absent or invalid)."""
    found = trace.get_current_span(extract_context(headers)).get_span_context()
    return found if found.is_valid else None


def inject_context(headers: Headers, ctx: otel_context.Context | None = None) -> Headers:
    """Add ``traceparent`` (and ``tracestate``) for ``ctx`` or the current context."""
    _PROPAGATOR.inject(headers, context=ctx, setter=_SETTER)
    return headers


_OWN: collections.OrderedDict[int, None] = collections.OrderedDict()
_OWN_LIMIT = 65_536


def note_own_span(span_id: int) -> None:
    """Remember that this process made the span ``span_id`` (whose context its outputs carry),
    so a record of its own read back (a decision on the planner's journal) is known as such."""
    _OWN[span_id] = None
    if len(_OWN) > _OWN_LIMIT:
        _OWN.popitem(last=False)


def is_own_span(span_id: int) -> bool:
    """Whether this process made the span ``span_id`` recently (``note_own_span``)."""
    return span_id in _OWN


def trace_headers() -> tuple[tuple[str, bytes], ...]:
    """Headers carrying the current span's context, for an ``Emit`` made inside it."""
    return tuple(inject_context([]))


# -- the task's trace ---------------------------------------------------------------------


def _derive(size: int, *parts: str) -> int:
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=size).digest()
    return int.from_bytes(digest, "big") or 1  # 0 is the invalid id


def derived_span_id(*parts: str) -> int:
    """A span id derived from ``parts``: the same work gets the same id in any process."""
    return _derive(8, *parts)


def new_root(upstream: SpanContext | None, *, sampled: bool = True) -> SpanContext:
    """A root span context for a task entering at the gateway: a new span id, the upstream's
    trace id when the request continued a trace, and ``tracestate`` naming the root (and its
    upstream parent) so the planner records the root with these ids. ``sampled`` decides a
    trace that starts here."""
    span_id = random.getrandbits(64) or 1
    if upstream is not None and upstream.is_valid:
        value = f"r{span_id:016x}p{upstream.span_id:016x}"
        trace_id, flags, state = upstream.trace_id, upstream.trace_flags, upstream.trace_state
    else:
        value = f"r{span_id:016x}"
        trace_id, flags, state = random.getrandbits(128) or 1, _flags(sampled), TraceState()
    state = state.delete(_STATE_KEY) if _STATE_KEY in state else state
    while len(state) >= 32:  # full (W3C's limit): drop the rightmost entry to make room
        state = state.delete(list(state.keys())[-1])
    return SpanContext(
        trace_id,
        span_id,
        is_remote=True,
        trace_flags=flags,
        trace_state=state.add(_STATE_KEY, value),
    )


def task_trace(
    task_id: str,
    submitted_id: str,
    parent: SpanContext | None,
    started_at: datetime,
    *,
    sampled: bool,
) -> TaskTrace:
    """The trace a submitted task runs in (see the module docstring for the three cases).

    Args:
        task_id: The task.
        submitted_id: Id of its ``task.submitted`` event.
        parent: The submission record's span context (``header_span_context``).
        started_at: When the task entered stepbus.
        sampled: The sampling decision for a trace the task starts itself.
    """
    if parent is not None:
        marked = parent.trace_state.get(_STATE_KEY, "")
        root, _, upstream = marked.partition("p")
        if root.startswith("r") and len(root) == 17:  # made by the gateway
            return TaskTrace(
                trace_id=f"{parent.trace_id:032x}",
                span_id=root[1:],
                parent_span_id=upstream or None,
                sampled=parent.trace_flags.sampled,
                started_at=started_at,
            )
        return TaskTrace(
            trace_id=f"{parent.trace_id:032x}",
            span_id=f"{_derive(8, task_id, submitted_id, 'root'):016x}",
            parent_span_id=f"{parent.span_id:016x}",
            sampled=parent.trace_flags.sampled,
            started_at=started_at,
        )
    return TaskTrace(
        trace_id=f"{_derive(16, task_id, submitted_id, 'trace'):032x}",
        span_id=f"{_derive(8, task_id, submitted_id, 'root'):016x}",
        sampled=sampled,
        started_at=started_at,
    )


def derived_trace(base: TaskTrace, origin: SpanContext | None, *namespace: str) -> TaskTrace:
    """The own trace of a replayed or shadow run of a task, so nothing it records lands in
    production's trace: ids derived from the original's root (``origin``, else ``base``, the
    trace the run would otherwise join) and ``namespace``, linked to that root.

    Args:
        base: The trace ``task_trace`` gives the run's submission.
        origin: The original task's root span, when known (a replay knows it from the record).
        namespace: What tells this run from others (its mode and topic prefix).
    """
    trace_id = f"{origin.trace_id:032x}" if origin is not None else base.trace_id
    span_id = f"{origin.span_id:016x}" if origin is not None else base.span_id
    return TaskTrace(
        trace_id=f"{_derive(16, trace_id, span_id, *namespace, 'trace'):032x}",
        span_id=f"{_derive(8, trace_id, span_id, *namespace, 'root'):016x}",
        sampled=base.sampled,
        started_at=base.started_at,
        origin_trace_id=trace_id,
        origin_span_id=span_id,
    )


def origin_link(task: TaskTrace) -> Link | None:
    """The link of a replayed or shadow run's span to the original task's root."""
    if task.origin_trace_id is None or task.origin_span_id is None:
        return None
    origin = SpanContext(
        int(task.origin_trace_id, 16),
        int(task.origin_span_id, 16),
        is_remote=True,
        trace_flags=_flags(task.sampled),
    )
    return Link(origin, {"stepbus.link": "original"})


def _flags(sampled: bool) -> TraceFlags:
    return TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)


def task_context(task: TaskTrace) -> otel_context.Context:
    """A context whose current span is the task's root: spans started in it are its children."""
    root = SpanContext(
        int(task.trace_id, 16),
        int(task.span_id, 16),
        is_remote=True,
        trace_flags=_flags(task.sampled),
    )
    return trace.set_span_in_context(NonRecordingSpan(root))


_FIXED: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "stepbus_fixed_ids", default=None
)


@contextlib.contextmanager
def fixed_ids(trace_id: int, span_id: int) -> Iterator[None]:
    """The next span started here gets these ids (``StepbusIdGenerator``): for a span whose
    ids were decided before it could be recorded, such as a task's root."""
    token = _FIXED.set((trace_id, span_id))
    try:
        yield
    finally:
        _FIXED.reset(token)


def fixed_id_override() -> tuple[int, int] | None:
    """The (trace id, span id) ``fixed_ids`` asks for here, if any."""
    return _FIXED.get()


def unix_nanos(moment: datetime) -> int:
    """``moment`` in nanoseconds since the epoch, exactly (no float rounding)."""
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def record_root_span(
    tracer: trace.Tracer,
    task: TaskTrace,
    attributes: Mapping[str, AttributeValue],
    *,
    ended_at_ns: int,
    error: str | None = None,
    links: Sequence[Link] = (),
) -> None:
    """Record the task's ``invoke_agent stepbus`` span with its planned ids and its whole
    duration, under the upstream span it continues (if any)."""
    if not task.sampled:
        return
    if task.parent_span_id is not None:
        parent = SpanContext(
            int(task.trace_id, 16),
            int(task.parent_span_id, 16),
            is_remote=True,
            trace_flags=_flags(True),
        )
        ctx = trace.set_span_in_context(NonRecordingSpan(parent))
    else:
        ctx = otel_context.Context()
    started = unix_nanos(task.started_at)
    with fixed_ids(int(task.trace_id, 16), int(task.span_id, 16)):
        span: Span = tracer.start_span(
            "invoke_agent stepbus",
            context=ctx,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            links=links,
            start_time=min(started, ended_at_ns),
        )
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=ended_at_ns)
