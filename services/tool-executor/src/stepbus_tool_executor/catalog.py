"""The tool catalog records: one ``stepbus.tool.registered`` per tool, keyed by its name."""

from __future__ import annotations

from collections.abc import Iterable

from stepbus_contracts import ToolRegistered, ToolRegisteredData
from stepbus_runtime import Emit

from .registry import Tool, ToolRegistry

__all__ = ["catalog_event", "catalog_events", "catalog_tombstone"]

_SOURCE = "urn:stepbus:tool-executor"


def catalog_event(tool: Tool, topic: str, reviewed: frozenset[str] = frozenset()) -> Emit:
    """The catalog entry of ``tool``, marked for review by the critic if it is in ``reviewed``."""
    return Emit(
        topic,
        ToolRegistered(
            source=_SOURCE,
            subject=tool.name,
            data=ToolRegisteredData(
                name=tool.name,
                description=tool.description,
                parameters=tool.parameters,
                source=tool.source,
                review=tool.name in reviewed,
                risk=tool.risk,
            ),
        ),
    )


def catalog_events(
    registry: ToolRegistry | Iterable[Tool], topic: str, reviewed: frozenset[str] = frozenset()
) -> list[Emit]:
    """One ``stepbus.tool.registered`` per tool, keyed by tool name; the tools in ``reviewed``
    are marked for review by the critic."""
    tools = registry.tools.values() if isinstance(registry, ToolRegistry) else registry
    return [catalog_event(tool, topic, reviewed) for tool in tools]


def catalog_tombstone(name: str, topic: str) -> Emit:
    """Removes the tool called ``name`` from the compacted catalog (readers drop the key)."""
    removed = ToolRegistered(
        source=_SOURCE,
        subject=name,
        data=ToolRegisteredData(name=name, description="removed", parameters={}),
    )
    return Emit(topic, removed, key=name, tombstone=True)
