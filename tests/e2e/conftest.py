"""The stepbus services as separate OS processes on the real broker, under a unique prefix."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from stepbus_contracts import Topics
from stepbus_runtime import ensure_topics

from ..harness import (
    LOGS,
    TEST_API_KEYS,
    ServiceProcess,
    delete_topics,
    free_port,
    unique_prefix,
)


@dataclass
class Stack:
    """A running set of services and how to reach them."""

    topics: Topics
    bootstrap: str
    services: dict[str, ServiceProcess]
    gateway_url: str | None
    redis_url: str


def mcp_server_files(kind: str, name: str, server: Path, **server_env: str) -> Path:
    """A fresh folder under the test logs holding ``mcp.json``, a config that runs ``server``
    (a test MCP server) as ``name`` and has it write its effects and calls there
    (``effects.jsonl``, ``calls.jsonl``); ``server_env`` is added to the server's environment.
    Give ``STEPBUS_MCP_CONFIG=<folder>/mcp.json`` to the stack."""
    files = LOGS / f"{kind}-{uuid.uuid4().hex[:8]}"
    files.mkdir(parents=True, exist_ok=True)
    env = {
        "STEPBUS_TEST_SIDE_EFFECTS": str(files / "effects.jsonl"),
        "STEPBUS_TEST_CALLS": str(files / "calls.jsonl"),
        **server_env,
    }
    config = {"mcpServers": {name: {"command": sys.executable, "args": [str(server)], "env": env}}}
    (files / "mcp.json").write_text(json.dumps(config))
    return files


@contextlib.asynccontextmanager
async def running_stack(
    kafka_bootstrap: str,
    redis_url: str,
    *,
    env: dict[str, str] | None = None,
    gateway: bool = True,
) -> AsyncIterator[Stack]:
    """scripted model, tool-executor, memory, critic, planner and (when present and
    ``gateway``) gateway, as processes under a fresh topic prefix; ``env`` is added to every
    service's."""
    topics = Topics(unique_prefix())
    await ensure_topics(kafka_bootstrap, topics)
    llm_port = free_port()
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "REDIS_URL": redis_url,
        "STEPBUS_TOPIC_PREFIX": topics.prefix,
        "OPENAI_BASE_URL": f"http://127.0.0.1:{llm_port}/v1",
        "OPENAI_API_KEY": "scripted-test-double",
        "STEPBUS_MODEL": "stepbus-scripted",
        **(env or {}),
    }
    ports = {
        name: free_port() for name in ("tool-executor", "memory", "critic", "planner", "gateway")
    }
    services = [
        ServiceProcess(
            "scripted-llm",
            ["stepbus_devtools.scripted_llm", "--port", str(llm_port)],
            env,
            f"http://127.0.0.1:{llm_port}/v1/models",
        ),
        ServiceProcess(
            "tool-executor",
            ["stepbus_tool_executor"],
            {**env, "STEPBUS_TOOL_EXECUTOR_METRICS_PORT": str(ports["tool-executor"])},
            f"http://127.0.0.1:{ports['tool-executor']}/readyz",
        ),
        ServiceProcess(
            "memory",
            ["stepbus_memory"],
            {
                **env,
                "STEPBUS_MEMORY_METRICS_PORT": str(ports["memory"]),
                "STEPBUS_MEMORY_QDRANT_PATH": str(LOGS / f"qdrant-{topics.prefix.rstrip('.')}"),
            },
            f"http://127.0.0.1:{ports['memory']}/readyz",
        ),
        ServiceProcess(
            "critic",
            ["stepbus_critic"],
            {
                # The judge is the scripted model too (unless a test's ``env`` says otherwise).
                "STEPBUS_CRITIC_BASE_URL": env["OPENAI_BASE_URL"],
                "STEPBUS_CRITIC_API_KEY": env["OPENAI_API_KEY"],
                **env,
                "STEPBUS_CRITIC_METRICS_PORT": str(ports["critic"]),
            },
            f"http://127.0.0.1:{ports['critic']}/readyz",
        ),
        ServiceProcess(
            "planner",
            ["stepbus_planner"],
            {**env, "STEPBUS_PLANNER_METRICS_PORT": str(ports["planner"])},
            f"http://127.0.0.1:{ports['planner']}/readyz",
        ),
    ]
    gateway_url = None
    if gateway and importlib.util.find_spec("stepbus_gateway.app") is not None:
        gateway_url = f"http://127.0.0.1:{ports['gateway']}"
        services.append(
            ServiceProcess(
                "gateway",
                ["stepbus_gateway"],
                {
                    **env,
                    "STEPBUS_GATEWAY_PORT": str(ports["gateway"]),
                    "STEPBUS_API_KEYS": TEST_API_KEYS,
                },
                f"{gateway_url}/readyz",
            )
        )
    try:
        for service in services:  # in order: the planner reads the catalog the executor wrote
            service.start()
            await service.wait_ready()
        yield Stack(
            topics, kafka_bootstrap, {s.name: s for s in services}, gateway_url, env["REDIS_URL"]
        )
    finally:
        for service in reversed(services):
            service.stop()
        await delete_topics(kafka_bootstrap, topics.prefix)


@pytest.fixture(scope="module")
async def stack(kafka_bootstrap: str, redis_url: str) -> AsyncIterator[Stack]:
    """The whole stack (see ``running_stack``), shared by the tests of a module."""
    async with running_stack(kafka_bootstrap, redis_url) as running:
        yield running
