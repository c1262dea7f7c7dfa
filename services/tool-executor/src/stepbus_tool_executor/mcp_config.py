"""The MCP servers file (``STEPBUS_MCP_CONFIG``) and the naming of their tools.

The file has the ``mcpServers`` shape MCP hosts already use::

    {"mcpServers": {
        "files": {"command": "python", "args": ["files.py"], "env": {"ROOT": "/data"}},
        "search": {"url": "http://search:8000/mcp", "headers": {"Authorization": "Bearer x"}}
    }}

A server with ``command`` is started as a subprocess and spoken to over stdio; one with
``url`` is a streamable-HTTP endpoint. Each tool is published as ``<server>__<tool>``, a name
the OpenAI function-name rule (``^[A-Za-z0-9_-]{1,64}$``) accepts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

__all__ = [
    "SEPARATOR",
    "HttpServer",
    "McpConfig",
    "McpConfigError",
    "StdioServer",
    "load_mcp_config",
    "tool_name",
]

SEPARATOR = "__"
"""Between the server name and the tool name in a published tool name."""

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SERVER_NAME = re.compile(r"^[A-Za-z0-9-]+(?:_[A-Za-z0-9-]+)*$")
_MAX_SERVER_NAME = 32
"""Leaves at least 30 characters of the 64 to the tool's own name."""
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class McpConfigError(ValueError):
    """The MCP servers file is unreadable or invalid; fix the file (the message says where)."""


def _server_name(name: str) -> str:
    if len(name) > _MAX_SERVER_NAME or not _SERVER_NAME.match(name):
        raise ValueError(
            f"server name {name!r} must be 1-{_MAX_SERVER_NAME} letters, digits, '-' or single "
            f"'_' (it prefixes tool names as '<server>{SEPARATOR}<tool>')"
        )
    return name


ServerName = Annotated[str, AfterValidator(_server_name)]


class StdioServer(BaseModel):
    """A server started as a subprocess, spoken to over its stdin and stdout."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: str = Field(min_length=1, description="The executable to start.")
    args: list[str] = Field(default_factory=list, description="Its arguments.")
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment added to the executor's own."
    )
    cwd: str | None = Field(default=None, description="Working directory of the process.")


class HttpServer(BaseModel):
    """A streamable-HTTP server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(pattern=r"^https?://", description="The MCP endpoint, e.g. http://h/mcp.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Sent with every request (e.g. Authorization)."
    )


class McpConfig(BaseModel):
    """Every configured MCP server, by name."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    servers: dict[ServerName, StdioServer | HttpServer] = Field(
        default_factory=dict, alias="mcpServers"
    )

    @model_validator(mode="before")
    @classmethod
    def _one_transport(cls, data: Any) -> Any:
        """Say which field is missing or doubled instead of pydantic's union error."""
        servers = data.get("mcpServers") if isinstance(data, dict) else None
        for name, server in (servers or {}).items() if isinstance(servers, dict) else ():
            if not isinstance(server, dict):
                raise ValueError(f"mcpServers.{name}: expected an object")
            if ("command" in server) == ("url" in server):
                raise ValueError(f"mcpServers.{name}: give either 'command' (stdio) or 'url'")
        return data


_config_adapter = TypeAdapter(McpConfig)


def load_mcp_config(path: str | Path) -> McpConfig:
    """Read and validate the MCP servers file.

    Raises:
        McpConfigError: Naming the file, the server and the field that is wrong.
    """
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise McpConfigError(f"{path}: cannot read the MCP servers file: {exc}") from None
    try:
        return _config_adapter.validate_python(raw)
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors())
        raise McpConfigError(f"{path}: {problems}") from None


def _describe(error: Any) -> str:
    location = [str(part) for part in error["loc"]]
    # A union member's class name says nothing to whoever wrote the file.
    location = [part for part in location if part not in ("StdioServer", "HttpServer")]
    location = ["mcpServers" if part == "servers" else part for part in location]
    where = ".".join(location)
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def tool_name(server: str, tool: str) -> str | None:
    """The published name of ``tool`` of ``server``: ``<server>__<tool>``, characters outside
    ``[A-Za-z0-9_-]`` replaced by ``_``; ``None`` when it cannot fit 64 characters."""
    name = f"{server}{SEPARATOR}{_UNSAFE.sub('_', tool)}"
    return name if tool and _TOOL_NAME.match(name) else None
