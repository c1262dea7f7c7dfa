"""The results feed: consume ``results``, fold each event into the projection, fan it out.

Each replica has its own consumer group (``{prefix}gateway-{instance}``), so every replica sees
every event and can serve any SSE client. Offsets are committed only after the projection
write (at-least-once); duplicates are dropped by event id, in the projection and per stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError
from stepbus_contracts import results_adapter
from stepbus_runtime import DecodeError, PayloadStore, decode
from stepbus_runtime.metrics import RECORDS

from .projection import ResultEvent, TaskProjection

__all__ = ["ResultsFeed", "Subscribers", "Subscription"]

log = logging.getLogger(__name__)


class Subscription:
    """The live events of one task for one SSE connection; ``None`` in the queue ends it."""

    def __init__(self, tenant: str, task_id: str, limit: int) -> None:
        self.key = (tenant, task_id)
        self.queue: asyncio.Queue[ResultEvent | None] = asyncio.Queue()
        self.closed = False
        self._limit = limit

    def deliver(self, event: ResultEvent) -> None:
        """Queue an event; a reader that falls ``limit`` events behind is cut off."""
        if self.closed:
            return
        if self.queue.qsize() >= self._limit:
            log.warning("SSE reader of %s fell behind; closing its stream", self.key)
            self.close()  # the client reconnects with Last-Event-ID and replays
            return
        self.queue.put_nowait(event)

    def close(self) -> None:
        """End the stream after the events already queued."""
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(None)


class Subscribers:
    """In-memory fan-out to SSE connections, keyed by (tenant, task id)."""

    def __init__(self, queue_limit: int = 1000) -> None:
        self._by_key: dict[tuple[str, str], set[Subscription]] = {}
        self._queue_limit = queue_limit

    def __len__(self) -> int:
        return sum(len(subs) for subs in self._by_key.values())

    @contextlib.contextmanager
    def subscribe(self, tenant: str, task_id: str) -> Iterator[Subscription]:
        """Receive the live events of a task until the block exits."""
        sub = Subscription(tenant, task_id, self._queue_limit)
        self._by_key.setdefault(sub.key, set()).add(sub)
        try:
            yield sub
        finally:
            subs = self._by_key.get(sub.key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_key[sub.key]

    def publish(self, event: ResultEvent) -> None:
        """Deliver an event to the subscribers of its task within its tenant."""
        for sub in tuple(self._by_key.get((event.tenant, event.subject), ())):
            sub.deliver(event)

    def close_all(self) -> None:
        """End every stream (on shutdown)."""
        for subs in self._by_key.values():
            for sub in subs:
                sub.close()


class _AssignmentListener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, feed: ResultsFeed) -> None:
        self._feed = feed

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self._feed.assigned = False

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._feed.assigned = True
        log.info("results feed assigned %d partition(s)", len(assigned))


class ResultsFeed:
    """Consumes the results topic into the projection and the subscribers.

    Args:
        bootstrap_servers: Kafka bootstrap servers.
        topic: The results topic.
        group_id: This replica's consumer group.
        projection: Where events are folded.
        subscribers: Who receives them live.
        payloads: Resolves results published as claim checks (big outputs).
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topic: str,
        group_id: str,
        projection: TaskProjection,
        subscribers: Subscribers,
        payloads: PayloadStore | None = None,
    ) -> None:
        self._payloads = payloads
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            # The group has this replica alone: as a static member, a restarted gateway takes
            # its partitions back at once instead of waiting out the dead member's session.
            group_instance_id=group_id,
            client_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        self._topic = topic
        self._projection = projection
        self._subscribers = subscribers
        self._task: asyncio.Task[None] | None = None
        self.assigned = False

    @property
    def ready(self) -> bool:
        """Whether the consumer has joined its group and owns its partitions."""
        return self.assigned and self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Join the group and start consuming in a background task."""
        self._consumer.subscribe([self._topic], listener=_AssignmentListener(self))
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="stepbus-gateway-results-feed")

    async def stop(self) -> None:
        """Stop consuming (what was applied is committed) and end every stream."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(KafkaError):
            await self._consumer.stop()
        self._subscribers.close_all()

    async def _run(self) -> None:
        while True:
            batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
            try:
                batch = await self._consumer.getmany(timeout_ms=1000, max_records=500)
                for records in batch.values():
                    for record in records:
                        await self._handle(record)
                if batch:
                    await self._consumer.commit()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one bad moment end the feed
                log.exception("results feed batch failed; reading it again")
                await asyncio.sleep(1.0)
                # The position already moved past the batch: go back so nothing is skipped.
                with contextlib.suppress(Exception):
                    for tp, records in batch.items():
                        self._consumer.seek(tp, records[0].offset)

    async def _handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        value = record.value
        if self._payloads is not None:
            value = await self._payloads.resolve(value)  # a failed fetch re-reads the batch
        try:
            event: ResultEvent = decode(results_adapter, value)
        except DecodeError as exc:
            log.warning(
                "skipping undecodable record %s[%d]@%d: %s",
                record.topic,
                record.partition,
                record.offset,
                exc,
            )
            RECORDS.labels("gateway", record.topic, "poison").inc()
            return
        applied = await self._apply(event)
        # Fanned out even if already applied (maybe by another replica): streams drop duplicates.
        self._subscribers.publish(event)
        RECORDS.labels("gateway", record.topic, "ok" if applied else "duplicate").inc()

    async def _apply(self, event: ResultEvent) -> bool:
        delay = 0.1
        while True:
            try:
                return await self._projection.apply(event)
            except (RedisError, OSError) as exc:
                log.warning("projection write failed (%r); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
