"""The tests' OTLP/HTTP receiver decodes what the real SDK exporter sends, and misbehaves on cue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from ..otlp import OtlpReceiver, Span


def exporting_provider(receiver: OtlpReceiver, **exporter: object) -> TracerProvider:
    """A local (not global) provider exporting every span to ``receiver`` as it ends."""
    provider = TracerProvider(resource=Resource.create({"service.name": "planner"}))
    endpoint = f"{receiver.endpoint}/v1/traces"
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint, **exporter)))  # type: ignore[arg-type]
    return provider


@pytest.fixture
def finished_span() -> Iterator[ReadableSpan]:
    """One ended span, for exporting by hand."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.get_tracer("test").start_span("lost").end()
    (span,) = memory.get_finished_spans()
    yield span
    provider.shutdown()


def by_name(spans: list[Span]) -> dict[str, Span]:
    return {span.name: span for span in spans}


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
async def test_sdk_spans_arrive_with_parents_kinds_attributes_links_and_service(
    compression: Compression,
) -> None:
    async with OtlpReceiver() as receiver:
        provider = exporting_provider(receiver, timeout=5, compression=compression)
        tracer = provider.get_tracer("stepbus.test")
        upstream = tracer.start_span("upstream", kind=SpanKind.PRODUCER)
        upstream.end()
        linked = Link(upstream.get_span_context(), {"stepbus.link": "cause"})
        with tracer.start_as_current_span("handle", kind=SpanKind.CONSUMER, links=[linked]):
            with tracer.start_as_current_span("emit", kind=SpanKind.PRODUCER) as emit:
                emit.set_attributes(
                    {"stepbus.step": 3, "ratio": 0.5, "ok": True, "topics": ["a", "b"]}
                )
            with tracer.start_as_current_span("fail") as fail:
                fail.record_exception(ValueError("boom"))
                fail.set_status(Status(StatusCode.ERROR, "boom"))
        spans = await receiver.wait_for(
            lambda spans: by_name(spans) if len(spans) == 4 else None, 10, "the four spans"
        )
        provider.shutdown()
    root, emit_span, fail_span = spans["handle"], spans["emit"], spans["fail"]
    assert root.parent_span_id is None and root.kind == "CONSUMER"
    assert emit_span.parent_span_id == root.span_id == fail_span.parent_span_id
    assert emit_span.trace_id == root.trace_id and len(root.trace_id) == 32
    assert len(root.span_id) == 16 and emit_span.kind == "PRODUCER"
    assert fail_span.kind == "INTERNAL" and fail_span.status == "ERROR"
    assert fail_span.status_message == "boom" and fail_span.events[0].name == "exception"
    assert emit_span.attributes == {
        "stepbus.step": 3,
        "ratio": 0.5,
        "ok": True,
        "topics": ["a", "b"],
    }
    context = upstream.get_span_context()
    assert root.links == [
        (
            format(context.trace_id, "032x"),
            format(context.span_id, "016x"),
            {"stepbus.link": "cause"},
        )
    ]
    assert {span.service for span in spans.values()} == {"planner"}
    assert root.status == "UNSET" and root.end_ns >= emit_span.end_ns > emit_span.start_ns > 0
    assert receiver.spans_of_trace(root.trace_id.upper()) == [
        s for s in receiver.spans if s.trace_id == root.trace_id
    ]
    assert receiver.requests == 4  # one per span: SimpleSpanProcessor


async def test_an_otlp_json_body_with_hex_ids_is_decoded() -> None:
    trace_id, span_id, parent = (
        "5b8efff798038103d269b633813fc60c",
        "eee19b7ec3c1b174",
        "eee19b7ec3c1b173",
    )
    body = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "gateway"}}]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "manual"},
                        "spans": [
                            {
                                "traceId": trace_id,
                                "spanId": span_id,
                                "parentSpanId": parent,
                                "name": "POST /tasks",
                                "kind": 2,
                                "startTimeUnixNano": "1544712660000000000",
                                "endTimeUnixNano": "1544712661000000000",
                                "attributes": [
                                    {"key": "http.status", "value": {"intValue": "202"}}
                                ],
                                "status": {"code": 1},
                            }
                        ],
                    }
                ],
            }
        ]
    }
    async with OtlpReceiver() as receiver, httpx.AsyncClient() as client:
        response = await client.post(f"{receiver.endpoint}/v1/traces", json=body)
        assert response.status_code == 200
        (span,) = receiver.spans
    assert (span.trace_id, span.span_id, span.parent_span_id) == (trace_id, span_id, parent)
    assert (span.kind, span.status, span.service, span.scope) == (
        "SERVER",
        "OK",
        "gateway",
        "manual",
    )
    assert span.attributes == {"http.status": 202} and span.duration_ns == 1_000_000_000


async def test_blackhole_mode_makes_an_export_time_out_instead_of_hanging(
    finished_span: ReadableSpan,
) -> None:
    async with OtlpReceiver(mode="blackhole") as receiver:
        exporter = OTLPSpanExporter(f"{receiver.endpoint}/v1/traces", timeout=1)
        started = time.monotonic()
        result = await asyncio.to_thread(exporter.export, [finished_span])
        elapsed = time.monotonic() - started
        exporter.shutdown()
        assert receiver.requests >= 1  # the request arrived, and was held
        stopping = time.monotonic()
    assert result is SpanExportResult.FAILURE and elapsed < 5
    assert time.monotonic() - stopping < 3  # stopping releases the held request
    assert receiver.spans == []


async def test_refuse_mode_answers_503_and_records_nothing(finished_span: ReadableSpan) -> None:
    async with OtlpReceiver() as receiver, httpx.AsyncClient() as client:
        receiver.mode = "refuse"
        response = await client.post(
            f"{receiver.endpoint}/v1/traces",
            content=b"",
            headers={"Content-Type": "application/x-protobuf"},
        )
        assert response.status_code == 503
        exporter = OTLPSpanExporter(f"{receiver.endpoint}/v1/traces", timeout=1)
        assert await asyncio.to_thread(exporter.export, [finished_span]) is SpanExportResult.FAILURE
        assert receiver.spans == []
        receiver.mode = "accept"  # switched at run time: the next export lands
        assert await asyncio.to_thread(exporter.export, [finished_span]) is SpanExportResult.SUCCESS
        exporter.shutdown()
        assert [span.name for span in receiver.spans] == ["lost"]


async def test_wait_for_says_what_it_waited_for_and_what_arrived() -> None:
    async with OtlpReceiver() as receiver:
        provider = exporting_provider(receiver, timeout=5)
        with trace.use_span(provider.get_tracer("t").start_span("only"), end_on_exit=True):
            pass
        with pytest.raises(AssertionError, match=r"no a span named 'never'.*planner:only"):
            await receiver.wait_for(
                lambda spans: any(s.name == "never" for s in spans), 0.3, "a span named 'never'"
            )
        provider.shutdown()


async def test_a_body_that_is_not_a_request_is_answered_400() -> None:
    async with OtlpReceiver() as receiver, httpx.AsyncClient() as client:
        response = await client.post(
            f"{receiver.endpoint}/v1/traces",
            content=b"\xff\xff\xff",
            headers={"Content-Type": "application/x-protobuf"},
        )
    assert response.status_code == 400 and receiver.spans == []
