"""Wiring of the planner: LLM client, tool catalog, task states, processor, deadline sweep."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Literal

import httpx2
import openai
from opentelemetry.trace import SpanContext
from redis.asyncio import BlockingConnectionPool, Redis
from stepbus_contracts import Topics, history_adapter, tasks_adapter, utcnow
from stepbus_runtime import (
    Emit,
    EventPublisher,
    PayloadReaders,
    PayloadStore,
    Processor,
    Route,
    run_worker,
    service_processor,
    service_publisher,
    setup_telemetry,
)

from .adapters.kafka_journals import KafkaJournals
from .adapters.openai_chat import OpenAIChatModel
from .adapters.redis_event_ids import RedisEventIds
from .catalog import ToolCatalog
from .handlers import PlannerHandlers
from .metrics import APPROVAL_OLDEST_WAIT, APPROVALS_WAITING, TASKS_IN_FLIGHT
from .ports import ChatModel
from .settings import PlannerSettings
from .store import TaskStates

__all__ = ["Mode", "Planner", "build_planner", "main", "openai_model"]

Mode = Literal["live", "replay", "shadow"]

FORGET_BATCH = 10_000
"""Ended tasks forgotten per sweep at most, so a burst of old tasks never floods the queues."""


async def sweep(
    processor: Processor,
    states: TaskStates,
    handlers: PlannerHandlers,
    publisher: EventPublisher,
    settings: PlannerSettings,
) -> None:
    """End tasks whose deadline passed while nothing arrived for them (a tool never answered),
    let tasks whose recall did not come in time go on without memory, record critiques that
    did not come in time, deny approvals past their expiry, and (every minute at most) forget
    tasks ended longer ago than the retention. All run in the task's own queue."""
    retention = settings.ended_task_retention_seconds
    forget_every = min(60.0, retention / 4)
    next_forget = time.monotonic() + forget_every
    pause = min(
        settings.deadline_sweep_seconds,
        settings.recall_timeout_seconds / 4,
        settings.critique_timeout_seconds / 4,
    )
    while True:
        await asyncio.sleep(pause)
        for waiting in handlers.recalls_overdue():
            task_id, tenant = waiting.task_id, waiting.tenant
            processor.submit(task_id, lambda t=task_id, n=tenant: handlers.recall_timed_out(t, n))
        for state, kind, step, call in handlers.critiques_overdue():
            task_id, tenant = state.task_id, state.tenant
            processor.submit(
                task_id,
                lambda t=task_id, n=tenant, k=kind, s=step, c=call: handlers.critique_timed_out(
                    t, n, k, s, c
                ),
            )
        for state, approval_id in handlers.approvals_overdue():
            task_id, tenant = state.task_id, state.tenant
            processor.submit(
                task_id,
                lambda t=task_id, n=tenant, a=approval_id: handlers.approval_expired(t, n, a),
            )
        now = utcnow()
        for state in states.running():
            if state.task is not None and now >= state.task.deadline_at:
                task_id, tenant = state.task_id, state.tenant
                processor.submit(task_id, lambda t=task_id, n=tenant: handlers.expire(t, n))
        if time.monotonic() >= next_forget:
            old = states.ended_before(retention, limit=FORGET_BATCH)
            for task_id in old:
                processor.submit(task_id, lambda t=task_id: _forget(states, t, publisher))
            # A full batch leaves more behind: the next one goes with the next deadline sweep.
            next_forget = time.monotonic() + (0 if len(old) == FORGET_BATCH else forget_every)


async def _forget(states: TaskStates, task_id: str, publisher: EventPublisher) -> list[Emit]:
    await states.forget(task_id, publisher)
    return []


@dataclass
class Planner:
    """The planner's parts, wired: what ``main`` runs as a service, and a replay runs in a
    namespace of its own."""

    settings: PlannerSettings
    processor: Processor
    handlers: PlannerHandlers
    states: TaskStates
    catalog: ToolCatalog
    publisher: EventPublisher
    closers: list[Callable[[], Awaitable[object]]]

    def sweep(self) -> Coroutine[object, object, None]:
        """The deadline, recall, critique and retention sweep (runs until cancelled)."""
        return sweep(self.processor, self.states, self.handlers, self.publisher, self.settings)

    async def close(self) -> None:
        """Close the clients the parts hold (the processor and publisher are stopped by
        whoever ran them)."""
        await self.catalog.stop()
        for close in self.closers:
            with contextlib.suppress(Exception):
                await close()


def openai_model(settings: PlannerSettings) -> tuple[OpenAIChatModel, openai.AsyncOpenAI]:
    """The model at ``OPENAI_BASE_URL`` (the OpenAI API when unset), and its client."""
    client = openai.AsyncOpenAI(
        base_url=settings.openai_base_url,
        api_key=settings.openai_api_key.get_secret_value() or "unset",
        timeout=settings.llm_timeout_seconds,
        max_retries=settings.llm_max_retries,
        # aiohttp under the SDK's httpx2 interface (ADR-13): httpx2's own pool checks every
        # pooled connection with syscalls on each request, which made it the planner's main
        # CPU cost at a few hundred calls in flight. The pool stays bounded.
        http_client=openai.DefaultAioHttpClient(
            limits=httpx2.Limits(
                max_connections=settings.llm_max_connections,
                max_keepalive_connections=settings.llm_max_connections,
            ),
            timeout=settings.llm_timeout_seconds,
        ),
    )
    return OpenAIChatModel(client, settings.model), client


def build_planner(
    settings: PlannerSettings,
    *,
    model: ChatModel | None = None,
    check_event_ids: bool = True,
    mode: Mode = "live",
    shadow_of: Topics | None = None,
    originals: Callable[[str, str, int], SpanContext | None] | None = None,
) -> Planner:
    """Wire the planner from its settings.

    Args:
        settings: Kafka, topics, model and loop settings.
        model: The model to ask (default: the OpenAI-compatible endpoint of the settings).
        check_event_ids: Check public event ids in Redis (a replay, which submits recorded
            ids again, does not).
        mode: The ``mode`` label of its metrics (``live``, ``replay``, ``shadow``).
        shadow_of: A shadow planner's live topics: it reads their tasks (and its own
            namespace's, where its world answers approvals), their tool catalog and their
            claim checks; everything it writes goes to its own namespace (``settings``).
        originals: A rerun's original spans, which its spans link (``PlannerHandlers``).
    """
    topics = settings.topics
    closers: list[Callable[[], Awaitable[object]]] = []
    if model is None:
        model, client = openai_model(settings)
        closers.append(client.close)
    event_ids = None
    if check_event_ids:
        # A bounded pool that waits for a free connection: a burst of submissions checks
        # more event ids at once than redis-py's default pool (100) admits, and a refused
        # check would be skipped.
        redis = Redis(
            connection_pool=BlockingConnectionPool.from_url(
                settings.redis_url,
                max_connections=32,
                timeout=5.0,
                decode_responses=True,
                socket_timeout=2.0,
                socket_connect_timeout=2.0,
            )
        )
        closers.append(redis.aclose)
        event_ids = RedisEventIds(
            redis, namespace=topics.prefix, ttl_seconds=settings.event_id_ttl_seconds
        )
    catalog_topic = (shadow_of or topics).tool_catalog
    catalog = ToolCatalog(settings.kafka_bootstrap_servers, catalog_topic)
    publisher = service_publisher(settings, "stepbus-planner")
    payloads = None
    if shadow_of is not None and publisher.payloads is not None:
        live = PayloadStore(
            settings.kafka_bootstrap_servers, shadow_of.payloads, client_id="stepbus-shadow"
        )
        closers.append(live.stop)
        payloads = PayloadReaders(publisher.payloads, live)
    states = TaskStates(
        settings.kafka_bootstrap_servers,
        topics.planner_history,
        topics.planner_snapshots,
        payloads=publisher.payloads,
    )
    handlers = PlannerHandlers(
        model=model,
        store=states,
        catalog=catalog,
        topics=topics,
        max_attempts=settings.max_attempts,
        tool_timeout_seconds=settings.tool_timeout_seconds,
        clock=utcnow,
        system_prompt=settings.system_prompt,
        event_ids=event_ids,
        memory=settings.memory,
        recall_limit=settings.recall_limit,
        recall_timeout_seconds=settings.recall_timeout_seconds,
        critic=settings.critic,
        critic_policy=settings.critic_policy(),
        critique_timeout_seconds=settings.critique_timeout_seconds,
        journals=KafkaJournals(settings.kafka_bootstrap_servers, shadow_of or topics),
        mode=mode,
        originals=originals,
    )
    task_route = Route(tasks_adapter, handlers.on_task, handlers.on_task_arrival)
    inputs = {topics.tasks: task_route}
    if shadow_of is not None:
        inputs[shadow_of.tasks] = task_route
    processor = service_processor(
        settings,
        name="planner" if shadow_of is None else "planner-shadow",
        group_id=settings.group_id,
        routes={
            **inputs,
            # The step span of each journal record is its processing span (messaging
            # attributes, a link to the producer): no second span per record (measured).
            topics.planner_history: Route(history_adapter, handlers.on_history, traced=False),
        },
        publisher=publisher,
        listener=states,
        payloads=payloads,
    )
    return Planner(settings, processor, handlers, states, catalog, publisher, closers)


async def main(settings: PlannerSettings | None = None) -> None:
    """Run the planner until SIGTERM."""
    settings = settings or PlannerSettings()
    setup_telemetry("planner")
    planner = build_planner(settings)
    states, handlers = planner.states, planner.handlers
    TASKS_IN_FLIGHT.set_function(lambda: float(sum(1 for _ in states.running())))
    APPROVALS_WAITING.set_function(lambda: float(handlers.approvals_waiting()[0]))
    APPROVAL_OLDEST_WAIT.set_function(lambda: handlers.approvals_waiting()[1])
    sweeper = asyncio.create_task(planner.sweep())
    try:
        await run_worker(
            settings,
            planner.publisher,
            planner.processor,
            settings.metrics_port,
            planner.catalog.start,
        )
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await planner.close()
