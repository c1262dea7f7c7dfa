"""Reading what the stack did, from Kafka: where each topic ended before the run
(:func:`end_marks`), the valid tasks' progress while the run goes on (:class:`Monitor`), every
record written since (:func:`read_since`) and the dead letters among them (:class:`Letter`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from stepbus_runtime import topic_partitions

from stepbus_devtools.chaos.observe import TERMINAL

__all__ = ["TERMINAL", "Letter", "Monitor", "Seen", "decode_event", "end_marks", "read_since"]

DECODED_BYTES = 2 * 1024 * 1024
"""Values longer than this are not decoded when read back (no event is that big)."""


def decode_event(value: bytes | None) -> dict[str, Any] | None:
    """The JSON object in a record value; ``None`` for anything else (deep nesting too)."""
    if not value or len(value) > DECODED_BYTES:
        return None
    try:
        event = json.loads(value)
    except (ValueError, RecursionError):
        return None
    return event if isinstance(event, dict) else None


@dataclass(frozen=True)
class Seen:
    """One record read back: where it is, its key and headers, its event when it has one."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    event: dict[str, Any] | None
    size: int
    """Length of the value (-1: null)."""

    @property
    def subject(self) -> str | None:
        """The task the record is about: its event's ``subject``, else its key."""
        subject = self.event.get("subject") if self.event else None
        if isinstance(subject, str):
            return subject
        return self.key.decode(errors="replace") if self.key is not None else None


@dataclass(frozen=True)
class Letter:
    """One dead letter on the DLQ, with what its headers say."""

    offset: int
    headers: dict[str, str]
    key: bytes | None
    size: int

    @classmethod
    def of(cls, seen: Seen) -> Letter:
        headers = {name: (value or b"").decode(errors="replace") for name, value in seen.headers}
        return cls(seen.offset, headers, seen.key, seen.size)

    @property
    def origin(self) -> tuple[str, int, int] | None:
        """(topic, partition, offset) of the record it stands for, if the headers say."""
        try:
            return (
                self.headers["stepbus.origin.topic"],
                int(self.headers["stepbus.origin.partition"]),
                int(self.headers["stepbus.origin.offset"]),
            )
        except (KeyError, ValueError):
            return None

    @property
    def service(self) -> str:
        return self.headers.get("stepbus.service", "?")

    @property
    def error(self) -> str:
        return self.headers.get("stepbus.error", "")


async def _partitions(bootstrap: str, topics: Sequence[str]) -> list[TopicPartition]:
    tps = await topic_partitions(bootstrap, *topics)
    missing = set(topics) - {tp.topic for tp in tps}
    if missing:
        raise KafkaError(f"topics not found: {sorted(missing)}")
    return tps


async def end_marks(bootstrap: str, topics: Sequence[str]) -> dict[TopicPartition, int]:
    """The end offset of every partition of ``topics`` now: what the run reads from."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        await consumer.start()
        tps = await _partitions(bootstrap, topics)
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def read_since(
    bootstrap: str,
    marks: dict[TopicPartition, int],
    topics: Iterable[str],
    *,
    decode: bool = True,
    attempts: int = 5,
) -> list[Seen]:
    """Every record of ``topics`` from their marks up to their current end.

    Args:
        decode: Decode values as events (off for the DLQ: only its headers matter).
    """
    wanted = [tp for tp in marks if tp.topic in set(topics)]
    for attempt in range(1, attempts + 1):
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=16 * 1024 * 1024,
        )
        try:
            await consumer.start()
            consumer.assign(wanted)
            for tp in wanted:
                consumer.seek(tp, marks[tp])
            ends = await consumer.end_offsets(wanted)
            pending = {tp for tp in wanted if ends[tp] > marks[tp]}
            out: list[Seen] = []
            deadline = time.monotonic() + 300
            while pending:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not read {sorted(t.topic for t in pending)}")
                batches = await consumer.getmany(*pending, timeout_ms=500, max_records=5000)
                for tp, records in batches.items():
                    for r in records:
                        if r.offset >= ends[tp]:
                            continue
                        event = decode_event(r.value) if decode else None
                        size = -1 if r.value is None else len(r.value)
                        out.append(
                            Seen(
                                tp.topic,
                                tp.partition,
                                r.offset,
                                r.key,
                                tuple(r.headers or ()),
                                event,
                                size,
                            )
                        )
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
            return out
        except (KafkaError, TimeoutError, OSError):
            if attempt == attempts:
                raise
            await asyncio.sleep(2)
        finally:
            await consumer.stop()
    raise AssertionError("unreachable")


class Monitor:
    """Tails ``results`` and ``planner.history`` from the marks while the run goes on: which
    tasks were accepted, and which (tenant, task) got a terminal event on ``results``.

    Best effort (it only paces the run); the analysis reads everything again afterwards.
    """

    def __init__(
        self, bootstrap: str, marks: dict[TopicPartition, int], results: str, history: str
    ) -> None:
        self._bootstrap = bootstrap
        self._marks = {tp: o for tp, o in marks.items() if tp.topic in (results, history)}
        self._results = results
        self._history = history
        self.accepted: set[str] = set()
        """Task ids with a ``stepbus.task.accepted`` on the journal."""
        self.ended: dict[tuple[str, str], set[str]] = {}
        """Ids of the terminal events on ``results``, by (tenant, task id)."""
        self.ended_at: dict[tuple[str, str], float] = {}
        """When the first terminal event of a (tenant, task id) was seen (wall clock)."""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def note(self, topic: str, event: dict[str, Any]) -> None:
        subject, tenant, type_ = event.get("subject"), event.get("tenant"), event.get("type")
        if not isinstance(subject, str):
            return
        if topic == self._history and type_ == "stepbus.task.accepted":
            self.accepted.add(subject)
        elif topic == self._results and type_ in TERMINAL:
            self.ended.setdefault((str(tenant), subject), set()).add(str(event.get("id")))
            self.ended_at.setdefault((str(tenant), subject), time.time())

    async def _run(self) -> None:
        while True:
            consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, enable_auto_commit=False)
            try:
                await consumer.start()
                consumer.assign(list(self._marks))
                for tp, offset in self._marks.items():
                    consumer.seek(tp, offset)
                while True:
                    batches = await consumer.getmany(timeout_ms=200, max_records=5000)
                    for tp, records in batches.items():
                        for record in records:
                            event = decode_event(record.value)
                            if event is not None:
                                self.note(tp.topic, event)
            except asyncio.CancelledError:
                raise
            except Exception:  # the broker away: start over from the marks (sets dedupe)
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()
