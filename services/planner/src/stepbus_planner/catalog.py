"""The tool catalog as the planner sees it: read from the compacted ``tool.catalog`` topic."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from stepbus_contracts import ToolRegisteredData, tool_catalog_adapter
from stepbus_runtime import DecodeError, clip, decode, topic_partitions
from stepbus_runtime.kafka_security import kafka_options

__all__ = ["ToolCatalog"]

log = logging.getLogger(__name__)


class ToolCatalog:
    """Every registered tool, kept current by tailing the catalog topic."""

    def __init__(self, bootstrap_servers: str, topic: str) -> None:
        self._bootstrap = bootstrap_servers
        self._topic = topic
        self._tools: dict[str, ToolRegisteredData] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    def names(self) -> set[str]:
        """Names of the registered tools."""
        return set(self._tools)

    def reviewed(self) -> frozenset[str]:
        """Names of the tools whose calls the critic approves before they run."""
        return frozenset(name for name, tool in self._tools.items() if tool.review)

    def description(self, name: str) -> str | None:
        """What a registered tool does, as the model is told."""
        tool = self._tools.get(name)
        return tool.description if tool is not None else None

    def specs(self, names: list[str]) -> list[dict[str, Any]]:
        """OpenAI function-tool definitions for the named (registered) tools."""
        return [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters,
                },
            }
            for name in names
            if (tool := self._tools.get(name)) is not None
        ]

    async def start(self) -> None:
        """Read the catalog to its current end, then keep tailing it in the background."""
        tps = await topic_partitions(self._bootstrap, self._topic)
        if not tps:
            raise RuntimeError(f"the tool catalog topic {self._topic!r} does not exist")
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, enable_auto_commit=False, **kafka_options()
        )
        await consumer.start()
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
                self._apply(await consumer.getmany(*tps, timeout_ms=200))
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._task = asyncio.create_task(self._tail(tps))
        log.info("tool catalog loaded: %s", sorted(self._tools))

    async def stop(self) -> None:
        """Stop tailing."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def _tail(self, tps: list[TopicPartition]) -> None:
        assert self._consumer is not None
        while True:
            self._apply(await self._consumer.getmany(*tps, timeout_ms=1000))

    def _apply(self, batches: dict[TopicPartition, list[Any]]) -> None:
        for records in batches.values():
            for record in records:
                if record.value is None:  # tombstone: tool removed
                    if record.key is not None:
                        self._tools.pop(record.key.decode(errors="replace"), None)
                    continue
                try:
                    tool = decode(tool_catalog_adapter, record.value).data
                except DecodeError as exc:
                    log.warning("skipping invalid tool catalog record: %s", clip(exc))
                    continue
                self._tools[tool.name] = tool
