"""The gateway application: wiring and lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from starlette.applications import Starlette
from stepbus_runtime import ensure_topics, service_publisher

from .feed import ResultsFeed, Subscribers
from .projection import TaskProjection
from .routes import EXCEPTION_HANDLERS, Services, routes
from .settings import GatewaySettings

__all__ = ["create_app"]


def create_app(settings: GatewaySettings | None = None) -> Starlette:
    """Build the gateway; settings are read from the environment unless given."""
    settings = settings or GatewaySettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Services]]:
        await ensure_topics(
            settings.kafka_bootstrap_servers,
            settings.topics,
            replication_factor=settings.topic_replication_factor,
        )
        async with contextlib.AsyncExitStack() as stack:
            client_id = f"stepbus-gateway-{settings.instance_id}"
            publisher = service_publisher(settings, client_id)
            await publisher.start()
            stack.push_async_callback(publisher.stop)
            redis = Redis.from_url(settings.redis_url, decode_responses=True)
            stack.push_async_callback(redis.aclose)
            projection = TaskProjection(redis, ttl_seconds=settings.projection_ttl_seconds)
            subscribers = Subscribers()
            feed = ResultsFeed(
                bootstrap_servers=settings.kafka_bootstrap_servers,
                topic=settings.topics.results,
                group_id=settings.feed_group_id,
                projection=projection,
                subscribers=subscribers,
                payloads=publisher.payloads,
            )
            await feed.start()
            stack.push_async_callback(feed.stop)
            yield {"services": Services(settings, publisher, projection, subscribers, feed)}

    return Starlette(routes=routes(), lifespan=lifespan, exception_handlers=EXCEPTION_HANDLERS)
