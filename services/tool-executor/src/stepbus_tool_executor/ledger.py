"""The idempotency ledger: a tool call's result recorded under ``task_id:step:call_index``."""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

__all__ = ["RedisLedger"]


class RedisLedger:
    """Records tool outcomes in Redis so a redelivered call returns the recorded result."""

    def __init__(self, redis: Redis, prefix: str, ttl_seconds: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl = ttl_seconds

    def _key(self, idempotency_key: str) -> str:
        return f"{self._prefix}ledger:{idempotency_key}"

    async def recorded(self, idempotency_key: str) -> dict[str, Any] | None:
        """The outcome recorded for the key, if any."""
        raw = await self._redis.get(self._key(idempotency_key))
        return json.loads(raw) if raw else None

    async def record(self, idempotency_key: str, outcome: dict[str, Any]) -> None:
        """Record an outcome; the first one recorded wins."""
        await self._redis.set(
            self._key(idempotency_key), json.dumps(outcome), nx=True, ex=self._ttl
        )
