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
    execution_log: str | None = Field(
        default=None,
        description="File to append one JSON line to per real tool execution (audit).",
    )
    ledger_max_tasks: int = Field(
        default=100_000, ge=1, description="Tasks whose ledger is kept in memory."
    )
    ledger_retention_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="A task's ledger is forgotten (and tombstoned) once no call of it was "
        "recorded for this long; its calls were committed long before.",
    )
    group_id: str = Field(default="stepbus-tool-executor", description="Consumer group.")
    review_tools: str = Field(
        default="",
        description="Comma-separated names of tools whose calls the critic must approve before "
        "they run (the catalog's `review` flag), e.g. `remember,shell`.",
    )

    policy_file: str | None = Field(
        default=None,
        validation_alias=AliasChoices("STEPBUS_POLICY_FILE"),
        description="YAML tool policy (ordered ABAC rules: allow, deny, require approval, "
        "require review); unset: every configured tool is allowed (logged at start).",
    )
    max_output_chars: int = Field(
        default=1_000_000,
        ge=1_000,
        description="Longest tool output kept; a longer one is cut with a note. Outputs above "
        "the claim-check threshold travel by reference.",
    )
    http_fetch_max_bytes: int = Field(
        default=1_000_000, ge=1, description="Body bytes `http_fetch` reads at most."
    )
    http_fetch_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Time limit of one `http_fetch`, redirects included."
    )
    http_fetch_allow_private: bool = Field(
        default=False,
        description="Let `http_fetch` reach private, loopback and link-local addresses "
        "(refused by default: a model must not reach the cluster's own services).",
    )

    mcp_config: str | None = Field(
        default=None,
        validation_alias=AliasChoices("STEPBUS_MCP_CONFIG"),
        description="JSON file of MCP servers in the `mcpServers` format; their tools are "
        "published as `<server>__<tool>`.",
    )
    mcp_tool_concurrency: int = Field(
        default=8, ge=1, description="Calls of one MCP tool in flight at most."
    )
    mcp_ping_interval_seconds: float = Field(
        default=10.0, gt=0, description="Seconds between liveness pings of each MCP server."
    )
    mcp_restart_initial_seconds: float = Field(
        default=0.5, gt=0, description="First delay before restarting a failed MCP server."
    )
    mcp_restart_max_seconds: float = Field(
        default=30.0, gt=0, description="Longest delay between restarts (doubling up to it)."
    )
    mcp_start_wait_seconds: float = Field(
        default=10.0,
        ge=0,
        description="At start, how long to wait for MCP servers before consuming calls.",
    )

    def reviewed(self) -> frozenset[str]:
        """The tools marked for review."""
        return frozenset(name.strip() for name in self.review_tools.split(",") if name.strip())
