"""One MCP server: a long-lived session shared by concurrent calls, restarted when it fails.

The session is opened with the official ``mcp`` client (2.x ``Client``), which negotiates the
protocol version (``server/discover``, falling back to the ``initialize`` handshake). Tools are
listed when the session opens and again when the server says they changed: a
``notifications/tools/list_changed`` on a handshake-era connection, a ``subscriptions/listen``
event on a 2026-07-28 one. A ping every ``ping_interval`` seconds (and any call that finds the
connection closed) tells a dead server from a quiet one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import warnings
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import httpx2
import mcp_types as types
from mcp import Client, MCPDeprecationWarning, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from prometheus_client import Counter, Gauge
from stepbus_runtime import clip

from .mcp_config import HttpServer, StdioServer

__all__ = [
    "DEFAULT_BACKOFF",
    "IDEMPOTENCY_META",
    "SERVER_RESTARTS",
    "SERVER_UP",
    "Backoff",
    "McpSession",
    "SessionLost",
]

log = logging.getLogger(__name__)

IDEMPOTENCY_META = "stepbus/idempotency_key"
"""The ``_meta`` key of a call's idempotency key (``stepbus/task_id``, ``stepbus/tenant`` too)."""

SERVER_UP = Gauge("stepbus_mcp_server_up", "1 while the MCP server's session is open.", ["server"])
SERVER_RESTARTS = Counter(
    "stepbus_mcp_server_restarts_total",
    "Sessions reopened after the MCP server failed to start or died.",
    ["server"],
)

_CONNECT_TIMEOUT = 30.0
_STABLE_SECONDS = 60.0
"""A session that lived this long resets the backoff: the next failure is a new incident."""


@dataclass(frozen=True)
class Backoff:
    """Delays between restarts: ``initial``, doubled after each failure, at most ``maximum``."""

    initial: float = 0.5
    maximum: float = 30.0

    def next(self, delay: float) -> float:
        """The delay after ``delay``."""
        return min(delay * 2, self.maximum)


DEFAULT_BACKOFF = Backoff()


class SessionLost(ConnectionError):
    """The server's connection is closed; the session is being reopened."""


class McpSession:
    """The session of one configured server.

    Args:
        name: The server's name in the configuration.
        spec: How to reach it.
        on_tools: Awaited with the server's tools each time they are listed.
        ping_interval: Seconds between liveness pings.
        backoff: Restart delays.
    """

    def __init__(
        self,
        name: str,
        spec: StdioServer | HttpServer,
        on_tools: Callable[[list[types.Tool]], Awaitable[None]],
        *,
        ping_interval: float = 10.0,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        self.name = name
        self._spec = spec
        self._on_tools = on_tools
        self._ping_interval = ping_interval
        self._backoff = backoff
        self._client: Client | None = None
        self._lost = asyncio.Event()
        self._relist = asyncio.Event()
        self.error: str | None = "starting"
        """Why the session is not open (None while it is)."""
        self.attempted = asyncio.Event()
        """Set once the first start has succeeded or failed."""
        SERVER_UP.labels(name).set(0)

    @property
    def up(self) -> bool:
        """Whether the session is open."""
        return self._client is not None

    async def run(self) -> None:
        """Keep the session open until cancelled, restarting it with backoff when it fails."""
        delay = self._backoff.initial
        while True:
            opened = time.monotonic()
            try:
                await self._serve()
                reason = "connection closed"
            except Exception as exc:  # whatever the server did, the session is reopened
                reason = _reason(exc)
            self._client = None
            self.error = reason
            SERVER_UP.labels(self.name).set(0)
            self.attempted.set()
            if time.monotonic() - opened > _STABLE_SECONDS:
                delay = self._backoff.initial
            log.warning("MCP server %s is down (%s); restarting in %.1fs", self.name, reason, delay)
            await asyncio.sleep(delay)
            delay = self._backoff.next(delay)
            SERVER_RESTARTS.labels(self.name).inc()

    async def call(
        self, tool: str, arguments: dict[str, Any], meta: dict[str, Any]
    ) -> types.CallToolResult:
        """Call ``tool`` (its name on the server) with ``_meta`` set to ``meta``.

        Raises:
            SessionLost: The session is not open, or closed during the call.
            MCPError: The server answered with a protocol error.
        """
        client = self._client
        if client is None:
            raise SessionLost(f"MCP server {self.name} is unavailable: {self.error}")
        try:
            return await client.call_tool(tool, arguments, meta=meta)
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED:
                self._lost.set()
                raise SessionLost(f"MCP server {self.name} closed the connection") from None
            raise

    async def _serve(self) -> None:
        self._lost.clear()
        async with AsyncExitStack() as stack:
            client = Client(
                await self._transport(stack),
                message_handler=self._on_message,
                cache=None,  # a listing must always be the server's current one
                client_info=types.Implementation(name="stepbus-tool-executor", version="0.1.0"),
            )
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                await stack.enter_async_context(client)
                await self._list(client)
            self._client = client
            self.error = None
            SERVER_UP.labels(self.name).set(1)
            self.attempted.set()
            log.info("MCP server %s is up (protocol %s)", self.name, client.protocol_version)
            watchers = [
                asyncio.create_task(self._ping(client)),
                asyncio.create_task(self._relists(client)),
            ]
            if client.protocol_version in MODERN_PROTOCOL_VERSIONS:
                watchers.append(asyncio.create_task(self._listen(client)))
            try:
                await self._lost.wait()
            finally:
                self._client = None
                for watcher in watchers:
                    watcher.cancel()
                for watcher in watchers:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await watcher

    async def _transport(self, stack: AsyncExitStack) -> Any:
        spec = self._spec
        if isinstance(spec, StdioServer):
            return StdioServerParameters(
                command=spec.command, args=spec.args, env=spec.env or None, cwd=spec.cwd
            )
        http = httpx2.AsyncClient(
            headers=spec.headers,
            timeout=httpx2.Timeout(30.0, read=300.0),
            event_hooks={"request": [_idempotency_header]},
        )
        await stack.enter_async_context(http)
        return streamable_http_client(spec.url, http_client=http)

    async def _list(self, client: Client) -> None:
        tools: list[types.Tool] = []
        cursor: str | None = None
        for _ in range(100):  # a server paging forever cannot hang the session
            page = await client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        await self._on_tools(tools)

    async def _ping(self, client: Client) -> None:
        while True:
            await asyncio.sleep(self._ping_interval)
            try:
                async with asyncio.timeout(max(self._ping_interval, 5.0)):
                    with warnings.catch_warnings():  # deprecated in 2026-07-28, still answered
                        warnings.simplefilter("ignore", MCPDeprecationWarning)
                        await client.send_ping()
            except MCPError as exc:
                if exc.code != types.CONNECTION_CLOSED:
                    continue  # it answered (2026-07-28 servers refuse `ping`): alive
                log.warning("MCP server %s closed the connection", self.name)
                self._lost.set()
                return
            except Exception as exc:
                log.warning("MCP server %s did not answer a ping: %s", self.name, _reason(exc))
                self._lost.set()
                return

    async def _relists(self, client: Client) -> None:
        while True:
            await self._relist.wait()
            self._relist.clear()
            try:
                await self._list(client)
            except Exception as exc:
                log.warning("MCP server %s: relisting tools failed: %s", self.name, _reason(exc))
                self._lost.set()  # a fresh session lists them again
                return

    async def _listen(self, client: Client) -> None:
        try:
            async with client.listen(tools_list_changed=True) as changes:
                async for _ in changes:
                    self._relist.set()
        except Exception as exc:  # no change events then; the tools listed at start stay
            log.info("MCP server %s: no tool change events: %s", self.name, _reason(exc))

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self._relist.set()
        elif isinstance(message, Exception):
            log.warning("MCP server %s: transport error: %s", self.name, _reason(message))


async def _idempotency_header(request: httpx2.Request) -> None:
    """Mirror a ``tools/call``'s idempotency key from its ``_meta`` into ``Idempotency-Key``:
    the client has no per-request headers, but every call goes out as one POST."""
    if request.method != "POST" or b"stepbus/idempotency_key" not in request.content:
        return
    try:
        message = json.loads(request.content)
        key = message["params"]["_meta"][IDEMPOTENCY_META]
    except (ValueError, KeyError, TypeError):
        return
    if message.get("method") == "tools/call" and isinstance(key, str):
        request.headers["Idempotency-Key"] = key


def _reason(exc: BaseException) -> str:
    """One line for a failure, unwrapping the exception groups task groups raise."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return clip(f"{type(exc).__name__}: {exc}", 300)
