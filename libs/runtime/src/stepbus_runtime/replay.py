"""Reading partitions from an offset to their current end: how services rebuild state."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = ["read_to_end"]


async def read_to_end(
    consumer: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    starts: dict[TopicPartition, int | None] | None = None,
) -> list[Any]:
    """Every record of ``partitions`` from ``starts`` (default: the beginning) to the end
    offsets taken when called. ``consumer`` is started and has no group; it is reassigned."""
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
    records: list[Any] = []
    while pending:
        batches = await consumer.getmany(*pending, timeout_ms=500)
        for tp, batch in batches.items():
            records.extend(r for r in batch if r.offset < ends[tp])
        pending = [tp for tp in pending if await consumer.position(tp) < ends[tp]]
    return records
