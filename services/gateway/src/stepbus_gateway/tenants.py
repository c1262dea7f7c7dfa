"""Per-key and per-tenant state of the gateway: the rate limit of each API key (in this replica's
memory), and the tenant's feed of events for ``GET /v1/events`` (in Redis, shared by every
replica).

Keys (the tenant is the Redis Cluster hash tag, so the script touches one slot)::

    stepbus:gw:{ns}:tenant:{<tenant>}:seq     counter: the tenant's last feed position
    stepbus:gw:{ns}:tenant:{<tenant>}:feed    sorted set: event JSON scored by its position

A feed position is given once per event (the projection applies an event once), so resuming
after position N returns every later event exactly once, from any replica and after a gateway
restart. Redis is a cache here too: after a flush the projection is rebuilt from ``results`` and
the feed with it, under new positions (a client resuming with an older position then gets the
rebuilt feed from that position on; the events of each task keep their order).
"""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis

__all__ = ["RateLimiter", "TenantFeed"]

# KEYS: seq, feed; ARGV: event JSON, max events, ttl. Appends the event at the next position.
_APPEND = """
local position = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], position, ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[2]) - 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return position
"""


class RateLimiter:
    """A token bucket per API key, in this replica: ``rate`` requests a second, ``burst`` at
    once. Kept in memory (no round trip on the hot path): with N replicas behind a balancer a
    key gets up to N times the rate, which is what the setting is sized for."""

    def __init__(self, *, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, at)

    def take(self, key_id: str) -> float:
        """Take one request's token: 0.0 when there was one, else the seconds to wait."""
        now = time.monotonic()
        tokens, at = self._buckets.get(key_id, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        if tokens < 1:
            self._buckets[key_id] = (tokens, now)
            return (1 - tokens) / self._rate
        if len(self._buckets) >= self._max_keys and key_id not in self._buckets:
            self._buckets.clear()  # bounded: only keys that send survive the next second
        self._buckets[key_id] = (tokens - 1, now)
        return 0.0


class TenantFeed:
    """The tenant's events in one order, for the tenant-wide stream."""

    def __init__(self, redis: Redis, *, namespace: str, max_events: int, ttl_seconds: int) -> None:
        self._redis = redis
        self._ns = namespace
        self._max = max_events
        self._ttl = ttl_seconds
        self._append = redis.register_script(_APPEND)

    def _keys(self, tenant: str) -> list[str]:
        base = f"stepbus:gw:{self._ns}:tenant:{{{tenant}}}"
        return [f"{base}:seq", f"{base}:feed"]

    async def append(self, tenant: str, event_json: str, client: Any = None) -> Any:
        """Add an event (applied for the first time) at the tenant's next position; with a
        pipeline as ``client``, queued on it."""
        return await self._append(
            keys=self._keys(tenant), args=[event_json, self._max, self._ttl], client=client
        )

    async def after(self, tenant: str, position: int, limit: int = 500) -> list[tuple[int, str]]:
        """Up to ``limit`` events after ``position``, in order, with their positions."""
        entries = await self._redis.zrangebyscore(
            self._keys(tenant)[1], f"({position}", "+inf", start=0, num=limit, withscores=True
        )
        return [(int(score), raw) for raw, score in entries]

    async def last(self, tenant: str) -> int:
        """The tenant's latest position (0 before any event)."""
        value = await self._redis.get(self._keys(tenant)[0])
        return int(value or 0)
