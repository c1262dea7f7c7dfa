"""The topic catalog: every topic stepbus uses, what flows on it, and how it is kept.

Wire names are written out here, never derived from Python names. All topic names share a
configurable prefix (default ``stepbus.``) so several deployments, or tests, can share a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DEFAULT_PREFIX", "TopicSpec", "Topics"]

DEFAULT_PREFIX = "stepbus."

_DAY_MS = 24 * 60 * 60 * 1000

# Per-task state (snapshots, ledger): compacted to the latest record per task, entries older
# than the journal's retention dropped, hourly segments so compaction can run.
_STATE_TOPIC_CONFIGS = {
    "cleanup.policy": "compact,delete",
    "retention.ms": str(7 * _DAY_MS),
    "segment.ms": str(60 * 60 * 1000),
    "min.cleanable.dirty.ratio": "0.2",
}


@dataclass(frozen=True)
class TopicSpec:
    """How one topic is created: partitions and topic-level configs."""

    suffix: str
    description: str
    partitions: int = 6
    configs: dict[str, str] = field(default_factory=dict)


_SPECS: tuple[TopicSpec, ...] = (
    TopicSpec(
        "tasks",
        "Public input: task submissions, cancellations, approval decisions, memory events "
        "(CloudEvents).",
        configs={"retention.ms": str(7 * _DAY_MS)},
    ),
    TopicSpec(
        "planner.history",
        "Each task's journal and the planner's inbox; folding it rebuilds the planner state.",
        configs={"retention.ms": str(7 * _DAY_MS)},
    ),
    TopicSpec(
        "planner.snapshots",
        "The planner's latest state per task (key = task id), compacted: replay after a crash "
        "reads a snapshot plus the journal tail, never the whole journal.",
        configs=_STATE_TOPIC_CONFIGS,
    ),
    TopicSpec(
        "tool.calls",
        "Commands to the tool-executor: run one tool call under its idempotency key.",
        configs={"retention.ms": str(7 * _DAY_MS)},
    ),
    TopicSpec(
        "tool.ledger",
        "The tool-executor's idempotency ledger: every outcome of a task (key = task id), "
        "compacted, co-partitioned with tool.calls.",
        configs=_STATE_TOPIC_CONFIGS,
    ),
    TopicSpec(
        "tool.catalog",
        "The tools the executors offer, one record per tool (key = tool name), compacted.",
        partitions=1,
        configs={"cleanup.policy": "compact"},
    ),
    TopicSpec(
        "memory.requests",
        "Commands to the memory service: recall a task's context, remember a fact.",
        configs={"retention.ms": str(7 * _DAY_MS)},
    ),
    TopicSpec(
        "memory.items",
        "The memory service's journal of long-term memories (key = memory id; forget markers "
        "keyed by scope), compacted and kept forever: reindexing Qdrant reads it.",
        configs={"cleanup.policy": "compact", "segment.ms": str(60 * 60 * 1000)},
    ),
    TopicSpec(
        "memory.sessions",
        "Session turns (key = tenant, session and task), compacted and kept 7 days: what "
        "rebuilds the short-term memory in Redis after a flush.",
        configs=_STATE_TOPIC_CONFIGS,
    ),
    TopicSpec(
        "critic.requests",
        "Commands to the critic: judge a draft answer, review a tool call before it runs.",
        configs={"retention.ms": str(7 * _DAY_MS)},
    ),
    TopicSpec(
        "results",
        "Public output: progress and exactly one terminal event per task (CloudEvents).",
        configs={"retention.ms": str(7 * _DAY_MS)},
    ),
    TopicSpec(
        "audit",
        "The audit trail: every tool-policy decision, resolved approval and flagged tool "
        "output (key = task id), kept 90 days.",
        configs={"retention.ms": str(90 * _DAY_MS)},
    ),
    TopicSpec(
        "dlq",
        "Records that could not be decoded or processed; error and origin in headers.",
        partitions=1,
        configs={"retention.ms": str(30 * _DAY_MS)},
    ),
    TopicSpec(
        "dlq.redriven",
        "Markers of re-driven dead letters (key = `<partition>:<offset>` in the DLQ), compacted.",
        partitions=1,
        configs={"cleanup.policy": "compact"},
    ),
    TopicSpec(
        "payloads",
        "Claim check: chunks of events too big for one record (key = payload id).",
        configs={"cleanup.policy": "delete", "retention.ms": str(7 * _DAY_MS)},
    ),
)


@dataclass(frozen=True)
class Topics:
    """Topic names under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def name(self, suffix: str) -> str:
        """The full topic name for a catalog suffix such as ``"tasks"``."""
        return f"{self.prefix}{suffix}"

    @property
    def tasks(self) -> str:
        """Public input topic."""
        return self.name("tasks")

    @property
    def planner_history(self) -> str:
        """The planner's journal and inbox."""
        return self.name("planner.history")

    @property
    def planner_snapshots(self) -> str:
        """The planner's compacted state snapshots."""
        return self.name("planner.snapshots")

    @property
    def tool_calls(self) -> str:
        """Commands to the tool-executor."""
        return self.name("tool.calls")

    @property
    def tool_ledger(self) -> str:
        """The tool-executor's compacted idempotency ledger."""
        return self.name("tool.ledger")

    @property
    def tool_catalog(self) -> str:
        """The compacted tool catalog."""
        return self.name("tool.catalog")

    @property
    def memory_requests(self) -> str:
        """Commands to the memory service."""
        return self.name("memory.requests")

    @property
    def memory_items(self) -> str:
        """The memory service's compacted journal of long-term memories."""
        return self.name("memory.items")

    @property
    def memory_sessions(self) -> str:
        """The memory service's compacted session turns."""
        return self.name("memory.sessions")

    @property
    def critic_requests(self) -> str:
        """Commands to the critic."""
        return self.name("critic.requests")

    @property
    def results(self) -> str:
        """Public output topic."""
        return self.name("results")

    @property
    def audit(self) -> str:
        """The audit trail of tool calls."""
        return self.name("audit")

    @property
    def dlq(self) -> str:
        """Dead-letter topic."""
        return self.name("dlq")

    @property
    def dlq_redriven(self) -> str:
        """Markers of re-driven dead letters."""
        return self.name("dlq.redriven")

    @property
    def payloads(self) -> str:
        """Claim-checked payloads."""
        return self.name("payloads")

    def specs(self) -> list[tuple[str, TopicSpec]]:
        """Every topic of the catalog with its full name."""
        return [(self.name(spec.suffix), spec) for spec in _SPECS]
