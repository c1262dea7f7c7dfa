"""MCP servers as tools: real stdio and streamable-HTTP servers (tests/mcp_servers/), listed,
namespaced, called through the ToolCallHandler with the idempotency key in ``_meta``, restarted
when they die. No Kafka: the catalog records are collected as the publisher would send them."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from stepbus_contracts import (
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallRequested,
    ToolCallRequestedData,
    ToolRegistered,
    Topics,
)
from stepbus_runtime import Emit, RecordContext
from stepbus_tool_executor.handlers import ToolCallHandler
from stepbus_tool_executor.ledger import Ledger
from stepbus_tool_executor.mcp_config import McpConfig
from stepbus_tool_executor.mcp_servers import McpServers
from stepbus_tool_executor.mcp_session import SERVER_RESTARTS, Backoff
from stepbus_tool_executor.registry import ToolRegistry, builtin_registry

SERVERS = Path(__file__).resolve().parents[1] / "mcp_servers"
TOPICS = Topics("mcp.")
TASK, TENANT = "task-mcp", "acme"


class Catalog:
    """Collects what would go to the catalog topic."""

    def __init__(self) -> None:
        self.emits: list[Emit] = []

    async def publish(self, emits: Sequence[Emit]) -> None:
        self.emits.extend(emits)

    def entries(self) -> dict[str, ToolRegistered | None]:
        latest: dict[str, ToolRegistered | None] = {}
        for emit in self.emits:
            assert isinstance(emit.event, ToolRegistered)
            latest[emit.key or emit.event.subject] = None if emit.tombstone else emit.event
        return latest


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 (a state owned elsewhere, polled)
            await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def search_url() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, str(SERVERS / "search_server.py"), str(port)])
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        for _ in range(200):  # readiness polled: the port answers
            try:
                httpx.get(url, timeout=0.5)
                break
            except httpx.TransportError:
                if process.poll() is not None:
                    raise RuntimeError("the search server exited") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(10)


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.effects = tmp_path / "effects.jsonl"
        self.calls = tmp_path / "calls.jsonl"
        self.catalog = Catalog()
        self.registry: ToolRegistry = builtin_registry()
        self.handler = ToolCallHandler(
            self.registry, Ledger("127.0.0.1:1", TOPICS.tool_calls, TOPICS.tool_ledger), TOPICS
        )

    def config(self, **http: str) -> McpConfig:
        env = {
            "STEPBUS_TEST_SIDE_EFFECTS": str(self.effects),
            "STEPBUS_TEST_CALLS": str(self.calls),
        }
        servers: dict[str, Any] = {
            "files": {
                "command": sys.executable,
                "args": [str(SERVERS / "files_server.py")],
                "env": env,
            }
        }
        servers.update({name: {"url": url} for name, url in http.items()})
        return McpConfig.model_validate({"mcpServers": servers})

    def server_calls(self) -> list[dict[str, Any]]:
        if not self.calls.exists():
            return []
        return [json.loads(line) for line in self.calls.read_text().splitlines()]

    async def call(
        self, name: str, arguments: dict[str, Any], call_index: int = 0, attempt: int = 1
    ) -> ToolCallCompleted | ToolCallFailed:
        command = ToolCallRequested(
            id=f"cmd-{name}-{call_index}",
            source="urn:test:planner",
            subject=TASK,
            tenant=TENANT,
            data=ToolCallRequestedData(
                step=0,
                call_index=call_index,
                name=name,
                idempotency_key=f"{TASK}:0:{call_index}",
                arguments=arguments,
                timeout_seconds=10,
            ),
        )
        context = RecordContext(TOPICS.tool_calls, 0, call_index, TASK, attempt, 3)
        *_, emit = await self.handler(command, context)
        assert isinstance(emit.event, ToolCallCompleted | ToolCallFailed)
        return emit.event


@pytest.fixture
async def setup(tmp_path: Path, search_url: str) -> AsyncIterator[tuple[Setup, McpServers]]:
    state = Setup(tmp_path)
    servers = McpServers(
        state.config(search=search_url),
        state.registry,
        state.catalog.publish,
        TOPICS.tool_catalog,
        frozenset({"files__append"}),
        ping_interval=0.2,
        backoff=Backoff(0.2, 1.0),
    )
    await servers.start(wait=20)
    try:
        yield state, servers
    finally:
        await servers.stop()


async def test_tools_of_both_servers_are_listed_namespaced_with_their_schemas(
    setup: tuple[Setup, McpServers],
) -> None:
    state, servers = setup
    entries = state.catalog.entries()

    assert servers.detail() == ""
    assert {"files__append", "files__refuse", "files__odd_name", "search__search"} <= set(entries)
    search = entries["search__search"]
    assert search is not None
    assert search.data.source == "mcp:search"
    assert search.data.description == "Search the test corpus."
    assert search.data.parameters["required"] == ["query", "limit"]
    append = entries["files__append"]
    assert append is not None and append.data.review is True  # REVIEW_TOOLS still applies
    assert append.data.source == "mcp:files"
    assert "calculator" in state.registry.tools


async def test_a_call_reaches_the_server_with_the_idempotency_key_in_meta_once_per_key(
    setup: tuple[Setup, McpServers],
) -> None:
    state, _ = setup
    first = await state.call("files__append", {"line": "hello"})
    # The same key a second time (a redelivery the ledger lost): the server writes nothing new.
    state.handler = ToolCallHandler(
        state.registry, Ledger("127.0.0.1:1", TOPICS.tool_calls, TOPICS.tool_ledger), TOPICS
    )
    second = await state.call("files__append", {"line": "hello"})

    assert isinstance(first, ToolCallCompleted) and first.data.output == "appended 'hello'"
    assert isinstance(second, ToolCallCompleted)
    [meta, _] = [call["meta"] for call in state.server_calls()]
    assert meta["stepbus/idempotency_key"] == f"{TASK}:0:0"
    assert (meta["stepbus/task_id"], meta["stepbus/tenant"]) == (TASK, TENANT)
    assert len(state.effects.read_text().splitlines()) == 1


async def test_an_http_tool_gets_the_key_in_meta_and_as_an_idempotency_key_header(
    setup: tuple[Setup, McpServers],
) -> None:
    state, _ = setup
    event = await state.call("search__search", {"query": "kafka", "limit": 3}, call_index=4)

    assert isinstance(event, ToolCallCompleted)
    answer = json.loads(event.data.output)
    assert answer["meta"]["stepbus/idempotency_key"] == f"{TASK}:0:4"
    assert answer["idempotency_header"] == f"{TASK}:0:4"


async def test_schema_invalid_arguments_never_reach_the_server(
    setup: tuple[Setup, McpServers],
) -> None:
    state, _ = setup
    event = await state.call("files__append", {"line": 42})

    assert isinstance(event, ToolCallFailed)
    assert event.data.error_type == "invalid_arguments"
    assert "line" in event.data.error and "string" in event.data.error
    assert state.server_calls() == []


async def test_a_tool_error_comes_back_as_a_tool_error_failure(
    setup: tuple[Setup, McpServers],
) -> None:
    state, _ = setup
    event = await state.call("files__refuse", {"reason": "no"})

    assert isinstance(event, ToolCallFailed)
    assert event.data.error_type == "tool_error"
    assert "refused: no" in event.data.error


async def test_a_killed_server_fails_unavailable_meanwhile_and_is_restarted(
    setup: tuple[Setup, McpServers],
) -> None:
    state, servers = setup
    files = servers.sessions["files"]
    restarts = SERVER_RESTARTS.labels("files")._value.get()

    crashed = await state.call("files__crash", {}, call_index=1)
    assert isinstance(crashed, ToolCallFailed)
    assert crashed.data.error_type == "unavailable"  # not idempotent: not retried
    await until(lambda: not files.up)
    assert "files down" in servers.detail()
    during = await state.call("files__append", {"line": "while down"}, call_index=2)
    calculator = await state.call("calculator", {"expression": "6 * 7"}, call_index=3)
    assert isinstance(during, ToolCallFailed) and during.data.error_type == "unavailable"
    assert isinstance(calculator, ToolCallCompleted) and calculator.data.output == "42"

    await until(lambda: files.up)
    assert SERVER_RESTARTS.labels("files")._value.get() > restarts
    after = await state.call("files__append", {"line": "back"}, call_index=5)
    assert isinstance(after, ToolCallCompleted)


async def test_a_tools_list_change_republishes_and_tombstones_removed_tools(
    setup: tuple[Setup, McpServers],
) -> None:
    state, _ = setup
    grown = await state.call("files__grow", {})
    assert isinstance(grown, ToolCallCompleted)

    await until(lambda: "files__extra" in state.catalog.entries())
    await until(lambda: state.catalog.entries().get("files__odd_name", 1) is None)
    extra = await state.call("files__extra", {"word": "up"}, call_index=1)
    assert isinstance(extra, ToolCallCompleted) and extra.data.output == "UP"
    assert "files__odd_name" not in state.registry.tools


async def test_the_executor_serves_built_ins_when_every_server_fails(tmp_path: Path) -> None:
    state = Setup(tmp_path)
    config = McpConfig.model_validate(
        {
            "mcpServers": {
                "gone": {"command": str(tmp_path / "no-such-binary")},
                "dark": {"url": f"http://127.0.0.1:{free_port()}/mcp"},
            }
        }
    )
    servers = McpServers(
        config, state.registry, state.catalog.publish, TOPICS.tool_catalog,
        backoff=Backoff(0.1, 0.2),
    )  # fmt: skip
    await servers.start(wait=20)
    try:
        assert "gone down" in servers.detail() and "dark down" in servers.detail()
        event = await state.call("calculator", {"expression": "1 + 1"})
        assert isinstance(event, ToolCallCompleted) and event.data.output == "2"
    finally:
        await servers.stop()
