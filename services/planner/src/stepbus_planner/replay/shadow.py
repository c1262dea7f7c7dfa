"""Shadow mode: a second planner (new prompt, model or code) runs the live tasks beside
production and is compared with it, without touching anything production sees.

``python -m stepbus_planner --shadow NAME`` runs the real planner in the namespace
``<prefix>shadow.NAME.``: its own consumer group reads the public ``tasks`` topic (from the
end when it first starts: the traffic from then on), and everything it writes (journal,
snapshots, tool calls, recalls, critiques, progress, results, dead letters) goes to that
namespace's topics, never to the public ones. No tool runs for it: ``ShadowWorld`` answers
its tool calls, recalls, critiques and approvals from what production records for the same
task (the live journal), waiting up to ``shadow_wait_seconds`` for production to get there;
what production never records is answered as not recorded. ``stepbus shadow-report NAME``
then compares the two journals task by task (decisions, answers, tokens).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from opentelemetry.trace import SpanContext
from pydantic import ValidationError
from stepbus_contracts import (
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    Topics,
    critic_requests_adapter,
    history_adapter,
    memory_requests_adapter,
    results_adapter,
    tool_calls_adapter,
)
from stepbus_runtime import (
    Emit,
    PayloadReaders,
    PayloadStore,
    ensure_topics,
    run_worker,
    setup_telemetry,
    topic_partitions,
)
from stepbus_runtime.claimcheck import ClaimCheckError, claim_reference
from stepbus_runtime.kafka_security import kafka_options

from ..app import build_planner
from ..settings import PlannerSettings
from .diff import TaskDiff, compare
from .recorded import RecordedWorld, Request
from .recording import Recording, read_journals
from .runner import REQUESTS, answer_emit

__all__ = ["ShadowReport", "ShadowWorld", "main", "shadow_report", "shadow_topics"]

log = logging.getLogger(__name__)

Terminal = (TaskCompleted, TaskFailed, TaskCancelled)
MAX_TASKS = 10_000
"""Live tasks a shadow keeps the journal of at most (the oldest are dropped first)."""


def shadow_topics(settings: PlannerSettings, name: str | None = None) -> Topics:
    """The namespace of the shadow ``name`` (default: the settings' own)."""
    shadow = name or settings.shadow
    if not shadow:
        raise ValueError("no shadow name")
    return Topics(f"{settings.topic_prefix}shadow.{shadow}.")


class ShadowWorld:
    """Answers a shadow planner's requests from the live journal of the same task.

    The live journal is read from its end at start (the shadow runs the traffic from then on),
    the shadow's requests from its own namespace. A request is answered as soon as production
    has recorded the same call (same tool and arguments), recall, verdict or approval; it waits
    while the live task runs, at most ``wait_seconds``; then, or once the live task has ended
    without it, it is answered as not recorded (a tool call fails with ``not_recorded``:
    nothing runs).
    """

    def __init__(
        self,
        bootstrap: str,
        live: Topics,
        ns: Topics,
        publish: Callable[[list[Emit]], Awaitable[None]],
        payloads: PayloadReaders | None,
        *,
        wait_seconds: float,
        max_tasks: int = MAX_TASKS,
    ) -> None:
        self._bootstrap, self._live, self._ns = bootstrap, live, ns
        self._publish, self._payloads = publish, payloads
        self._wait, self._max = wait_seconds, max_tasks
        self.world = RecordedWorld([])
        self._journals: OrderedDict[tuple[str, str], Recording] = OrderedDict()
        self._seen: dict[tuple[str, str], set[str]] = {}
        self._pending: dict[tuple[str, str], list[tuple[float, Request]]] = {}
        self.ready = asyncio.Event()
        """Set once the live journal's end is fixed: start the shadow's processor after it."""
        self.answered = {"recorded": 0, "not_recorded": 0}

    async def run(self) -> None:
        """Answer until cancelled."""
        ns = self._ns
        adapters: dict[str, Any] = {
            self._live.planner_history: history_adapter,
            ns.tool_calls: tool_calls_adapter,
            ns.memory_requests: memory_requests_adapter,
            ns.critic_requests: critic_requests_adapter,
            ns.results: results_adapter,
        }
        live = await topic_partitions(self._bootstrap, self._live.planner_history)
        own: list[TopicPartition] = []
        for topic in list(adapters)[1:]:
            own += await topic_partitions(self._bootstrap, topic)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            enable_auto_commit=False,
            client_id="stepbus-shadow-world",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            **kafka_options(),
        )
        await consumer.start()
        try:
            consumer.assign([*live, *own])
            await consumer.seek_to_end(*live)
            for tp in live:
                await consumer.position(tp)  # fixed now: nothing recorded from here is missed
            await consumer.seek_to_beginning(*own)
            self.ready.set()
            while True:
                batches = await consumer.getmany(timeout_ms=200)
                for tp, records in batches.items():
                    for record in records:
                        await self._on_record(
                            tp.topic, adapters[tp.topic], record.value, record.headers
                        )
                await self._expire()
        finally:
            await consumer.stop()

    async def _decode(self, topic: str, adapter: Any, value: bytes | None) -> Any:
        try:
            if value is not None and self._payloads is not None:
                ref = claim_reference(value)
                if ref is not None:
                    value = await self._payloads.fetch(ref)
            return adapter.validate_json(value or b"")
        except (ClaimCheckError, ValidationError, ValueError) as exc:
            log.warning("shadow: skipped an undecodable record on %s: %s", topic, exc)
            return None

    async def _on_record(
        self, topic: str, adapter: Any, value: bytes | None, headers: Any = None
    ) -> None:
        event = await self._decode(topic, adapter, value)
        if event is None:
            return
        key = (event.tenant, event.subject)
        if topic == self._live.planner_history:
            await self._recorded(key, event, headers)
        elif isinstance(event, REQUESTS):
            await self._asked(key, event)
        elif isinstance(event, Terminal):  # the shadow's task ended: nothing waits any more
            self._pending.pop(key, None)
            journal = self._journals.get(key)
            if journal is not None and journal.terminal() is not None:
                self._forget(key)

    def original_span(self, tenant: str, task_id: str, step: int) -> SpanContext | None:
        """Production's span of a step of the task (-1: its root), once it is recorded."""
        journal = self._journals.get((tenant, task_id))
        return journal.original_span(step) if journal is not None else None

    async def _recorded(self, key: tuple[str, str], event: Any, headers: Any = None) -> None:
        """Production recorded ``event``: answer what waited for it."""
        seen = self._seen.setdefault(key, set())
        if event.id in seen:
            return
        seen.add(event.id)
        journal = self._journals.get(key)
        if journal is None:
            journal = self._journals[key] = Recording(event.subject, event.tenant)
            while len(self._journals) > self._max:
                self._forget(next(iter(self._journals)))
        self._journals.move_to_end(key)
        journal.add(event, headers)
        self.world.update(journal)
        waiting = self._pending.pop(key, [])
        ended = journal.terminal() is not None
        still = []
        answers = []
        for since, request in waiting:
            found = self.world.find(request)
            if found is not None:
                answers.append(answer_emit(self._ns, found))
                self.answered["recorded"] += 1
            elif ended:
                answers.append(answer_emit(self._ns, self.world.not_recorded(request)))
                self.answered["not_recorded"] += 1
            else:
                still.append((since, request))
        if still:
            self._pending[key] = still
        if answers:
            await self._publish(answers)

    async def _asked(self, key: tuple[str, str], request: Request) -> None:
        """The shadow asked: answer from the record, or wait for production to record it."""
        found = self.world.find(request)
        journal = self._journals.get(key)
        if found is None and (journal is None or journal.terminal() is None):
            self._pending.setdefault(key, []).append((time.monotonic(), request))
            return
        if found is None:
            found = self.world.not_recorded(request)
            self.answered["not_recorded"] += 1
        else:
            self.answered["recorded"] += 1
        await self._publish([answer_emit(self._ns, found)])

    async def _expire(self) -> None:
        """Answer as not recorded what waited longer than ``wait_seconds``."""
        now = time.monotonic()
        answers = []
        for key in list(self._pending):
            keep = []
            for since, request in self._pending[key]:
                if now - since >= self._wait:
                    answers.append(answer_emit(self._ns, self.world.not_recorded(request)))
                    self.answered["not_recorded"] += 1
                else:
                    keep.append((since, request))
            if keep:
                self._pending[key] = keep
            else:
                del self._pending[key]
        if answers:
            await self._publish(answers)

    def _forget(self, key: tuple[str, str]) -> None:
        self._journals.pop(key, None)
        self._seen.pop(key, None)
        self.world.forget(*key)


async def start_at_the_end(bootstrap: str, group_id: str, topic: str) -> None:
    """Commit the end of ``topic`` for a group that has no offsets there yet: a new shadow
    runs the traffic from its first start on, not the topic's whole retention."""
    partitions = await topic_partitions(bootstrap, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False, **kafka_options()
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        fresh = [tp for tp in partitions if await consumer.committed(tp) is None]
        if fresh:
            ends = await consumer.end_offsets(fresh)
            await consumer.commit({tp: ends[tp] for tp in fresh})
    finally:
        await consumer.stop()


async def main(settings: PlannerSettings) -> None:
    """Run the shadow planner ``settings.shadow`` until SIGTERM."""
    setup_telemetry("planner")
    live = settings.topics
    ns = shadow_topics(settings)
    bootstrap = settings.kafka_bootstrap_servers
    psettings = settings.model_copy(update={"topic_prefix": ns.prefix})
    await ensure_topics(bootstrap, ns, replication_factor=settings.topic_replication_factor)
    await start_at_the_end(bootstrap, f"{ns.prefix}{settings.group_id}", live.tasks)
    world: ShadowWorld | None = None

    def originals(tenant: str, task_id: str, step: int) -> SpanContext | None:
        return world.original_span(tenant, task_id, step) if world is not None else None

    planner = build_planner(
        psettings, check_event_ids=False, mode="shadow", shadow_of=live, originals=originals
    )
    payloads = None
    if planner.publisher.payloads is not None:
        reader = PayloadStore(bootstrap, live.payloads, client_id="stepbus-shadow-world")
        planner.closers.append(reader.stop)
        payloads = PayloadReaders(planner.publisher.payloads, reader)
    world = ShadowWorld(
        bootstrap,
        live,
        ns,
        planner.publisher.publish,
        payloads,
        wait_seconds=settings.shadow_wait_seconds,
    )
    log.info("shadow %s: running the live tasks of %s* in %s*", settings.shadow, live.prefix,
             ns.prefix)  # fmt: skip
    answering = asyncio.create_task(world.run())
    sweeper = asyncio.create_task(planner.sweep())
    try:
        await asyncio.wait(
            [asyncio.create_task(world.ready.wait()), answering],
            return_when=asyncio.FIRST_COMPLETED,
        )
        if answering.done():
            answering.result()  # the world could not start: say why
        await run_worker(
            psettings,
            planner.publisher,
            planner.processor,
            settings.metrics_port,
            planner.catalog.start,
        )
    finally:
        for task in (sweeper, answering):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await planner.close()


@dataclass
class ShadowReport:
    """A shadow compared with production, task by task."""

    name: str
    diffs: list[TaskDiff]
    running: list[tuple[str, str]]
    """Tasks not ended yet on one side (not compared)."""

    @property
    def tokens(self) -> tuple[int, int]:
        """Tokens of the compared tasks' decisions: production's, the shadow's."""
        live = sum(v.tokens for d in self.diffs for v in d.recorded.values())
        shadow = sum(v.tokens for d in self.diffs for v in d.replayed.values())
        return live, shadow


async def shadow_report(
    settings: PlannerSettings, name: str, tenant: str | None = None
) -> ShadowReport:
    """Compare every task the shadow ``name`` ran with production's run of it.

    Raises:
        RecordingError: The shadow's journal does not exist.
    """
    bootstrap = settings.kafka_bootstrap_servers
    shadow = await read_journals(bootstrap, shadow_topics(settings, name), None, tenant)
    ids = {task_id for _, task_id in shadow}
    live = await read_journals(bootstrap, settings.topics, ids, tenant) if ids else {}
    diffs, running = [], []
    for key in sorted(shadow, key=lambda k: (shadow[k].events[0].time, k)):
        production = live.get(key)
        if production is None or production.terminal() is None or shadow[key].terminal() is None:
            running.append(key)
            continue
        diffs.append(compare(production, shadow[key]))
    return ShadowReport(name, diffs, running)
