"""The event id index in Redis: one key per (source, id), set once, expiring with retention."""

from __future__ import annotations

import hashlib

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..ports import EventIds, EventIdsUnavailable

__all__ = ["RedisEventIds"]

# KEYS: the id's key; ARGV: fingerprint, ttl. Sets it unless set; returns what was there.
_CLAIM = """
local seen = redis.call('GET', KEYS[1])
if seen then return seen end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""


class RedisEventIds(EventIds):
    """``EventIds`` on Redis (a client with ``decode_responses=True``).

    A guard, not state: flushing Redis only forgets which ids were seen before the flush.

    Args:
        redis: The client.
        namespace: Key prefix (the topic prefix, so deployments sharing a Redis stay apart).
        ttl_seconds: How long an id is remembered.
    """

    def __init__(self, redis: Redis, *, namespace: str, ttl_seconds: int) -> None:
        self._redis = redis
        self._namespace = namespace
        self._ttl = ttl_seconds
        self._claim = redis.register_script(_CLAIM)

    async def claim(self, source: str, event_id: str, fingerprint: str) -> str | None:
        """See ``EventIds.claim``."""
        digest = hashlib.blake2b(f"{source}\0{event_id}".encode(), digest_size=16).hexdigest()
        key = f"stepbus:ids:{self._namespace}{digest}"
        try:
            seen = await self._claim(keys=[key], args=[fingerprint, self._ttl])
        except (RedisError, OSError) as exc:
            raise EventIdsUnavailable(f"event id index unavailable: {type(exc).__name__}") from exc
        if seen is None or seen == fingerprint:
            return None
        return str(seen)
