"""An OTLP/HTTP trace receiver for the tests: what the services export, as plain dataclasses.

``OtlpReceiver`` listens on a free port of 127.0.0.1 and takes the ``ExportTraceServiceRequest``
an OpenTelemetry SDK posts to ``/v1/traces`` (protobuf or JSON, plain, gzip or deflate). Point a
service at it with ``OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint`` and
``OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf``. The server runs in threads, not on the test's
event loop: an exporter called synchronously on that loop (``SimpleSpanProcessor``) would
otherwise wait for an answer the blocked loop could never give. ``mode`` makes it misbehave
the way a collector does: ``"blackhole"`` takes a request and never answers (until the receiver
stops), ``"refuse"`` answers 503.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Literal, NamedTuple, TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2

__all__ = ["Event", "Link", "Mode", "OtlpReceiver", "Span", "decode_request"]

Mode = Literal["accept", "blackhole", "refuse"]
AttributeValue = (
    str | int | float | bool | bytes | list["AttributeValue"] | dict[str, "AttributeValue"] | None
)
T = TypeVar("T")

TRACES_PATH = "/v1/traces"


class Link(NamedTuple):
    """A span link: the linked span's ids and the link's attributes."""

    trace_id: str
    span_id: str
    attributes: dict[str, AttributeValue]


class Event(NamedTuple):
    """A span event (an exception recorded on the span is one, named ``exception``)."""

    name: str
    attributes: dict[str, AttributeValue]


@dataclass(frozen=True)
class Span:
    """One exported span, ids in lowercase hex."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    """``SERVER``, ``CLIENT``, ``PRODUCER``, ``CONSUMER``, ``INTERNAL`` (or ``UNSPECIFIED``)."""
    service: str | None
    """The ``service.name`` resource attribute."""
    attributes: dict[str, AttributeValue]
    links: list[Link]
    start_ns: int
    end_ns: int
    status: str
    """``UNSET``, ``OK`` or ``ERROR``."""
    status_message: str = ""
    events: list[Event] = field(default_factory=list)
    scope: str = ""
    """The instrumentation scope (tracer) name."""
    resource: dict[str, AttributeValue] = field(default_factory=dict)

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


def _value(value: AnyValue) -> AttributeValue:
    """The Python value of an OTLP ``AnyValue``."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    if kind is None:
        return None
    result: AttributeValue = getattr(value, kind)
    return result


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, AttributeValue]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _enum_suffix(enum_name: str, prefix: str) -> str:
    return enum_name.removeprefix(prefix)


def _span(span: trace_pb2.Span, scope: str, resource: dict[str, AttributeValue]) -> Span:
    service = resource.get("service.name")
    return Span(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex() or None,
        name=span.name,
        kind=_enum_suffix(trace_pb2.Span.SpanKind.Name(span.kind), "SPAN_KIND_"),
        service=service if isinstance(service, str) else None,
        attributes=_attributes(span.attributes),
        links=[
            Link(link.trace_id.hex(), link.span_id.hex(), _attributes(link.attributes))
            for link in span.links
        ],
        start_ns=span.start_time_unix_nano,
        end_ns=span.end_time_unix_nano,
        status=_enum_suffix(trace_pb2.Status.StatusCode.Name(span.status.code), "STATUS_CODE_"),
        status_message=span.status.message,
        events=[Event(event.name, _attributes(event.attributes)) for event in span.events],
        scope=scope,
        resource=resource,
    )


def _spans(request: ExportTraceServiceRequest) -> list[Span]:
    spans: list[Span] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            spans.extend(_span(s, scope_spans.scope.name, resource) for s in scope_spans.spans)
    return spans


_ID_FIELDS = {"traceId": 32, "spanId": 16, "parentSpanId": 16}


def _hex_ids_to_base64(node: object) -> None:
    """OTLP/JSON writes ids as hex, protobuf's JSON mapping reads bytes as base64: convert."""
    if isinstance(node, list):
        for item in node:
            _hex_ids_to_base64(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_FIELDS and isinstance(value, str) and len(value) == _ID_FIELDS[key]:
                try:
                    node[key] = base64.b64encode(bytes.fromhex(value)).decode()
                except ValueError:  # not hex: already base64
                    pass
            else:
                _hex_ids_to_base64(value)


def decode_request(body: bytes, content_type: str, encoding: str) -> list[Span]:
    """The spans of an ``ExportTraceServiceRequest`` body.

    Raises:
        ValueError: the body is not a (compressed) protobuf or OTLP/JSON request.
    """
    encoding = encoding.strip().lower()
    if encoding == "gzip":
        body = gzip.decompress(body)
    elif encoding == "deflate":
        body = zlib.decompress(body)
    elif encoding not in ("", "identity"):
        raise ValueError(f"unsupported Content-Encoding {encoding!r}")
    request = ExportTraceServiceRequest()
    if content_type.split(";")[0].strip().lower() == "application/json":
        document = json.loads(body)
        _hex_ids_to_base64(document)
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    else:
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise ValueError(f"not an ExportTraceServiceRequest: {exc}") from exc
    return _spans(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's requests session expects
    server: _Server
    timeout = 60  # an idle keep-alive connection does not hold a thread forever

    def setup(self) -> None:
        super().setup()
        self.server.receiver._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.receiver._untrack(self.connection)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one stderr line per export would drown the test output

    def do_POST(self) -> None:
        receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.split("?")[0] != TRACES_PATH:
            self._answer(404, b"", "text/plain")
            return
        mode = receiver._received()
        if mode == "blackhole":
            receiver._released.wait()
            self.close_connection = True
            return
        if mode == "refuse":
            self._answer(503, b"refused by the test", "text/plain")
            return
        content_type = self.headers.get("Content-Type", "application/x-protobuf")
        try:
            spans = decode_request(body, content_type, self.headers.get("Content-Encoding", ""))
        except (ValueError, OSError, json_format.ParseError) as exc:
            self._answer(400, str(exc).encode(), "text/plain")
            return
        receiver._add(spans)
        if content_type.startswith("application/json"):
            self._answer(200, b"{}", "application/json")
        else:
            self._answer(200, ExportTraceServiceResponse().SerializeToString(), content_type)

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver
        super().__init__(("127.0.0.1", 0), _Handler)


class OtlpReceiver:
    """An OTLP/HTTP trace endpoint on 127.0.0.1, serving from threads.

    Use ``async with OtlpReceiver() as receiver:`` (or ``with``); ``receiver.endpoint`` is the
    base URL for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (an exporter given a full URL needs
    ``endpoint + "/v1/traces"``).

    Attributes:
        mode: ``"accept"`` (record the spans, answer 200), ``"blackhole"`` (read the request,
            never answer until the receiver stops) or ``"refuse"`` (answer 503); may be changed
            at any time, and applies to the requests that arrive afterwards.
    """

    def __init__(self, mode: Mode = "accept") -> None:
        self.mode: Mode = mode
        self._lock = threading.Lock()
        self._spans: list[Span] = []
        self._requests = 0
        self._released = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``, without the signal path."""
        if self._server is None:
            raise RuntimeError("the receiver is not started: use `async with OtlpReceiver()`")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def spans(self) -> list[Span]:
        """The spans received so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._spans)

    @property
    def requests(self) -> int:
        """Export requests that reached ``/v1/traces``, whatever the mode answered."""
        with self._lock:
            return self._requests

    def spans_of_trace(self, trace_id: str) -> list[Span]:
        """The received spans of one trace (hex id, any case)."""
        trace_id = trace_id.lower()
        return [span for span in self.spans if span.trace_id == trace_id]

    def clear(self) -> None:
        """Forget the spans received so far (the request count stays)."""
        with self._lock:
            self._spans.clear()

    async def wait_for(self, predicate: Callable[[list[Span]], T], timeout: float, what: str) -> T:
        """Poll ``predicate(self.spans)`` until it is truthy and return its value.

        Raises:
            AssertionError: ``timeout`` seconds passed first; the message says ``what`` was
                awaited and which spans did arrive.
        """
        deadline = time.monotonic() + timeout
        while True:
            result = predicate(self.spans)
            if result:
                return result
            if time.monotonic() >= deadline:
                spans = self.spans
                names = sorted({f"{s.service}:{s.name}" for s in spans})
                raise AssertionError(
                    f"no {what} after {timeout:.1f}s: {len(spans)} spans in {self.requests} "
                    f"requests (mode {self.mode!r}); names: {', '.join(names[:40]) or 'none'}"
                )
            await asyncio.sleep(0.05)

    def start(self) -> None:
        """Listen on a free port and serve from a background thread."""
        if self._server is not None:
            raise RuntimeError("the receiver is already started")
        self._released.clear()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="otlp-receiver",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Release held (blackholed) requests, close every connection and stop listening."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._released.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        with self._lock:
            connections = list(self._connections)
        for connection in connections:  # idle keep-alive handlers would wait for their timeout
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server = self._thread = None

    def __enter__(self) -> OtlpReceiver:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> OtlpReceiver:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    def _received(self) -> Mode:
        with self._lock:
            self._requests += 1
            return self.mode

    def _add(self, spans: list[Span]) -> None:
        with self._lock:
            self._spans.extend(spans)

    def _track(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def _untrack(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)
