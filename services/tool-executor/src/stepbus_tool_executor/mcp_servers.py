"""MCP servers as tools: their tools in the registry and the catalog as ``<server>__<tool>``.

Each listing of a server replaces its tools: new and changed ones are (re)published, removed
ones tombstoned. A down server keeps its tools registered: they answer ``unavailable`` until
the session is back. Calls get the idempotency key, task and tenant in ``_meta``; arguments
are checked against the tool's JSON Schema before anything is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import jsonschema
import mcp_types as types
from mcp import MCPError
from stepbus_runtime import Emit, clip

from .catalog import catalog_event, catalog_tombstone
from .mcp_config import McpConfig, tool_name
from .mcp_session import DEFAULT_BACKOFF, IDEMPOTENCY_META, Backoff, McpSession, SessionLost
from .registry import (
    CallContext,
    Tool,
    ToolFailedError,
    ToolInputError,
    ToolRegistry,
    ToolUnavailableError,
)

__all__ = ["McpServers", "annotated_risk", "result_text"]

log = logging.getLogger(__name__)

_MAX_VALIDATION_MESSAGE = 500

Publish = Callable[[Sequence[Emit]], Awaitable[None]]


class McpServers:
    """The configured MCP servers, their sessions and their tools.

    Args:
        config: The servers.
        registry: Where their tools are registered (next to the built-ins).
        publish: Sends catalog records (``EventPublisher.publish``).
        catalog_topic: The tool catalog topic.
        reviewed: Tools the critic must approve before they run.
        concurrency: Calls of one tool in flight at most.
        ping_interval: Seconds between liveness pings of each server.
        backoff: Restart delays of a failed server.
        risk: A tool's risk from its name and annotated risk (``Policy.risk``).
    """

    def __init__(
        self,
        config: McpConfig,
        registry: ToolRegistry,
        publish: Publish,
        catalog_topic: str,
        reviewed: frozenset[str] = frozenset(),
        *,
        concurrency: int = 8,
        ping_interval: float = 10.0,
        backoff: Backoff = DEFAULT_BACKOFF,
        risk: Callable[[str, str], str] = lambda tool, default: default,
    ) -> None:
        self._registry = registry
        self._risk = risk
        self._publish = publish
        self._topic = catalog_topic
        self._reviewed = reviewed
        self._concurrency = concurrency
        self._published: dict[str, set[str]] = {name: set() for name in config.servers}
        # Each published name with its catalog form (description, parameters, source, risk).
        self._listed: dict[str, tuple[str, str, str, str]] = {}
        self.sessions = {
            name: McpSession(
                name,
                spec,
                partial(self._on_tools, name),
                ping_interval=ping_interval,
                backoff=backoff,
            )
            for name, spec in config.servers.items()
        }
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, wait: float = 10.0) -> None:
        """Open every session; return once each has started or failed once (or after ``wait``
        seconds), so the tools of the servers that are up are in the catalog."""
        self._tasks = [asyncio.create_task(session.run()) for session in self.sessions.values()]
        attempts = [asyncio.create_task(s.attempted.wait()) for s in self.sessions.values()]
        if attempts:
            _, pending = await asyncio.wait(attempts, timeout=wait)
            for attempt in pending:
                attempt.cancel()
        down = {name: s.error for name, s in self.sessions.items() if not s.up}
        if down:
            log.warning("MCP servers not up yet (their tools answer `unavailable`): %s", down)

    async def stop(self) -> None:
        """Close every session (stdio servers are stopped)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def detail(self) -> str:
        """One line for ``/readyz``: the servers that are down, and why."""
        down = [f"{name} down ({s.error})" for name, s in self.sessions.items() if not s.up]
        if not down:
            return ""
        return f"mcp: {len(self.sessions) - len(down)}/{len(self.sessions)} up; " + ", ".join(down)

    async def _on_tools(self, server: str, tools: list[types.Tool]) -> None:
        session = self.sessions[server]
        current: dict[str, Tool] = {}
        for remote in tools:
            name = tool_name(server, remote.name)
            if name is None:
                log.warning("MCP tool %r of %s skipped: no valid tool name", remote.name, server)
                continue
            if name in current:
                log.warning("MCP tool %r of %s skipped: %s is taken", remote.name, server, name)
                continue
            tool = self._tool(session, remote, name)
            if tool is not None:
                current[name] = tool
        removed = self._published[server] - set(current)
        emits = [catalog_tombstone(name, self._topic) for name in sorted(removed)]
        for name in removed:
            self._registry.remove(name)
            self._listed.pop(name, None)
        for name, tool in current.items():
            self._registry.add(tool)
            parameters = json.dumps(tool.parameters, sort_keys=True)
            form = (tool.description, parameters, tool.source, tool.risk)
            if self._listed.get(name) != form:  # unchanged tools are in the catalog already
                emits.append(catalog_event(tool, self._topic, self._reviewed))
                self._listed[name] = form
        self._published[server] = set(current)
        log.info("MCP server %s: tools %s (removed %s)", server, sorted(current), sorted(removed))
        await self._publish(emits)

    def _tool(self, session: McpSession, remote: types.Tool, name: str) -> Tool | None:
        schema = remote.input_schema
        try:
            validator_class = jsonschema.validators.validator_for(schema)
            validator_class.check_schema(schema)
        except jsonschema.SchemaError as exc:
            log.warning(
                "MCP tool %r of %s skipped: invalid inputSchema: %s",
                remote.name, session.name, clip(exc.message, 200),
            )  # fmt: skip
            return None
        validator = validator_class(schema)
        hints = remote.annotations
        idempotent = bool(hints and (hints.idempotent_hint or hints.read_only_hint))
        limit = asyncio.Semaphore(self._concurrency)

        def check(arguments: dict[str, Any]) -> None:
            error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
            if error is not None:
                where = "/".join(str(part) for part in error.absolute_path) or "arguments"
                message = f"{where}: {error.message}"
                raise ToolInputError(clip(message, _MAX_VALIDATION_MESSAGE))

        async def run(arguments: dict[str, Any], call: CallContext) -> str:
            meta = {
                IDEMPOTENCY_META: str(call),
                "stepbus/task_id": call.task_id,
                "stepbus/tenant": call.tenant,
            }
            async with limit:
                try:
                    result = await session.call(remote.name, arguments, meta)
                except SessionLost as exc:
                    raise ToolUnavailableError(str(exc)) from None
                except (MCPError, OSError) as exc:
                    if idempotent:
                        raise  # the tool says a repeat is harmless: the processor retries
                    # Maybe it ran: running it again could do its effect twice.
                    raise ToolFailedError(f"MCP server {session.name}: {exc}") from None
            if result.is_error:
                raise ToolFailedError(result_text(result) or "the tool reported an error")
            return result_text(result)

        return Tool(
            name=name,
            description=remote.description or remote.title or f"{remote.name} ({session.name})",
            parameters=schema,
            run=run,
            source=f"mcp:{session.name}",
            check=check,
            risk=self._risk(name, annotated_risk(hints)),
            idempotent=idempotent,
        )


def annotated_risk(hints: types.ToolAnnotations | None) -> str:
    """A tool's risk from its MCP annotations: read-only is low, declared destructive is high,
    anything else (no annotations, additive writes) medium. Hints are the server's word: the
    policy file's ``tools:`` overrides them."""
    if hints is None:
        return "medium"
    if hints.read_only_hint:
        return "low"
    return "high" if hints.destructive_hint else "medium"


def result_text(result: types.CallToolResult) -> str:
    """The text a call result shows the model: its text blocks joined, other blocks named."""
    parts = [_block_text(block) for block in result.content]
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return "\n".join(parts)


def _block_text(block: types.ContentBlock) -> str:
    if isinstance(block, types.TextContent):
        return block.text
    if isinstance(block, types.ImageContent | types.AudioContent):
        kind = "image" if isinstance(block, types.ImageContent) else "audio"
        return f"[{kind} {block.mime_type}, {len(block.data) * 3 // 4} bytes]"
    if isinstance(block, types.ResourceLink):
        return f"[resource link {block.uri}]"
    resource = block.resource
    text = getattr(resource, "text", None)
    return text if isinstance(text, str) else f"[resource {resource.uri}, {resource.mime_type}]"
