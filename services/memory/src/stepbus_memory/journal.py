"""The memory service's journal: what rebuilds its stores, on two compacted topics.

Redis and Qdrant are caches of these records, never the truth:

- ``memory.items`` (compacted, kept forever): one record per long-term memory, key
  ``item/<memory id>``, tombstoned when forgotten; and forget markers, key
  ``forget/<tenant>/<scope>/<id>``. ``python -m stepbus_memory.reindex`` rebuilds Qdrant from it.
- ``memory.sessions`` (compacted, kept 7 days): one record per finished task of a session, key
  ``turns/<tenant>/<task id>``, and the same forget markers. Session memory in Redis is rebuilt
  from it after a flush — the latest record per key of a bounded topic, never a scan of
  ``results``.

A forget marker covers everything of its scope older than it, so a rebuild or reindex never
brings back what was forgotten, even a record whose tombstone was not written yet.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field
from stepbus_contracts import (
    CloudEvent,
    EventData,
    MemoryKind,
    MemoryTurn,
    Timestamp,
    derive_id,
)
from stepbus_runtime import Emit

from .ports import MemoryItem, Scope

__all__ = [
    "ForgetMarker",
    "ForgetMarkerData",
    "ItemRecord",
    "ItemRecordData",
    "SessionRecord",
    "SessionRecordData",
    "forget_key",
    "forgotten",
    "item_emit",
    "item_key",
    "item_of",
    "scope_of",
    "session_key",
]

_SOURCE = "urn:stepbus:memory"


class ItemRecordData(EventData):
    """One long-term memory, as stored."""

    id: str
    text: str
    kind: MemoryKind
    source: str
    at: Timestamp
    user_id: str | None = None
    session_id: str | None = None
    task_id: str | None = None
    title: str | None = None
    embedded: str | None = None
    """The text the memory is found by, when not ``text`` (a part of a document chunk)."""


class ItemRecord(CloudEvent):
    """A long-term memory of the tenant in ``tenant`` (``subject``: the task or document)."""

    type: Literal["stepbus.memory.item"] = "stepbus.memory.item"
    data: ItemRecordData


class SessionRecordData(EventData):
    """What a session keeps of one finished task."""

    session_id: str
    task_id: str
    user_id: str | None = None
    turns: list[MemoryTurn] = Field(default_factory=list)
    at: Timestamp


class SessionRecord(CloudEvent):
    """The turns one task added to its session (``subject``: the task id)."""

    type: Literal["stepbus.memory.session"] = "stepbus.memory.session"
    data: SessionRecordData


class ForgetMarkerData(EventData):
    """Everything of a scope older than ``at`` is forgotten."""

    scope: Literal["session", "user", "tenant"]
    session_id: str | None = None
    user_id: str | None = None
    at: Timestamp


class ForgetMarker(CloudEvent):
    """A forget request as carried out (``subject``: the request's id)."""

    type: Literal["stepbus.memory.forgotten"] = "stepbus.memory.forgotten"
    data: ForgetMarkerData


def item_key(item_id: str) -> str:
    """The ``memory.items`` key of a memory."""
    return f"item/{item_id}"


def session_key(tenant: str, task_id: str) -> str:
    """The ``memory.sessions`` key of a task's turns (task ids belong to one tenant)."""
    return f"turns/{tenant}/{task_id}"


def forget_key(tenant: str, marker: ForgetMarkerData) -> str:
    """The key of a forget marker: one per scope, the latest wins."""
    what = {"session": marker.session_id, "user": marker.user_id, "tenant": ""}[marker.scope]
    return f"forget/{tenant}/{marker.scope}/{what}"


def item_emit(topic: str, item: MemoryItem, cause_id: str, embedded: str | None = None) -> Emit:
    """The journal record of ``item`` (``embedded``: the text it is found by, if not its own)."""
    record = ItemRecord(
        id=derive_id(cause_id, "item", item.id),
        source=_SOURCE,
        subject=item.task_id or item.id,
        tenant=item.tenant,
        data=ItemRecordData(
            id=item.id, text=item.text, kind=item.kind, source=item.source, at=item.at,
            user_id=item.user_id, session_id=item.session_id, task_id=item.task_id,
            title=item.title, embedded=embedded,
        ),
    )  # fmt: skip
    return Emit(topic, record, key=item_key(item.id))


def item_of(record: ItemRecord) -> MemoryItem:
    """The memory a journal record holds."""
    data = record.data
    return MemoryItem(
        id=data.id, text=data.text, kind=data.kind, tenant=record.tenant, source=data.source,
        at=data.at, user_id=data.user_id, session_id=data.session_id, task_id=data.task_id,
        title=data.title,
    )  # fmt: skip


def forgotten(
    tenant: str,
    at: datetime,
    markers: dict[str, ForgetMarkerData],
    *,
    user_id: str | None,
    session_id: str | None,
) -> bool:
    """Whether something of ``tenant`` (with this user and session) made at ``at`` is covered
    by a forget marker."""
    candidates = [forget_key(tenant, ForgetMarkerData(scope="tenant", at=at))]
    if user_id:
        candidates.append(
            forget_key(tenant, ForgetMarkerData(scope="user", user_id=user_id, at=at))
        )
    if session_id:
        candidates.append(
            forget_key(tenant, ForgetMarkerData(scope="session", session_id=session_id, at=at))
        )
    return any(key in markers and markers[key].at >= at for key in candidates)


def scope_of(marker: ForgetMarkerData, tenant: str) -> Scope:
    """The store scope a marker forgets."""
    return Scope(tenant=tenant, user_id=marker.user_id, session_id=marker.session_id)
