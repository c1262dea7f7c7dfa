"""A streamable-HTTP MCP server, for the tool-executor's MCP tests: ``python search_server.py
PORT`` serves ``/mcp`` on 127.0.0.1 under uvicorn. ``search`` answers with the request's
``_meta`` and its ``Idempotency-Key`` header, so a test sees both arrived."""

from __future__ import annotations

import json
import sys
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ToolAnnotations

server = MCPServer("search")


@server.tool(
    description="Search the test corpus.",
    annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True),
)
def search(query: str, limit: int, ctx: Context) -> str:
    meta = ctx.request_context.meta or {}
    meta_dict: dict[str, Any] = dict(meta) if isinstance(meta, dict) else meta.model_dump()
    request = ctx.request_context.request
    header = request.headers.get("idempotency-key") if request is not None else None
    return json.dumps(
        {"query": query, "limit": limit, "meta": meta_dict, "idempotency_header": header}
    )


if __name__ == "__main__":
    port = int(sys.argv[1])
    uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=port, log_level="warning")
