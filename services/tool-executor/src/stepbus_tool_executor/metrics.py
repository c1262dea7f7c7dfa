"""The tool-executor's own metrics (the processor's are in ``stepbus_runtime.metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["FLAGGED_OUTPUTS", "POLICY_DECISIONS", "POLICY_SECONDS", "TOOL_CALLS", "TOOL_SECONDS"]

POLICY_DECISIONS = Counter(
    "stepbus_policy_decisions_total",
    "Tool-policy decisions, by tool and decision (allow, deny, approval_required, "
    "review_required).",
    ["tool", "decision"],
)
POLICY_SECONDS = Histogram(
    "stepbus_policy_check_seconds",
    "Time to decide one call (the task's narrowing, the policy, clearances).",
    buckets=(1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 5e-4, 1e-3, 1e-2),
)
FLAGGED_OUTPUTS = Counter(
    "stepbus_tool_outputs_flagged_total",
    "Tool outputs flagged as likely prompt injections, by tool and kind of finding.",
    ["tool", "kind"],
)
TOOL_CALLS = Counter(
    "stepbus_tool_calls_total",
    "Tool calls answered, by tool and outcome (ok, error, timeout, denied, held, replayed: a "
    "recorded outcome sent again without running the tool); counted once recorded.",
    ["tool", "outcome"],
)
TOOL_SECONDS = Histogram(
    "stepbus_tool_call_seconds",
    "Time to run one tool call (policy and execution; replays and holds excluded).",
    ["tool"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
