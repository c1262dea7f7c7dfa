"""Wiring of the memory service: embedding model, Qdrant, Redis, the processor."""

from __future__ import annotations

import asyncio
import contextlib

from redis.asyncio import BlockingConnectionPool, Redis
from stepbus_contracts import memory_requests_adapter, results_adapter, tasks_adapter, utcnow
from stepbus_runtime import Route, run_worker, service_processor, service_publisher, setup_telemetry

from .batching import BatchingEmbedder
from .handlers import MemoryHandlers
from .ports import Embedder, LongTermStore
from .sessions import SessionMemory
from .settings import MemorySettings

__all__ = ["build_embedder", "build_store", "main"]


def build_embedder(settings: MemorySettings) -> Embedder:
    """The configured embedding model: the offline ONNX model unless `openai` is chosen."""
    if settings.embeddings == "openai":
        from .adapters.openai_embedder import OpenAIEmbedder

        return OpenAIEmbedder(model=settings.openai_embeddings_model)
    from .adapters.onnx_embedder import OnnxEmbedder

    return OnnxEmbedder(threads=settings.onnx_threads, batch_size=settings.embed_batch)


def build_store(settings: MemorySettings, embedder: Embedder) -> LongTermStore:
    """Qdrant: a server at ``QDRANT_URL``, else embedded local mode at ``qdrant_path``."""
    from .adapters.qdrant_store import QdrantStore

    api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
    return QdrantStore(
        url=settings.qdrant_url,
        api_key=api_key,
        path=None if settings.qdrant_url else settings.qdrant_path,
        model_id=embedder.model_id,
        dimensions=embedder.dimensions,
    )


async def main(settings: MemorySettings | None = None) -> None:
    """Run the memory service until SIGTERM."""
    settings = settings or MemorySettings()
    setup_telemetry("memory")
    topics = settings.topics
    embedder = BatchingEmbedder(build_embedder(settings), max_batch=settings.embed_batch)
    store = build_store(settings, embedder)
    # A bounded pool that waits for a free connection (redis-py's default refuses past 100).
    redis = Redis(
        connection_pool=BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=32,
            timeout=5.0,
            decode_responses=True,
            socket_timeout=5.0,
            socket_connect_timeout=5.0,
        )
    )
    sessions = SessionMemory(
        redis,
        namespace=topics.prefix,
        ttl_seconds=settings.session_ttl_seconds,
        max_tasks=settings.session_max_tasks,
    )
    publisher = service_publisher(settings, "stepbus-memory")
    handlers = MemoryHandlers(
        embedder=embedder,
        store=store,
        sessions=sessions,
        topics=topics,
        clock=utcnow,
        session_token_budget=settings.session_token_budget,
        hits_token_budget=settings.hits_token_budget,
        min_score=settings.min_score,
        chunk_tokens=settings.chunk_tokens,
        chunk_overlap=settings.chunk_overlap,
        query_embedder=embedder.urgent,
    )
    # Two groups: recalls are answered by a processor of their own, so a backlog of things to
    # remember (a restart after a burst of finished tasks) never holds a waiting task up.
    requests = service_processor(
        settings,
        name="memory",
        group_id=settings.group_id,
        routes={topics.memory_requests: Route(memory_requests_adapter, handlers.on_request)},
        publisher=publisher,
    )
    remembering = service_processor(
        settings,
        name="memory",
        group_id=f"{settings.group_id}-store",
        routes={
            # Every result and task command passes by; few are remembered (a finished task, a
            # memory command): no span per record, the recall is the memory's traced work.
            topics.results: Route(results_adapter, handlers.on_result, traced=False),
            topics.tasks: Route(tasks_adapter, handlers.on_task, traced=False),
        },
        publisher=publisher,
    )
    watcher: asyncio.Task[None] | None = None

    async def started() -> None:
        nonlocal watcher
        watcher = asyncio.create_task(
            sessions.watch(
                settings.kafka_bootstrap_servers,
                topics.memory_sessions,
                publisher.payloads,
                settings.rebuild_check_seconds,
            )
        )

    try:
        await run_worker(
            settings, publisher, requests, settings.metrics_port, started, also=(remembering,)
        )
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await redis.aclose()
        close = getattr(store, "close", None)
        if close is not None:
            await close()
