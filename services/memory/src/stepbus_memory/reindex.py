"""Rebuild long-term memory (Qdrant) from the memory journal.

``python -m stepbus_memory.reindex [--tenant T] [--batch N]``

Reads ``memory.items`` — the latest record per key of a compacted topic: every memory not
forgotten, and the forget markers — and writes each memory again (same id: an existing point is
replaced, never duplicated), leaving out whatever a forget marker covers. Run it when the local
store was lost or after switching to a Qdrant server. Qdrant's local mode admits one process at
a time: stop the memory service first (a server has no such limit). Settings are the memory
service's own (``MemorySettings``: ``QDRANT_URL``, ``STEPBUS_MEMORY_QDRANT_PATH``, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError
from stepbus_runtime import PayloadStore, clip, iter_latest, setup_telemetry, topic_partitions
from stepbus_runtime.kafka_security import kafka_options

from .app import build_embedder, build_store
from .journal import ForgetMarker, ForgetMarkerData, ItemRecord, forgotten, item_of
from .ports import MemoryItem
from .settings import MemorySettings

__all__ = ["reindex"]

log = logging.getLogger(__name__)


async def reindex(settings: MemorySettings, *, tenant: str | None = None, batch: int = 64) -> int:
    """Write every remembered, not forgotten item of the journal into the store; how many."""
    topic = settings.topics.memory_items
    payloads = PayloadStore(settings.kafka_bootstrap_servers, settings.topics.payloads)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_auto_commit=False,
        **kafka_options(),
    )
    items: list[tuple[MemoryItem, str]] = []  # and the text each is found by
    markers: dict[str, ForgetMarkerData] = {}
    await consumer.start()
    try:
        partitions = await topic_partitions(settings.kafka_bootstrap_servers, topic)
        async for record, value in iter_latest(consumer, partitions, payloads):
            key = record.key.decode(errors="replace") if record.key else ""
            try:
                if key.startswith("forget/"):
                    markers[key] = ForgetMarker.model_validate_json(value).data
                elif key.startswith("item/"):
                    record = ItemRecord.model_validate_json(value)
                    items.append((item_of(record), record.data.embedded or record.data.text))
            except ValidationError as exc:
                log.error("unreadable memory record %s skipped: %s", clip(key, 80), clip(exc))
    finally:
        await consumer.stop()
        await payloads.stop()
    kept = [
        (item, searched)
        for item, searched in items
        if (tenant is None or item.tenant == tenant)
        and not forgotten(
            item.tenant, item.at, markers, user_id=item.user_id, session_id=item.session_id
        )
    ]
    embedder = build_embedder(settings)
    store = build_store(settings, embedder)
    try:
        for start in range(0, len(kept), batch):
            chunk = kept[start : start + batch]
            vectors = await embedder.embed([searched for _, searched in chunk])
            await store.upsert([item for item, _ in chunk], vectors)
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            await close()
    return len(kept)


def main(argv: list[str] | None = None) -> int:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m stepbus_memory.reindex", description=__doc__)
    parser.add_argument("--tenant", help="only this tenant's memories")
    parser.add_argument("--batch", type=int, default=64, help="memories embedded per batch")
    args = parser.parse_args(argv)
    setup_telemetry("memory-reindex")
    started = time.monotonic()
    count = asyncio.run(reindex(MemorySettings(), tenant=args.tenant, batch=args.batch))
    print(f"reindexed {count} memories in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
