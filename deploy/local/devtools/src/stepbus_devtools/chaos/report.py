"""What a chaos run found (:class:`ChaosReport`) and its text, the one ``make chaos`` prints."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .disruptions import ChaosAction

__all__ = ["ChaosReport"]

SHOWN = 8  # examples listed per category


@dataclass
class ChaosReport:
    """What a chaos run found; :attr:`problems` is empty when the invariants held."""

    run_id: str
    prefix: str
    seed: int
    bootstrap: str
    submitted: int = 0
    completed_ok: int = 0
    wrong_output: list[tuple[str, str, str]] = field(default_factory=list)  # id, want, got
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # id, reason, message
    cancelled: list[str] = field(default_factory=list)
    lost: list[tuple[str, str]] = field(default_factory=list)  # id, last event seen
    duplicate_terminals: list[tuple[str, list[str]]] = field(default_factory=list)
    raw_duplicate_records: int = 0  # same event id on results more than once (allowed)
    executions_log: dict[str, int] | None = None  # key -> runs, None: no log
    executions_log_note: str = ""
    executions_history: dict[str, int] = field(default_factory=dict)  # key -> replayed=false
    actions: list[ChaosAction] = field(default_factory=list)
    longest_stall: tuple[float, str, str] | None = None  # seconds, task id, kills inside
    longest_open_stall: tuple[float, str, str] | None = None  # for tasks that never ended
    dlq_records: int = 0
    history_records: int = 0
    results_records: int = 0
    run_seconds: float = 0.0
    logs: str = ""

    @property
    def doubled_log(self) -> dict[str, int]:
        """Idempotency keys the execution log shows run more than once, with their runs."""
        return {k: n for k, n in (self.executions_log or {}).items() if n > 1}

    @property
    def doubled_history(self) -> dict[str, int]:
        """Idempotency keys with more than one ``call_completed`` not marked replayed."""
        return {k: n for k, n in self.executions_history.items() if n > 1}

    @property
    def problems(self) -> list[str]:
        """Violated invariants; the run fails when there is any."""
        found = []
        if self.lost:
            found.append(f"{len(self.lost)} task(s) lost (no terminal event)")
        if self.duplicate_terminals:
            found.append(f"{len(self.duplicate_terminals)} task(s) with >1 distinct terminal event")
        if self.wrong_output:
            found.append(f"{len(self.wrong_output)} task(s) completed with a wrong output")
        doubled = self.doubled_log if self.executions_log is not None else self.doubled_history
        if doubled:
            source = "execution log" if self.executions_log is not None else "history"
            found.append(f"{len(doubled)} tool call(s) executed more than once ({source})")
        errors = [a for a in self.actions if a.error]
        if errors:
            found.append(f"{len(errors)} chaos action(s) failed: {errors[0].error}")
        return found

    @property
    def ok(self) -> bool:
        """Whether every invariant held."""
        return not self.problems

    def text(self) -> str:
        """The report as printed, ending in a ``RESULT: OK`` or ``RESULT: FAIL`` line."""
        lines = [
            f"stepbus chaos run {self.run_id}: prefix {self.prefix!r}, seed {self.seed}, "
            f"broker {self.bootstrap}",
            f"  tasks submitted                         {self.submitted}",
            f"  completed exactly once, right output    {self.completed_ok}",
            f"  completed with a wrong output           {len(self.wrong_output)}",
        ]
        lines += [f"      {t}: expected {w!r}, got {g!r}" for t, w, g in self.wrong_output[:SHOWN]]
        lines.append(f"  failed                                  {len(self.failed)}")
        reasons = Counter(reason for _, reason, _ in self.failed)
        for reason, count in reasons.most_common():
            example = next(m for _, r, m in self.failed if r == reason)
            lines.append(f"      {count} x {reason}: e.g. {example[:160]}")
        if self.cancelled:
            lines.append(f"  cancelled                               {len(self.cancelled)}")
        lines.append(f"  lost (no terminal event)                {len(self.lost)}")
        lines += [f"      {t}: last event {last}" for t, last in self.lost[:SHOWN]]
        if len(self.lost) > SHOWN:
            lasts = Counter(last.split(" ")[0] for _, last in self.lost)
            lines.append(f"      last events of all lost tasks: {dict(lasts)}")
        lines.append(f"  tasks with >1 distinct terminal event   {len(self.duplicate_terminals)}")
        lines += [f"      {t}: {types}" for t, types in self.duplicate_terminals[:SHOWN]]
        lines.append(
            f"  raw duplicate records on results        {self.raw_duplicate_records} "
            "(same event id again: allowed, at-least-once)"
        )
        if self.executions_log is None:
            log_line = f"n/a ({self.executions_log_note})"
        else:
            log_line = (
                f"{len(self.doubled_log)} of {len(self.executions_log)} keys "
                f"({self.executions_log_note})"
            )
        lines.append(f"  tool calls executed >1x (execution log) {log_line}")
        lines += [f"      {k}: {n} runs" for k, n in list(self.doubled_log.items())[:SHOWN]]
        lines.append(
            f"  tool calls executed >1x (history)       {len(self.doubled_history)} of "
            f"{len(self.executions_history)} keys (call_completed with replayed=false)"
        )
        lines += [
            f"      {k}: {n} x replayed=false"
            for k, n in list(self.doubled_history.items())[:SHOWN]
        ]
        lines.append(f"  chaos performed ({len(self.actions)} actions):")
        lines += [f"      {action.describe()}" for action in self.actions]
        if self.longest_stall is not None:
            gap, task, kills = self.longest_stall
            lines.append(
                f"  longest time without progress across a kill: {gap:.1f}s (task {task}; {kills})"
            )
        else:
            lines.append("  longest time without progress across a kill: n/a (no gap spans a kill)")
        if self.longest_open_stall is not None:
            gap, task, kills = self.longest_open_stall
            lines.append(
                f"  ... and tasks that never resumed: {gap:.1f}s since their last event "
                f"(task {task}; {kills})"
            )
        lines.append(
            f"  records read: results {self.results_records}, planner.history "
            f"{self.history_records}, dlq {self.dlq_records}"
        )
        lines.append(f"  total run time                          {self.run_seconds:.1f}s")
        lines.append(f"  logs: {self.logs}")
        problems = self.problems
        lines.append(
            "RESULT: "
            + ("OK: every invariant held" if not problems else "FAIL: " + "; ".join(problems))
        )
        return "\n".join(lines)
