"""Prometheus metrics shared by every service, labelled by service name."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "CONSUMER_LAG",
    "DLQ_RECORDS",
    "DROPPED_RECORDS",
    "IN_FLIGHT",
    "RECORDS",
    "RECORD_SECONDS",
]

RECORDS = Counter(
    "stepbus_records_total",
    "Records processed, by topic, event type and outcome (ok, dead_lettered, dropped).",
    ["service", "topic", "type", "outcome"],
)
RECORD_SECONDS = Histogram(
    "stepbus_record_seconds",
    "Time from a record's start to its outputs being acknowledged.",
    ["service", "topic"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
IN_FLIGHT = Gauge("stepbus_in_flight_records", "Records started and not finished.", ["service"])
DLQ_RECORDS = Counter(
    "stepbus_dlq_records_total", "Records sent to the dead-letter topic.", ["service", "topic"]
)
DROPPED_RECORDS = Counter(
    "stepbus_records_dropped_total",
    "Records dropped without a dead letter (refused by a handler, or not even dead-letterable), "
    "by reason.",
    ["service", "topic", "reason"],
)
CONSUMER_LAG = Gauge(
    "stepbus_consumer_lag_records",
    "Records of an owned partition not yet committed: the log end offset last fetched minus "
    "the committed position (measured by the service at each commit).",
    ["service", "topic", "partition"],
)
