"""``make bench``, MCP part: what a call through an MCP server costs over a direct call.

Starts a stdio MCP server (an echo tool, written with the ``mcp`` package) through the
tool-executor's own MCP client code, then times ``--calls`` sequential calls of it and of the
built-in ``calculator`` in the same process, and prints p50/p99 of both.

    python -m stepbus_devtools.mcp_bench [--calls 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stepbus_tool_executor.mcp_config import McpConfig
from stepbus_tool_executor.mcp_servers import McpServers
from stepbus_tool_executor.registry import CallContext, Tool, builtin_registry

SERVER = """
from mcp.server.mcpserver import MCPServer

server = MCPServer("bench")


@server.tool(description="Return the word.")
def echo(word: str) -> str:
    return word


if __name__ == "__main__":
    server.run()
"""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def _time(tool: Tool, arguments: dict[str, Any], calls: int) -> list[float]:
    for index in range(50):  # warm up
        await tool.run(arguments, CallContext(f"warm:{index}:0", "warm", "bench"))
    times = []
    for index in range(calls):
        started = time.perf_counter()
        await tool.run(arguments, CallContext(f"bench:{index}:0", "bench", "bench"))
        times.append((time.perf_counter() - started) * 1000)
    return times


async def run(calls: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        script = Path(scratch) / "echo_server.py"
        script.write_text(SERVER)
        config = McpConfig.model_validate(
            {"mcpServers": {"bench": {"command": sys.executable, "args": [str(script)]}}}
        )
        registry = builtin_registry()

        async def publish(emits: Any) -> None:
            return None

        servers = McpServers(config, registry, publish, "bench.tool.catalog")
        await servers.start(30)
        try:
            echo, calculator = registry.get("bench__echo"), registry.get("calculator")
            if echo is None or calculator is None:
                raise SystemExit("the MCP server did not come up: no bench__echo tool")
            print(f"MCP call overhead: {calls} sequential calls in one process")
            for name, tool, arguments in (
                ("calculator (built-in, direct)", calculator, {"expression": "17 * 23"}),
                ("bench__echo (MCP over stdio)", echo, {"word": "hello"}),
            ):
                times = await _time(tool, arguments, calls)
                print(
                    f"  {name:<32} p50 {_percentile(times, 50):7.3f} ms   "
                    f"p99 {_percentile(times, 99):7.3f} ms"
                )
        finally:
            await servers.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls timed per tool")
    asyncio.run(run(parser.parse_args().calls))


if __name__ == "__main__":
    main()
