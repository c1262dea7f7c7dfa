"""A task's events as Server-Sent Events: stored events first, then live ones, until the end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from prometheus_client import Gauge
from starlette.requests import Request

from .fanout import Subscribers, Subscription
from .projection import TERMINAL_TYPES, TaskProjection, event_id_and_type
from .tenants import TenantFeed

__all__ = ["KEEP_ALIVE", "frame", "task_event_stream", "tenant_event_stream"]

KEEP_ALIVE = b": keep-alive\n\n"

OPEN_STREAMS = Gauge("stepbus_gateway_sse_streams", "Open SSE event streams.")


def frame(event_id: str, event_type: str, event_json: str) -> bytes:
    """One SSE message carrying a CloudEvent (its JSON is a single line)."""
    return f"id: {event_id}\nevent: {event_type}\ndata: {event_json}\n\n".encode()


def _replay_from(stored: list[tuple[str, str, str]], last_event_id: str | None) -> int:
    """Index of the first stored event after ``last_event_id`` (0 when it is not stored)."""
    if last_event_id:
        for index, (event_id, _, _) in enumerate(stored):
            if event_id == last_event_id:
                return index + 1
    return 0


async def _close_on_disconnect(request: Request, sub: Subscription) -> None:
    # Ends the stream as soon as the client goes away, not at the next heartbeat write.
    while (await request.receive())["type"] != "http.disconnect":
        pass
    sub.close()


async def task_event_stream(
    *,
    request: Request,
    projection: TaskProjection,
    subscribers: Subscribers,
    tenant: str,
    task_id: str,
    last_event_id: str | None,
    heartbeat_seconds: float,
) -> AsyncIterator[bytes]:
    """Yield the task's events as SSE frames; return right after its terminal event.

    Subscribes before reading the projection, so no event falls between replay and live;
    events are deduplicated by id. Events up to and including ``last_event_id`` (in stored
    order) are skipped; an id that is not stored replays everything.
    """
    with subscribers.subscribe(tenant, task_id) as sub:
        watcher = asyncio.create_task(_close_on_disconnect(request, sub))
        OPEN_STREAMS.inc()
        try:
            view, stored_json = await projection.snapshot(tenant, task_id)
            stored = [(*event_id_and_type(raw), raw) for raw in stored_json]
            start = _replay_from(stored, last_event_id)
            sent = {event_id for event_id, _, _ in stored[:start]}
            for event_id, event_type, raw in stored[start:]:
                if event_id in sent:
                    continue
                sent.add(event_id)
                yield frame(event_id, event_type, raw)
                if event_type in TERMINAL_TYPES:
                    return
            if view is None or view.terminal:
                return
            while True:
                try:
                    event = await asyncio.wait_for(sub.queue.get(), heartbeat_seconds)
                except TimeoutError:
                    yield KEEP_ALIVE
                    continue
                if event is None:
                    return
                if event.id in sent:
                    continue
                sent.add(event.id)
                yield frame(event.id, event.type, event.model_dump_json())
                if event.type in TERMINAL_TYPES:
                    return
        finally:
            OPEN_STREAMS.dec()
            watcher.cancel()


TENANT_POLL_SECONDS = 1.0
"""How often a tenant stream reads its feed without a wake-up (another replica may have applied
an event this one only fans out)."""


async def tenant_event_stream(
    *,
    request: Request,
    feed: TenantFeed,
    subscribers: Subscribers,
    tenant: str,
    after: int | None,
    heartbeat_seconds: float,
) -> AsyncIterator[bytes]:
    """Yield the tenant's events as SSE frames whose ids are feed positions: from ``after`` on
    (exclusive), or from now. Live events only wake the stream; what it sends is read from the
    feed in position order, so every event goes out once, in one order for every replica."""
    with subscribers.subscribe(tenant, None) as sub:
        watcher = asyncio.create_task(_close_on_disconnect(request, sub))
        OPEN_STREAMS.inc()
        try:
            position = after if after is not None else await feed.last(tenant)
            quiet = 0.0
            while not sub.closed:
                entries = await feed.after(tenant, position)
                for position, raw in entries:
                    yield frame(str(position), event_id_and_type(raw)[1], raw)
                if entries:
                    quiet = 0.0
                    continue  # maybe more than one batch
                if quiet >= heartbeat_seconds:
                    yield KEEP_ALIVE
                    quiet = 0.0
                try:
                    await asyncio.wait_for(sub.queue.get(), TENANT_POLL_SECONDS)
                except TimeoutError:
                    quiet += TENANT_POLL_SECONDS
                while not sub.queue.empty():  # one read serves every wake-up queued
                    sub.queue.get_nowait()
        finally:
            OPEN_STREAMS.dec()
            watcher.cancel()
