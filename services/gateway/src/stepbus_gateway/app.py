"""The gateway application: wiring and lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from redis.asyncio import BlockingConnectionPool, Redis
from starlette.applications import Starlette
from stepbus_runtime import ensure_topics, service_publisher

from .fanout import Subscribers
from .feed import ResultsFeed
from .projection import TaskProjection
from .rebuild import ProjectionRebuilder
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
            # A bounded pool that waits for a free connection: the feed writes up to
            # max_in_flight records at once, more than redis-py's default pool (100) admits.
            redis = Redis(
                connection_pool=BlockingConnectionPool.from_url(
                    settings.redis_url,
                    max_connections=64,
                    timeout=settings.redis_timeout_seconds,
                    decode_responses=True,
                    socket_timeout=settings.redis_timeout_seconds,
                    socket_connect_timeout=settings.redis_timeout_seconds,
                )
            )
            stack.push_async_callback(redis.aclose)
            projection = TaskProjection(
                redis,
                namespace=settings.topics.results,
                ttl_seconds=settings.projection_ttl_seconds,
            )
            rebuilder = ProjectionRebuilder(
                bootstrap_servers=settings.kafka_bootstrap_servers,
                topic=settings.topics.results,
                projection=projection,
                payloads=publisher.payloads,
                check_seconds=settings.projection_check_seconds,
                stuck_after=settings.stuck_after_seconds,
                claim_attempts=settings.max_attempts,
            )
            await rebuilder.start()
            stack.push_async_callback(rebuilder.stop)
            subscribers = Subscribers()
            feed = ResultsFeed(
                bootstrap_servers=settings.kafka_bootstrap_servers,
                topic=settings.topics.results,
                group_id=settings.feed_group_id,
                dlq_topic=settings.topics.dlq,
                publisher=publisher,
                projection=projection,
                subscribers=subscribers,
                max_attempts=settings.max_attempts,
                max_in_flight=settings.max_in_flight,
                stuck_after=settings.stuck_after_seconds,
            )
            await feed.start()
            stack.push_async_callback(feed.stop)
            services = Services(settings, publisher, projection, subscribers, feed, rebuilder)
            yield {"services": services}

    return Starlette(routes=routes(), lifespan=lifespan, exception_handlers=EXCEPTION_HANDLERS)
