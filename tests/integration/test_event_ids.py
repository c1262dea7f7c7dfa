"""The planner's index of public event ids, on the real Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from stepbus_planner.adapters.redis_event_ids import RedisEventIds
from stepbus_planner.ports import EventIdsUnavailable

pytestmark = pytest.mark.integration


@pytest.fixture
async def ids(redis_url: str) -> AsyncIterator[RedisEventIds]:
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        yield RedisEventIds(redis, namespace=f"t{uuid.uuid4().hex[:8]}.", ttl_seconds=60)
    finally:
        await redis.aclose()


async def test_an_id_is_claimed_once_and_a_different_event_under_it_is_reported(
    ids: RedisEventIds,
) -> None:
    assert await ids.claim("urn:a", "e1", "f1") is None
    assert await ids.claim("urn:a", "e1", "f1") is None  # a redelivery
    assert await ids.claim("urn:a", "e1", "f2") == "f1"  # reused for something else
    assert await ids.claim("urn:b", "e1", "f2") is None  # ids are unique per source


async def test_an_unreachable_index_says_so() -> None:
    redis = Redis.from_url("redis://127.0.0.1:1/0", decode_responses=True, socket_connect_timeout=1)
    try:
        with pytest.raises(EventIdsUnavailable):
            await RedisEventIds(redis, namespace="x.", ttl_seconds=60).claim("s", "e", "f")
    finally:
        await redis.aclose()
