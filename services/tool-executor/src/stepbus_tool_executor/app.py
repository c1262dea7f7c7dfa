"""Wiring of the tool-executor: registry, ledger, processor; publishes the tool catalog."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

from stepbus_contracts import tool_calls_adapter
from stepbus_runtime import (
    Emit,
    EventPublisher,
    Processor,
    Route,
    run_worker,
    service_processor,
    service_publisher,
    setup_telemetry,
)

from .audit import ExecutionLog
from .catalog import catalog_events
from .handlers import ToolCallHandler
from .http_fetch import FetchLimits, http_fetch_tool
from .ledger import Ledger
from .mcp_config import SEPARATOR, McpConfig, load_mcp_config
from .mcp_servers import McpServers
from .mcp_session import Backoff
from .policy import allow_all, load_policy
from .registry import ToolRegistry, builtin_registry
from .settings import ToolExecutorSettings

__all__ = ["catalog_events", "main"]

log = logging.getLogger(__name__)

FORGET_BATCH = 10_000
"""Idle task ledgers forgotten per sweep at most, so a burst never floods the queues."""


async def main(settings: ToolExecutorSettings | None = None) -> None:
    """Run the tool-executor until SIGTERM."""
    settings = settings or ToolExecutorSettings()
    setup_telemetry("tool-executor")
    topics = settings.topics
    policy = load_policy(settings.policy_file) if settings.policy_file else allow_all()
    if policy.configured:
        log.info("tool policy %s: rules %s", policy.source, list(policy.rule_names))
    else:
        log.warning(
            "no tool policy (STEPBUS_POLICY_FILE unset): every built-in tool and every tool of "
            "a configured MCP server is allowed"
        )
    limits = FetchLimits(
        max_bytes=settings.http_fetch_max_bytes,
        timeout_seconds=settings.http_fetch_timeout_seconds,
        allow_private=settings.http_fetch_allow_private,
    )
    registry = ToolRegistry()
    for tool in (*builtin_registry().tools.values(), http_fetch_tool(limits)):
        registry.add(dataclasses.replace(tool, risk=policy.risk(tool.name, tool.risk)))
    publisher = service_publisher(settings, "stepbus-tool-executor")
    ledger = Ledger(
        settings.kafka_bootstrap_servers,
        topics.tool_calls,
        topics.tool_ledger,
        max_tasks=settings.ledger_max_tasks,
        payloads=publisher.payloads,
    )
    config = load_mcp_config(settings.mcp_config) if settings.mcp_config else McpConfig()
    handler = ToolCallHandler(
        registry,
        ledger,
        topics,
        ExecutionLog(settings.execution_log),
        policy=policy,
        max_output_chars=settings.max_output_chars,
        servers=frozenset(config.servers),
    )
    processor = service_processor(
        settings,
        name="tool-executor",
        group_id=settings.group_id,
        routes={topics.tool_calls: Route(tool_calls_adapter, handler)},
        publisher=publisher,
        listener=ledger,
    )

    reviewed = settings.reviewed()
    servers = McpServers(
        config,
        registry,
        publisher.publish,
        topics.tool_catalog,
        reviewed,
        concurrency=settings.mcp_tool_concurrency,
        ping_interval=settings.mcp_ping_interval_seconds,
        backoff=Backoff(settings.mcp_restart_initial_seconds, settings.mcp_restart_max_seconds),
        risk=policy.risk,
    )
    unknown = [
        name for name in sorted(reviewed - set(registry.tools))
        if name.split(SEPARATOR, 1)[0] not in config.servers  # MCP tools are listed later
    ]  # fmt: skip
    if unknown:
        log.warning("STEPBUS_TOOL_EXECUTOR_REVIEW_TOOLS names unknown tools: %s", unknown)

    async def announce() -> None:
        await publisher.publish(catalog_events(registry, topics.tool_catalog, reviewed))
        # After the publisher is up: each server's listing is published as it comes.
        await servers.start(settings.mcp_start_wait_seconds)

    retention = settings.ledger_retention_seconds
    sweeper = asyncio.create_task(forget_idle(processor, ledger, publisher, retention))
    try:
        await run_worker(
            settings, publisher, processor, settings.metrics_port, announce, detail=servers.detail
        )
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await servers.stop()


async def forget_idle(
    processor: Processor, ledger: Ledger, publisher: EventPublisher, retention: float
) -> None:
    """Now and then, forget the ledgers of tasks idle longer than ``retention`` seconds."""

    async def forget(task_id: str) -> list[Emit]:
        await ledger.forget(task_id, retention, publisher)
        return []

    pause = min(60.0, retention / 4)
    while True:
        await asyncio.sleep(pause)
        idle = ledger.idle(retention, limit=FORGET_BATCH)
        for task_id in idle:
            processor.submit(task_id, lambda t=task_id: forget(t))
        # A full batch leaves more behind: take the next one soon, not in a minute.
        pause = 1.0 if len(idle) == FORGET_BATCH else min(60.0, retention / 4)
