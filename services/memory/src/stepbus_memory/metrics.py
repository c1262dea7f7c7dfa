"""The memory service's Prometheus metrics (served on ``/metrics`` with the runtime's)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["RECALLS", "RECALL_HITS", "RECALL_SECONDS"]

RECALLS = Counter(
    "stepbus_memory_recalls_total",
    "Recalls answered, by outcome (ok, empty: nothing found, failed: a store unavailable).",
    ["outcome"],
)
RECALL_HITS = Histogram(
    "stepbus_memory_recall_hits",
    "Long-term memories returned by one recall.",
    buckets=(0, 1, 2, 3, 5, 8, 13, 20),
)
RECALL_SECONDS = Histogram(
    "stepbus_memory_recall_seconds",
    "Time to answer one recall (session turns, embedding, search).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)
