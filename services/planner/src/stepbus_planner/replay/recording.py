"""A task's recorded history: read from the journal, or from an exported suite file.

A recording is the task's journal events in journal order (its acceptance, recall, decisions,
tool outcomes, critiques, approvals and terminal event), claim checks resolved. An export is
JSON lines, one journal event per line, so a suite is a plain file a CI job can keep.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2
from opentelemetry.trace import SpanContext
from pydantic import ValidationError
from stepbus_contracts import (
    MAX_DEADLINE_SECONDS,
    CritiqueCompleted,
    CritiqueFailed,
    JournalEvent,
    LlmDecided,
    LlmDecidedData,
    MemoryRecalled,
    TaskAccepted,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskSubmittedData,
    Topics,
    history_adapter,
)
from stepbus_runtime import PayloadStore, iter_to_end, topic_partitions
from stepbus_runtime.claimcheck import ClaimCheckError
from stepbus_runtime.kafka_security import kafka_options
from stepbus_runtime.tracing import header_span_context

from ..state import critique_key

__all__ = [
    "Recording",
    "RecordingError",
    "from_lines",
    "key_partition",
    "load_recordings",
    "read_journals",
    "redact",
    "to_lines",
]

REDACTED = "[redacted]"
_SECRET_KEY = re.compile(
    r"(?i)(?:^|[_-])(?:pass(?:word|wd)?|secret|token|api[_-]?key|apikey|authorization|"
    r"auth|credentials?|private[_-]?key|cookie|session[_-]?key)$"
)
"""Argument and metadata keys whose values an export never carries (``api_key``,
``Authorization``, ``github_token``, ...; not ``tokens`` or ``max_tokens``)."""

Terminal = TaskCompleted | TaskFailed | TaskCancelled


class RecordingError(Exception):
    """A recording cannot be read: not found, ambiguous, or the file is malformed."""


@dataclass
class Recording:
    """One task's journal, in order."""

    task_id: str
    tenant: str
    events: list[JournalEvent] = field(default_factory=list)
    redelivered: int = 0
    """Journal records that repeat an event already recorded (a crash's redone step)."""
    spans: dict[int, SpanContext] = field(default_factory=dict)
    """The span that recorded each step's decision (from its record's ``traceparent``; not in
    a suite file)."""

    def original_span(self, step: int) -> SpanContext | None:
        """The original's span of ``step`` (-1: the task's root), for a rerun's links."""
        if step >= 0:
            return self.spans.get(step)
        trace = next((e.data.trace for e in self.events if isinstance(e, TaskAccepted)), None)
        if trace is None:
            return None
        return SpanContext(int(trace.trace_id, 16), int(trace.span_id, 16), is_remote=True)

    def add(self, event: JournalEvent, headers: Iterable[tuple[str, bytes]] | None = None) -> None:
        """Append a journal event (with its record's headers, when read from Kafka)."""
        self.events.append(event)
        if isinstance(event, LlmDecided) and headers is not None:
            span = header_span_context(headers)
            if span is not None:
                self.spans.setdefault(event.data.step, span)

    @property
    def accepted(self) -> TaskAccepted:
        """The task as accepted (every recording has one).

        Raises:
            RecordingError: The journal holds no acceptance for the task.
        """
        for event in self.events:
            if isinstance(event, TaskAccepted):
                return event
        raise RecordingError(f"task {self.task_id!r} has no acceptance on the journal")

    def submitted(self, **changes: Any) -> TaskSubmittedData:
        """The recorded task as a submission would ask for it again (its deadline as long as
        the original's), with ``changes``."""
        accepted = self.accepted
        task = accepted.data
        seconds = (task.deadline_at - accepted.time).total_seconds()
        fields: dict[str, Any] = {
            "input": task.input,
            "session_id": task.session_id,
            "user_id": task.user_id,
            "roles": task.roles,
            "tools": task.tools,
            "max_iterations": task.max_iterations,
            "deadline_seconds": min(max(seconds, 1.0), MAX_DEADLINE_SECONDS),
            "token_budget": task.token_budget,
            "critic": task.critic,
            "metadata": task.metadata,
        }
        return TaskSubmittedData(**{**fields, **changes})

    def decisions(self) -> dict[int, LlmDecidedData]:
        """The model's decision of each step (the first recorded wins, as in the planner)."""
        decided: dict[int, LlmDecidedData] = {}
        for event in self.events:
            if isinstance(event, LlmDecided):
                decided.setdefault(event.data.step, event.data)
        return decided

    def recall(self) -> MemoryRecalled | None:
        """The recall recorded before step 0, if the task had one."""
        return next((e for e in self.events if isinstance(e, MemoryRecalled)), None)

    def critiques(self) -> dict[str, CritiqueCompleted | CritiqueFailed]:
        """Verdicts by ``critique_key`` (the first recorded wins)."""
        found: dict[str, CritiqueCompleted | CritiqueFailed] = {}
        for event in self.events:
            if isinstance(event, CritiqueCompleted | CritiqueFailed):
                data = event.data
                call_index = data.call_index if data.kind == "tool_call" else None
                found.setdefault(critique_key(data.kind, data.step, call_index), event)
        return found

    def terminal(self) -> Terminal | None:
        """How the task ended, if it did."""
        return next((e for e in self.events if isinstance(e, Terminal)), None)


def key_partition(key: bytes, count: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` (murmur2, as the producers)."""
    return int(murmur2(key) & 0x7FFFFFFF) % count


async def read_journals(
    bootstrap_servers: str,
    topics: Topics,
    task_ids: Collection[str] | None,
    tenant: str | None = None,
) -> dict[tuple[str, str], Recording]:
    """The journals in ``planner.history`` of ``task_ids`` (None: of every task), by
    (tenant, task id).

    Only the partitions the ids hash to are read, from their beginning (the journal keeps
    7 days); records of other keys are skipped before they are decoded. Claim checks are
    resolved; a record that cannot be decoded or resolved is skipped; a redelivered record
    is counted, not repeated.

    Raises:
        RecordingError: The topic does not exist.
    """
    partitions = await topic_partitions(bootstrap_servers, topics.planner_history)
    if not partitions:
        raise RecordingError(f"topic {topics.planner_history} not found")
    count = len(partitions)
    wanted = None if task_ids is None else {task_id.encode() for task_id in task_ids}
    assigned = range(count) if wanted is None else sorted({key_partition(k, count) for k in wanted})
    found: dict[tuple[str, str], Recording] = {}
    seen_ids: dict[tuple[str, str], set[str]] = {}
    payloads = PayloadStore(bootstrap_servers, topics.payloads, client_id="stepbus-replay")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        client_id="stepbus-replay",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        **kafka_options(),
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topics.planner_history, p) for p in assigned]
        async for record in iter_to_end(consumer, tps):
            if record.value is None or (wanted is not None and record.key not in wanted):
                continue
            try:
                value = await payloads.resolve(record.value)
                event = history_adapter.validate_json(value or b"")
            except (ClaimCheckError, ValidationError, ValueError):
                continue
            if tenant is not None and event.tenant != tenant:
                continue
            key = (event.tenant, event.subject)
            recording = found.setdefault(key, Recording(event.subject, event.tenant))
            ids = seen_ids.setdefault(key, set())
            if event.id in ids:
                recording.redelivered += 1
                continue
            ids.add(event.id)
            recording.add(event, record.headers)
    finally:
        await consumer.stop()
        await payloads.stop()
    return found


async def load_recordings(
    bootstrap_servers: str,
    topics: Topics,
    task_ids: list[str],
    tenant: str | None = None,
) -> list[Recording]:
    """Read the journals of ``task_ids`` from ``planner.history`` (``read_journals``), in the
    order asked.

    Raises:
        RecordingError: A task has no journal, or its id is used by several tenants and
            ``tenant`` does not say which.
    """
    found = await read_journals(bootstrap_servers, topics, task_ids, tenant)
    recordings = []
    for task_id in task_ids:
        mine = [r for (t, i), r in found.items() if i == task_id]
        if not mine:
            scope = f" of tenant {tenant!r}" if tenant else ""
            raise RecordingError(f"no journal for task {task_id!r}{scope} in {topics.prefix}*")
        if len(mine) > 1:
            tenants = ", ".join(sorted(r.tenant for r in mine))
            raise RecordingError(
                f"task id {task_id!r} is used by several tenants ({tenants}): give --tenant"
            )
        mine[0].accepted  # noqa: B018 - raises a clear error for a journal without acceptance
        recordings.append(mine[0])
    return recordings


def redact(value: Any) -> Any:
    """``value`` with the values of secret-looking keys replaced, at any depth."""
    if isinstance(value, dict):
        return {
            k: REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _exported(event: JournalEvent) -> dict[str, Any]:
    """An event as exported: the task's labels, planned calls' and critiqued calls'
    arguments redacted."""
    document: dict[str, Any] = event.model_dump(mode="json", by_alias=True, exclude_none=True)
    data = document.get("data", {})
    if "metadata" in data:  # the acceptance and the terminal carry the task's labels
        data["metadata"] = redact(data["metadata"])
    for call in data.get("tool_calls", ()):
        call["arguments"] = redact(call.get("arguments", {}))
    if "arguments" in data:  # a critique of a call quotes its arguments
        data["arguments"] = redact(data["arguments"])
    return document


def to_lines(recordings: Iterable[Recording]) -> Iterator[str]:
    """JSON lines of the recordings' events (a suite file), secrets redacted."""
    for recording in recordings:
        for event in recording.events:
            yield json.dumps(_exported(event), ensure_ascii=False, separators=(",", ":"))


def from_lines(lines: Iterable[str], source: str = "suite") -> list[Recording]:
    """The recordings of a suite file, in the order their tasks first appear.

    Raises:
        RecordingError: A line is not a journal event (its number says which), or a task
            has no acceptance.
    """
    found: dict[tuple[str, str], Recording] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = history_adapter.validate_json(line)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"])) or "<root>"
            raise RecordingError(
                f"{source}:{number}: not a journal event ({where}: {first['msg']})"
            ) from None
        key = (event.tenant, event.subject)
        found.setdefault(key, Recording(event.subject, event.tenant)).events.append(event)
    for recording in found.values():
        recording.accepted  # noqa: B018 - raises a clear error for a task without acceptance
    return list(found.values())
