"""Span export that never blocks or breaks a service: a bounded queue drained by one thread.

A service thread only appends a finished span to a bounded queue (a lock and a deque append):
a collector that is down, slow or black-holing requests costs the service nothing but the
spans that do not fit, which are dropped and counted (``stepbus_trace_spans_dropped_total``,
by reason ``queue_full`` or ``export_failed``). One daemon thread exports batches with the
exporter's own timeout and retries. The SDK's ``BatchSpanProcessor`` does the same but counts
its drops only in OpenTelemetry's internal metrics, which nobody scrapes from Prometheus.

Configured by the standard ``OTEL_BSP_*`` variables: ``OTEL_BSP_MAX_QUEUE_SIZE`` (2048),
``OTEL_BSP_SCHEDULE_DELAY`` (ms, 1000), ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` (512).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from prometheus_client import Counter

__all__ = ["SPANS_DROPPED", "SPANS_EXPORTED", "BoundedExportProcessor"]

log = logging.getLogger(__name__)

SPANS_DROPPED = Counter(
    "stepbus_trace_spans_dropped_total",
    "Finished spans not exported: the export queue was full, or the collector refused or did "
    "not answer.",
    ["service", "reason"],
)
SPANS_EXPORTED = Counter(
    "stepbus_trace_spans_exported_total", "Spans the collector accepted.", ["service"]
)


def _env_int(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        log.warning("%s is not an integer; using %d", name, default)
        return default


class BoundedExportProcessor(SpanProcessor):
    """Queue finished, sampled spans; export them in batches from one background thread.

    Args:
        exporter: Where batches go (OTLP over HTTP or gRPC).
        service: The ``service`` label of the counters.
        max_queue_size: Spans held at most; more are dropped and counted.
        schedule_delay: Seconds between exports when the queue is not filling up.
        max_batch_size: Spans per export request.
    """

    def __init__(
        self,
        exporter: SpanExporter,
        service: str,
        *,
        max_queue_size: int | None = None,
        schedule_delay: float | None = None,
        max_batch_size: int | None = None,
    ) -> None:
        self._exporter = exporter
        self._max_queue = max_queue_size or _env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        delay_ms = _env_int("OTEL_BSP_SCHEDULE_DELAY", 1000)
        self._delay = schedule_delay if schedule_delay is not None else delay_ms / 1000
        self._batch = min(
            max_batch_size or _env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512), self._max_queue
        )
        self._queue: collections.deque[ReadableSpan] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stopped = False
        self._dropped_full = SPANS_DROPPED.labels(service, "queue_full")
        self._dropped_failed = SPANS_DROPPED.labels(service, "export_failed")
        self._exported = SPANS_EXPORTED.labels(service)
        self._thread = threading.Thread(target=self._run, name="stepbus-span-export", daemon=True)
        self._thread.start()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Nothing to do when a span starts."""

    def on_end(self, span: ReadableSpan) -> None:
        """Queue a sampled span, or count it dropped when the queue is full. Never blocks."""
        if self._stopped or not (span.context and span.context.trace_flags.sampled):
            return
        with self._lock:
            if len(self._queue) >= self._max_queue:
                full = True
            else:
                full = False
                self._queue.append(span)
                wake = len(self._queue) >= self._batch
        if full:
            self._dropped_full.inc()
        elif wake:
            self._wake.set()

    def _take(self) -> list[ReadableSpan]:
        with self._lock:
            count = min(self._batch, len(self._queue))
            return [self._queue.popleft() for _ in range(count)]

    def _export(self, batch: Sequence[ReadableSpan]) -> None:
        try:
            result = self._exporter.export(batch)
        except Exception as exc:  # an exporter bug must not kill the thread
            log.warning("span export raised %r; %d spans dropped", exc, len(batch))
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self._exported.inc(len(batch))
        else:
            self._dropped_failed.inc(len(batch))

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self._delay)
            self._wake.clear()
            self._drain()
        self._drain()  # what was queued before the shutdown

    def _drain(self) -> None:
        self._idle.clear()
        try:
            while batch := self._take():
                self._export(batch)
        finally:
            self._idle.set()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Have the export thread export what is queued now; False when that did not finish
        within ``timeout_millis`` (the caller never exports itself, so never waits longer)."""
        deadline = time.monotonic() + timeout_millis / 1000
        self._wake.set()
        while time.monotonic() < deadline:
            with self._lock:
                empty = not self._queue
            if empty and self._idle.is_set() and not self._wake.is_set():
                return True
            time.sleep(0.005)
        return False

    def shutdown(self, timeout: float = 5.0) -> None:
        """Export what is queued, waiting at most ``timeout`` seconds, and stop the thread (a
        collector that does not answer never holds a stopping service longer)."""
        if self._stopped:
            return
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=timeout)
        if not self._thread.is_alive():
            self._exporter.shutdown()
