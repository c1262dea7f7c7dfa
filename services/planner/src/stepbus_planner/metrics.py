"""The planner's Prometheus metrics (served on ``/metrics`` with the runtime's).

Work is counted once it is recorded (``Emit.on_acked``): a task, a step or a decision's tokens
are counted by the replica that recorded them, never again by one that reads them back from
the journal after a crash (``stepbus_replayed_steps_total`` counts those). Every work metric
has a ``mode`` label: ``live`` for production, ``replay`` and ``shadow`` for the planners of
``stepbus replay`` and ``--shadow`` (dashboards and alerts count ``mode="live"`` only).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "APPROVALS_WAITING",
    "APPROVAL_OLDEST_WAIT",
    "MODES",
    "REPLAYED_STEPS",
    "STEP_SECONDS",
    "TASKS_ACCEPTED",
    "TASKS_FINISHED",
    "TASKS_IN_FLIGHT",
    "TASK_SECONDS",
]

MODES = ("live", "replay", "shadow")
"""Values of the ``mode`` label."""

TASKS_ACCEPTED = Counter(
    "stepbus_tasks_accepted_total", "Tasks accepted and started, by mode.", ["mode"]
)
TASKS_FINISHED = Counter(
    "stepbus_tasks_finished_total",
    "Tasks ended, by outcome (completed, failed, cancelled), for failures reason, and mode.",
    ["outcome", "reason", "mode"],
)
TASK_SECONDS = Histogram(
    "stepbus_task_duration_seconds",
    "Time from a task's acceptance to its end, by outcome and mode.",
    ["outcome", "mode"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600),
)
STEP_SECONDS = Histogram(
    "stepbus_step_duration_seconds",
    "Time of one ReAct step: from the event that called for a decision (the task's start, "
    "a tool result, a verdict) to the decision recorded, the model call included; by mode.",
    ["mode"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
TASKS_IN_FLIGHT = Gauge(
    "stepbus_tasks_in_flight", "Tasks running in the partitions this replica owns."
)
REPLAYED_STEPS = Counter(
    "stepbus_replayed_steps_total",
    "Steps redone from the journal after a crash or a rebalance (not asked of the model "
    "again, not counted as work), by mode.",
    ["service", "mode"],
)
APPROVALS_WAITING = Gauge(
    "stepbus_approvals_waiting", "Tool calls waiting for a person's approval."
)
APPROVAL_OLDEST_WAIT = Gauge(
    "stepbus_approval_oldest_wait_seconds",
    "How long the oldest waiting approval has waited (0: none waits).",
)
