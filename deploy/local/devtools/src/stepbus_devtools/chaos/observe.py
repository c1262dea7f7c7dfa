"""Reading what the stack did: ``results`` tailed while the run goes on
(:class:`ResultsMonitor`), every record of the run's topics afterwards (:func:`read_all`) and
the tool-executor's execution log (:func:`read_execution_log`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Container, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from stepbus_runtime import topic_partitions

__all__ = ["TERMINAL", "Record", "ResultsMonitor", "read_all", "read_execution_log"]

TERMINAL = ("stepbus.task.completed", "stepbus.task.failed", "stepbus.task.cancelled")
"""The event types that end a task."""


@dataclass(frozen=True)
class Record:
    """One event read back from Kafka."""

    topic: str
    timestamp: float  # seconds (CreateTime, set by the producing service)
    event: dict[str, Any]


def _decode(value: bytes | None) -> dict[str, Any] | None:
    """The JSON object in a record value; ``None`` for anything else."""
    if value is None:
        return None
    try:
        event = json.loads(value)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


async def _from_beginning(
    consumer: AIOKafkaConsumer, bootstrap: str, topics: Sequence[str]
) -> list[TopicPartition]:
    """Start ``consumer`` on every partition of ``topics``, rewound to the beginning."""
    await consumer.start()
    tps = await topic_partitions(bootstrap, *topics)
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return tps


async def read_all(bootstrap: str, topics: Sequence[str], attempts: int = 10) -> list[Record]:
    """Every record of ``topics`` from the beginning up to their current end."""
    for attempt in range(1, attempts + 1):
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        try:
            tps = await _from_beginning(consumer, bootstrap, topics)
            ends = await consumer.end_offsets(tps)
            out: list[Record] = []
            pending = {tp for tp in tps if ends[tp] > 0}
            deadline = time.monotonic() + 120
            while pending:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not read {topics} to their end")
                batches = await consumer.getmany(timeout_ms=200, max_records=5000)
                for tp, records in batches.items():
                    for record in records:
                        event = _decode(record.value)
                        if event is not None:
                            out.append(Record(tp.topic, record.timestamp / 1000, event))
                    if tp in pending and await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
            return out
        except (KafkaError, TimeoutError, OSError):
            if attempt == attempts:
                raise
            await asyncio.sleep(2)
        finally:
            await consumer.stop()
    raise AssertionError("unreachable")


class ResultsMonitor:
    """Tails ``results`` in the background to know which tasks have ended (best effort)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self.ended: set[str] = set()
        """Subjects (task ids) with a terminal event seen so far."""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        while True:
            consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, enable_auto_commit=False)
            try:
                await _from_beginning(consumer, self._bootstrap, [self._topic])
                while True:
                    batches = await consumer.getmany(timeout_ms=200, max_records=5000)
                    for records in batches.values():
                        for record in records:
                            event = _decode(record.value)
                            if event is not None and event.get("type") in TERMINAL:
                                with contextlib.suppress(KeyError, TypeError):
                                    self.ended.add(event["subject"])
            except asyncio.CancelledError:
                raise
            except Exception:  # broker away: start over from the beginning (the set dedupes)
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()


def read_execution_log(path: Path, task_ids: Container[str]) -> tuple[dict[str, int] | None, str]:
    """Real tool runs per idempotency key of the tasks in ``task_ids``, and a note on the source.

    The runs are ``None`` when the log does not exist (the tool-executor does not write it).
    """
    if not path.exists():
        return None, f"{path} does not exist: the tool-executor does not write it yet"
    runs: Counter[str] = Counter()
    bad = 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            key = str(json.loads(line)["idempotency_key"])
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        if key.rsplit(":", 2)[0] in task_ids:
            runs[key] += 1
    note = f"from {path}" + (f", {bad} unreadable lines" if bad else "")
    return dict(runs), note
