"""Tool-executor settings (env prefix ``STEPBUS_TOOL_EXECUTOR_``)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict
from stepbus_runtime import ServiceSettings

__all__ = ["ToolExecutorSettings"]


class ToolExecutorSettings(ServiceSettings):
    """How the tool-executor runs tools."""

    model_config = SettingsConfigDict(env_prefix="STEPBUS_TOOL_EXECUTOR_", extra="ignore")

    metrics_port: int = Field(default=9102, description="Port of /metrics and /readyz.")
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "STEPBUS_TOOL_EXECUTOR_REDIS_URL"),
        description="Redis holding the idempotency ledger.",
    )
    ledger_ttl_seconds: int = Field(
        default=7 * 24 * 3600, description="How long a tool result is kept in the ledger."
    )
    group_id: str = Field(default="stepbus-tool-executor", description="Consumer group.")
