"""A stdio MCP server with a side effect, for the tool-executor's MCP tests.

``append`` writes one line per distinct idempotency key (from the request's ``_meta``) to the
file named by ``STEPBUS_TEST_SIDE_EFFECTS``; every call's ``_meta`` is also logged as a JSON
line to ``STEPBUS_TEST_CALLS``. ``crash`` kills the process; ``grow`` adds a tool and says the
tool list changed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations

server = MCPServer("files")


def _meta(ctx: Context) -> dict[str, Any]:
    meta = ctx.request_context.meta or {}
    return dict(meta) if isinstance(meta, dict) else meta.model_dump(by_alias=True)


def _log_call(tool: str, ctx: Context) -> dict[str, Any]:
    meta = _meta(ctx)
    with open(os.environ["STEPBUS_TEST_CALLS"], "a", encoding="utf-8") as calls:
        calls.write(json.dumps({"tool": tool, "meta": meta}) + "\n")
    return meta


@server.tool(description="Append a line to the side-effect file, once per idempotency key.")
def append(line: str, ctx: Context) -> str:
    key = _log_call("append", ctx).get("stepbus/idempotency_key")
    path = Path(os.environ["STEPBUS_TEST_SIDE_EFFECTS"])
    done = (
        {json.loads(row)["key"] for row in path.read_text().splitlines()}
        if path.exists()
        else set()
    )
    if key not in done:
        with path.open("a", encoding="utf-8") as effects:
            effects.write(json.dumps({"key": key, "line": line}) + "\n")
    return f"appended {line!r}"


@server.tool(description="Fail as a tool (isError).")
def refuse(reason: str, ctx: Context) -> str:
    _log_call("refuse", ctx)
    raise ToolError(f"refused: {reason}")


@server.tool(
    description="Kill this server process.", annotations=ToolAnnotations(idempotentHint=False)
)
def crash(ctx: Context) -> str:
    _log_call("crash", ctx)
    os._exit(3)


@server.tool(name="odd.name", description="A tool whose name needs sanitising.")
def odd_name() -> str:
    return "odd"


def extra(word: str) -> str:
    """An added tool."""
    return word.upper()


@server.tool(description="Add the tool `extra`, remove `odd.name`, and say the tools changed.")
async def grow(ctx: Context) -> str:
    server.add_tool(extra, name="extra", description="Upper-case a word.")
    server.remove_tool("odd.name")
    try:
        await ctx.notify_tools_changed()  # 2026-07-28 sessions: subscriptions/listen
    except ValueError:
        pass
    try:
        await ctx.session.send_tool_list_changed()  # handshake-era sessions
    except Exception:
        pass
    return "grown"


if __name__ == "__main__":
    server.run()
