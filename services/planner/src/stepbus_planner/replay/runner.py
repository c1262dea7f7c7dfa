"""Re-drive the current planner code against recorded tasks, in a namespace of its own.

A replay creates the topics of a fresh namespace (``<prefix>replay.<run>.``, one partition
each), copies the tools the tasks used into its catalog, and runs the real planner (its
processor, handlers and sweep, this process's code) on it, in a consumer group under that
prefix. It submits each recorded task again under its recorded submission id, so every derived
id matches the original's, and answers what the planner asks for from the record: tool calls,
recalls, critiques and approvals (``RecordedWorld``); the model is the recorded one or the
configured one. Nothing reaches the public topics, no tool runs, and the namespace (topics and
consumer group) is deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from opentelemetry.trace import SpanContext
from pydantic import ValidationError
from stepbus_contracts import (
    ApprovalDecided,
    ApprovalRequested,
    CloudEvent,
    CritiqueRequested,
    JournalEvent,
    MemoryRecallRequested,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskSubmitted,
    ToolCallRequested,
    ToolRegistered,
    ToolRegisteredData,
    Topics,
    critic_requests_adapter,
    history_adapter,
    memory_requests_adapter,
    results_adapter,
    tool_calls_adapter,
    tool_catalog_adapter,
)
from stepbus_runtime import Emit, delete_namespace, ensure_topics, iter_to_end, topic_partitions
from stepbus_runtime.claimcheck import ClaimCheckError
from stepbus_runtime.kafka_security import kafka_options

from ..app import build_planner, openai_model
from ..ports import ChatModel, ModelTurn
from ..settings import PlannerSettings
from .diff import TaskDiff, compare
from .recorded import SOURCE, Answer, RecordedModel, RecordedWorld
from .recording import Recording

__all__ = ["ReplayOptions", "replay"]

log = logging.getLogger(__name__)

ModelMode = Literal["recorded", "live"]


@dataclass(frozen=True)
class ReplayOptions:
    """How to replay."""

    model: ModelMode = "recorded"
    """``recorded``: the model's recorded answers (a determinism check of new code);
    ``live``: the configured model (a counterfactual run)."""
    from_step: int = 0
    """Steps before this one take the recorded answers whatever ``model`` says."""
    system_prompt: str | None = None
    """The system prompt to replay with (default: the planner's configured one)."""
    timeout_seconds: float = 120.0
    """How long the tasks of one run may take, in all."""
    keep: bool = False
    """Keep the namespace's topics afterwards (to inspect them)."""


class HybridModel:
    """Recorded answers before ``from_step``, the live model from it on."""

    def __init__(self, recorded: RecordedModel, live: ChatModel, from_step: int) -> None:
        self.model = live.model
        self._recorded, self._live, self._from = recorded, live, from_step

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, task_id: str,
        step: int,
    ) -> ModelTurn:  # fmt: skip
        """The recorded turn before ``from_step``, the live model's from it."""
        model = self._recorded if step < self._from else self._live
        return await model.complete(messages, tools, task_id=task_id, step=step)


def _submission(recording: Recording) -> TaskSubmitted:
    """The recorded task, submitted again under its recorded submission id."""
    return TaskSubmitted(
        id=recording.accepted.data.submitted_id,
        source=SOURCE,
        subject=recording.task_id,
        tenant=recording.tenant,
        data=recording.submitted(),
    )


async def _copy_catalog(bootstrap: str, live: Topics, ns: Topics, recordings: list[Recording],
                        publish: Callable[[list[Emit]], Awaitable[None]]) -> None:  # fmt: skip
    """Register in the namespace the tools the tasks used: as the live catalog has them now,
    or, for a tool since removed, with the name alone (its calls are answered from the record
    either way)."""
    wanted = {name for r in recordings for name in r.accepted.data.tools}
    found: dict[str, ToolRegistered] = {}
    partitions = await topic_partitions(bootstrap, live.tool_catalog)
    if partitions:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, **kafka_options()
        )
        await consumer.start()
        try:
            async for record in iter_to_end(consumer, partitions):
                name = record.key.decode(errors="replace") if record.key else ""
                if name not in wanted:
                    continue
                if record.value is None:
                    found.pop(name, None)
                    continue
                with contextlib.suppress(ValidationError, ValueError):
                    found[name] = tool_catalog_adapter.validate_json(record.value)
        finally:
            await consumer.stop()
    for name in sorted(wanted - set(found)):
        found[name] = ToolRegistered(
            source=SOURCE,
            subject=name,
            data=ToolRegisteredData(
                name=name,
                description="(not in the catalog any more; answered from the record)",
                parameters={"type": "object"},
            ),
        )
    await publish([Emit(ns.tool_catalog, tool, key=name) for name, tool in sorted(found.items())])


REQUESTS = (ToolCallRequested, MemoryRecallRequested, CritiqueRequested, ApprovalRequested)
"""What a replayed (or shadow) planner asks of the world, on the namespace's topics."""


def answer_emit(ns: Topics, answer: Answer) -> Emit:
    """Where an answer goes: a person's decision to the tasks topic, the rest to the journal."""
    return Emit(ns.tasks if isinstance(answer, ApprovalDecided) else ns.planner_history, answer)


async def _as_is(value: bytes | None) -> bytes | None:
    """A record's value when no claim checks are configured."""
    return value


class _Watcher:
    """Reads what the replayed planner writes, answers it from the record, collects the
    replayed journals."""

    def __init__(
        self,
        bootstrap: str,
        ns: Topics,
        world: RecordedWorld,
        publish: Callable[[list[Emit]], Awaitable[None]],
        resolve: Callable[[bytes | None], Awaitable[bytes | None]],
        tasks: set[tuple[str, str]],
    ) -> None:
        self._bootstrap, self._ns, self._world = bootstrap, ns, world
        self._publish, self._resolve = publish, resolve
        self._waiting = set(tasks)
        self.journals: dict[tuple[str, str], Recording] = {}
        self._seen: set[str] = set()
        self.all_ended = asyncio.Event()
        if not self._waiting:
            self.all_ended.set()
        self._consumer: AIOKafkaConsumer | None = None

    async def run(self) -> None:
        """Answer and collect until cancelled."""
        ns = self._ns
        adapters: dict[str, Any] = {
            ns.tool_calls: tool_calls_adapter,
            ns.memory_requests: memory_requests_adapter,
            ns.critic_requests: critic_requests_adapter,
            ns.results: results_adapter,
            ns.planner_history: history_adapter,
        }
        tps = [TopicPartition(topic, 0) for topic in adapters]
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id="stepbus-replay",
            **kafka_options(),
        )
        await consumer.start()
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while True:
                batches = await consumer.getmany(*tps, timeout_ms=200)
                for tp, records in batches.items():
                    for record in records:
                        await self._on_record(tp.topic, adapters[tp.topic], record.value)
        finally:
            await consumer.stop()

    async def _on_record(self, topic: str, adapter: Any, value: bytes | None) -> None:
        try:
            event = adapter.validate_json(await self._resolve(value) or b"")
        except (ClaimCheckError, ValidationError, ValueError) as exc:
            log.warning("replay: skipped an undecodable record on %s: %s", topic, exc)
            return
        ns = self._ns
        if isinstance(event, REQUESTS):
            await self._publish([answer_emit(ns, self._world.answer(event))])
        elif topic == ns.results and isinstance(event, TaskCompleted | TaskFailed | TaskCancelled):
            self._journal(event)
        elif topic == ns.planner_history:
            self._journal(event)

    def _journal(self, event: JournalEvent | CloudEvent) -> None:
        if event.id in self._seen:
            return
        self._seen.add(event.id)
        key = (event.tenant, event.subject)
        journal = self.journals.setdefault(key, Recording(event.subject, event.tenant))
        journal.events.append(event)  # type: ignore[arg-type]
        if isinstance(event, TaskCompleted | TaskFailed | TaskCancelled):
            self._waiting.discard(key)
            if not self._waiting:
                self.all_ended.set()


async def _replay_group(
    settings: PlannerSettings,
    recordings: list[Recording],
    options: ReplayOptions,
    *,
    memory: bool,
    critic: bool,
) -> list[TaskDiff]:
    """Replay tasks that ran with the same memory and critic settings, in one namespace."""
    bootstrap = settings.kafka_bootstrap_servers
    ns = Topics(f"{settings.topic_prefix}replay.{uuid.uuid4().hex[:8]}.")
    psettings = settings.model_copy(
        update={
            "topic_prefix": ns.prefix,
            "memory": memory,
            "critic": critic,
            "system_prompt": options.system_prompt or settings.system_prompt,
            "group_instance_id": None,
        }
    )
    world = RecordedWorld(recordings)
    recorded = RecordedModel(recordings, recordings[0].accepted.data.model)
    closers: list[Callable[[], Awaitable[object]]] = []
    model: ChatModel = recorded
    if options.model == "live":
        live, client = openai_model(psettings)
        closers.append(client.close)
        model = HybridModel(recorded, live, options.from_step) if options.from_step else live
    started = time.monotonic()
    await ensure_topics(
        bootstrap, ns, replication_factor=settings.topic_replication_factor, partitions=1
    )
    by_key = {(r.tenant, r.task_id): r for r in recordings}

    def originals(tenant: str, task_id: str, step: int) -> SpanContext | None:
        recording = by_key.get((tenant, task_id))
        return recording.original_span(step) if recording is not None else None

    planner = build_planner(
        psettings, model=model, check_event_ids=False, mode="replay", originals=originals
    )
    background: list[asyncio.Task[None]] = []
    watcher = _Watcher(
        bootstrap,
        ns,
        world,
        planner.publisher.publish,
        planner.publisher.payloads.resolve if planner.publisher.payloads else _as_is,
        {(r.tenant, r.task_id) for r in recordings},
    )
    error: str | None = None
    try:
        await planner.publisher.start()
        await _copy_catalog(bootstrap, settings.topics, ns, recordings, planner.publisher.publish)
        await planner.catalog.start()
        background = [
            asyncio.create_task(planner.processor.run()),
            asyncio.create_task(planner.sweep()),
            asyncio.create_task(watcher.run()),
        ]
        await planner.publisher.publish([Emit(ns.tasks, _submission(r)) for r in recordings])
        ended = asyncio.create_task(watcher.all_ended.wait())
        done, _ = await asyncio.wait(
            [ended, *background],
            timeout=options.timeout_seconds,
            return_when=asyncio.FIRST_COMPLETED,
        )
        ended.cancel()
        if not done:
            error = f"did not end within {options.timeout_seconds:.0f}s"
        elif ended not in done:
            crashed = next(iter(done))
            error = f"the replay stopped: {crashed.exception() or 'ended early'}"
    finally:
        planner.processor.stop()
        for task in background:
            if task is not background[0]:
                task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        with contextlib.suppress(Exception):
            await planner.publisher.stop()
        await planner.close()
        for close in closers:
            with contextlib.suppress(Exception):
                await close()
        if not options.keep:
            await delete_namespace(bootstrap, ns, [f"{ns.prefix}{settings.group_id}"])
    seconds = time.monotonic() - started
    diffs = []
    for recording in recordings:
        key = (recording.tenant, recording.task_id)
        journal = watcher.journals.get(key)
        gaps = world.gaps.get(key, [])
        missing = [f"step {s}: model decision" for t, s in recorded.missing if t == key[1]]
        task_error = error if journal is None or journal.terminal() is None else None
        diffs.append(
            compare(recording, journal, gaps=[*gaps, *missing], error=task_error, seconds=seconds)
        )
    return diffs


async def replay(
    settings: PlannerSettings, recordings: list[Recording], options: ReplayOptions
) -> list[TaskDiff]:
    """Replay ``recordings`` with this process's planner code; their diffs, in order.

    Tasks that ran with the same memory and critic settings share one namespace (one planner);
    the planner's own settings give the model, prompt and bounds of everything else.
    """
    groups: dict[tuple[bool, bool], list[Recording]] = {}
    for recording in recordings:
        task = recording.accepted.data
        groups.setdefault((task.memory, task.critic is not None), []).append(recording)
    diffs: dict[tuple[str, str], TaskDiff] = {}
    for (memory, critic), members in groups.items():
        for diff in await _replay_group(settings, members, options, memory=memory, critic=critic):
            diffs[(diff.tenant, diff.task_id)] = diff
    return [diffs[(r.tenant, r.task_id)] for r in recordings]
