"""Short-term memory: the recent turns of each (tenant, session), in Redis.

One hash per session (``stepbus:mem:<prefix>{<tenant>}:<session>``), a field per finished task
holding that task's turns, so writing a task's turns twice changes nothing; the key expires
``ttl`` after the session's last task and keeps its ``max_tasks`` latest tasks. A recall returns
the newest turns that fit a token budget, oldest first.

Redis is a cache: every task's turns are also a record of ``memory.sessions`` (``journal``).
A marker key says the cache is whole; when it is gone (``FLUSHALL``, a restart without
persistence) the service reads ``memory.sessions`` — the latest record per key of a compacted
topic that keeps a week — back into Redis, skipping what a forget marker covers, and recalls
wait for that (within the planner's recall timeout) rather than answer from half a memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError
from redis.asyncio import Redis
from stepbus_contracts import MemoryTurn
from stepbus_runtime import PayloadStore, clip, iter_latest, topic_partitions
from stepbus_runtime.kafka_security import kafka_options

from .journal import ForgetMarker, ForgetMarkerData, SessionRecord, forget_key, forgotten

__all__ = ["SessionMemory"]

log = logging.getLogger(__name__)


class SessionMemory:
    """Session turns in Redis (a client with ``decode_responses=True``), rebuilt from Kafka.

    Args:
        redis: The client.
        namespace: Key prefix (the topic prefix: deployments sharing a Redis stay apart).
        ttl_seconds: A session expires this long after its last task.
        max_tasks: Most tasks kept per session.
    """

    def __init__(self, redis: Redis, *, namespace: str, ttl_seconds: int, max_tasks: int) -> None:
        self._redis = redis
        self._namespace = namespace
        self._ttl = ttl_seconds
        self._max_tasks = max_tasks
        self._whole = asyncio.Event()
        self._forgotten: dict[str, ForgetMarkerData] = {}  # forgets handled by this process
        self.rebuilds = 0

    def _key(self, tenant: str, session_id: str) -> str:
        return f"stepbus:mem:{self._namespace}{{{tenant}}}:{session_id}"

    @property
    def _marker(self) -> str:
        return f"stepbus:mem:{self._namespace}whole"

    async def add(self, record: SessionRecord) -> None:
        """Keep a finished task's turns in its session (idempotent: one field per task)."""
        data = record.data
        key = self._key(record.tenant, data.session_id)
        value = json.dumps(
            {
                "at": data.at.isoformat(),
                "user_id": data.user_id,
                "turns": [t.model_dump(mode="json") for t in data.turns],
            }
        )
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, data.task_id, value)
            pipe.expire(key, self._ttl)
            pipe.hlen(key)
            *_, size = await pipe.execute()
        if size > self._max_tasks:
            groups = await self._groups(key)
            oldest = sorted(groups, key=lambda g: g[1])[: size - self._max_tasks]
            await self._redis.hdel(key, *[task_id for task_id, _, _ in oldest])

    async def recent(
        self,
        tenant: str,
        session_id: str,
        *,
        budget: int,
        count_tokens: Callable[[str], int],
        wait: float,
    ) -> list[MemoryTurn]:
        """The newest turns of the session that fit ``budget`` tokens, oldest first.

        Waits up to ``wait`` seconds while the cache is being rebuilt.
        """
        if not self._whole.is_set():
            try:
                await asyncio.wait_for(self._whole.wait(), wait)
            except TimeoutError:
                log.warning("session memory still rebuilding; recalling from what is back")
        groups = await self._groups(self._key(tenant, session_id))
        turns: list[MemoryTurn] = []
        used = 0
        for _, _, group in sorted(groups, key=lambda g: g[1], reverse=True):
            cost = sum(count_tokens(t.content) for t in group)
            if used + cost > budget:
                break
            used += cost
            turns[:0] = group  # this older task's turns go before the newer ones
        return turns

    async def forget(self, tenant: str, marker: ForgetMarkerData) -> int:
        """Delete the turns a forget marker covers; how many tasks' turns went.

        The marker is also kept here, so a rebuild running meanwhile (which read the topic's
        markers before this one was written) does not put the forgotten turns back.
        """
        self._forgotten[forget_key(tenant, marker)] = marker
        if marker.scope == "session" and marker.session_id:
            key = self._key(tenant, marker.session_id)
            count = int(await self._redis.hlen(key))
            await self._redis.delete(key)
            return count
        removed = 0
        async for key in self._redis.scan_iter(match=f"{self._key(tenant, '')}*", count=500):
            if marker.scope == "tenant":
                removed += int(await self._redis.hlen(key))
                await self._redis.delete(key)
                continue
            doomed = [task for task, _, user, _ in await self._groups_with_users(key)
                      if user == marker.user_id]  # fmt: skip
            if doomed:
                removed += int(await self._redis.hdel(key, *doomed))
        return removed

    # -- rebuild ---------------------------------------------------------------------------

    async def watch(
        self,
        bootstrap_servers: str,
        topic: str,
        payloads: PayloadStore | None,
        check_seconds: float,
    ) -> None:
        """Keep the cache whole: rebuild it from ``topic`` whenever its marker is missing."""
        while True:
            try:
                if not await self._redis.exists(self._marker):
                    self._whole.clear()
                    await self._rebuild(bootstrap_servers, topic, payloads)
                    await self._redis.set(self._marker, "1")
                self._whole.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis or Kafka away: look again later
                log.warning("cannot check session memory: %s", clip(repr(exc)))
            await asyncio.sleep(check_seconds)

    async def _rebuild(
        self, bootstrap_servers: str, topic: str, payloads: PayloadStore | None
    ) -> None:
        started = time.monotonic()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers, enable_auto_commit=False, **kafka_options()
        )
        await consumer.start()
        records: list[SessionRecord] = []
        markers: dict[str, ForgetMarkerData] = {}
        try:
            partitions = await topic_partitions(bootstrap_servers, topic)
            async for record, value in iter_latest(consumer, partitions, payloads):
                key = record.key.decode(errors="replace") if record.key else ""
                try:
                    if key.startswith("forget/"):
                        markers[key] = ForgetMarker.model_validate_json(value).data
                    else:
                        records.append(SessionRecord.model_validate_json(value))
                except ValidationError as exc:
                    log.error("unreadable session record %s skipped: %s", clip(key, 80), clip(exc))
        finally:
            await consumer.stop()
        horizon = datetime.now(UTC) - timedelta(seconds=self._ttl)
        kept = 0
        for record in records:
            data = record.data
            scope = {"user_id": data.user_id, "session_id": data.session_id}
            if (
                data.at < horizon
                or forgotten(record.tenant, data.at, markers, **scope)
                # forgets handled while this rebuild runs (after it read the markers)
                or forgotten(record.tenant, data.at, self._forgotten, **scope)
            ):
                continue
            await self.add(record)
            kept += 1
        self.rebuilds += 1
        log.warning(
            "session memory rebuilt from %s: %d tasks' turns in %.1fs (%d forgotten or expired)",
            topic, kept, time.monotonic() - started, len(records) - kept,
        )  # fmt: skip

    async def _groups(self, key: str) -> list[tuple[str, datetime, list[MemoryTurn]]]:
        return [(task, at, turns) for task, at, _, turns in await self._groups_with_users(key)]

    async def _groups_with_users(
        self, key: str
    ) -> Sequence[tuple[str, datetime, str | None, list[MemoryTurn]]]:
        raw: dict[str, str] = await self._redis.hgetall(key)
        groups = []
        for task_id, value in raw.items():
            try:
                group = json.loads(value)
                turns = [MemoryTurn.model_validate(t) for t in group["turns"]]
                at = datetime.fromisoformat(group["at"])
            except (ValueError, KeyError, TypeError) as exc:
                log.error(
                    "unreadable session turns of %s skipped: %s", clip(task_id, 80), clip(exc)
                )
                continue
            groups.append((task_id, at, group.get("user_id"), turns))
        return groups
