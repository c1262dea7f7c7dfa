"""The critic's Prometheus metrics (served on ``/metrics`` with the runtime's)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["CRITIQUES", "JUDGE_SECONDS", "SCORES"]

CRITIQUES = Counter(
    "stepbus_critiques_total",
    "Critiques by kind (answer, tool_call) and outcome (scored, approved, rejected, "
    "invalid_reply, model_error, too_late).",
    ["kind", "outcome"],
)
SCORES = Histogram(
    "stepbus_critic_score",
    "Scores the judge gave draft answers.",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
JUDGE_SECONDS = Histogram(
    "stepbus_critic_judge_seconds",
    "Time of one call to the judge model (a retried critique makes two).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
