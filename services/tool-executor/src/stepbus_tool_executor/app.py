"""Wiring of the tool-executor: registry, ledger, processor; publishes the tool catalog."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from stepbus_contracts import ToolRegistered, ToolRegisteredData, tool_calls_adapter
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
from .handlers import ToolCallHandler
from .ledger import Ledger
from .registry import ToolRegistry, builtin_registry
from .settings import ToolExecutorSettings

__all__ = ["catalog_events", "main"]

log = logging.getLogger(__name__)

FORGET_BATCH = 10_000
"""Idle task ledgers forgotten per sweep at most, so a burst never floods the queues."""


def catalog_events(
    registry: ToolRegistry, topic: str, reviewed: frozenset[str] = frozenset()
) -> list[Emit]:
    """One ``stepbus.tool.registered`` per tool, keyed by tool name; the tools in ``reviewed``
    are marked for review by the critic."""
    return [
        Emit(
            topic,
            ToolRegistered(
                source="urn:stepbus:tool-executor",
                subject=tool.name,
                data=ToolRegisteredData(
                    name=tool.name,
                    description=tool.description,
                    parameters=tool.parameters,
                    review=tool.name in reviewed,
                ),
            ),
        )
        for tool in registry.tools.values()
    ]


async def main(settings: ToolExecutorSettings | None = None) -> None:
    """Run the tool-executor until SIGTERM."""
    settings = settings or ToolExecutorSettings()
    setup_telemetry("tool-executor")
    topics = settings.topics
    registry = builtin_registry()
    publisher = service_publisher(settings, "stepbus-tool-executor")
    ledger = Ledger(
        settings.kafka_bootstrap_servers,
        topics.tool_calls,
        topics.tool_ledger,
        max_tasks=settings.ledger_max_tasks,
        payloads=publisher.payloads,
    )
    handler = ToolCallHandler(registry, ledger, topics, ExecutionLog(settings.execution_log))
    processor = service_processor(
        settings,
        name="tool-executor",
        group_id=settings.group_id,
        routes={topics.tool_calls: Route(tool_calls_adapter, handler)},
        publisher=publisher,
        listener=ledger,
    )

    reviewed = settings.reviewed()
    if unknown := sorted(reviewed - set(registry.tools)):
        log.warning("STEPBUS_TOOL_EXECUTOR_REVIEW_TOOLS names unknown tools: %s", unknown)

    async def announce() -> None:
        await publisher.publish(catalog_events(registry, topics.tool_catalog, reviewed))

    retention = settings.ledger_retention_seconds
    sweeper = asyncio.create_task(forget_idle(processor, ledger, publisher, retention))
    try:
        await run_worker(settings, publisher, processor, settings.metrics_port, announce)
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper


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
