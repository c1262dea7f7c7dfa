"""From what was read back to a :class:`FuzzReport`: match every dead letter to the record it
stands for, take the counters' deltas, and run the checks (:mod:`.checks`)."""

from __future__ import annotations

from collections import defaultdict

from aiokafka import TopicPartition
from stepbus_contracts import Topics

from .checks import (
    Observed,
    check_conflicts,
    check_dead_lettered,
    check_lag,
    check_letters,
    check_logs,
    check_no_effect,
    check_nothing_valid_dead_lettered,
    check_refused_counted,
    check_restarts,
    check_sent,
    check_valid,
)
from .observe import Letter
from .records import FUZZED
from .report import FamilyStats, FuzzReport
from .services import deltas

__all__ = ["Observed", "analyse"]


def analyse(report: FuzzReport, seen: Observed) -> None:
    """Fill in ``report`` (made with the run's identity) from what the run collected."""
    topics = seen.topics
    ours = {
        (topics.name(r.topic), r.partition, r.offset): r
        for r in seen.corpus
        if r.offset is not None
    }
    valid_at = {(topics.tasks, t.partition, t.offset): t for t in seen.valid}
    for record in seen.corpus:
        stats = report.families.setdefault(
            record.family, FamilyStats(record.family, record.finding, record.expect)
        )
        stats.topics.add(record.topic)
        stats.variants.add(record.variant)
        if record.send_error:
            stats.refused_by_broker += 1
            continue
        stats.sent += 1
        report.sent[topics.name(record.topic)] += 1
    report.valid_sent = sum(1 for t in seen.valid if t.offset is not None)
    tenants = {t.task_id: t.tenant for t in seen.valid}
    for record in seen.corpus:
        if record.after == "accepted" and record.sent_at is not None:
            ended = seen.ended_at.get((tenants.get(record.target or "", ""), record.target or ""))
            if ended is None or record.sent_at < ended:
                report.families[record.family].while_running += 1

    letters: dict[int, list[Letter]] = defaultdict(list)  # by id() of our record
    foreign: list[tuple[Letter, str]] = []
    nowhere: list[Letter] = []
    report.dlq_total = len(seen.letters)
    for letter in seen.letters:
        origin = letter.origin
        if origin is None:
            nowhere.append(letter)
        elif (mine := ours.get(origin)) is not None:
            letters[id(mine)].append(letter)
            report.dead_lettered[(letter.service, origin[0])] += 1
            report.families[mine.family].dead_lettered += 1
        elif origin in valid_at:
            foreign.append((letter, f"the valid submission of {valid_at[origin].task_id}"))
        elif _during_run(origin, seen.marks, topics):
            foreign.append((letter, f"{origin[0]}[{origin[1]}]@{origin[2]}, not a fuzz record"))

    _metrics(report, seen)
    report.restarts = list(seen.restarts)
    report.broker_outages = seen.broker_outages
    report.peak_rss_kb = {n: (kb, seen.peak_reset.get(n, False)) for n, kb in seen.peak_kb.items()}
    report.rss_kb = dict(seen.rss_kb)
    report.logs = {n: (g.bytes, g.lines, g.longest) for n, g in seen.logs.items()}

    produced = [s for s in seen.outputs if (s.topic, s.partition, s.offset) not in ours]
    report.checks = [
        check_restarts(seen),
        check_valid(report, seen, produced),
        check_lag(report, seen, ours),
        check_dead_lettered(seen, letters),
        check_letters(seen, letters, nowhere),
        check_no_effect(seen, produced),
        check_conflicts(seen, produced),
        check_refused_counted(report, seen, letters),
        check_nothing_valid_dead_lettered(foreign),
        check_logs(seen),
        check_sent(seen),
    ]


def _during_run(
    origin: tuple[str, int, int], marks: dict[TopicPartition, int], topics: Topics
) -> bool:
    if origin[0] not in {topics.name(s) for s in FUZZED}:
        return False
    mark = marks.get(TopicPartition(origin[0], origin[1]))
    return mark is not None and origin[2] >= mark


def _metrics(report: FuzzReport, seen: Observed) -> None:
    for name in seen.services:
        before, after = seen.metrics_before.get(name), seen.metrics_after.get(name)
        if isinstance(before, str) or isinstance(after, str) or before is None or after is None:
            report.metrics_errors.append(f"{name}: {before if isinstance(before, str) else after}")
            continue
        for (metric, labels), change in deltas(before, after).items():
            label = dict(labels)
            service, topic = label.get("service", name), label.get("topic", "?")
            if metric == "stepbus_records_dropped_total":
                key = (service, topic, label.get("reason", "?"))
                report.dropped[key] = report.dropped.get(key, 0.0) + change
            elif metric == "stepbus_records_total":
                key = (service, topic, label.get("outcome", "?"))
                report.outcomes[key] = report.outcomes.get(key, 0.0) + change
