"""The results feed's handler and the projection watcher, with fakes instead of Redis and Kafka."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from stepbus_contracts import TaskProgress, TaskProgressData
from stepbus_gateway.fanout import Subscribers
from stepbus_gateway.feed import ResultsFeed
from stepbus_gateway.projection import Generation, is_outage
from stepbus_gateway.rebuild import ProjectionRebuilder
from stepbus_runtime import EventPublisher, RecordContext

from ..harness import wait_until


def _progress(task_id: str = "t1") -> TaskProgress:
    return TaskProgress(
        subject=task_id, data=TaskProgressData(step=0, stage="thought", message="m")
    )


class FailingProjection:
    """Raises each of ``errors`` once, in order, then applies."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.applied: list[tuple[str, int]] = []

    async def apply(self, event: Any, offset: int) -> bool:
        if self.errors:
            raise self.errors.pop(0)
        self.applied.append((event.id, offset))
        return True


def _feed(projection: Any, subscribers: Subscribers) -> ResultsFeed:
    return ResultsFeed(
        bootstrap_servers="unused:9092",
        topic="t.results",
        group_id="g",
        dlq_topic="t.dlq",
        publisher=EventPublisher("unused:9092", "test"),
        projection=projection,
        subscribers=subscribers,
    )


def _context(offset: int) -> RecordContext:
    return RecordContext("t.results", 0, offset, "t1", attempt=1, max_attempts=5)


async def test_a_redis_outage_is_waited_out_and_the_event_then_applied_and_fanned_out() -> None:
    outage = [RedisConnectionError("down"), ConnectionRefusedError(), RedisConnectionError("x")]
    projection = FailingProjection(*outage)
    subscribers = Subscribers()
    event = _progress()
    with subscribers.subscribe("default", "t1") as sub:
        outputs = await _feed(projection, subscribers)._handle(event, _context(7))

        assert outputs == ()
        assert projection.applied == [(event.id, 7)]  # at its offset, after the outage
        assert sub.queue.get_nowait() == event


async def test_an_error_that_is_not_an_outage_goes_to_the_processor_to_dead_letter() -> None:
    projection = FailingProjection(ResponseError("WRONGTYPE Operation against a key"))
    subscribers = Subscribers()
    with subscribers.subscribe("default", "t1") as sub:
        with pytest.raises(ResponseError):
            await _feed(projection, subscribers)._handle(_progress(), _context(0))
        assert sub.queue.empty()  # nothing fanned out that was not applied


def test_outages_are_told_from_refused_writes() -> None:
    assert is_outage(RedisConnectionError("refused"))
    assert is_outage(TimeoutError())
    assert not is_outage(ResponseError("WRONGTYPE"))
    assert not is_outage(ValueError("bug"))


async def test_a_feed_not_started_is_not_ready() -> None:
    ok, why = _feed(FailingProjection(), Subscribers()).health()

    assert not ok and why.startswith("starting")


class GenerationStore:
    """The generation part of ``TaskProjection``, in memory."""

    def __init__(self) -> None:
        self.current: Generation | None = None
        self.begun = 0

    async def generation(self) -> Generation | None:
        return self.current

    async def begin_generation(self) -> Generation:
        if self.current is None:
            self.begun += 1
            self.current = Generation(f"e{self.begun}", ready=False)
        return self.current

    async def mark_rebuilt(self, epoch: str) -> bool:
        if self.current is None or self.current.epoch != epoch:
            return False
        self.current = Generation(epoch, ready=True)
        return True


class ScriptedRebuilder(ProjectionRebuilder):
    """Rebuilds by waiting for the test to let each epoch finish."""

    def __init__(self, store: GenerationStore) -> None:
        super().__init__(bootstrap_servers="unused:9092", topic="t.results", projection=store)  # type: ignore[arg-type]
        self.store = store
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.finish: dict[str, asyncio.Event] = {}

    async def _rebuild_from_topic(self, rebuild: Any) -> None:
        self.started.append(rebuild.epoch)
        done = self.finish.setdefault(rebuild.epoch, asyncio.Event())
        try:
            await done.wait()
        except asyncio.CancelledError:
            self.cancelled.append(rebuild.epoch)
            raise
        await self.store.mark_rebuilt(rebuild.epoch)


async def test_a_lost_projection_is_rebuilt_once_per_generation_and_then_ready() -> None:
    store = GenerationStore()
    rebuilder = ScriptedRebuilder(store)

    await rebuilder.check()  # nothing in Redis: a generation begins, rebuilding
    await rebuilder.check()  # the same generation: the rebuild keeps running
    await asyncio.sleep(0)
    assert store.begun == 1 and rebuilder.started == ["e1"] and not rebuilder.ready

    rebuilder.finish["e1"].set()
    await wait_until(lambda: store.current is not None and store.current.ready, 5, "rebuilt")
    await rebuilder.check()
    assert rebuilder.ready

    store.current = None  # FLUSHALL
    await rebuilder.check()
    await asyncio.sleep(0)
    assert not rebuilder.ready and rebuilder.started == ["e1", "e2"]


async def test_a_rebuild_stops_when_another_replica_finished_or_a_new_generation_began() -> None:
    store = GenerationStore()
    rebuilder = ScriptedRebuilder(store)
    await rebuilder.check()
    await asyncio.sleep(0)

    store.current = Generation("e9", ready=False)  # flushed again; another replica began e9
    await rebuilder.check()
    await wait_until(lambda: rebuilder.cancelled == ["e1"], 5, "e1 abandoned")
    assert rebuilder.started == ["e1", "e9"]

    store.current = Generation("e9", ready=True)  # the other replica finished first
    await rebuilder.check()
    await wait_until(lambda: rebuilder.cancelled == ["e1", "e9"], 5, "e9 stopped here")
    assert rebuilder.ready
