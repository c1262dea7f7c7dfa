"""In-memory fan-out of results events to the SSE connections of this replica."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from .projection import ResultEvent

__all__ = ["Subscribers", "Subscription"]

log = logging.getLogger(__name__)


class Subscription:
    """The live events of one task for one SSE connection; ``None`` in the queue ends it."""

    def __init__(self, tenant: str, task_id: str | None, limit: int) -> None:
        self.key = (tenant, task_id)
        self.queue: asyncio.Queue[ResultEvent | None] = asyncio.Queue()
        self.closed = False
        self._limit = limit

    def deliver(self, event: ResultEvent) -> None:
        """Queue an event; a reader that falls ``limit`` events behind is cut off."""
        if self.closed:
            return
        if self.queue.qsize() >= self._limit:
            log.warning("SSE reader of %s fell behind; closing its stream", self.key)
            self.close()  # the client reconnects with Last-Event-ID and replays
            return
        self.queue.put_nowait(event)

    def close(self) -> None:
        """End the stream after the events already queued."""
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(None)


class Subscribers:
    """In-memory fan-out to SSE connections, keyed by (tenant, task id or None for all)."""

    def __init__(self, queue_limit: int = 1000) -> None:
        self._by_key: dict[tuple[str, str | None], set[Subscription]] = {}
        self._queue_limit = queue_limit

    def __len__(self) -> int:
        return sum(len(subs) for subs in self._by_key.values())

    @contextlib.contextmanager
    def subscribe(self, tenant: str, task_id: str | None) -> Iterator[Subscription]:
        """Receive the live events of a task (``None``: of every task of the tenant) until the
        block exits."""
        sub = Subscription(tenant, task_id, self._queue_limit)
        self._by_key.setdefault(sub.key, set()).add(sub)
        try:
            yield sub
        finally:
            subs = self._by_key.get(sub.key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_key[sub.key]

    def publish(self, event: ResultEvent) -> None:
        """Deliver an event to the subscribers of its task within its tenant."""
        for key in ((event.tenant, event.subject), (event.tenant, None)):
            for sub in tuple(self._by_key.get(key, ())):
                sub.deliver(event)

    def close_all(self) -> None:
        """End every stream (on shutdown)."""
        for subs in self._by_key.values():
            for sub in subs:
                sub.close()
