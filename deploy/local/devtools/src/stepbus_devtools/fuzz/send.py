"""Sending the corpus: a producer that lets any record through to the broker
(:class:`Sender`), the real payloads bad claim references are made from, and the paced send of
the records that go at once (:func:`send_paced`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata
from stepbus_contracts import Topics
from stepbus_runtime import PayloadRef, PayloadStore

from .records import FUZZED, FuzzRecord, ValidTask

__all__ = ["MAX_REQUEST_BYTES", "Sender", "send_one", "send_paced"]

MAX_REQUEST_BYTES = 2 * 1024 * 1024
"""The producer's own limit, above the broker's (about 1 MiB): the broker decides what fits."""

WINDOW = 256
"""Records sent and not yet acknowledged, at most."""


class Sender:
    """Sends fuzz records and valid submissions as they are, and notes where each went.

    A record with neither key nor value, which ``AIOKafkaProducer.send`` refuses, goes out as a
    batch of its own (``create_batch``/``send_batch``) to the partition it names.
    """

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self.topics = topics
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id="stepbus-fuzz",
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            max_request_size=MAX_REQUEST_BYTES,
            request_timeout_ms=60_000,
        )
        self._bootstrap = bootstrap

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def partitions(self) -> dict[str, int]:
        """Partition count of each fuzzed topic (by suffix)."""
        counts = {}
        for suffix in FUZZED:
            counts[suffix] = len(await self.producer.partitions_for(self.topics.name(suffix)))
        return counts

    async def payload_fixtures(self, garbage: bytes) -> dict[str, PayloadRef]:
        """Real payloads in the payloads topic to make bad references from: a small JSON
        object and ``garbage`` (not JSON), stored by ``PayloadStore`` and read back once, so
        the bad references differ from resolvable ones by what their variant says only."""
        store = PayloadStore(self._bootstrap, self.topics.payloads, producer=self.producer)
        try:
            refs = {
                "json": await store.put(b'{"fuzz": "a stored payload"}'),
                "garbage": await store.put(garbage),
            }
            for ref in refs.values():
                await store.fetch(ref)
        finally:
            await store.stop()
        return refs

    async def send(self, item: FuzzRecord | ValidTask) -> asyncio.Future[RecordMetadata]:
        """Queue one record; the future resolves once the broker acknowledged it."""
        future: asyncio.Future[RecordMetadata]
        if isinstance(item, ValidTask):
            future = await self.producer.send(
                self.topics.tasks, item.value, key=item.task_id.encode()
            )
            return future
        topic = self.topics.name(item.topic)
        if item.key is None and item.value is None:
            batch = self.producer.create_batch()
            batch.append(timestamp=None, key=None, value=None, headers=item.headers)
            future = await self.producer.send_batch(batch, topic, partition=item.partition or 0)
            return future
        future = await self.producer.send(
            topic, item.value, key=item.key, partition=item.partition, headers=item.headers
        )
        return future


def _landed(item: FuzzRecord | ValidTask, meta: RecordMetadata) -> None:
    if isinstance(item, ValidTask):
        item.partition, item.offset = meta.partition, meta.offset
        item.submitted_at = time.time()
    else:
        item.partition, item.offset, item.sent_at = meta.partition, meta.offset, time.time()


async def send_one(sender: Sender, item: FuzzRecord | ValidTask) -> None:
    """Send ``item`` and wait for it; a record the broker refuses is noted, not raised."""
    await _settle(item, await _queue(sender, item))


async def _queue(
    sender: Sender, item: FuzzRecord | ValidTask
) -> asyncio.Future[RecordMetadata] | BaseException:
    try:
        return await sender.send(item)
    except (KafkaError, ValueError, TypeError, AssertionError) as exc:
        return exc


async def _settle(
    item: FuzzRecord | ValidTask, queued: asyncio.Future[RecordMetadata] | BaseException
) -> None:
    try:
        if isinstance(queued, BaseException):
            raise queued
        _landed(item, await queued)
    except (KafkaError, ValueError, TypeError, AssertionError) as exc:
        if isinstance(item, ValidTask):
            raise  # a valid task that cannot be sent leaves nothing to measure
        item.send_error = f"{type(exc).__name__}: {exc}"[:300]


async def send_paced(
    sender: Sender,
    order: Sequence[FuzzRecord | ValidTask],
    *,
    rate: float,
    progress: Callable[[int], Awaitable[None]] | None = None,
) -> None:
    """Send ``order`` at most ``rate`` records a second (0: unpaced), at most
    :data:`WINDOW` unacknowledged; ``progress`` hears the count every 1,000 records."""
    started = time.monotonic()
    pending: list[tuple[FuzzRecord | ValidTask, asyncio.Future[RecordMetadata] | BaseException]]
    pending = []
    for index, item in enumerate(order):
        if rate > 0:
            ahead = started + index / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        pending.append((item, await _queue(sender, item)))
        if len(pending) >= WINDOW:
            for queued_item, queued in pending:
                await _settle(queued_item, queued)
            pending = []
        if progress is not None and (index + 1) % 1000 == 0:
            await progress(index + 1)
    for queued_item, queued in pending:
        await _settle(queued_item, queued)
