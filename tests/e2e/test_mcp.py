"""MCP servers as tools, end to end: the planner offers a real stdio MCP server's tool, the
model's call reaches it with the idempotency key in ``_meta``, and a tool-executor killed after
the tool ran and before its ack does not repeat the effect."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ..harness import TopicReader, wait_until
from .conftest import Stack, mcp_server_files, running_stack
from .test_recovery import of, submit
from .test_task_flow import run_task, terminals

pytestmark = pytest.mark.e2e

SERVER = Path(__file__).with_name("mcp_effects_server.py")
TOOL = "effects__append_slowly"


@pytest.fixture(scope="module")
async def stack(kafka_bootstrap: str, redis_url: str) -> AsyncIterator[Stack]:
    files = mcp_server_files("mcp", "effects", SERVER, STEPBUS_TEST_DELAY="3")
    env = {"STEPBUS_MCP_CONFIG": str(files / "mcp.json")}
    async with running_stack(kafka_bootstrap, redis_url, env=env, gateway=False) as running:
        running.files = files  # type: ignore[attr-defined]
        yield running


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(row) for row in path.read_text().splitlines()] if path.exists() else []


def task_input(line: str) -> dict[str, Any]:
    return {"input": f'Note it down [tool={TOOL}] {{"line": "{line}"}}', "tools": [TOOL]}


async def test_the_planner_offers_an_mcp_tool_and_the_call_carries_its_key(stack: Stack) -> None:
    files: Path = stack.files  # type: ignore[attr-defined]
    task_id, events = await run_task(stack, task_input("milk"))

    [end] = terminals(events, task_id)
    assert (end["type"], end["data"]["output"]) == ("stepbus.task.completed", "noted milk")
    [call] = [c for c in lines(files / "calls.jsonl") if c["line"] == "milk"]
    assert call["meta"]["stepbus/idempotency_key"] == f"{task_id}:0:0"
    assert call["meta"]["stepbus/task_id"] == task_id
    assert call["meta"]["stepbus/tenant"] == "acme"


async def test_an_executor_killed_after_the_tool_ran_does_not_repeat_its_effect(
    stack: Stack,
) -> None:
    files: Path = stack.files  # type: ignore[attr-defined]
    executor = stack.services["tool-executor"]
    async with TopicReader(stack.bootstrap, stack.topics.results) as results:
        task_id = await submit(stack, task_input("eggs"))
        key = f"{task_id}:0:0"
        await wait_until(
            lambda: [e for e in lines(files / "effects.jsonl") if e["key"] == key],
            60,
            "the tool's effect",
        )
        executor.stop(signal.SIGKILL)  # the tool is still answering: nothing acknowledged
        executor.start()
        await executor.wait_ready()
        await results.wait_for(lambda ev: terminals(ev, task_id), 90, "the task to finish")

    [end] = terminals(results.events(), task_id)
    assert (end["type"], end["data"]["output"]) == ("stepbus.task.completed", "noted eggs")
    assert len([e for e in lines(files / "effects.jsonl") if e["key"] == key]) == 1
    # The redelivered call ran again under the same key, and the server kept one effect.
    calls = [
        c for c in lines(files / "calls.jsonl") if c["meta"].get("stepbus/idempotency_key") == key
    ]
    assert len(calls) == 2
    assert of(results.events(), task_id, "stepbus.task.failed") == []
