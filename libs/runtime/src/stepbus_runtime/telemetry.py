"""OpenTelemetry and logging set up in one place; degrades instead of crashing."""

from __future__ import annotations

import logging
import os

from opentelemetry import trace

__all__ = ["setup_telemetry"]

log = logging.getLogger(__name__)


def setup_telemetry(service_name: str) -> None:
    """Configure logging and a tracer provider for ``service_name``.

    Spans get real ids (so ``traceparent`` flows through Kafka headers) whenever the
    OpenTelemetry SDK is installed; they are exported over OTLP when
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set and the exporter package is present.
    """
    logging.basicConfig(
        level=os.environ.get("STEPBUS_LOG_LEVEL", "INFO").upper(),
        format=f"%(asctime)s {service_name} %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:  # API only: context still propagates, spans are not recorded
        log.info("opentelemetry-sdk not installed; tracing is propagation-only")
        return
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        except Exception as exc:  # a missing or broken exporter must not stop the service
            log.warning("OTLP exporter unavailable (%r); spans are not exported", exc)
    trace.set_tracer_provider(provider)
