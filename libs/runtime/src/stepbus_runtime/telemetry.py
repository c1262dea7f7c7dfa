"""OpenTelemetry and logging set up in one place; degrades instead of crashing.

Configured by the standard variables: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``http/protobuf``,
the default, or ``grpc``), ``OTEL_SERVICE_NAME`` (defaults to the service's own name),
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` (and ``_ARG``), ``OTEL_BSP_*`` for the
export queue (``export``). Logging: ``STEPBUS_LOG_FORMAT`` (``json``, or ``text`` for a
terminal) and ``STEPBUS_LOG_LEVEL`` (``logfmt``).
"""

from __future__ import annotations

import logging
import os
import socket

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

from .export import BoundedExportProcessor
from .logfmt import bound_fields, configure_logging
from .tracing import STEP, TASK_ID, TENANT, fixed_id_override

__all__ = ["StepbusIdGenerator", "TaskAttributes", "setup_telemetry", "span_exporter"]

log = logging.getLogger(__name__)


class StepbusIdGenerator(RandomIdGenerator):
    """Random ids, except for a span whose ids were planned (``tracing.fixed_ids``)."""

    def generate_span_id(self) -> int:
        """The planned span id inside ``fixed_ids``, else a random one."""
        fixed = fixed_id_override()
        return fixed[1] if fixed else super().generate_span_id()

    def generate_trace_id(self) -> int:
        """The planned trace id inside ``fixed_ids``, else a random one."""
        fixed = fixed_id_override()
        return fixed[0] if fixed else super().generate_trace_id()


_TASK_FIELDS = (("task_id", TASK_ID), ("tenant", TENANT), ("step", STEP))


class TaskAttributes(SpanProcessor):
    """Puts ``stepbus.task.id``, ``stepbus.tenant`` and ``stepbus.step`` on every span started
    while a record of a task is handled (the fields ``logfmt.log_context`` binds), so any span
    of a task, client library spans included, is found from the task id."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Copy the bound task fields onto the new span."""
        fields = bound_fields()
        if not fields or not span.is_recording():
            return
        given = span.attributes or {}
        found = {
            name: value
            for key, name in _TASK_FIELDS
            if isinstance(value := fields.get(key), str | int) and name not in given
        }
        if found:
            span.set_attributes(found)  # once: each call takes the span's lock


def span_exporter() -> SpanExporter | None:
    """The OTLP exporter the environment asks for, or None when no endpoint is set."""
    if not (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    ):
        return None
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()
    if protocol not in ("http/protobuf", "http/json"):
        log.warning(
            "OTEL_EXPORTER_OTLP_PROTOCOL=%r is not supported; using http/protobuf", protocol
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter()


def _resource(service_name: str) -> Resource:
    """``service.name`` (``OTEL_SERVICE_NAME`` wins), the instance, and
    ``OTEL_RESOURCE_ATTRIBUTES``."""
    attributes: dict[str, str] = {
        "service.namespace": "stepbus",
        "service.instance.id": os.environ.get("STEPBUS_GROUP_INSTANCE_ID")
        or f"{socket.gethostname()}-{os.getpid()}",
    }
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = service_name
    return Resource.create(attributes)


def setup_telemetry(service_name: str) -> None:
    """Configure logging and the tracer provider for ``service_name``.

    Spans get real ids (so ``traceparent`` flows through Kafka headers) in every case. They
    are exported when an OTLP endpoint is set; without one (and without
    ``OTEL_TRACES_SAMPLER``) only traces sampled upstream are recorded, since nothing would
    receive the others (a recorded span and its context cost ~25 µs per record, an unrecorded
    one ~14 µs, measured). An exporter that cannot be built is logged, never fatal.
    """
    configure_logging(service_name)
    try:
        exporter = span_exporter()
    except Exception as exc:  # a missing or broken exporter must not stop the service
        log.warning("OTLP exporter unavailable (%r); spans are not exported", exc)
        exporter = None
    sampler = None  # the SDK's default, or OTEL_TRACES_SAMPLER
    if exporter is None and not os.environ.get("OTEL_TRACES_SAMPLER"):
        # Record no trace that starts here, but keep real ids so the context still flows.
        sampler = ParentBased(ALWAYS_OFF)
    provider = TracerProvider(
        resource=_resource(service_name), sampler=sampler, id_generator=StepbusIdGenerator()
    )
    provider.add_span_processor(TaskAttributes())
    if exporter is not None:
        provider.add_span_processor(BoundedExportProcessor(exporter, service_name))
    trace.set_tracer_provider(provider)


def shutdown_telemetry() -> None:
    """Export the spans still queued (bounded), at shutdown."""
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if callable(shutdown):
        try:
            shutdown()
        except Exception as exc:
            log.warning("tracer provider shutdown failed: %r", exc)
