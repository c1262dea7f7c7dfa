"""Reading partitions from an offset to their current end: how services rebuild state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from .claimcheck import ClaimCheckError, PayloadStore
from .logs import clip

log = logging.getLogger(__name__)

__all__ = ["iter_latest", "iter_to_end", "read_latest", "read_to_end", "resolve_or_skip"]


async def iter_to_end(
    consumer: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    starts: dict[TopicPartition, int | None] | None = None,
) -> AsyncIterator[Any]:
    """Every record of ``partitions`` from ``starts`` (default: the beginning) to the end
    offsets taken when called, batch by batch. ``consumer`` is started and has no group; it
    is reassigned. The event loop gets a turn after every batch, so a long read never starves
    the caller's other work (such as a consumer group's heartbeats)."""
    consumer.assign(partitions)
    ends = await consumer.end_offsets(partitions)
    begins = await consumer.beginning_offsets(partitions)
    pending = []
    for tp in partitions:
        start = (starts or {}).get(tp)
        start = begins[tp] if start is None else max(start, begins[tp])
        if start < ends[tp]:
            consumer.seek(tp, start)
            pending.append(tp)
    while pending:
        batches = await consumer.getmany(*pending, timeout_ms=500, max_records=2000)
        for tp, batch in batches.items():
            for record in batch:
                if record.offset < ends[tp]:
                    yield record
        pending = [tp for tp in pending if await consumer.position(tp) < ends[tp]]
        await asyncio.sleep(0)


async def read_to_end(
    consumer: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    starts: dict[TopicPartition, int | None] | None = None,
) -> list[Any]:
    """Every record of ``partitions`` from ``starts`` to the current end, as a list."""
    return [record async for record in iter_to_end(consumer, partitions, starts)]


async def read_latest(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
) -> dict[bytes, Any]:
    """The latest record of every key in ``partitions``: the view compaction converges to.

    A state topic holds many versions of each key until the log cleaner catches up; a reader
    that rebuilds state needs only the last one, so it decodes each key once instead of once
    per version. A tombstone (no value) removes its key; records without a key are skipped.
    """
    latest: dict[bytes, Any] = {}
    async for record in iter_to_end(consumer, partitions):
        if record.key is None:
            continue
        if record.value is None:
            latest.pop(record.key, None)
        else:
            latest[record.key] = record
    return latest


async def iter_latest(
    consumer: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    payloads: PayloadStore | None = None,
) -> AsyncIterator[tuple[Any, bytes | None]]:
    """Each key's latest record (``read_latest``) with its value, claim checks resolved.

    How services load a state topic. The caller decodes each value; the event loop gets a
    turn every few hundred records, so decoding a big topic never starves the consumer
    group's heartbeats (a member that misses them is evicted, and would load again). A record
    whose claim check cannot be resolved (malformed, expired, forged) is logged and skipped: one
    bad record must not stop a service from loading its state.
    """
    for index, record in enumerate((await read_latest(consumer, partitions)).values()):
        value = await resolve_or_skip(payloads, record)
        if value is not None:
            yield record, value
        if index % 256 == 255:
            await asyncio.sleep(0)


async def resolve_or_skip(payloads: PayloadStore | None, record: Any) -> bytes | None:
    """``record``'s value with its claim check resolved; None (logged) when it cannot be."""
    if payloads is None:
        return record.value  # type: ignore[no-any-return]
    try:
        return await payloads.resolve(record.value)
    except ClaimCheckError as exc:
        log.error("%s[%d]@%d skipped: %s", record.topic, record.partition, record.offset, clip(exc))
        return None
