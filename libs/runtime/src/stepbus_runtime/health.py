"""A tiny HTTP endpoint for ``/metrics``, ``/healthz`` and ``/readyz`` on every worker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["serve_health"]


async def serve_health(
    host: str, port: int, ready: Callable[[], bool | tuple[bool, str]]
) -> asyncio.Server:
    """Serve Prometheus metrics and liveness/readiness probes until the server is closed.

    ``ready`` answers whether the service is ready, optionally with a line saying why not
    (``Processor.health``), which ``/readyz`` returns as its body.
    """

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (b"\r\n", b""):
                pass
            path = request.split(b" ")[1].decode() if request.count(b" ") >= 2 else "/"
            status, content_type, body = "404 Not Found", "text/plain", b"not found\n"
            if path == "/metrics":
                status, content_type, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest()
            elif path == "/healthz":
                status, body = "200 OK", b"ok\n"
            elif path == "/readyz":
                answer = ready()
                ok, detail = answer if isinstance(answer, tuple) else (answer, "")
                status = "200 OK" if ok else "503 Service Unavailable"
                body = f"{detail or ('ready' if ok else 'starting')}\n".encode()
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(respond, host, port)
