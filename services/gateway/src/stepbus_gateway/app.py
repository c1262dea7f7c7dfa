"""The gateway application: wiring and lifespan."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator, Callable

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from redis.asyncio import BlockingConnectionPool, Redis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute, Match
from starlette.types import Scope
from stepbus_runtime import ensure_topics, service_publisher

from .access import AccessLog
from .auth import KeyRing
from .errors import GatewayError
from .fanout import Subscribers
from .feed import ResultsFeed
from .projection import TaskProjection
from .rebuild import ProjectionRebuilder
from .routes import EXCEPTION_HANDLERS, Services, routes
from .settings import GatewaySettings
from .tenants import RateLimiter

__all__ = ["create_app", "is_loopback"]

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _keys(settings: GatewaySettings) -> KeyRing:
    """The API keys, or the open development mode: refused on a non-loopback address unless
    ``STEPBUS_GATEWAY_ALLOW_OPEN=true``.

    Raises:
        GatewayError: open mode on a non-loopback address, not allowed.
    """
    keys = KeyRing.from_settings(
        settings.api_keys, settings.api_keys_file, reload_seconds=settings.api_keys_reload_seconds
    )
    if not keys.open:
        return keys
    if not is_loopback(settings.host) and not settings.allow_open:
        raise GatewayError(
            f"no API keys configured (STEPBUS_API_KEYS, STEPBUS_API_KEYS_FILE) and the gateway "
            f"would listen on {settings.host}, which is not loopback: anyone reaching it could "
            "act as tenant 'default'. Configure keys, bind 127.0.0.1, or set "
            "STEPBUS_GATEWAY_ALLOW_OPEN=true"
        )
    log.warning(
        "OPEN DEVELOPMENT MODE: no API keys configured; every request acts as tenant %r "
        "without authentication. Set STEPBUS_API_KEYS or STEPBUS_API_KEYS_FILE for anything "
        "but local development",
        settings.default_tenant,
    )
    return keys


def create_app(settings: GatewaySettings | None = None) -> Starlette:
    """Build the gateway; settings are read from the environment unless given."""
    settings = settings or GatewaySettings()
    keys = _keys(settings)

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
                feed_events=settings.tenant_feed_events,
            )
            limiter = RateLimiter(
                rate=settings.rate_limit_per_second, burst=settings.rate_limit_burst
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
            services = Services(
                settings, publisher, projection, subscribers, feed, rebuilder, keys, limiter
            )
            yield {"services": services}

    table = routes()
    middleware = [
        # Server spans named by route template (never by a raw path: task ids are unbounded),
        # continuing the caller's ``traceparent``; none for probes and scrapes, and none per
        # ASGI message (an SSE stream would make one per event).
        Middleware(
            OpenTelemetryMiddleware,
            excluded_urls="/healthz,/readyz,/metrics",
            default_span_details=_span_details(table),
            exclude_spans=["receive", "send"],
        ),
        Middleware(AccessLog),
    ]
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=origins,
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
                expose_headers=["Location", "Retry-After", "Idempotent-Replayed"],
                max_age=600,
            )
        )
    return Starlette(
        routes=table,
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=middleware,
    )


def _span_details(table: list[BaseRoute]) -> Callable[[Scope], tuple[str, dict[str, str]]]:
    """The server span's name and route for a request: ``GET /v1/tasks/{task_id}``."""

    def details(scope: Scope) -> tuple[str, dict[str, str]]:
        method = str(scope.get("method", "HTTP"))
        for route in table:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                template = getattr(route, "path", None) or str(scope.get("path", ""))
                return f"{method} {template}", {"http.route": template}
        return method, {}

    return details
