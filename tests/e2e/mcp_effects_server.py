"""A stdio MCP server for the end-to-end tests: ``append_slowly`` writes one line per distinct
idempotency key (from the request's ``_meta``) to ``STEPBUS_TEST_SIDE_EFFECTS``, logs every
call's ``_meta`` to ``STEPBUS_TEST_CALLS``, then waits ``STEPBUS_TEST_DELAY`` seconds before it
answers: a window in which the executor can be killed after the effect and before its ack."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("effects")


def _meta(ctx: Context) -> dict[str, Any]:
    meta = ctx.request_context.meta or {}
    return dict(meta) if isinstance(meta, dict) else meta.model_dump(by_alias=True)


def _record(line: str, meta: dict[str, Any]) -> None:
    with open(os.environ["STEPBUS_TEST_CALLS"], "a", encoding="utf-8") as calls:
        calls.write(json.dumps({"line": line, "meta": meta}) + "\n")
    key = meta.get("stepbus/idempotency_key")
    path = Path(os.environ["STEPBUS_TEST_SIDE_EFFECTS"])
    rows = path.read_text().splitlines() if path.exists() else []
    if key not in {json.loads(row)["key"] for row in rows}:
        with path.open("a", encoding="utf-8") as effects:
            effects.write(json.dumps({"key": key, "line": line}) + "\n")


@server.tool(description="Append a line to the notes, once per idempotency key.")
async def append_slowly(line: str, ctx: Context) -> str:
    _record(line, _meta(ctx))
    await asyncio.sleep(float(os.environ.get("STEPBUS_TEST_DELAY", "0")))
    return f"noted {line}"


if __name__ == "__main__":
    server.run()
