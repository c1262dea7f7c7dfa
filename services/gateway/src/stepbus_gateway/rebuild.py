"""Rebuilding the projection from ``results`` when Redis lost it.

Each replica reads the projection's generation (``TaskProjection.generation``) at start and
every ``check_seconds``:

- none: Redis lost the projection (``FLUSHALL``, a restart without persistence, eviction). The
  replica begins a new generation, *rebuilding* (or finds the one another replica began a
  moment earlier), and rebuilds;
- rebuilding, under an epoch this replica is not rebuilding: it rebuilds too (another replica
  began it, or this one restarted in the middle of it);
- ready: nothing to do; a rebuild still running here is stopped (another replica finished).

A rebuild reads every partition of the topic from its beginning (within retention) to the end
offsets taken when it starts, in order per partition, with a consumer of its own (no group),
and applies each event at its offset; the live feed keeps applying new events beside it, which
is harmless because the projection orders a task's events by offset and dedupes them by id.
The first replica to finish marks the generation ready; until then submits answer 503 (a task
id that ended before the flush must get 409, not a second life) and readiness says
*rebuilding*. A record the live feed dead-lettered is skipped here with a log line, not
dead-lettered again; only a Redis outage is waited out without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from stepbus_contracts import results_adapter
from stepbus_runtime import (
    DecodeError,
    PayloadStore,
    RetryableError,
    clip,
    decode,
    iter_to_end,
    topic_partitions,
)
from stepbus_runtime.kafka_security import kafka_options
from stepbus_runtime.metrics import RECORDS

from .projection import Generation, ResultEvent, TaskProjection, is_outage

__all__ = ["ProjectionRebuilder"]

log = logging.getLogger(__name__)

_LOGGED_SKIPS = 20
"""Skipped records logged one by one per rebuild; the rest are counted in its last line."""

_BATCH = 500
"""Most events written to Redis in one round trip while rebuilding."""

_BATCH_BYTES = 4 * 1024 * 1024
"""Most bytes of events in one such round trip (resolved claims can be megabytes each)."""

_RETRY_SECONDS = 5.0
"""Wait before a rebuild that failed (the broker unreachable) starts again."""


@dataclass
class _Rebuild:
    """One rebuild of generation ``epoch`` by this replica, and how far it got."""

    epoch: str
    started: float
    task: asyncio.Task[None] | None = None
    total: int | None = None
    read: int = 0
    skipped: int = 0

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()


class ProjectionRebuilder:
    """Watches the projection's generation and rebuilds the projection when Redis lost it.

    Args:
        bootstrap_servers: Kafka bootstrap servers.
        topic: The results topic.
        projection: The projection to watch and rebuild.
        payloads: Resolves claim checks (big results); without it, claims are skipped.
        check_seconds: Seconds between two looks at the generation.
        stuck_after: Seconds without a successful look after which ``health()`` fails.
        claim_attempts: Attempts at a claim check whose fetch fails transiently.
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topic: str,
        projection: TaskProjection,
        payloads: PayloadStore | None = None,
        check_seconds: float = 1.0,
        stuck_after: float = 30.0,
        claim_attempts: int = 5,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._topic = topic
        self._projection = projection
        self._payloads = payloads
        self._check_seconds = check_seconds
        self._stuck_after = stuck_after
        self._claim_attempts = claim_attempts
        self._generation: Generation | None = None
        self._checked: float | None = None
        self._check_error: str | None = None
        self._rebuild: _Rebuild | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """Whether the last look found the projection whole: submits may create tasks."""
        return self._generation is not None and self._generation.ready

    def health(self) -> tuple[bool, str]:
        """Whether the projection is watched, and a line saying why not.

        Whether it is whole is Redis's to say (``TaskProjection.generation``): a flush is seen
        there at once, here only at the next look. ``progress()`` says how far a rebuild got.
        """
        now = time.monotonic()
        if self._task is None or self._task.done():
            return False, "stopped: the projection is not watched"
        if self._checked is None:
            return False, f"starting: the projection was not checked yet ({self._check_error})"
        if now - self._checked > self._stuck_after:
            return False, (
                f"stuck: the projection was last checked {now - self._checked:.0f}s ago "
                f"({self._check_error})"
            )
        return True, "watching"

    def progress(self) -> str:
        """A line saying how far this replica's rebuild got (for ``/readyz``)."""
        rebuild = self._rebuild
        if rebuild is None or not rebuild.running:
            return f"rebuilding: the projection is being rebuilt from {self._topic}"
        total = "?" if rebuild.total is None else str(rebuild.total)
        return (
            f"rebuilding: reading {self._topic} from its beginning into the projection: "
            f"{rebuild.read} of {total} records in {time.monotonic() - rebuild.started:.0f}s"
        )

    async def start(self) -> None:
        """Start watching (the first look is immediate)."""
        self._task = asyncio.create_task(self._watch(), name="stepbus-gateway-projection-watch")
        await asyncio.sleep(0)

    async def stop(self) -> None:
        """Stop watching and any rebuild in progress."""
        for task in (self._task, self._rebuild.task if self._rebuild is not None else None):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _watch(self) -> None:
        while True:
            try:
                await self.check()
                if self._check_error is not None:
                    log.warning("the projection can be checked again")
                self._checked, self._check_error = time.monotonic(), None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: say so once, keep looking
                if self._check_error is None:
                    log.warning("cannot check the projection: %s", clip(repr(exc)))
                self._check_error = clip(repr(exc))
            await asyncio.sleep(self._check_seconds)

    async def check(self) -> None:
        """Look at the generation once and start or stop a rebuild accordingly."""
        generation = await self._projection.generation()
        if generation is None:
            generation = await self._projection.begin_generation()
            log.warning("the projection is gone from Redis (flushed, restarted or evicted); "
                        "rebuilding it from %s", self._topic)  # fmt: skip
        self._generation = generation
        current = self._rebuild
        if generation.ready:
            if current is not None:
                current.cancel()
                self._rebuild = None
            return
        if current is not None and current.epoch == generation.epoch and current.running:
            return
        if current is not None:
            current.cancel()
        rebuild = self._rebuild = _Rebuild(generation.epoch, time.monotonic())
        rebuild.task = asyncio.create_task(self._run_rebuild(rebuild))

    async def _run_rebuild(self, rebuild: _Rebuild) -> None:
        try:
            await self._rebuild_from_topic(rebuild)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the broker away: a later look starts it again
            log.error("rebuilding the projection failed (%s); starting again in %.0fs",
                      clip(repr(exc)), _RETRY_SECONDS)  # fmt: skip
            await asyncio.sleep(_RETRY_SECONDS)  # still running: no look restarts it before

    async def _rebuild_from_topic(self, rebuild: _Rebuild) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            client_id="stepbus-gateway-rebuild",
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",  # retention may delete the start while we read
            **kafka_options(),
        )
        try:
            await consumer.start()
            partitions = await topic_partitions(self._bootstrap, self._topic)
            rebuild.total = await _records(consumer, partitions)
            batch: list[tuple[ResultEvent, int]] = []
            size = 0
            async for record in iter_to_end(consumer, partitions):
                decoded = await self._decode(record, quiet=rebuild.skipped >= _LOGGED_SKIPS)
                rebuild.read += 1
                if decoded is None:
                    rebuild.skipped += 1
                    continue
                batch.append((decoded[0], record.offset))
                size += decoded[1]
                if len(batch) >= _BATCH or size >= _BATCH_BYTES:
                    await self._write(batch)
                    batch, size = [], 0
            await self._write(batch)
        finally:
            await consumer.stop()
        if await self._projection.mark_rebuilt(rebuild.epoch):
            log.warning("the projection is rebuilt from %s (%d records in %.1fs; %d skipped, "
                        "dead-lettered when first read)", self._topic, rebuild.read,
                        time.monotonic() - rebuild.started, rebuild.skipped)  # fmt: skip
            self._generation = Generation(rebuild.epoch, ready=True)

    async def _decode(
        self, record: ConsumerRecord[bytes, bytes], *, quiet: bool = False
    ) -> tuple[ResultEvent, int] | None:
        """The record's event as the live feed applied it, and its size; None for a record
        the live feed dead-lettered (logged unless ``quiet``: the end of the rebuild counts
        them)."""
        try:
            value = await self._resolve(record.value)
            event: ResultEvent = decode(results_adapter, value)
            if record.key != event.subject.encode():
                raise DecodeError("record key is not the event's subject")
            return event, len(value or b"")
        except Exception as exc:  # whatever a crafted value makes a parser raise
            if not quiet:
                log.warning("rebuild skips %s[%d]@%d (dead-lettered when first read): %s",
                            record.topic, record.partition, record.offset, clip(exc))  # fmt: skip
            RECORDS.labels("gateway-rebuild", record.topic, "undecodable", "skipped").inc()
            return None

    async def _resolve(self, value: bytes | None) -> bytes | None:
        if self._payloads is None:
            return value
        for attempt in range(1, self._claim_attempts + 1):
            try:
                return await self._payloads.resolve(value)
            except RetryableError:
                if attempt == self._claim_attempts:
                    raise
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
        raise AssertionError("unreachable")

    async def _write(self, batch: list[tuple[ResultEvent, int]]) -> None:
        """Apply a batch, waiting out a Redis outage; an event Redis refuses is skipped."""
        try:
            await _until_redis_answers(lambda: self._projection.apply_many(batch))
            return
        except Exception as exc:
            log.error("applying a batch failed (%s); applying its events one by one",
                      clip(repr(exc)))  # fmt: skip
        for event, offset in batch:
            try:
                await _until_redis_answers(functools.partial(self._projection.apply, event, offset))
            except Exception as exc:
                log.error("rebuild skips event %s of task %s: %s", clip(event.id, 80),
                          clip(event.subject, 80), clip(repr(exc)))  # fmt: skip


async def _until_redis_answers(write: Callable[[], Awaitable[object]]) -> None:
    delay = 0.1
    while True:
        try:
            await write()
            return
        except Exception as exc:
            if not is_outage(exc):
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def _records(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> int:
    """Records between the beginning and the end of ``partitions`` now (for progress)."""
    ends = await consumer.end_offsets(partitions)
    begins = await consumer.beginning_offsets(partitions)
    return sum(ends[tp] - begins[tp] for tp in partitions)
