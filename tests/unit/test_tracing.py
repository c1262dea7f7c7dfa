"""The task's one trace, trace context in Kafka headers, span export, telemetry set-up and the
GenAI ``chat`` spans.

Every span here is recorded by a local SDK ``TracerProvider`` (the global one is set once per
process, by whichever test or service gets there first) and read back from an in-memory
exporter or from the fake exporter below.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
)
from prometheus_client import REGISTRY
from stepbus_contracts import TaskTrace
from stepbus_runtime import genai
from stepbus_runtime.export import BoundedExportProcessor
from stepbus_runtime.logfmt import log_context
from stepbus_runtime.telemetry import (
    StepbusIdGenerator,
    TaskAttributes,
    _resource,
    span_exporter,
)
from stepbus_runtime.tracing import (
    STEP,
    TASK_ID,
    TENANT,
    extract_context,
    fixed_ids,
    header_span_context,
    inject_context,
    new_root,
    record_root_span,
    task_context,
    task_trace,
    trace_headers,
)

STARTED = datetime(2026, 5, 1, 12, 0, 0, 123457, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
UPSTREAM_TRACE = 0x0AF7651916CD43DD8448EB211C80319C
UPSTREAM_SPAN = 0xB7AD6B7169203331


def ns(instant: datetime) -> int:
    """Exact nanoseconds since the epoch (integer arithmetic, no float rounding)."""
    return (instant - EPOCH) // timedelta(microseconds=1) * 1000


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def upstream(*, sampled: bool = True, state: TraceState | None = None) -> SpanContext:
    return SpanContext(
        UPSTREAM_TRACE,
        UPSTREAM_SPAN,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT),
        trace_state=state or TraceState(),
    )


class Recorder:
    """A local provider (planned ids honoured) whose finished spans are kept in memory."""

    def __init__(self, *processors: Any) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(id_generator=StepbusIdGenerator())
        for processor in processors:
            self.provider.add_span_processor(processor)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("stepbus.test")

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def one(self) -> ReadableSpan:
        (span,) = self.spans()
        return span


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    yield rec
    rec.provider.shutdown()


# -- task_trace -----------------------------------------------------------------------------


def record_headers(tracer: trace.Tracer, root: SpanContext) -> list[tuple[str, bytes]]:
    """The headers of the ``task.submitted`` record the gateway publishes under ``root``: its
    ``send`` span is a child of the root, and carries the root's ``tracestate``."""
    headers: list[tuple[str, bytes]] = []
    parent = trace.set_span_in_context(NonRecordingSpan(root))
    with tracer.start_as_current_span("send tasks", context=parent, kind=SpanKind.PRODUCER):
        inject_context(headers)
    return headers


def test_a_gateway_root_without_upstream_is_the_tasks_root(recorder: Recorder) -> None:
    root = new_root(None, sampled=True)
    parent = header_span_context(record_headers(recorder.tracer, root))
    assert parent is not None and parent.span_id != root.span_id  # the send span

    task = task_trace("t1", "sub-1", parent, STARTED, sampled=False)

    assert task.trace_id == f"{root.trace_id:032x}"
    assert task.span_id == f"{root.span_id:016x}"
    assert task.parent_span_id is None
    assert task.sampled is True  # the record's flag, not the argument
    assert task.started_at == STARTED


@pytest.mark.parametrize("sampled", [True, False])
def test_a_gateway_root_continuing_an_upstream_keeps_its_trace_and_parent(
    recorder: Recorder, sampled: bool
) -> None:
    root = new_root(upstream(sampled=sampled), sampled=not sampled)
    send = SpanContext(
        root.trace_id,
        0x1111111111111111,
        is_remote=True,
        trace_flags=root.trace_flags,
        trace_state=root.trace_state,
    )
    headers = inject_context([], trace.set_span_in_context(NonRecordingSpan(send)))

    task = task_trace("t1", "sub-1", header_span_context(headers), STARTED, sampled=not sampled)

    assert task.trace_id == f"{UPSTREAM_TRACE:032x}"
    assert task.span_id == f"{root.span_id:016x}"
    assert task.parent_span_id == f"{UPSTREAM_SPAN:016x}"
    assert task.sampled is sampled


@pytest.mark.parametrize("sampled", [True, False])
def test_an_upstream_parent_without_a_stepbus_root_gets_a_derived_root_under_it(
    sampled: bool,
) -> None:
    parent = upstream(sampled=sampled, state=TraceState([("vendor", "x")]))

    task = task_trace("t1", "sub-1", parent, STARTED, sampled=not sampled)
    again = task_trace("t1", "sub-1", parent, STARTED, sampled=not sampled)
    other = task_trace("t1", "sub-2", parent, STARTED, sampled=not sampled)

    assert task.trace_id == f"{UPSTREAM_TRACE:032x}"
    assert task.parent_span_id == f"{UPSTREAM_SPAN:016x}"
    assert task.span_id not in (f"{UPSTREAM_SPAN:016x}", "0" * 16)
    assert task.sampled is sampled
    assert again == task
    assert other.span_id != task.span_id


def test_a_malformed_stepbus_entry_is_not_taken_for_a_gateway_root() -> None:
    parent = upstream(state=TraceState([("stepbus", "r1234")]))

    task = task_trace("t1", "sub-1", parent, STARTED, sampled=True)

    assert task.parent_span_id == f"{UPSTREAM_SPAN:016x}"
    assert task.span_id != "1234"


@pytest.mark.parametrize("sampled", [True, False])
def test_without_a_parent_the_trace_derives_from_the_submission(sampled: bool) -> None:
    task = task_trace("t1", "sub-1", None, STARTED, sampled=sampled)
    again = task_trace("t1", "sub-1", None, STARTED, sampled=sampled)
    other_task = task_trace("t2", "sub-1", None, STARTED, sampled=sampled)
    other_submission = task_trace("t1", "sub-2", None, STARTED, sampled=sampled)

    assert again == task
    assert task.parent_span_id is None
    assert task.sampled is sampled
    assert int(task.trace_id, 16) != 0 and int(task.span_id, 16) != 0
    assert other_task.trace_id != task.trace_id and other_task.span_id != task.span_id
    assert other_submission.trace_id != task.trace_id
    TaskTrace.model_validate(task.model_dump())  # ids fit the contract's patterns


# -- new_root -------------------------------------------------------------------------------


@pytest.mark.parametrize("sampled", [True, False])
def test_new_root_without_upstream_starts_a_trace(sampled: bool) -> None:
    root = new_root(None, sampled=sampled)
    other = new_root(None, sampled=sampled)

    assert root.is_valid and root.is_remote
    assert root.trace_flags.sampled is sampled
    assert other.trace_id != root.trace_id and other.span_id != root.span_id
    assert root.trace_state.get("stepbus") == f"r{root.span_id:016x}"


@pytest.mark.parametrize("sampled", [True, False])
def test_new_root_continues_the_upstream_trace_and_its_sampling(sampled: bool) -> None:
    parent = upstream(sampled=sampled, state=TraceState([("vendor", "x")]))

    root = new_root(parent, sampled=not sampled)

    assert root.trace_id == UPSTREAM_TRACE
    assert root.span_id != UPSTREAM_SPAN
    assert root.trace_flags.sampled is sampled
    assert root.trace_state.get("stepbus") == f"r{root.span_id:016x}p{UPSTREAM_SPAN:016x}"
    assert root.trace_state.get("vendor") == "x"


def test_new_root_replaces_an_upstream_stepbus_entry() -> None:
    stale = f"r{0xDEAD:016x}"
    parent = upstream(state=TraceState([("vendor", "x"), ("stepbus", stale)]))

    root = new_root(parent)

    assert root.trace_state.get("stepbus") == f"r{root.span_id:016x}p{UPSTREAM_SPAN:016x}"
    assert [key for key in root.trace_state if key == "stepbus"] == ["stepbus"]
    assert root.trace_state.get("vendor") == "x"


def test_new_root_with_an_invalid_upstream_starts_a_new_trace() -> None:
    root = new_root(trace.INVALID_SPAN_CONTEXT, sampled=False)

    assert root.is_valid and root.trace_flags.sampled is False
    assert root.trace_state.get("stepbus") == f"r{root.span_id:016x}"


# -- task_context and record_root_span ------------------------------------------------------


def test_a_span_started_in_the_task_context_is_a_child_of_the_root(recorder: Recorder) -> None:
    task = task_trace("t1", "sub-1", None, STARTED, sampled=True)

    recorder.tracer.start_span("step", context=task_context(task)).end()

    span = recorder.one()
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == task.span_id
    assert f"{span.context.trace_id:032x}" == task.trace_id


def test_the_task_context_of_an_unsampled_task_records_nothing(recorder: Recorder) -> None:
    task = task_trace("t1", "sub-1", None, STARTED, sampled=False)

    span = recorder.tracer.start_span("step", context=task_context(task))
    span.end()

    assert not span.is_recording()
    assert f"{span.get_span_context().trace_id:032x}" == task.trace_id
    assert recorder.spans() == ()


def test_the_root_span_has_its_planned_ids_under_the_upstream(recorder: Recorder) -> None:
    root = new_root(upstream())
    task = task_trace(
        "t1",
        "sub-1",
        header_span_context(record_headers(recorder.tracer, root)),
        STARTED,
        sampled=True,
    )
    recorder.exporter.clear()
    ended = ns(STARTED) + 2_500_000_000
    link = Link(SpanContext(0xABC, 0xDEF, is_remote=True))

    record_root_span(
        recorder.tracer,
        task,
        {TASK_ID: "t1", "gen_ai.agent.name": "stepbus"},
        ended_at_ns=ended,
        links=[link],
    )

    span = recorder.one()
    assert span.name == "invoke_agent stepbus"
    assert span.kind is SpanKind.INTERNAL
    assert span.context.trace_id == UPSTREAM_TRACE == int(task.trace_id, 16)
    assert span.context.span_id == root.span_id == int(task.span_id, 16)
    assert span.parent is not None and span.parent.span_id == UPSTREAM_SPAN
    assert span.start_time is not None
    assert abs(span.start_time - ns(STARTED)) < 1000  # started_at, to its microsecond
    assert span.end_time == ended
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {TASK_ID: "t1", "gen_ai.agent.name": "stepbus"}
    assert [recorded.context.span_id for recorded in span.links] == [0xDEF]


def test_a_root_span_that_started_the_trace_has_no_parent(recorder: Recorder) -> None:
    task = task_trace("t1", "sub-1", None, STARTED, sampled=True)

    record_root_span(recorder.tracer, task, {}, ended_at_ns=ns(STARTED) + 1_000)

    span = recorder.one()
    assert span.parent is None
    assert f"{span.context.trace_id:032x}" == task.trace_id
    assert f"{span.context.span_id:016x}" == task.span_id


def test_a_failed_task_records_an_error_root(recorder: Recorder) -> None:
    task = task_trace("t1", "sub-1", None, STARTED, sampled=True)

    record_root_span(
        recorder.tracer, task, {}, ended_at_ns=ns(STARTED) + 1_000, error="budget exhausted"
    )

    span = recorder.one()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "budget exhausted"


def test_a_root_ending_before_its_start_is_not_given_a_negative_duration(
    recorder: Recorder,
) -> None:
    task = task_trace("t1", "sub-1", None, STARTED, sampled=True)
    ended = ns(STARTED) - 5_000_000  # the planner's clock behind the gateway's

    record_root_span(recorder.tracer, task, {}, ended_at_ns=ended)

    span = recorder.one()
    assert span.start_time == span.end_time == ended


def test_an_unsampled_task_records_no_root(recorder: Recorder) -> None:
    task = task_trace("t1", "sub-1", upstream(sampled=False), STARTED, sampled=True)
    assert task.sampled is False

    record_root_span(recorder.tracer, task, {}, ended_at_ns=ns(STARTED) + 1_000)

    assert recorder.spans() == ()


def test_fixed_ids_apply_only_inside(recorder: Recorder) -> None:
    before = recorder.tracer.start_span("before")
    with fixed_ids(0x1234, 0x5678):
        inside = recorder.tracer.start_span("inside")
    after = recorder.tracer.start_span("after")
    for span in (before, inside, after):
        span.end()

    assert (inside.get_span_context().trace_id, inside.get_span_context().span_id) == (
        0x1234,
        0x5678,
    )
    for span in (before, after):
        assert span.get_span_context().trace_id != 0x1234
        assert span.get_span_context().span_id != 0x5678
    assert before.get_span_context().trace_id != after.get_span_context().trace_id


# -- trace context in Kafka headers ---------------------------------------------------------


def test_trace_context_round_trips_through_kafka_headers() -> None:
    sent = upstream(sampled=True, state=TraceState([("stepbus", "r" + "1" * 16), ("v", "x")]))
    headers: list[tuple[str, bytes]] = [("content-type", b"application/json")]

    inject_context(headers, trace.set_span_in_context(NonRecordingSpan(sent)))

    names = [name for name, _ in headers]
    assert names == ["content-type", "traceparent", "tracestate"]
    assert dict(headers)["traceparent"] == (
        f"00-{UPSTREAM_TRACE:032x}-{UPSTREAM_SPAN:016x}-01".encode()
    )
    received = header_span_context(tuple(headers))
    assert received is not None
    assert (received.trace_id, received.span_id) == (UPSTREAM_TRACE, UPSTREAM_SPAN)
    assert received.trace_flags.sampled and received.is_remote
    assert dict(received.trace_state) == {"stepbus": "r" + "1" * 16, "v": "x"}
    from_context = trace.get_current_span(extract_context(headers)).get_span_context()
    assert from_context == received


def test_injecting_again_replaces_the_trace_headers() -> None:
    first = upstream()
    second = SpanContext(0x42, 0x43, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    headers = inject_context([], trace.set_span_in_context(NonRecordingSpan(first)))

    inject_context(headers, trace.set_span_in_context(NonRecordingSpan(second)))

    assert [name for name, _ in headers].count("traceparent") == 1
    received = header_span_context(headers)
    assert received is not None and received.span_id == 0x43


@pytest.mark.parametrize(
    "headers",
    [None, [], [("key", b"v")], [("traceparent", b"garbage")], [("traceparent", b"\xff\xfe")]],
)
def test_a_record_without_a_valid_traceparent_has_no_span_context(
    headers: list[tuple[str, bytes]] | None,
) -> None:
    assert header_span_context(headers) is None
    assert not trace.get_current_span(extract_context(headers)).get_span_context().is_valid


def test_a_null_traceparent_header_is_ignored() -> None:
    headers = cast(list[tuple[str, bytes]], [("traceparent", None)])
    assert header_span_context(headers) is None


def test_trace_headers_carry_the_current_span(recorder: Recorder) -> None:
    assert trace_headers() == ()  # no current span

    with recorder.tracer.start_as_current_span("handle") as span:
        headers = trace_headers()

    received = header_span_context(headers)
    assert received is not None
    assert received.span_id == span.get_span_context().span_id
    assert received.trace_id == span.get_span_context().trace_id


# -- BoundedExportProcessor -----------------------------------------------------------------


class FakeExporter(SpanExporter):
    """Records the batches it is given; can block each export on ``release``, or fail."""

    def __init__(self, result: SpanExportResult = SpanExportResult.SUCCESS) -> None:
        self.result = result
        self.raises: Exception | None = None
        self.release: threading.Event | None = None
        self.entered = threading.Event()
        self.batches: list[list[str]] = []
        self.threads: set[str] = set()
        self.shut_down = False
        self._changed = threading.Condition()

    def block(self) -> threading.Event:
        self.release = threading.Event()
        return self.release

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        raises = self.raises  # read first: a test may change it once the batch is seen
        self.threads.add(threading.current_thread().name)
        self.entered.set()
        if self.release is not None:
            self.release.wait()
        with self._changed:
            self.batches.append([span.name for span in spans])
            self._changed.notify_all()
        if raises is not None:
            raise raises
        return self.result

    def shutdown(self) -> None:
        self.shut_down = True

    def names(self) -> list[str]:
        with self._changed:
            return [name for batch in self.batches for name in batch]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[str]:
        """The exported span names once there are ``count`` of them (fails after timeout)."""
        with self._changed:
            self._changed.wait_for(lambda: len(self.names_unlocked()) >= count, timeout)
            return self.names_unlocked()

    def names_unlocked(self) -> list[str]:
        return [name for batch in self.batches for name in batch]


class Exporting:
    """A local provider whose only processor is the ``BoundedExportProcessor`` under test."""

    def __init__(self, exporter: FakeExporter, sampler: Sampler | None = None, **options: Any):
        self.exporter = exporter
        self.service = f"svc-{uuid.uuid4().hex[:8]}"
        self.processor = BoundedExportProcessor(exporter, self.service, **options)
        self.provider = TracerProvider(sampler=sampler)
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("stepbus.test.export")

    def end(self, *names: str) -> None:
        for name in names:
            self.tracer.start_span(name).end()

    def dropped(self, reason: str) -> float:
        return sample("stepbus_trace_spans_dropped_total", service=self.service, reason=reason)

    def exported(self) -> float:
        return sample("stepbus_trace_spans_exported_total", service=self.service)


@pytest.fixture
def exporting() -> Iterator[Any]:
    made: list[Exporting] = []

    def make(exporter: FakeExporter, sampler: Sampler | None = None, **options: Any) -> Exporting:
        made.append(Exporting(exporter, sampler, **options))
        return made[-1]

    yield make
    for setup in made:  # let blocked exports finish so no thread outlives its test
        if setup.exporter.release is not None:
            setup.exporter.release.set()
        setup.processor.shutdown(timeout=5)


def test_a_full_batch_is_exported_without_waiting_for_the_schedule(exporting: Any) -> None:
    exporter = FakeExporter()
    setup = exporting(exporter, max_batch_size=3, schedule_delay=60)
    before = setup.exported()

    setup.end("a", "b", "c")

    assert exporter.wait_for(3) == ["a", "b", "c"]
    assert exporter.threads == {"stepbus-span-export"}
    setup.end("d")  # less than a batch: waits for the schedule (a minute away) or a flush
    assert setup.processor.force_flush() is True
    assert exporter.names() == ["a", "b", "c", "d"]
    assert all(len(batch) <= 3 for batch in exporter.batches)
    assert setup.exported() - before == 4


def test_spans_are_exported_on_the_schedule(exporting: Any) -> None:
    exporter = FakeExporter()
    setup = exporting(exporter, max_batch_size=100, schedule_delay=0.05)

    setup.end("a")

    assert exporter.wait_for(1) == ["a"]


def test_batches_never_exceed_the_batch_size(exporting: Any) -> None:
    exporter = FakeExporter()
    setup = exporting(exporter, max_batch_size=4, max_queue_size=100, schedule_delay=60)
    release = exporter.block()
    setup.end(*(f"s{i}" for i in range(4)))
    assert exporter.entered.wait(5)
    setup.end(*(f"s{i}" for i in range(4, 11)))  # queued while the first batch is stuck

    release.set()

    assert exporter.wait_for(8)[:8] == [f"s{i}" for i in range(8)]
    assert setup.processor.force_flush() is True
    assert exporter.names() == [f"s{i}" for i in range(11)]
    assert [len(batch) for batch in exporter.batches] == [4, 4, 3]


def test_a_blocked_exporter_costs_the_service_nothing_but_the_spans_that_do_not_fit(
    exporting: Any,
) -> None:
    exporter = FakeExporter()
    setup = exporting(exporter, max_queue_size=10, max_batch_size=5, schedule_delay=60)
    release = exporter.block()
    dropped_before, exported_before = setup.dropped("queue_full"), setup.exported()
    setup.end(*(f"first{i}" for i in range(5)))  # one batch: the export thread takes it
    assert exporter.entered.wait(5)

    began = time.perf_counter()
    setup.end(*(f"more{i}" for i in range(1000)))
    elapsed = time.perf_counter() - began

    assert elapsed < 0.5
    assert setup.dropped("queue_full") - dropped_before == 990  # the queue holds 10
    release.set()
    assert setup.processor.force_flush() is True
    assert exporter.names() == [f"first{i}" for i in range(5)] + [f"more{i}" for i in range(10)]
    assert setup.exported() - exported_before == 15


def test_a_refused_export_counts_its_spans_as_export_failed(exporting: Any) -> None:
    exporter = FakeExporter(SpanExportResult.FAILURE)
    setup = exporting(exporter, schedule_delay=60)
    failed_before, exported_before = setup.dropped("export_failed"), setup.exported()

    setup.end("a", "b", "c")
    assert setup.processor.force_flush() is True

    assert exporter.names() == ["a", "b", "c"]
    assert setup.dropped("export_failed") - failed_before == 3
    assert setup.exported() - exported_before == 0


def test_an_exporter_that_raises_counts_a_failure_and_the_thread_goes_on(exporting: Any) -> None:
    exporter = FakeExporter()
    exporter.raises = RuntimeError("exporter bug")
    setup = exporting(exporter, max_batch_size=2, schedule_delay=60)
    failed_before, exported_before = setup.dropped("export_failed"), setup.exported()

    setup.end("a", "b")
    exporter.wait_for(2)
    exporter.raises = None
    setup.end("c", "d")  # a full batch, so the export thread (not a flush) sends it

    assert exporter.wait_for(4) == ["a", "b", "c", "d"]
    assert exporter.threads == {"stepbus-span-export"}
    assert setup.dropped("export_failed") - failed_before == 2
    deadline = time.monotonic() + 5
    while setup.exported() - exported_before < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # the counter is increased just after export returns
    assert setup.exported() - exported_before == 2


class RecordOnly(Sampler):
    """Records spans without sampling them: they reach ``on_end`` with the flag unset."""

    def should_sample(
        self, parent_context: Context | None, *args: Any, **kwargs: Any
    ) -> SamplingResult:
        return SamplingResult(Decision.RECORD_ONLY)

    def get_description(self) -> str:
        return "RecordOnly"


class SampleNamed(Sampler):
    """Samples the spans named ``keep``; only records the others."""

    def should_sample(
        self, parent_context: Context | None, trace_id: int, name: str, *args: Any, **kw: Any
    ) -> SamplingResult:
        if name.startswith("keep"):
            return SamplingResult(Decision.RECORD_AND_SAMPLE)
        return RecordOnly().should_sample(parent_context)

    def get_description(self) -> str:
        return "SampleNamed"


def test_unsampled_spans_are_not_exported(exporting: Any) -> None:
    exporter = FakeExporter()
    setup = exporting(exporter, SampleNamed(), schedule_delay=60)
    span = setup.tracer.start_span("local")
    assert span.is_recording() and not span.get_span_context().trace_flags.sampled
    span.end()

    setup.end("keep1", "local2", "keep2")
    assert setup.processor.force_flush() is True

    assert exporter.names() == ["keep1", "keep2"]


def test_force_flush_gives_up_on_a_blocked_exporter(exporting: Any) -> None:
    exporter = FakeExporter()
    setup = exporting(exporter, max_batch_size=1, schedule_delay=60)
    exporter.block()
    setup.end("stuck")
    assert exporter.entered.wait(5)

    began = time.perf_counter()
    assert setup.processor.force_flush(timeout_millis=100) is False
    assert time.perf_counter() - began < 1.0


def test_force_flush_is_bounded_when_the_export_thread_is_idle(exporting: Any) -> None:
    exporter = FakeExporter()
    setup = exporting(exporter, max_batch_size=100, schedule_delay=60)
    release = exporter.block()
    setup.end("queued")  # less than a batch: the export thread sleeps on
    outcome: list[bool] = []
    flusher = threading.Thread(
        target=lambda: outcome.append(setup.processor.force_flush(timeout_millis=100))
    )

    flusher.start()
    flusher.join(1.0)
    stuck = flusher.is_alive()
    release.set()
    flusher.join(5)

    assert not stuck, "force_flush(timeout_millis=100) was still running after 1 s"
    assert outcome == [False]


def test_shutdown_exports_what_is_queued_and_stops(exporting: Any) -> None:
    exporter = FakeExporter()
    setup = exporting(exporter, schedule_delay=60)
    setup.end("a", "b")

    setup.processor.shutdown(timeout=5)
    setup.end("late")
    setup.processor.force_flush()  # would export a late span had it been queued

    assert exporter.names() == ["a", "b"]
    assert exporter.shut_down


def test_shutdown_with_a_blocked_exporter_returns_within_its_timeout(exporting: Any) -> None:
    exporter = FakeExporter()
    setup = exporting(exporter, max_batch_size=1, schedule_delay=60)
    exporter.block()
    setup.end("stuck")
    assert exporter.entered.wait(5)

    began = time.perf_counter()
    setup.processor.shutdown(timeout=0.2)
    elapsed = time.perf_counter() - began

    assert 0.15 < elapsed < 1.0
    assert not exporter.shut_down  # still exporting: not shut down under it


# -- telemetry --------------------------------------------------------------------------------

OTLP_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
)


@pytest.fixture
def otlp_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in OTLP_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_no_endpoint_no_exporter(otlp_env: pytest.MonkeyPatch) -> None:
    otlp_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert span_exporter() is None


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, HttpSpanExporter),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            },
            HttpSpanExporter,
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
                "OTEL_EXPORTER_OTLP_PROTOCOL": " grpc ",
            },
            GrpcSpanExporter,
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
            },
            GrpcSpanExporter,
        ),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"},
            HttpSpanExporter,
        ),
    ],
    ids=["default", "http-protobuf", "grpc", "traces-protocol-wins", "traces-endpoint-only"],
)
def test_the_exporter_the_environment_asks_for(
    otlp_env: pytest.MonkeyPatch, variables: dict[str, str], expected: type[SpanExporter]
) -> None:
    for name, value in variables.items():
        otlp_env.setenv(name, value)

    exporter = span_exporter()
    try:
        assert type(exporter) is expected
    finally:
        if exporter is not None:
            exporter.shutdown()


def test_an_unsupported_protocol_falls_back_to_http_with_a_warning(
    otlp_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    otlp_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    otlp_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift")

    with caplog.at_level("WARNING", logger="stepbus_runtime.telemetry"):
        exporter = span_exporter()

    assert exporter is not None
    made: SpanExporter = exporter
    try:
        assert type(exporter) is HttpSpanExporter
        assert "thrift" in caplog.text
    finally:
        made.shutdown()


@pytest.fixture
def resource_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "STEPBUS_GROUP_INSTANCE_ID"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_resource_is_named_after_the_service(resource_env: pytest.MonkeyPatch) -> None:
    attributes = _resource("planner").attributes

    assert attributes["service.name"] == "planner"
    assert attributes["service.namespace"] == "stepbus"
    assert attributes["service.instance.id"]


def test_otel_service_name_wins_over_the_default(resource_env: pytest.MonkeyPatch) -> None:
    resource_env.setenv("OTEL_SERVICE_NAME", "planner-canary")

    assert _resource("planner").attributes["service.name"] == "planner-canary"


def test_resource_attributes_and_instance_id_come_from_the_environment(
    resource_env: pytest.MonkeyPatch,
) -> None:
    resource_env.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging,team=agents")
    resource_env.setenv("STEPBUS_GROUP_INSTANCE_ID", "planner-0")

    attributes = _resource("planner").attributes

    assert attributes["deployment.environment"] == "staging"
    assert attributes["team"] == "agents"
    assert attributes["service.instance.id"] == "planner-0"
    assert attributes["service.name"] == "planner"


def test_spans_of_a_task_carry_its_fields() -> None:
    rec = Recorder(TaskAttributes())

    with log_context(task_id="t1", tenant="acme", step=2):
        rec.tracer.start_span("inside").end()
        rec.tracer.start_span("explicit", attributes={TASK_ID: "other"}).end()
    rec.tracer.start_span("outside").end()

    spans = {span.name: dict(span.attributes or {}) for span in rec.spans()}
    assert spans["inside"] == {TASK_ID: "t1", TENANT: "acme", STEP: 2}
    assert spans["explicit"][TASK_ID] == "other"
    assert spans["outside"] == {}


def test_the_id_generator_is_random_outside_fixed_ids() -> None:
    generator = StepbusIdGenerator()

    trace_ids = {generator.generate_trace_id() for _ in range(3)}
    span_ids = {generator.generate_span_id() for _ in range(3)}
    with fixed_ids(7, 9):
        fixed = (generator.generate_trace_id(), generator.generate_span_id())

    assert len(trace_ids) == 3 and len(span_ids) == 3
    assert fixed == (7, 9)
    assert generator.generate_trace_id() != 7 and generator.generate_span_id() != 9


# -- GenAI chat spans -------------------------------------------------------------------------


@pytest.fixture
def chat(monkeypatch: pytest.MonkeyPatch, recorder: Recorder) -> Recorder:
    """``chat_span`` recording into ``recorder``; message capture off unless a test sets it."""
    monkeypatch.setattr(genai, "_tracer", recorder.tracer)
    monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", raising=False)
    return recorder


def model_calls(service: str, model: str, outcome: str) -> float:
    return sample("stepbus_model_call_seconds_count", service=service, model=model, outcome=outcome)


MESSAGES = [{"role": "user", "content": "what is 2+2?"}]
OUTPUT = [{"role": "assistant", "content": "4"}]


def test_a_chat_span_names_the_call_and_its_server(chat: Recorder) -> None:
    model = f"model-{uuid.uuid4().hex[:6]}"
    before = model_calls("planner", model, "ok")

    with genai.chat_span(
        "planner", model, base_url="http://llm.internal:8080/v1", messages=MESSAGES, tools=3
    ) as call:
        call.response(
            model=f"{model}-0125",
            finish_reason="tool_calls",
            input_tokens=120,
            output_tokens=30,
            response_id="resp-1",
            output=OUTPUT,
        )

    span = chat.one()
    assert span.name == f"chat {model}"
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": model,
        "server.address": "llm.internal",
        "server.port": 8080,
        "stepbus.gen_ai.request.tools": 3,
        "gen_ai.response.model": f"{model}-0125",
        "gen_ai.response.finish_reasons": ("tool_calls",),
        "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 30,
        "gen_ai.response.id": "resp-1",
    }
    assert model_calls("planner", model, "ok") - before == 1


def test_a_chat_span_without_port_or_base_url(chat: Recorder) -> None:
    with genai.chat_span("planner", "m", base_url="https://api.openai.com/v1") as call:
        call.response(model="m", finish_reason=None, input_tokens=1, output_tokens=2)
    with genai.chat_span("planner", "m"):
        pass

    with_url, without = (dict(span.attributes or {}) for span in chat.spans())
    assert with_url["server.address"] == "api.openai.com"
    assert "server.port" not in with_url
    assert with_url["gen_ai.response.finish_reasons"] == ("unknown",)
    assert "server.address" not in without and "gen_ai.response.model" not in without


@pytest.mark.parametrize("flag", [None, "false", "1", "yes"])
def test_message_contents_stay_off_the_span_unless_asked_for(
    chat: Recorder, monkeypatch: pytest.MonkeyPatch, flag: str | None
) -> None:
    if flag is not None:
        monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", flag)

    with genai.chat_span("planner", "m", messages=MESSAGES) as call:
        call.response(
            model="m", finish_reason="stop", input_tokens=1, output_tokens=1, output=OUTPUT
        )

    attributes = dict(chat.one().attributes or {})
    assert "gen_ai.input.messages" not in attributes
    assert "gen_ai.output.messages" not in attributes


@pytest.mark.parametrize("flag", ["true", " TRUE "])
def test_message_contents_are_captured_when_asked_for(
    chat: Recorder, monkeypatch: pytest.MonkeyPatch, flag: str
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", flag)

    with genai.chat_span("planner", "m", messages=MESSAGES) as call:
        call.response(
            model="m", finish_reason="stop", input_tokens=1, output_tokens=1, output=OUTPUT
        )

    attributes = dict(chat.one().attributes or {})
    assert json.loads(str(attributes["gen_ai.input.messages"])) == MESSAGES
    assert json.loads(str(attributes["gen_ai.output.messages"])) == OUTPUT


def test_a_failed_call_is_an_error_span_and_an_error_outcome(chat: Recorder) -> None:
    model = f"model-{uuid.uuid4().hex[:6]}"
    errors, oks = model_calls("critic", model, "error"), model_calls("critic", model, "ok")

    with pytest.raises(TimeoutError), genai.chat_span("critic", model):
        raise TimeoutError("model did not answer")

    span = chat.one()
    assert span.status.status_code is StatusCode.ERROR
    assert "model did not answer" in (span.status.description or "")
    assert dict(span.attributes or {})["error.type"] == "TimeoutError"
    assert model_calls("critic", model, "error") - errors == 1
    assert model_calls("critic", model, "ok") - oks == 0


def test_the_error_description_is_clipped(chat: Recorder) -> None:
    with pytest.raises(ValueError), genai.chat_span("critic", "m"):
        raise ValueError("x" * 1000)

    described = chat.one().status.description or ""
    assert described.startswith("x" * 200) and len(described) < 260 and "cut" in described


async def test_a_cancelled_call_counts_as_cancelled(chat: Recorder) -> None:
    model = f"model-{uuid.uuid4().hex[:6]}"
    cancelled, errors = (model_calls("planner", model, o) for o in ("cancelled", "error"))
    entered = asyncio.Event()

    async def call_model() -> None:
        with genai.chat_span("planner", model):
            entered.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(call_model())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    span = chat.one()
    assert dict(span.attributes or {})["error.type"] == "cancelled"
    assert span.status.status_code is not StatusCode.ERROR
    assert model_calls("planner", model, "cancelled") - cancelled == 1
    assert model_calls("planner", model, "error") - errors == 0


def test_count_tokens_counts_by_kind() -> None:
    model = f"model-{uuid.uuid4().hex[:6]}"

    def tokens(kind: str) -> float:
        return sample(
            "stepbus_model_tokens_total", service="planner", model=model, kind=kind, mode="live"
        )

    before = tokens("input"), tokens("output")
    genai.count_tokens("planner", model, 120, 30)
    genai.count_tokens("planner", model, 5, 0)

    assert (tokens("input") - before[0], tokens("output") - before[1]) == (125, 30)
