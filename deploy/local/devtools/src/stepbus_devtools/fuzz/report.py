"""What a fuzz run found (:class:`FuzzReport`) and its text, the one ``make fuzz`` prints."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["Check", "FamilyStats", "FuzzReport"]

SHOWN = 5  # examples listed per problem


@dataclass
class Check:
    """One property the run must show; the run fails when any does not hold."""

    name: str
    ok: bool
    summary: str
    evidence: list[str] = field(default_factory=list)


@dataclass
class FamilyStats:
    """How the records of one family fared."""

    name: str
    finding: str
    expect: str
    topics: set[str] = field(default_factory=set)
    sent: int = 0
    refused_by_broker: int = 0
    dead_lettered: int = 0
    variants: set[str] = field(default_factory=set)
    while_running: int = 0
    """Aimed at a running task: how many landed before the task's terminal event was seen."""


@dataclass
class FuzzReport:
    """What a fuzz run measured; :attr:`ok` when every check held."""

    run_id: str
    prefix: str
    seed: int
    bootstrap: str
    records: int = 0
    valid: int = 0
    sent: Counter[str] = field(default_factory=Counter)
    """Bad records sent, by topic."""
    valid_sent: int = 0
    families: dict[str, FamilyStats] = field(default_factory=dict)
    dead_lettered: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Dead letters of the run's records, by (service header, origin topic)."""
    dlq_total: int = 0
    """Every dead letter written during the run, the run's or not."""
    dropped: dict[tuple[str, str, str], float] = field(default_factory=dict)
    """``stepbus_records_dropped_total`` deltas by (service, topic, reason)."""
    outcomes: dict[tuple[str, str, str], float] = field(default_factory=dict)
    """``stepbus_records_total`` deltas by (service, topic, outcome)."""
    metrics_errors: list[str] = field(default_factory=list)
    restarts: list[str] = field(default_factory=list)
    broker_outages: str = ""
    """How long the (shared) broker was unreachable during the run; empty when never."""
    completed_ok: int = 0
    lag: dict[str, dict[str, int]] = field(default_factory=dict)
    """Lag after the run by group, then topic (-1: could not be read)."""
    peak_rss_kb: dict[str, tuple[int, bool]] = field(default_factory=dict)
    """Peak RSS by service, and whether it counts from the run's start."""
    rss_kb: dict[str, int] = field(default_factory=dict)
    logs: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    """Log growth by service: bytes, lines, longest line."""
    checks: list[Check] = field(default_factory=list)
    run_seconds: float = 0.0
    send_seconds: float = 0.0
    logs_dir: str = ""

    @property
    def problems(self) -> list[str]:
        """The checks that failed, with their summary."""
        return [f"{c.name}: {c.summary}" for c in self.checks if not c.ok]

    @property
    def ok(self) -> bool:
        """Whether every check held."""
        return bool(self.checks) and not self.problems

    def check(self, name: str) -> Check:
        """The check called ``name``."""
        return next(c for c in self.checks if c.name == name)

    def text(self) -> str:
        """The report as printed, ending in a ``RESULT: OK`` or ``RESULT: FAIL`` line."""
        lines = [
            f"stepbus fuzz run {self.run_id}: prefix {self.prefix!r}, seed {self.seed}, "
            f"broker {self.bootstrap}; {self.records} bad records, {self.valid} valid tasks",
            "  records sent                                  bad    valid",
        ]
        for topic, count in sorted(self.sent.items()):
            valid = self.valid_sent if topic.endswith(".tasks") else 0
            lines.append(f"      {topic:<40} {count:>6} {valid:>8}")
        lines.append(f"      {'total':<40} {sum(self.sent.values()):>6} {self.valid_sent:>8}")
        lines.append("  per family (finding, expected outcome: dead-lettered / sent)")
        for stats in sorted(self.families.values(), key=lambda s: (s.finding, s.name)):
            refused = f", {stats.refused_by_broker} refused by the broker" * bool(
                stats.refused_by_broker
            )
            running = (
                f", {stats.while_running} landed while their task ran"
                if stats.while_running
                else ""
            )
            lines.append(
                f"      {stats.finding:>7} {stats.name:<22} {stats.expect:<11} "
                f"{stats.dead_lettered:>5} / {stats.sent:<5} ({len(stats.variants)} variants, "
                f"{len(stats.topics)} topics{refused}{running})"
            )
        lines.append(
            f"  dead-lettered (read from the DLQ): {sum(self.dead_lettered.values())} of the "
            f"run's records ({self.dlq_total} dead letters written in all)"
        )
        for (service, topic), letters in sorted(self.dead_lettered.items()):
            lines.append(f"      {service:<14} {topic:<40} {letters:>6}")
        lines.append("  dropped with reason (stepbus_records_dropped_total during the run)")
        if not self.dropped:
            lines.append("      none")
        for (service, topic, reason), dropped in sorted(self.dropped.items()):
            lines.append(f"      {service:<14} {topic:<32} {reason:<24} {dropped:>6.0f}")
        lines += [f"      metrics unreadable: {e}" for e in self.metrics_errors]
        lines.append("  records handled (stepbus_records_total during the run)")
        for (service, topic, outcome), handled in sorted(self.outcomes.items()):
            lines.append(f"      {service:<14} {topic:<32} {outcome:<24} {handled:>6.0f}")
        lines.append(f"  service restarts (must be 0)                  {len(self.restarts)}")
        lines += [f"      {r}" for r in self.restarts]
        lines.append(
            f"  broker unreachable during the run             {self.broker_outages or 'never'}"
        )
        lines.append(
            f"  valid tasks completed exactly once (must be {self.valid})   {self.completed_ok}"
        )
        lines.append("  committed-offset lag after the run (must be 0)")
        for group, topics in sorted(self.lag.items()):
            shown = ", ".join(f"{t} {n if n >= 0 else '?'}" for t, n in sorted(topics.items()))
            lines.append(f"      {group}: {shown}")
        lines.append("  peak RSS per service (VmHWM)")
        for name, (kb, reset) in sorted(self.peak_rss_kb.items()):
            since = "during the run" if reset else "since the process started"
            now = self.rss_kb.get(name)
            lines.append(
                f"      {name:<14} {kb / 1024:7.1f} MiB {since}"
                + (f" (RSS at the end {now / 1024:.1f} MiB)" if now else "")
            )
        lines.append(f"  service logs written during the run ({self.logs_dir})")
        for name, (size, count, longest) in sorted(self.logs.items()):
            lines.append(
                f"      {name:<14} {size / 1024:9.1f} KiB, {count} lines, longest {longest} B"
            )
        total = sum(size for size, _, _ in self.logs.values())
        lines.append(f"      {'total':<14} {total / 1024:9.1f} KiB")
        lines.append("  checks")
        for check in self.checks:
            lines.append(f"      {'PASS' if check.ok else 'FAIL'}  {check.name}: {check.summary}")
            lines += [f"              {e}" for e in check.evidence]
        lines.append(f"  time: {self.send_seconds:.1f}s sending, {self.run_seconds:.1f}s in all")
        problems = self.problems
        outage = (
            f" (the broker was unreachable {self.broker_outages}: someone stopped it?)"
            if self.broker_outages and problems
            else ""
        )
        lines.append(
            "RESULT: "
            + ("OK: every check held" if not problems else "FAIL: " + "; ".join(problems))
            + outage
        )
        return "\n".join(lines)
