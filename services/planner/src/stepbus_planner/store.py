"""Per-task planner state: in memory for the partitions this replica owns, durable in a
compacted snapshot topic, restored when partitions are assigned.

A snapshot is written after the outputs of the record that produced it are acknowledged (it is
their last ``Emit.stage``), and offsets are committed only after that, so restoring the
snapshots of a partition and replaying its journal from the committed offset rebuilds exactly
the state the previous owner had — without reading the whole journal. Redis is not involved:
flushing it cannot lose planner state.

On assignment the store also reads the journal from the committed offset to its current end
and remembers the LLM decisions it finds: a record redelivered after a crash may ask for a
step the previous owner already recorded further down the journal, and that decision is reused
instead of asking the model again.

A snapshot's size is bounded whatever the task's length: the steps of a task are sealed in
segments of ``SEGMENT_STEPS`` once complete, each written once as its own record (key
``<task id>#<n>``, on the task's partition), and the task's snapshot holds only the steps not
yet sealed and the number of segments. A 1,000-step task writes each step about twice, not
1,000 times (O(steps) bytes, not O(steps²)).

An ended task keeps a compact record (what recognises its late or duplicate events) for a
retention period; then it is forgotten and its snapshot key tombstoned, so neither memory nor
the snapshot topic — and so neither restore time — grows with every task ever run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError
from stepbus_contracts import (
    LlmDecided,
    LlmDecidedData,
    StateSnapshot,
    StateSnapshotData,
    derive_id,
    history_adapter,
    snapshot_adapter,
    validate_wire,
)
from stepbus_runtime import (
    Emit,
    EventPublisher,
    PayloadStore,
    clip,
    iter_latest,
    read_to_end,
    resolve_or_skip,
)
from stepbus_runtime.kafka_security import kafka_options

from .state import TaskState

__all__ = ["SEGMENT_STAGE", "SEGMENT_STEPS", "SNAPSHOT_STAGE", "STATE_VERSION", "TaskStates"]

log = logging.getLogger(__name__)

STATE_VERSION = 1
SEGMENT_STAGE = 2
"""Sealed segments go out after decisions (stage 0) and their effects (stage 1)..."""
SNAPSHOT_STAGE = 3
"""...and the snapshot that counts them last: a snapshot on the log proves its segments."""
SEGMENT_STEPS = 16
"""Steps per sealed segment."""

_SOURCE = "urn:stepbus:planner"


class _Ended(NamedTuple):
    """What is kept of an ended task: enough to recognise its late or duplicate events."""

    tenant: str
    terminal: str | None
    """The type of its terminal event (set for every ended task)."""
    at: float
    """When it ended, epoch seconds."""
    segments: int = 0
    """Sealed segments of its steps, tombstoned with its snapshot when it is forgotten."""


class TaskStates:
    """The states of the tasks whose partitions this replica owns.

    Args:
        bootstrap_servers: Kafka bootstrap servers.
        history_topic: The planner's journal (its partitions drive ownership).
        snapshots_topic: The compacted snapshot topic, co-partitioned with the journal.
        payloads: Resolves records published as claim checks (big states or decisions).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        history_topic: str,
        snapshots_topic: str,
        payloads: PayloadStore | None = None,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._payloads = payloads
        self._history = history_topic
        self._snapshots = snapshots_topic
        self._states: dict[str, TaskState] = {}  # tasks not ended
        self._ended: dict[str, _Ended] = {}  # in ending order; a few hundred bytes each
        self._partition: dict[str, int] = {}
        self._sealed: dict[str, int] = {}  # segments on the log, per running task
        self._recorded: dict[tuple[str, int], LlmDecidedData] = {}
        self._tail_end: dict[int, int] = {}  # journal partition -> its end when it was taken over

    # -- state ---------------------------------------------------------------------------

    def get(self, task_id: str, tenant: str) -> TaskState:
        """The task's state (an empty state for a task never seen or forgotten)."""
        state = self._states.get(task_id)
        if state is not None:
            return state
        ended = self._ended.get(task_id)
        if ended is not None:
            return TaskState(task_id=task_id, tenant=ended.tenant, terminal=ended.terminal)
        return TaskState(task_id=task_id, tenant=tenant)

    def put(self, state: TaskState, partition: int | None) -> list[Emit]:
        """Keep the new state and return its snapshot records, to be published after the
        outputs: the segments it seals (``SEGMENT_STAGE``), then the snapshot itself."""
        task_id = state.task_id
        if partition is not None:
            self._partition[task_id] = partition
        partition = self._partition.get(task_id)
        emits: list[Emit] = []
        if state.ended:  # ended tasks keep only what recognises late or duplicate events
            sealed = self._sealed.pop(task_id, 0)
            if task_id in self._ended:
                sealed = max(sealed, self._ended[task_id].segments)
            state = TaskState(task_id=task_id, tenant=state.tenant, terminal=state.terminal)
            for key in [k for k in self._recorded if k[0] == task_id]:
                del self._recorded[key]
            self._states.pop(task_id, None)
            if task_id not in self._ended:
                self._ended[task_id] = _Ended(state.tenant, state.terminal, time.time(), sealed)
            head = state
        else:
            self._states[task_id] = state
            sealed = self._sealed.get(task_id, 0)
            sealable = max(state.step, 0) // SEGMENT_STEPS
            for index in range(sealed, sealable):
                emits.append(self._segment(state, index, partition))
            sealed = self._sealed[task_id] = max(sealed, sealable)
            head = _steps_from(state, sealed * SEGMENT_STEPS)
        document = head.model_dump(mode="json")
        document["segments"] = sealed
        snapshot = StateSnapshot(
            id=derive_id(  # one id per distinct state: the fold only ever grows it
                task_id,
                "snapshot",
                state.submitted_id is not None,
                state.task is not None,
                len(state.decisions),
                len(state.outcomes),
                state.terminal,
                *([len(state.critiques)] if state.critiques else []),  # older ids unchanged
                *([len(state.holds), len(state.approvals)] if state.holds else []),
            ),
            source=_SOURCE,
            subject=task_id,
            tenant=state.tenant,
            data=StateSnapshotData(service="planner", version=STATE_VERSION, state=document),
        )
        emits.append(Emit(self._snapshots, snapshot, stage=SNAPSHOT_STAGE))
        return emits

    def _segment(self, state: TaskState, index: int, partition: int | None) -> Emit:
        """The record sealing steps ``[index * SEGMENT_STEPS, (index + 1) * SEGMENT_STEPS)``."""
        first, end = index * SEGMENT_STEPS, (index + 1) * SEGMENT_STEPS
        part = state.model_copy(
            update={
                "decisions": {s: d for s, d in state.decisions.items() if first <= s < end},
                "outcomes": {k: o for k, o in state.outcomes.items() if first <= o.step < end},
                "critiques": {k: c for k, c in state.critiques.items() if first <= c.step < end},
            }
        ).model_dump(mode="json", include={"decisions", "outcomes", "critiques"})
        event = StateSnapshot(
            id=derive_id(state.task_id, "segment", index),
            source=_SOURCE,
            subject=state.task_id,
            tenant=state.tenant,
            data=StateSnapshotData(
                service="planner", version=STATE_VERSION, state={"segment": index, **part}
            ),
        )
        # Keyed apart from the snapshot, but on the task's partition: restored with it.
        return Emit(
            self._snapshots,
            event,
            stage=SEGMENT_STAGE,
            key=_segment_key(state.task_id, index),
            partition=partition,
        )

    def running(self) -> Iterator[TaskState]:
        """Tasks accepted and not ended."""
        return (s for s in list(self._states.values()) if s.task is not None)

    def ended_before(self, max_age: float, limit: int = 10_000) -> list[str]:
        """Up to ``limit`` tasks that ended more than ``max_age`` seconds ago, oldest first:
        to ``forget``."""
        horizon = time.time() - max_age
        old = []
        for task_id, ended in self._ended.items():
            if ended.at > horizon or len(old) >= limit:
                break
            old.append(task_id)
        return old

    async def forget(self, task_id: str, publisher: EventPublisher) -> None:
        """Drop an ended task and tombstone its snapshot (compaction then removes it).

        Run it in the task's queue. A submission of the same task id after this runs the task
        again.
        """
        if task_id not in self._ended or task_id not in self._partition:
            return  # forgotten already, or its partition moved on meanwhile
        partition = self._partition[task_id]
        for index in range(self._ended[task_id].segments):
            key = _segment_key(task_id, index).encode()
            await publisher.send_raw(self._snapshots, None, key, [], partition=partition)
        await publisher.send_raw(self._snapshots, None, task_id.encode(), [])
        del self._ended[task_id], self._partition[task_id]

    def redelivered(self, partition: int, offset: int) -> bool:
        """Whether a journal record was already there, past the committed offset, when this
        replica took its partition over: the previous owner may have handled it."""
        return offset < self._tail_end.get(partition, -1)

    def recorded_decision(self, task_id: str, step: int) -> bool:
        """True when a decision for ``step`` is on the journal past the committed offset."""
        return self._recorded.pop((task_id, step), None) is not None

    # -- partitions (stepbus_runtime.PartitionListener) ---------------------------------------

    async def assigned(self, committed: dict[TopicPartition, int | None]) -> None:
        """Restore the snapshots of the journal partitions now owned, and their recent tail."""
        history = {
            tp.partition: offset for tp, offset in committed.items() if tp.topic == self._history
        }
        if not history:
            return
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, enable_auto_commit=False, **kafka_options()
        )
        await consumer.start()
        try:
            snapshots = [TopicPartition(self._snapshots, p) for p in history]
            heads: list[tuple[bytes, int]] = []
            segments: dict[str, dict[int, dict[str, Any]]] = {}
            # Only each key's latest record is decoded.
            async for record, value in iter_latest(consumer, snapshots, self._payloads):
                if b"#" in (record.key or b""):
                    self._collect_segment(value, segments)
                else:
                    heads.append((value, record.partition))
            restored = sum(self._restore(value, p, segments) for value, p in heads)
            self._ended = dict(sorted(self._ended.items(), key=lambda item: item[1].at))
            tail = [TopicPartition(self._history, p) for p in history]
            starts = {tp: history[tp.partition] for tp in tail}
            decisions = 0
            for record in await read_to_end(consumer, tail, starts):
                self._tail_end[record.partition] = max(
                    self._tail_end.get(record.partition, 0), record.offset + 1
                )
                decisions += self._remember(await resolve_or_skip(self._payloads, record))
        finally:
            await consumer.stop()
        log.info(
            "partitions %s: restored %d task states, %d recorded decisions in the tail",
            sorted(history), restored, decisions,
        )  # fmt: skip

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        """Forget the tasks of journal partitions no longer owned (their new owner restores)."""
        lost = {tp.partition for tp in partitions if tp.topic == self._history}
        for partition in lost:
            self._tail_end.pop(partition, None)
        for task_id in [t for t, p in self._partition.items() if p in lost]:
            self._states.pop(task_id, None)
            self._ended.pop(task_id, None)
            self._sealed.pop(task_id, None)
            del self._partition[task_id]
        for key in [k for k in self._recorded if self._partition.get(k[0]) is None]:
            del self._recorded[key]

    @staticmethod
    def _collect_segment(value: bytes, segments: dict[str, dict[int, dict[str, Any]]]) -> None:
        try:
            snapshot = validate_wire(snapshot_adapter, value)
            index = int(snapshot.data.state["segment"])
        except (ValidationError, ValueError, KeyError, TypeError) as exc:
            log.error("unreadable snapshot segment skipped: %s", clip(exc))
            return
        segments.setdefault(snapshot.subject, {})[index] = snapshot.data.state

    def _restore(
        self,
        value: bytes,
        partition: int,
        segments: dict[str, dict[int, dict[str, Any]]] | None = None,
    ) -> int:
        segments = segments or {}
        try:
            snapshot = validate_wire(snapshot_adapter, value)
            if snapshot.data.version != STATE_VERSION:
                raise ValueError(f"unknown state version {snapshot.data.version}")
            document = dict(snapshot.data.state)
            sealed = int(document.pop("segments", 0))
            parts = segments.get(snapshot.subject, {})
            if not document.get("terminal"):
                if missing := [i for i in range(sealed) if i not in parts]:
                    raise ValueError(f"segments {missing} of task {snapshot.subject} are missing")
                decisions, outcomes, critiques = {}, {}, {}
                for index in range(sealed):
                    decisions.update(parts[index].get("decisions", {}))
                    outcomes.update(parts[index].get("outcomes", {}))
                    critiques.update(parts[index].get("critiques", {}))
                document["decisions"] = {**decisions, **document.get("decisions", {})}
                document["outcomes"] = {**outcomes, **document.get("outcomes", {})}
                document["critiques"] = {**critiques, **document.get("critiques", {})}
            state = TaskState.model_validate(document)
        except (ValidationError, ValueError, TypeError) as exc:
            log.error("unreadable snapshot skipped: %s", clip(exc))
            return 0
        self._partition[state.task_id] = partition
        if state.ended:  # when it ended is when its last snapshot was written
            self._states.pop(state.task_id, None)
            self._sealed.pop(state.task_id, None)
            ended_at = snapshot.time.timestamp()
            self._ended[state.task_id] = _Ended(state.tenant, state.terminal, ended_at, sealed)
        else:
            self._states[state.task_id] = state
            self._sealed[state.task_id] = sealed
        return 1

    def _remember(self, value: bytes | None) -> int:
        try:
            event = validate_wire(history_adapter, value or b"")
        except ValueError:  # not a decision we can read: nothing to remember
            return 0
        if not isinstance(event, LlmDecided):
            return 0
        self._recorded.setdefault((event.subject, event.data.step), event.data)
        return 1


def _segment_key(task_id: str, index: int) -> str:
    """A segment's record key: ``#`` never occurs in a task id, so keys cannot collide."""
    return f"{task_id}#{index}"


def _steps_from(state: TaskState, first: int) -> TaskState:
    """``state`` without the steps before ``first`` (those sealed in segments)."""
    if first == 0:
        return state
    return state.model_copy(
        update={
            "decisions": {s: d for s, d in state.decisions.items() if s >= first},
            "outcomes": {k: o for k, o in state.outcomes.items() if o.step >= first},
            "critiques": {k: c for k, c in state.critiques.items() if c.step >= first},
        }
    )
