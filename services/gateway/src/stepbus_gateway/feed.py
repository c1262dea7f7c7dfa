"""The results feed: consume ``results``, fold each event into the projection, fan it out.

The feed is the runtime's ``Processor`` with one route, so it gets what every stepbus consumer
gets: each record handled on its own (records of other tasks are never held up by it), records
that cannot be decoded, whose claim check cannot be resolved or whose key is not their subject
dead-lettered at once, a handler that keeps failing dead-lettered after ``max_attempts``, the
committed offset at the lowest unfinished record, and ``health()`` reporting a record or a poll
loop stuck for longer than ``stuck_after``.

Only a Redis outage is waited out without limit: the projection is a cache of the topic, so a
valid event must not be skipped because the cache was briefly away. Any other error writing an
event is the processor's to retry and then dead-letter (re-drive it once the cause is fixed).

Each replica has its own consumer group (``{prefix}gateway-{instance}``), so every replica sees
every event and can serve any SSE client. Offsets are committed only after the projection
write (at-least-once); duplicates are dropped by event id, in the projection and per stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Sequence

from stepbus_contracts import results_adapter
from stepbus_runtime import Emit, EventPublisher, Processor, RecordContext, Route, clip

from .fanout import Subscribers
from .projection import ResultEvent, TaskProjection, is_outage

__all__ = ["ResultsFeed"]

log = logging.getLogger(__name__)

_RESTART_DELAY = (1.0, 30.0)
"""Base and cap of the wait before a processor that stopped unexpectedly is replaced."""


class ResultsFeed:
    """Consumes the results topic into the projection and the subscribers.

    Args:
        bootstrap_servers: Kafka bootstrap servers.
        topic: The results topic.
        group_id: This replica's consumer group (also its static member id).
        dlq_topic: Where records that cannot be applied go.
        publisher: Started publisher, for dead letters; its payload store resolves claims.
        projection: Where events are folded.
        subscribers: Who receives them live.
        max_attempts: Attempts at a record failing for a reason other than a Redis outage.
        max_in_flight: Records in flight above which partitions are paused.
        stuck_after: Seconds after which a record not yet applied, or a poll loop that has not
            turned, makes ``health()`` report the feed stuck.
        retry_backoff: Base and cap of the backoff between attempts, seconds.
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topic: str,
        group_id: str,
        dlq_topic: str,
        publisher: EventPublisher,
        projection: TaskProjection,
        subscribers: Subscribers,
        max_attempts: int = 5,
        max_in_flight: int = 512,
        stuck_after: float = 30.0,
        retry_backoff: tuple[float, float] = (0.2, 10.0),
    ) -> None:
        self._new_processor = functools.partial(
            Processor,
            name="gateway",
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            # The group has this replica alone: as a static member, a restarted gateway takes
            # its partitions back at once instead of waiting out the dead member's session.
            group_instance_id=group_id,
            # Results end their journey here: no span per record (a quarter of a task's spans,
            # measured), the SSE subscribers are not part of the task's work.
            routes={topic: Route(results_adapter, self._handle, traced=False)},
            publisher=publisher,
            dlq_topic=dlq_topic,
            payloads=publisher.payloads,
            max_attempts=max_attempts,
            max_in_flight=max_in_flight,
            stuck_after=stuck_after,
            retry_backoff=retry_backoff,
        )
        self._projection = projection
        self._subscribers = subscribers
        self._processor: Processor | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._failure: str | None = None
        self._outage_since: float | None = None

    def health(self) -> tuple[bool, str]:
        """Whether the feed is ready, and a line saying why not (for ``/readyz``)."""
        if self._task is None or self._processor is None:
            return False, "starting: the results feed is not running yet"
        if self._task.done():
            return False, "stopped: the results feed ended"
        if self._failure is not None:
            return False, f"restarting: the results feed stopped ({self._failure})"
        ok, why = self._processor.health()
        if not ok and self._outage_since is not None:
            down = time.monotonic() - self._outage_since
            why = f"{why}; Redis unavailable for {down:.0f}s"
        return ok, why if ok else f"results feed {why}"

    async def start(self) -> None:
        """Start consuming in a background task (a processor that dies is replaced)."""
        self._task = asyncio.create_task(self._supervise(), name="stepbus-gateway-results-feed")
        await asyncio.sleep(0)

    async def stop(self) -> None:
        """Stop consuming (what was applied is committed) and end every stream."""
        self._stopping.set()
        if self._processor is not None:
            self._processor.stop()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, 30)
        self._subscribers.close_all()

    async def _supervise(self) -> None:
        delay = _RESTART_DELAY[0]
        while not self._stopping.is_set():
            self._processor = self._new_processor()
            try:
                await self._processor.run()
                if self._stopping.is_set():
                    return
                self._failure = "its processor returned"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # e.g. the broker unreachable when joining the group
                self._failure = clip(repr(exc))
            log.error("results feed stopped (%s); starting again in %.0fs", self._failure, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(_RESTART_DELAY[1], delay * 2)
            self._failure = None

    async def _handle(self, event: ResultEvent, context: RecordContext) -> Sequence[Emit]:
        await self._apply(event, context.offset)
        # Fanned out even if already applied (maybe by another replica): streams drop duplicates.
        self._subscribers.publish(event)
        return ()

    async def _apply(self, event: ResultEvent, offset: int) -> None:
        """Write the event, waiting out a Redis outage however long it lasts."""
        delay = 0.1
        while True:
            try:
                await self._projection.apply(event, offset)
            except Exception as exc:
                if not is_outage(exc):
                    raise  # the processor retries, then dead-letters
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    log.warning("projection writes fail (%s); retrying until Redis answers",
                                clip(repr(exc)))  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if self._outage_since is not None:
                log.warning("projection writes succeed again after %.1fs",
                            time.monotonic() - self._outage_since)  # fmt: skip
                self._outage_since = None
            return
