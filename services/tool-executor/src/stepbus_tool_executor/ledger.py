"""The idempotency ledger: each tool call's outcome under ``task_id:step:call_index``.

The ledger lives where nothing can flush it: a compacted topic, co-partitioned with
``tool.calls``: one record per outcome, keyed ``<task id>#<idempotency key>`` and written to
the task's partition (records of earlier versions, keyed by the task id and holding all its
outcomes, still load), so the replica that owns a ``tool.calls`` partition owns the matching
ledger partition, and a long task writes each outcome once, not once per later call. It is read
into memory when partitions are assigned; a redelivered call then returns the recorded
outcome instead of running again. A task whose calls stopped long ago (an hour by default) is
forgotten and its key tombstoned, so the topic, memory and the next load follow recent tasks
only: calls are redelivered only until their offsets are committed, within seconds.

The ledger record of an outcome is published before the outcome event (the event is a later
``Emit.stage``), so an outcome on the journal always has its ledger entry.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError
from stepbus_contracts import CloudEvent, EventData, derive_id
from stepbus_runtime import Emit, EventPublisher, PayloadStore, clip, iter_latest
from stepbus_runtime.kafka_security import kafka_options

__all__ = ["Ledger", "LedgerEntries", "LedgerRecord"]

log = logging.getLogger(__name__)


class LedgerEntries(EventData):
    """Every recorded outcome of one task, by idempotency key."""

    outcomes: dict[str, dict[str, Any]]


class LedgerRecord(CloudEvent):
    """The ledger of the task named by ``subject``."""

    type: str = "stepbus.tool.ledger"
    data: LedgerEntries


class Ledger:
    """Outcomes of the tasks on the owned ``tool.calls`` partitions.

    Args:
        bootstrap_servers: Kafka bootstrap servers.
        calls_topic: The ``tool.calls`` topic (its partitions drive ownership).
        ledger_topic: The compacted ledger topic, co-partitioned with ``tool.calls``.
        max_tasks: Tasks kept in memory; the least recently used are dropped first (their
            calls were committed long ago and are not redelivered).
        payloads: Resolves ledger records published as claim checks (tasks with big outputs).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        calls_topic: str,
        ledger_topic: str,
        max_tasks: int = 100_000,
        payloads: PayloadStore | None = None,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._payloads = payloads
        self._calls = calls_topic
        self._topic = ledger_topic
        self._max_tasks = max_tasks
        self._tasks: OrderedDict[str, dict[str, dict[str, Any]]] = OrderedDict()
        self._partition: dict[str, int] = {}
        self._touched: dict[str, float] = {}  # epoch seconds of each task's last record
        self._tenants: dict[str, str] = {}  # the tenant each task belongs to

    def recorded(self, task_id: str, idempotency_key: str) -> dict[str, Any] | None:
        """The outcome recorded for the key, if any."""
        return self._tasks.get(task_id, {}).get(idempotency_key)

    def flagged(self, task_id: str) -> bool:
        """True when an outcome recorded for the task was flagged as a likely prompt injection
        (the policy's ``flagged``: the planner says so too, this does not rely on it)."""
        return any(outcome.get("flags") for outcome in self._tasks.get(task_id, {}).values())

    def tenant(self, task_id: str) -> str | None:
        """The tenant whose calls the task's outcomes were recorded for, if any."""
        return self._tenants.get(task_id)

    def record(
        self,
        task_id: str,
        tenant: str,
        idempotency_key: str,
        outcome: dict[str, Any],
        partition: int,
    ) -> Emit:
        """Record an outcome (the first one recorded wins) and return its ledger record."""
        outcomes = self._tasks.setdefault(task_id, {})
        first = outcomes.setdefault(idempotency_key, outcome)
        self._tasks.move_to_end(task_id)
        self._partition[task_id] = partition
        self._touched[task_id] = time.time()
        self._tenants.setdefault(task_id, tenant)
        while len(self._tasks) > self._max_tasks:
            evicted, _ = self._tasks.popitem(last=False)
            self._partition.pop(evicted, None)
            self._touched.pop(evicted, None)
            self._tenants.pop(evicted, None)
        entry = LedgerRecord(
            id=derive_id(task_id, "ledger", idempotency_key),
            source="urn:stepbus:tool-executor",
            subject=task_id,
            tenant=tenant,
            data=LedgerEntries(outcomes={idempotency_key: first}),
        )
        return Emit(
            self._topic, entry, key=_outcome_key(task_id, idempotency_key), partition=partition
        )

    def idle(self, max_age: float, limit: int = 10_000) -> list[str]:
        """Up to ``limit`` tasks with no call recorded for ``max_age`` seconds, oldest first."""
        horizon = time.time() - max_age
        idle = []
        for task_id in self._tasks:  # least recently recorded first
            if self._touched.get(task_id, 0.0) > horizon or len(idle) >= limit:
                break
            idle.append(task_id)
        return idle

    async def forget(self, task_id: str, max_age: float, publisher: EventPublisher) -> None:
        """Tombstone an idle task's ledger and drop it from memory; run it in the task's queue
        (``Processor.submit``) so no call of the task is recorded meanwhile."""
        touched = self._touched.get(task_id)
        if touched is None or touched > time.time() - max_age:
            return  # recorded again, forgotten already, or its partition moved on
        partition = self._partition.get(task_id)
        for idempotency_key in self._tasks.get(task_id, {}):
            key = _outcome_key(task_id, idempotency_key).encode()
            await publisher.send_raw(self._topic, None, key, [], partition=partition)
        await publisher.send_raw(self._topic, None, task_id.encode(), [])  # an older record
        self._tasks.pop(task_id, None)
        self._partition.pop(task_id, None)
        self._touched.pop(task_id, None)
        self._tenants.pop(task_id, None)

    # -- partitions (stepbus_runtime.PartitionListener) ---------------------------------------

    async def assigned(self, committed: dict[TopicPartition, int | None]) -> None:
        """Load the ledger partitions matching the ``tool.calls`` partitions now owned."""
        partitions = [
            TopicPartition(self._topic, tp.partition) for tp in committed if tp.topic == self._calls
        ]
        if not partitions:
            return
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, enable_auto_commit=False, **kafka_options()
        )
        await consumer.start()
        loaded = 0
        try:
            # Each task's latest record holds all its outcomes: the older ones are skipped.
            async for record, value in iter_latest(consumer, partitions, self._payloads):
                loaded += self._load(record.key, value, record.partition)
            for task_id in sorted(self._tasks, key=lambda t: self._touched.get(t, 0.0)):
                self._tasks.move_to_end(task_id)  # least recently recorded first, as ``idle`` reads
        finally:
            await consumer.stop()
        log.info(
            "ledger partitions %s loaded: %d tasks", [tp.partition for tp in partitions], loaded
        )

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        """Forget tasks of partitions no longer owned (their new owner loads them)."""
        lost = {tp.partition for tp in partitions if tp.topic == self._calls}
        for task_id in [t for t, p in self._partition.items() if p in lost]:
            self._tasks.pop(task_id, None)
            self._touched.pop(task_id, None)
            self._tenants.pop(task_id, None)
            del self._partition[task_id]

    def _load(self, key: bytes | None, value: bytes | None, partition: int) -> int:
        if key is None or value is None:
            return 0
        try:
            record = json.loads(value)
            outcomes = record["data"]["outcomes"]
            stamp = record.get("time")  # a CloudEvent's optional `time`: when it was recorded
            recorded_at = datetime.fromisoformat(stamp).timestamp() if stamp else time.time()
            tenant = record.get("tenant")
            if not isinstance(outcomes, dict) or not all(
                isinstance(o, dict) for o in outcomes.values()
            ):
                raise TypeError("outcomes must map idempotency keys to outcomes")
        except (ValueError, KeyError, TypeError, ValidationError, RecursionError):
            log.error("unreadable ledger record for %s skipped", clip(key, 80))
            return 0
        task_id = key.decode(errors="replace").split("#", 1)[0]
        if isinstance(tenant, str):
            self._tenants.setdefault(task_id, tenant)
        merged = self._tasks.setdefault(task_id, {})
        for idempotency_key, outcome in outcomes.items():
            merged.setdefault(idempotency_key, outcome)
        self._partition[task_id] = partition
        self._touched[task_id] = max(recorded_at, self._touched.get(task_id, 0.0))
        return 1


def _outcome_key(task_id: str, idempotency_key: str) -> str:
    """The ledger record key of one outcome: ``#`` never occurs in a task id."""
    return f"{task_id}#{idempotency_key}"
