"""From what was read back to a :class:`ChaosReport`: how each task ended, tool calls that ran
more than once, and the longest time a task went without progress across a kill."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stepbus_contracts import Topics

from .disruptions import ChaosAction
from .observe import TERMINAL, Record, read_execution_log
from .report import ChaosReport
from .workload import Task

__all__ = ["analyse"]


def analyse(
    report: ChaosReport,
    records: Sequence[Record],
    *,
    tasks: Sequence[Task],
    actions: Sequence[ChaosAction],
    topics: Topics,
    execution_log: Path,
    end_wall: float,
) -> None:
    """Fill in ``report`` (made with the run's identity) from the run's records.

    Args:
        report: The report to fill in.
        records: Every record of ``results``, ``planner.history`` and the DLQ.
        tasks: The run's tasks; those never submitted are left out.
        actions: The disruptions performed, in the order they started.
        topics: The run's topics.
        execution_log: The tool-executor's log of real tool runs.
        end_wall: Wall clock at which the run stopped watching (open stalls end there).
    """
    report.actions = sorted(actions, key=lambda a: a.at)
    ours = {t.task_id: t for t in tasks}
    submitted = [t for t in tasks if t.submitted_at is not None]
    report.submitted = len(submitted)

    results = [r for r in records if r.topic == topics.results]
    history = [r for r in records if r.topic == topics.planner_history]
    report.results_records = len(results)
    report.history_records = len(history)
    report.dlq_records = sum(1 for r in records if r.topic == topics.dlq)

    by_task: dict[str, list[Record]] = defaultdict(list)
    for record in results + history:
        subject = record.event.get("subject")
        if subject in ours:
            by_task[subject].append(record)

    # Terminal events on the public topic: distinct ids per task, raw duplicates overall.
    terminals: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    seen_ids: Counter[str] = Counter()
    for record in results:
        event = record.event
        seen_ids[str(event.get("id"))] += 1
        if event.get("type") in TERMINAL and event.get("subject") in ours:
            terminals[event["subject"]].setdefault(str(event.get("id")), event)
    report.raw_duplicate_records = sum(n - 1 for n in seen_ids.values() if n > 1)

    for task in submitted:
        _judge_end(report, task, terminals.get(task.task_id, {}), by_task.get(task.task_id, []))

    # Tool runs: outcomes the executor says it did not replay, per idempotency key.
    for record in history:
        event = record.event
        if event.get("type") != "stepbus.tool.call_completed" or event.get("subject") not in ours:
            continue
        data = event.get("data") or {}
        key = str(data.get("idempotency_key"))
        report.executions_history.setdefault(key, 0)
        if not data.get("replayed", False):
            report.executions_history[key] += 1
    report.executions_log, report.executions_log_note = read_execution_log(execution_log, ours)

    # Progress gaps that contain a kill instant.
    kills = [(a.at, a) for a in actions if a.kind in ("kill", "broker")]
    for task in submitted:
        assert task.submitted_at is not None
        moments = sorted([task.submitted_at] + [r.timestamp for r in by_task[task.task_id]])
        for before, after in itertools.pairwise(moments):
            inside = [a for at, a in kills if before <= at < after]
            if inside and (
                report.longest_stall is None or after - before > report.longest_stall[0]
            ):
                report.longest_stall = (after - before, task.task_id, _names(inside))
        if task.task_id not in terminals:
            inside = [a for at, a in kills if moments[-1] <= at]
            gap = end_wall - moments[-1]
            if inside and (report.longest_open_stall is None or gap > report.longest_open_stall[0]):
                report.longest_open_stall = (gap, task.task_id, _names(inside))


def _judge_end(
    report: ChaosReport, task: Task, ends: dict[str, dict[str, Any]], records: list[Record]
) -> None:
    """Count ``task`` as lost, ended twice, completed right or wrong, failed or cancelled."""
    if not ends:
        report.lost.append((task.task_id, _last_event(records)))
        return
    if len(ends) > 1:
        types = sorted(e["type"].rsplit(".", 1)[-1] for e in ends.values())
        report.duplicate_terminals.append((task.task_id, types))
        return
    (end,) = ends.values()
    data = end.get("data") or {}
    if end["type"] == "stepbus.task.completed":
        if data.get("output") == task.expected:
            report.completed_ok += 1
        else:
            report.wrong_output.append((task.task_id, task.expected, str(data.get("output"))))
    elif end["type"] == "stepbus.task.failed":
        report.failed.append((task.task_id, str(data.get("reason")), str(data.get("message"))))
    else:
        report.cancelled.append(task.task_id)


def _last_event(records: list[Record]) -> str:
    """The latest event of a task, for the lost-task lines (``type step N (topic)``)."""
    if not records:
        return "none (not even task.accepted)"
    last = max(records, key=lambda r: r.timestamp)
    event = last.event
    step = (event.get("data") or {}).get("step")
    suffix = f" step {step}" if step is not None else ""
    topic = last.topic.rsplit(".", 1)[-1] if last.topic.endswith("results") else "history"
    return f"{event.get('type', '?').removeprefix('stepbus.')}{suffix} ({topic})"


def _names(actions: list[ChaosAction]) -> str:
    """The kills inside a gap, at most three named."""
    names = [
        f"{'broker' if a.kind == 'broker' else a.target} killed at +{a.offset:.1f}s"
        for a in actions
    ]
    more = f" and {len(names) - 3} more kills" if len(names) > 3 else ""
    return ", ".join(names[:3]) + more
