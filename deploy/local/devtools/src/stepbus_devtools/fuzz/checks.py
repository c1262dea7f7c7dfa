"""The properties a fuzz run must show, one :class:`Check` each, with the evidence of what
broke it; and :class:`Observed`, everything a run collected that they look at."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from stepbus_contracts import Topics

from .observe import TERMINAL, Letter, Seen
from .records import CONSUMERS, INTRUDER, FuzzRecord, ValidTask
from .report import SHOWN, Check, FuzzReport
from .services import LogGrowth, Samples, Service

__all__ = [
    "LOG_LINE_LIMIT",
    "Observed",
    "check_conflicts",
    "check_dead_lettered",
    "check_lag",
    "check_letters",
    "check_logs",
    "check_no_effect",
    "check_nothing_valid_dead_lettered",
    "check_refused_counted",
    "check_restarts",
    "check_sent",
    "check_valid",
]

REQUIRED_HEADERS = (
    "stepbus.service",
    "stepbus.origin.topic",
    "stepbus.origin.partition",
    "stepbus.origin.offset",
    "stepbus.error",
    "stepbus.error.type",
)
"""Headers every dead letter carries."""

KEY_LIMIT = 1024
"""Bytes of a key a dead letter keeps at least (``stepbus_runtime.deadletter.KEY_LIMIT``)."""

LOG_LINE_LIMIT = 16 * 1024
"""Longest log line a service may write, whatever a record holds (finding 11)."""

LOG_BYTES_PER_RECORD = 2048
"""Average log bytes a bad record may cost, across the services (plus 1 MiB of slack)."""


@dataclass
class Observed:
    """Everything a run collected, for :func:`analyse`."""

    topics: Topics
    corpus: Sequence[FuzzRecord]
    valid: Sequence[ValidTask]
    outputs: Sequence[Seen]
    """Records written during the run to results, planner.history, tool.calls, the snapshot
    and ledger topics (ours among them)."""
    letters: Sequence[Letter]
    marks: dict[TopicPartition, int]
    services: dict[str, Service]
    metrics_before: dict[str, Samples | str]
    metrics_after: dict[str, Samples | str]
    restarts: Sequence[str]
    broker_outages: str
    peak_kb: dict[str, int]
    peak_reset: dict[str, bool]
    rss_kb: dict[str, int]
    logs: dict[str, LogGrowth]
    ended_at: dict[tuple[str, str], float] = field(default_factory=dict)
    """When each (tenant, task) was first seen ended on ``results`` (the run's monitor)."""
    lag: dict[str, dict[TopicPartition, tuple[int, int]] | str] = field(default_factory=dict)


def _where(record: FuzzRecord, topics: Topics) -> str:
    return f"{record.family}/{record.variant} at {record.where(topics)}"


def _log_hint(seen: Observed, record: FuzzRecord) -> str:
    """The consumer's log line about ``record`` (the processor and the feed both write
    ``topic[partition]@offset``), clipped."""
    service = CONSUMERS[record.topic][0]
    needle = f"{seen.topics.name(record.topic)}[{record.partition}]@{record.offset}"
    growth = seen.logs.get(service)
    text = growth.text if growth is not None else ""
    at = text.find(needle + ":") if needle + ":" in text else text.find(needle)
    if at < 0:
        return f"{service} logged nothing about it"
    start = text.rfind("\n", 0, at) + 1
    end = text.find("\n", at)
    return f"{service} log: {text[start : end if end >= 0 else None][:220]}"


def check_restarts(seen: Observed) -> Check:
    name = "no service restarted"
    if not seen.restarts:
        return Check(name, True, f"{', '.join(seen.services)}: same pid, alive, all along")
    evidence = list(seen.restarts)
    for service, growth in seen.logs.items():
        if any(r.startswith(f"{service}:") for r in seen.restarts):
            tail = [line for line in growth.text.splitlines() if line.strip()][-2:]
            evidence += [f"  {service} log ends: {line[:200]}" for line in tail]
    return Check(name, False, f"{len(seen.restarts)} restart(s) or death(s)", evidence)


def check_valid(report: FuzzReport, seen: Observed, produced: Sequence[Seen]) -> Check:
    results, history = seen.topics.results, seen.topics.planner_history
    ends: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    last: dict[str, str] = {}
    for out in produced:
        event = out.event or {}
        subject = out.subject or ""
        if out.topic == results and event.get("type") in TERMINAL:
            ends[(str(event.get("tenant")), subject)].setdefault(str(event.get("id")), event)
        if out.topic == history and event.get("type"):
            step = (event.get("data") or {}).get("step")
            last[subject] = str(event["type"]).removeprefix("stepbus.") + (
                f" step {step}" if step is not None else ""
            )
    aimed: dict[str, list[str]] = defaultdict(list)
    for record in seen.corpus:
        if record.target:
            aimed[record.target].append(f"{record.family}/{record.variant}")
    evidence: list[str] = []
    ok = 0
    problems: Counter[str] = Counter()
    for task in seen.valid:
        mine = ends.get((task.tenant, task.task_id), {})
        by = f" (aimed at by {', '.join(aimed[task.task_id])})" if task.task_id in aimed else ""
        if not mine:
            problems["lost"] += 1
            evidence.append(
                f"{task.task_id}: no terminal event; last on the journal: "
                f"{last.get(task.task_id, 'nothing (not even accepted)')}{by}"
            )
            continue
        if len(mine) > 1:
            problems["ended more than once"] += 1
            types = sorted(str(e.get("type")).rsplit(".", 1)[-1] for e in mine.values())
            evidence.append(f"{task.task_id}: {len(mine)} distinct terminal events {types}{by}")
            continue
        (end,) = mine.values()
        data = end.get("data") or {}
        if end.get("type") == "stepbus.task.completed" and data.get("output") == task.expected:
            ok += 1
        elif end.get("type") == "stepbus.task.completed":
            problems["wrong output"] += 1
            evidence.append(
                f"{task.task_id}: output {str(data.get('output'))[:80]!r}, "
                f"expected {task.expected!r}{by}"
            )
        else:
            kind = str(end.get("type")).rsplit(".", 1)[-1]
            problems[kind] += 1
            evidence.append(
                f"{task.task_id}: {kind} ({data.get('reason', '')}: "
                f"{str(data.get('message', ''))[:120]}){by}"
            )
    report.completed_ok = ok
    summary = f"{ok} of {len(seen.valid)}"
    if problems:
        summary += " (" + ", ".join(f"{n} {k}" for k, n in problems.most_common()) + ")"
    return Check(
        "valid tasks completed exactly once", ok == len(seen.valid), summary, evidence[: SHOWN * 2]
    )


def check_lag(report: FuzzReport, seen: Observed, ours: dict[Any, FuzzRecord]) -> Check:
    evidence: list[str] = []
    total = 0
    for name, service in seen.services.items():
        lag = seen.lag.get(name)
        group = service.group.group_id
        if not isinstance(lag, dict):
            report.lag[group] = {t: -1 for t in service.group.topics}
            evidence.append(f"{group}: offsets not readable ({lag})")
            total += 1
            continue
        per_topic: Counter[str] = Counter({t: 0 for t in service.group.topics})
        stuck: list[str] = []
        for tp, (committed, behind) in sorted(lag.items()):
            per_topic[tp.topic] += behind
            if behind:
                at = ours.get((tp.topic, tp.partition, committed))
                what = (
                    f"fuzz record {at.family}/{at.variant}" if at else "a record not from the fuzz"
                )
                stuck.append(f"[{tp.partition}] at {committed}: {what}")
        report.lag[group] = dict(per_topic)
        behind_here = sum(per_topic.values())
        total += behind_here
        if behind_here:
            evidence.append(
                f"{group}: {behind_here} behind on {len(stuck)} partition(s); stuck at "
                + "; ".join(stuck[:3])
                + (" ..." if len(stuck) > 3 else "")
            )
    summary = "every group committed the end" if not total else f"{total} record(s) uncommitted"
    return Check("committed-offset lag is 0", total == 0, summary, evidence)


def check_dead_lettered(seen: Observed, letters: dict[int, list[Letter]]) -> Check:
    missing: dict[str, list[FuzzRecord]] = defaultdict(list)
    expected = 0
    for record in seen.corpus:
        if record.expect != "dead_letter" or record.send_error:
            continue
        expected += 1
        if not letters.get(id(record)):
            missing[record.family].append(record)
    evidence = []
    for family, records in sorted(missing.items(), key=lambda kv: -len(kv[1])):
        variants = Counter(r.variant for r in records)
        evidence.append(
            f"{family} (finding {records[0].finding}): {len(records)} not dead-"
            f"lettered; variants {dict(variants.most_common(6))}"
        )
        for record in records[:2]:
            evidence.append(f"  e.g. {_where(record, seen.topics)}: {_log_hint(seen, record)}")
    lost = sum(len(r) for r in missing.values())
    return Check(
        "bad records dead-lettered",
        not lost,
        f"{expected - lost} of {expected} that must be",
        evidence,
    )


def check_letters(
    seen: Observed, letters: dict[int, list[Letter]], nowhere: Sequence[Letter]
) -> Check:
    problems: Counter[str] = Counter()
    evidence: list[str] = []
    if nowhere:
        problems["no origin headers"] = len(nowhere)
        evidence += [
            f"dlq@{letter.offset} has no stepbus.origin.*: {sorted(letter.headers)[:8]}"
            for letter in nowhere[:2]
        ]
    twice = 0
    for record in seen.corpus:
        got = letters.get(id(record), [])
        twice += max(0, len(got) - 1)
        for letter in got[:1]:
            wrong = [h for h in REQUIRED_HEADERS if not letter.headers.get(h)]
            if letter.service not in CONSUMERS[record.topic]:
                wanted = " or ".join(CONSUMERS[record.topic])
                wrong.append(f"stepbus.service={letter.service!r} (want {wanted})")
            wrong += [
                f"{h}={letter.headers.get(h)!r} (want {v!r})"
                for h, v in record.dlq_headers
                if letter.headers.get(h) != v
            ]
            wrong += _copy_problems(record, letter)
            if wrong:
                problems[record.family] += 1
                if problems[record.family] <= 2:
                    evidence.append(f"{_where(record, seen.topics)}: {'; '.join(wrong)}")
    if twice:
        evidence.append(f"{twice} dead letter(s) of a record already dead-lettered (allowed)")
    summary = (
        "every dead letter names its origin, service and reason"
        if not problems
        else (
            f"{sum(problems.values())} dead letter(s) with missing or wrong headers "
            f"({dict(problems.most_common(5))})"
        )
    )
    return Check("dead letters carry origin, service and reason", not problems, summary, evidence)


def _copy_problems(record: FuzzRecord, letter: Letter) -> list[str]:
    """How the dead letter's key and value differ from the record's, beyond the cuts the
    headers announce (``stepbus.truncated``, ``stepbus.origin.key.size``)."""
    problems = []
    sent = len(record.value or b"")
    kept = max(letter.size, 0)
    if letter.headers.get("stepbus.truncated") == "true":
        if kept >= sent:
            problems.append(f"stepbus.truncated=true but {kept} of {sent} bytes kept")
    elif kept != sent:
        problems.append(f"value of {kept} bytes, the record's is {sent} (no stepbus.truncated)")
    if record.key is not None and letter.key is not None and len(record.key) <= KEY_LIMIT:
        if letter.key != record.key:
            problems.append("the key is not the record's")
    elif record.key is not None and (letter.key is None or not record.key.startswith(letter.key)):
        problems.append("the key is not (a prefix of) the record's")
    return problems


def check_no_effect(seen: Observed, produced: Sequence[Seen]) -> Check:
    fresh: dict[str, FuzzRecord] = {s: r for r in seen.corpus for s in r.fresh}
    aimed = {r.target for r in seen.corpus if r.target and r.family != "tenant_collision"}
    effects: dict[str, list[tuple[str, str]]] = defaultdict(list)  # family -> (variant, what)
    for out in produced:
        subject = out.subject
        event = out.event or {}
        what = f"{subject}: {event.get('type', 'a record')} on {out.topic}"
        record = fresh.get(subject or "")
        if record is not None:
            effects[record.family].append((record.variant, what))
        elif (
            subject in aimed
            and event.get("tenant") == INTRUDER
            and out.topic == seen.topics.results
            and (event.get("data") or {}).get("reason") != "task_id_conflict"
        ):
            effects["aimed records"].append((f"output for tenant {INTRUDER}", what))
    evidence = []
    for family, found in sorted(effects.items(), key=lambda kv: -len(kv[1])):
        variants = Counter(variant for variant, _ in found)
        evidence.append(
            f"{family}: {len(found)} output(s) from {dict(variants.most_common(4))}; "
            f"e.g. {found[0][1]}"
        )
    total = sum(len(v) for v in effects.values())
    summary = (
        f"no service wrote anything for the {len(fresh)} task ids only bad records name"
        if not total
        else f"{total} output(s) caused by bad records"
    )
    return Check("bad records had no effect", not total, summary, evidence)


def check_conflicts(seen: Observed, produced: Sequence[Seen]) -> Check:
    collisions = [r for r in seen.corpus if r.expect == "conflict" and not r.send_error]
    answers: Counter[str] = Counter()
    for out in produced:
        event = out.event or {}
        if (
            out.topic == seen.topics.results
            and event.get("type") == "stepbus.task.failed"
            and event.get("tenant") == INTRUDER
            and (event.get("data") or {}).get("reason") == "task_id_conflict"
        ):
            answers[str(event.get("subject"))] += 1
    wanted = Counter(str(r.target) for r in collisions)
    evidence = [
        f"{target}: {answers.get(target, 0)} task_id_conflict failure(s) for {INTRUDER}, "
        f"{count} collision(s) sent ({next(r.variant for r in collisions if r.target == target)})"
        for target, count in wanted.items()
        if answers.get(target, 0) < count
    ]
    answered = len(collisions) - sum(max(0, n - answers.get(t, 0)) for t, n in wanted.items())
    return Check(
        "tenant collisions answered with task_id_conflict",
        answered == len(collisions),
        f"{answered} of {len(collisions)}",
        evidence[:SHOWN],
    )


def check_refused_counted(
    report: FuzzReport, seen: Observed, letters: dict[int, list[Letter]]
) -> Check:
    silent: Counter[str] = Counter()
    for record in seen.corpus:
        if record.expect == "refused" and not record.send_error and not letters.get(id(record)):
            silent[seen.topics.name(record.topic)] += 1
    drops: Counter[str] = Counter()
    for (_, topic, _), count in report.dropped.items():
        drops[topic] += int(count)
    evidence = [
        f"{topic}: {count} refused record(s) not dead-lettered, {drops[topic]} drop(s) counted"
        for topic, count in sorted(silent.items())
        if drops[topic] < count
    ]
    if report.metrics_errors:
        evidence += report.metrics_errors
    refused = sum(1 for r in seen.corpus if r.expect == "refused" and not r.send_error)
    return Check(
        "refused records dead-lettered or counted as dropped",
        not evidence,
        f"{refused} refused: {refused - sum(silent.values())} dead-lettered, "
        f"{sum(silent.values())} to be counted, {sum(drops[t] for t in silent)} drops counted",
        evidence,
    )


def check_nothing_valid_dead_lettered(foreign: list[tuple[Letter, str]]) -> Check:
    evidence = [
        f"{what}: {letter.service}: {letter.error[:160]}" for letter, what in foreign[:SHOWN]
    ]
    return Check(
        "nothing valid dead-lettered",
        not foreign,
        "only fuzz records were dead-lettered"
        if not foreign
        else f"{len(foreign)} other record(s)",
        evidence,
    )


def check_logs(seen: Observed) -> Check:
    total = sum(g.bytes for g in seen.logs.values())
    budget = 1024 * 1024 + LOG_BYTES_PER_RECORD * len(seen.corpus)
    evidence = [
        f"{name}: longest line {g.longest} B (limit {LOG_LINE_LIMIT})"
        for name, g in seen.logs.items()
        if g.longest > LOG_LINE_LIMIT
    ]
    if total > budget:
        evidence.append(f"{total} bytes of log in all, over {budget}")
        for name, growth in seen.logs.items():
            evidence += [f"{name}: {count} x {line}" for count, line in growth.top[:2]]
    for name, growth in seen.logs.items():
        evidence += [f"{name}: {line}" for line in growth.unexpected[:1]]
        if growth.tracebacks:
            evidence.append(f"{name}: {growth.tracebacks} traceback(s) logged")
    bounded = total <= budget and all(g.longest <= LOG_LINE_LIMIT for g in seen.logs.values())
    longest = max((g.longest for g in seen.logs.values()), default=0)
    return Check(
        "service logs stay bounded",
        bounded,
        f"{total / 1024:.0f} KiB in all (budget {budget / 1024:.0f} KiB), longest line {longest} B",
        evidence,
    )


def check_sent(seen: Observed) -> Check:
    refused = [r for r in seen.corpus if r.send_error]
    late = [r for r in seen.corpus if r.late]
    evidence = [f"{r.family}/{r.variant}: {r.send_error}" for r in refused[:SHOWN]]
    if late:
        evidence.append(
            f"{len(late)} aimed record(s) sent at the end: their task was never "
            f"accepted or never ended ({late[0].family} -> {late[0].target})"
        )
    return Check(
        "the whole corpus reached the broker",
        not refused,
        f"{len(seen.corpus) - len(refused)} of {len(seen.corpus)}",
        evidence,
    )
