"""Structured access logs: one JSON line per request, without secrets.

Logged: method, path (without the query string, which may carry anything), status, duration,
response bytes, and the API key's id and tenant once the request was authenticated. Never the
``Authorization`` header, a body, or a query. Streams are logged when they end.
"""

from __future__ import annotations

import json
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from stepbus_runtime import clip

__all__ = ["AccessLog"]

log = logging.getLogger("stepbus.gateway.access")

_QUIET = frozenset({"/healthz", "/readyz", "/metrics"})
"""Probes and scrapes: logged at DEBUG only."""


class AccessLog:
    """ASGI middleware writing the access log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        sent = 0

        async def logged(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, logged)
        finally:
            path = scope.get("path", "")
            principal = getattr(scope.get("state", {}).get("principal"), "key_id", None)
            tenant = getattr(scope.get("state", {}).get("principal"), "tenant", None)
            line = {
                "method": scope.get("method"),
                "path": clip(path, 200),
                "status": status,
                "ms": round((time.perf_counter() - started) * 1000, 2),
                "bytes": sent,
                "key": principal,
                "tenant": tenant,
            }
            level = logging.DEBUG if path in _QUIET else logging.INFO
            log.log(level, "%s", json.dumps(line))
