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

An ended task keeps a compact record (what recognises its late or duplicate events) for a
retention period; then it is forgotten and its snapshot key tombstoned, so neither memory nor
the snapshot topic — and so neither restore time — grows with every task ever run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import NamedTuple

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
)
from stepbus_runtime import Emit, EventPublisher, PayloadStore, iter_latest, read_to_end

from .state import TaskState

__all__ = ["SNAPSHOT_STAGE", "STATE_VERSION", "TaskStates"]

log = logging.getLogger(__name__)

STATE_VERSION = 1
SNAPSHOT_STAGE = 2
"""Snapshots go out last: after decisions (stage 0) and their effects (stage 1)."""


class _Ended(NamedTuple):
    """What is kept of an ended task: enough to recognise its late or duplicate events."""

    tenant: str
    terminal: str | None
    """The type of its terminal event (set for every ended task)."""
    at: float
    """When it ended, epoch seconds."""


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
        self._recorded: dict[tuple[str, int], LlmDecidedData] = {}

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

    def put(self, state: TaskState, partition: int | None) -> Emit:
        """Keep the new state and return its snapshot, to be published after the outputs."""
        if state.ended:  # ended tasks keep only what recognises late or duplicate events
            state = TaskState(task_id=state.task_id, tenant=state.tenant, terminal=state.terminal)
            for key in [k for k in self._recorded if k[0] == state.task_id]:
                del self._recorded[key]
            self._states.pop(state.task_id, None)
            if state.task_id not in self._ended:
                self._ended[state.task_id] = _Ended(state.tenant, state.terminal, time.time())
        else:
            self._states[state.task_id] = state
        if partition is not None:
            self._partition[state.task_id] = partition
        snapshot = StateSnapshot(
            id=derive_id(  # one id per distinct state: the fold only ever grows it
                state.task_id,
                "snapshot",
                state.submitted_id is not None,
                state.task is not None,
                len(state.decisions),
                len(state.outcomes),
                state.terminal,
            ),
            source="urn:stepbus:planner",
            subject=state.task_id,
            tenant=state.tenant,
            data=StateSnapshotData(
                service="planner", version=STATE_VERSION, state=state.model_dump(mode="json")
            ),
        )
        return Emit(self._snapshots, snapshot, stage=SNAPSHOT_STAGE)

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
        await publisher.send_raw(self._snapshots, None, task_id.encode(), [])
        del self._ended[task_id], self._partition[task_id]

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
        consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            snapshots = [TopicPartition(self._snapshots, p) for p in history]
            restored = 0
            # Only each task's latest snapshot is decoded.
            async for record, value in iter_latest(consumer, snapshots, self._payloads):
                restored += self._restore(value, record.partition)
            self._ended = dict(sorted(self._ended.items(), key=lambda item: item[1].at))
            tail = [TopicPartition(self._history, p) for p in history]
            starts = {tp: history[tp.partition] for tp in tail}
            decisions = 0
            for record in await read_to_end(consumer, tail, starts):
                decisions += self._remember(await self._resolve(record.value))
        finally:
            await consumer.stop()
        log.info(
            "partitions %s: restored %d task states, %d recorded decisions in the tail",
            sorted(history), restored, decisions,
        )  # fmt: skip

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        """Forget the tasks of journal partitions no longer owned (their new owner restores)."""
        lost = {tp.partition for tp in partitions if tp.topic == self._history}
        for task_id in [t for t, p in self._partition.items() if p in lost]:
            self._states.pop(task_id, None)
            self._ended.pop(task_id, None)
            del self._partition[task_id]
        for key in [k for k in self._recorded if self._partition.get(k[0]) is None]:
            del self._recorded[key]

    async def _resolve(self, value: bytes | None) -> bytes | None:
        return value if self._payloads is None else await self._payloads.resolve(value)

    def _restore(self, value: bytes | None, partition: int) -> int:
        if value is None:
            return 0
        try:
            snapshot = snapshot_adapter.validate_json(value)
            if snapshot.data.version != STATE_VERSION:
                raise ValueError(f"unknown state version {snapshot.data.version}")
            state = TaskState.model_validate(snapshot.data.state)
        except (ValidationError, ValueError) as exc:
            log.error("unreadable snapshot skipped: %s", exc)
            return 0
        self._partition[state.task_id] = partition
        if state.ended:  # when it ended is when its last snapshot was written
            self._states.pop(state.task_id, None)
            ended_at = snapshot.time.timestamp()
            self._ended[state.task_id] = _Ended(state.tenant, state.terminal, ended_at)
        else:
            self._states[state.task_id] = state
        return 1

    def _remember(self, value: bytes | None) -> int:
        try:
            event = history_adapter.validate_json(value or b"")
        except ValidationError:
            return 0
        if not isinstance(event, LlmDecided):
            return 0
        self._recorded.setdefault((event.subject, event.data.step), event.data)
        return 1
