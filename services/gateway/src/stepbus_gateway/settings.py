"""Gateway settings: the shared Kafka settings plus HTTP, Redis and stream options."""

from __future__ import annotations

import socket
from typing import Any

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict
from stepbus_runtime import ServiceSettings

__all__ = ["GatewaySettings"]

TENANT_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"


def _default_instance_id(data: dict[str, Any]) -> str:
    return f"{socket.gethostname()}-{data.get('port', 8080)}"


class GatewaySettings(ServiceSettings):
    """Read from ``STEPBUS_GATEWAY_*`` (plus ``KAFKA_BOOTSTRAP_SERVERS``, ``REDIS_URL``)."""

    # validate_by_name: the base class reads some fields through env aliases only, which would
    # otherwise make `GatewaySettings(topic_prefix=...)` silently ignore the keyword.
    model_config = SettingsConfigDict(
        env_prefix="STEPBUS_GATEWAY_", extra="ignore", validate_by_name=True
    )

    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port the HTTP server binds.")
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "STEPBUS_GATEWAY_REDIS_URL"),
        description="Redis holding the task projection (a cache: rebuilt from `results`).",
    )
    api_keys: str | None = Field(
        default=None,
        validation_alias=AliasChoices("STEPBUS_API_KEYS", "api_keys"),
        description="API keys for local use: `key1:tenant-a,key2:tenant-b:role1+role2`.",
    )
    api_keys_file: str | None = Field(
        default=None,
        validation_alias=AliasChoices("STEPBUS_API_KEYS_FILE", "api_keys_file"),
        description="A mounted secret of salted key hashes (JSON), reloaded when it changes.",
    )
    api_keys_reload_seconds: float = Field(
        default=5.0, gt=0, description="How often the keys file is checked for a change."
    )
    allow_open: bool = Field(
        default=False,
        description="Serve without API keys (open development mode, tenant `default`) on an "
        "address that is not loopback.",
    )
    default_tenant: str = Field(
        default="default",
        pattern=TENANT_PATTERN,
        description="The tenant of every request in open development mode (no keys).",
    )
    rate_limit_per_second: float = Field(
        default=50.0,
        gt=0,
        description="Requests per second per API key and replica (429 above it).",
    )
    rate_limit_burst: int = Field(
        default=100, ge=1, description="Requests an API key may send at once before limiting."
    )
    cors_origins: str = Field(
        default="",
        description="Comma-separated origins allowed by CORS (`*` for any); empty: no CORS.",
    )
    tenant_feed_events: int = Field(
        default=10_000, ge=100, description="Events kept per tenant for `GET /v1/events`."
    )
    sse_heartbeat_seconds: float = Field(
        default=15.0, gt=0, description="Seconds between `: keep-alive` comments on SSE streams."
    )
    projection_ttl_seconds: int = Field(
        default=7 * 24 * 3600, ge=1, description="How long a task's projection is kept in Redis."
    )
    instance_id: str = Field(
        default_factory=_default_instance_id,
        min_length=1,
        description="Names this replica's results consumer group; defaults to hostname-port.",
    )
    publish_timeout_seconds: float = Field(
        default=15.0, gt=0, description="Longest wait for the broker to acknowledge a request."
    )
    shutdown_timeout_seconds: int = Field(
        default=10, ge=0, description="Grace period for open streams on shutdown."
    )
    max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="Largest request body accepted (413 above it). The default fits any valid "
        "task: `input` is at most 100,000 characters, 600 kB even if every one is escaped.",
    )
    body_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Longest wait for a request body to arrive (408 after)."
    )
    redis_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Longest wait for one Redis command or connection."
    )
    stuck_after_seconds: float = Field(
        default=30.0,
        gt=0,
        description="`/readyz` fails when a results record has waited this long to be applied, "
        "or the feed's poll loop or the projection check has not run for this long.",
    )
    projection_check_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How often the projection is checked for loss (a Redis flush or restart), "
        "which starts its rebuild from the results topic.",
    )

    @property
    def feed_group_id(self) -> str:
        """Consumer group of the results feed: one per replica, so each sees every event."""
        return f"{self.topic_prefix}gateway-{self.instance_id}"
