"""What stepbus services share at run time: the Kafka processor, settings and telemetry."""

from .admin import delete_namespace, ensure_topics, topic_partitions
from .claimcheck import ClaimCheckError, PayloadReaders, PayloadRef, PayloadStore
from .codec import decode, encode
from .deadletter import dead_letter
from .errors import DecodeError, PermanentError, RetryableError, StepbusError
from .gctune import tune_gc
from .health import serve_health
from .logs import ClippingFilter, clip, install_clipping
from .processor import Handler, PartitionListener, Processor, RecordContext, Route
from .publisher import Emit, EventPublisher
from .replay import iter_latest, iter_to_end, read_latest, read_to_end, resolve_or_skip
from .settings import ServiceSettings
from .telemetry import setup_telemetry
from .tracing import extract_context, inject_context
from .worker import run_worker, service_processor, service_publisher

__all__ = [
    "ClaimCheckError",
    "ClippingFilter",
    "DecodeError",
    "Emit",
    "EventPublisher",
    "Handler",
    "PartitionListener",
    "PayloadReaders",
    "PayloadRef",
    "PayloadStore",
    "PermanentError",
    "Processor",
    "RecordContext",
    "RetryableError",
    "Route",
    "ServiceSettings",
    "StepbusError",
    "clip",
    "dead_letter",
    "decode",
    "delete_namespace",
    "encode",
    "ensure_topics",
    "extract_context",
    "inject_context",
    "install_clipping",
    "iter_latest",
    "iter_to_end",
    "read_latest",
    "read_to_end",
    "resolve_or_skip",
    "run_worker",
    "serve_health",
    "service_processor",
    "service_publisher",
    "setup_telemetry",
    "topic_partitions",
    "tune_gc",
]
