"""Memory handlers: recall and remember commands, finished tasks, documents and forget requests.

Every write goes to the journal (``journal``) as well as to its store, with ids derived from
its cause, so a redelivered record changes nothing and the stores can be rebuilt from the log.
A recall always answers, on the task's journal: with what was found, or ``unavailable`` when a
store failed (the planner does not wait longer than its recall timeout anyway).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime

from opentelemetry import trace
from opentelemetry.trace import Span, StatusCode
from stepbus_contracts import (
    CloudEvent,
    MemoryDocumentAdded,
    MemoryForgetRequested,
    MemoryHit,
    MemoryRecalled,
    MemoryRecalledData,
    MemoryRecallRequested,
    MemoryRememberRequested,
    MemoryTurn,
    TaskCompleted,
    TaskInput,
    Topics,
    derive_id,
)
from stepbus_runtime import Emit, RecordContext, clip
from stepbus_runtime.metrics import DROPPED_RECORDS

from .journal import (
    ForgetMarker,
    ForgetMarkerData,
    SessionRecord,
    SessionRecordData,
    forget_key,
    item_emit,
    item_key,
    session_key,
)
from .metrics import RECALL_HITS, RECALL_SECONDS, RECALLS
from .ports import Embedder, LongTermStore, MemoryItem, Scope
from .sessions import SessionMemory

__all__ = ["MemoryHandlers", "memory_id"]

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("stepbus.memory")

_SOURCE = "urn:stepbus:memory"
_ID_NAMESPACE = uuid.UUID("8d3b2f1e-4c5a-4b7e-9f60-2a1d3c4e5f60")


class _TooLate(Exception):
    """Nobody waits for this recall any more."""


def memory_id(*parts: object) -> str:
    """A memory's id: a UUID (what Qdrant takes) derived from its cause."""
    return str(uuid.uuid5(_ID_NAMESPACE, ":".join(str(p) for p in parts)))


class MemoryHandlers:
    """What the memory service does with each record.

    Args:
        embedder: The embedding model.
        store: Long-term memory.
        sessions: Short-term memory.
        topics: Topic names.
        clock: Current time.
        session_token_budget: Tokens of session turns a recall returns.
        hits_token_budget: Tokens of long-term memories a recall returns.
        min_score: Similarity below which a long-term memory is left out.
        chunk_tokens: Tokens per document chunk; ``chunk_overlap`` tokens shared by neighbours.
        recall_wait: Seconds a recall waits for a rebuilding session cache.
        query_embedder: Embeds recall queries (default ``embedder``): a view that goes ahead of
            remembering (``BatchingEmbedder.urgent``), since a task waits for its recall.
    """

    def __init__(
        self,
        *,
        embedder: Embedder,
        store: LongTermStore,
        sessions: SessionMemory,
        topics: Topics,
        clock: Callable[[], datetime],
        session_token_budget: int = 1_000,
        hits_token_budget: int = 1_000,
        min_score: float = 0.2,
        chunk_tokens: int = 512,
        chunk_overlap: int = 64,
        recall_wait: float = 1.0,
        query_embedder: Embedder | None = None,
    ) -> None:
        self._embedder = embedder
        self._query_embedder = query_embedder or embedder
        self._store = store
        self._sessions = sessions
        self._topics = topics
        self._clock = clock
        self._session_budget = session_token_budget
        self._hits_budget = hits_token_budget
        self._min_score = min_score
        self._chunk = (chunk_tokens, chunk_overlap)
        self._recall_wait = recall_wait

    # -- memory.requests -----------------------------------------------------------------

    async def on_request(
        self, event: MemoryRecallRequested | MemoryRememberRequested, context: RecordContext
    ) -> Sequence[Emit]:
        """Answer a recall on the task's journal, or remember a fact."""
        if isinstance(event, MemoryRememberRequested):
            fact = event.data
            item = MemoryItem(
                id=memory_id(event.tenant, "fact", fact.idempotency_key),
                text=fact.fact,
                kind="fact",
                tenant=event.tenant,
                source=f"task {event.subject}",
                at=event.time,
                user_id=fact.user_id,
                session_id=fact.session_id,
                task_id=event.subject,
            )
            return await self._remember([item], event)
        if self._too_late(event):
            return []
        with _tracer.start_as_current_span(
            "recall memory",
            attributes={
                "stepbus.memory.limit": event.data.limit,
                "stepbus.memory.session": bool(event.data.session_id),
            },
        ) as span:
            started = time.perf_counter()
            try:
                answer = await self._recall(event)
            except _TooLate:
                span.set_attribute("stepbus.memory.status", "too_late")
                return []
            _describe(span, answer.data)
        if self._too_late(event):  # the planner recorded a timeout meanwhile: first one wins
            return []
        recall = answer.data
        seconds = time.perf_counter() - started

        def counted() -> None:  # once the answer is recorded: a redelivery counts once
            if recall.status != "recalled":
                RECALLS.labels("failed").inc()
                return
            RECALLS.labels("ok" if recall.hits or recall.turns else "empty").inc()
            RECALL_HITS.observe(len(recall.hits))
            RECALL_SECONDS.observe(seconds)

        return [Emit(self._topics.planner_history, answer, on_acked=counted)]

    def _too_late(self, request: MemoryRecallRequested) -> bool:
        """Whether nobody waits for this recall any more (its task went on without memory)."""
        answer_by = request.data.answer_by
        if answer_by is None or self._clock() <= answer_by:
            return False
        DROPPED_RECORDS.labels("memory", self._topics.memory_requests, "recall_too_late").inc()
        return True

    async def _recall(self, request: MemoryRecallRequested) -> MemoryRecalled:
        started = time.perf_counter()
        data = request.data
        envelope = {
            "id": derive_id(request.id, "recalled"),
            "source": _SOURCE,
            "subject": request.subject,
            "tenant": request.tenant,
        }
        try:
            turns: list[MemoryTurn] = []
            if data.session_id:
                turns = await self._sessions.recent(
                    request.tenant,
                    data.session_id,
                    budget=self._session_budget,
                    count_tokens=self._embedder.count_tokens,
                    wait=self._recall_wait,
                )
            hits = await self._hits(request) if data.limit else []
        except _TooLate:
            raise
        except Exception as exc:  # a store down: the task goes on without memory
            log.warning("recall for %s failed: %s", clip(request.subject, 80), clip(repr(exc)))
            return MemoryRecalled(
                **envelope,  # type: ignore[arg-type]
                data=MemoryRecalledData(
                    status="unavailable",
                    message=clip(f"memory unavailable: {type(exc).__name__}", 500),
                    recalled_at=self._clock(),
                    duration_ms=(time.perf_counter() - started) * 1000,
                ),
            )
        return MemoryRecalled(
            **envelope,  # type: ignore[arg-type]
            data=MemoryRecalledData(
                status="recalled",
                turns=turns,
                hits=hits,
                embedding_model=self._embedder.model_id,
                recalled_at=self._clock(),
                duration_ms=(time.perf_counter() - started) * 1000,
            ),
        )

    async def _hits(self, request: MemoryRecallRequested) -> list[MemoryHit]:
        [vector] = await self._query_embedder.embed([request.data.query])
        if self._too_late(request):  # the search is the costly part: not for nobody
            raise _TooLate
        scope = Scope(tenant=request.tenant, user_id=request.data.user_id)
        # Parts of one document chunk are points of their own: ask for more, return each once.
        found = await self._store.search(vector, scope, limit=request.data.limit * 3)
        hits: list[MemoryHit] = []
        used = 0
        seen: set[str] = set()
        for scored in found:
            if scored.score < self._min_score or scored.item.text in seen:
                continue
            if len(hits) == request.data.limit:
                break
            seen.add(scored.item.text)
            cost = self._embedder.count_tokens(scored.item.text)
            if hits and used + cost > self._hits_budget:
                break
            used += cost
            item = scored.item
            hits.append(
                MemoryHit(
                    id=item.id,
                    text=item.text[:20_000],
                    score=max(-1.0, min(1.0, scored.score)),
                    kind=item.kind,
                    source=item.source[:2048],
                    title=item.title,
                    at=item.at,
                )
            )
        return hits

    # -- results -------------------------------------------------------------------------

    async def on_result(self, event: CloudEvent, context: RecordContext) -> Sequence[Emit]:
        """Remember a completed task: its turns in its session, its question and answer in
        long-term memory."""
        if not isinstance(event, TaskCompleted) or not event.data.input:
            return []  # progress, failures, cancellations; or a planner too old to say what
        data = event.data
        emits: list[Emit] = []
        if data.session_id:
            turns = [MemoryTurn(role="user", content=data.input, task_id=event.subject,
                                at=event.time)]  # fmt: skip
            turns += [
                MemoryTurn(role="tool", content=o[:20_000], task_id=event.subject, at=event.time)
                for o in data.observations
            ]
            turns.append(MemoryTurn(role="assistant", content=data.output[:20_000],
                                    task_id=event.subject, at=event.time))  # fmt: skip
            record = SessionRecord(
                id=derive_id(event.id, "session"), source=_SOURCE, subject=event.subject,
                tenant=event.tenant,
                data=SessionRecordData(session_id=data.session_id, task_id=event.subject,
                                       user_id=data.user_id, turns=turns, at=event.time),
            )  # fmt: skip
            await self._sessions.add(record)
            emits.append(
                Emit(
                    self._topics.memory_sessions,
                    record,
                    key=session_key(event.tenant, event.subject),
                )
            )
        # Found by its question (what a later task asks again, in other words); the recall of
        # this task embedded that text already, so remembering it costs no model run (ADR-30).
        item = MemoryItem(
            id=memory_id(event.tenant, "task", event.subject),
            text=f"Q: {data.input}\nA: {data.output}",
            kind="task",
            tenant=event.tenant,
            source=f"task {event.subject}",
            at=event.time,
            user_id=data.user_id,
            session_id=data.session_id,
            task_id=event.subject,
        )
        return [*emits, *await self._remember([item], event, [data.input])]

    # -- tasks ---------------------------------------------------------------------------

    async def on_task(self, event: TaskInput, context: RecordContext) -> Sequence[Emit]:
        """Add a document, or forget a scope; other task events are the planner's."""
        if isinstance(event, MemoryDocumentAdded):
            return await self._add_document(event)
        if isinstance(event, MemoryForgetRequested):
            return await self._forget(event, context)
        return []

    async def _add_document(self, event: MemoryDocumentAdded) -> Sequence[Emit]:
        """Chunk a document and index every part of every chunk.

        Chunks are ``chunk_tokens`` long (512 by default), more than the model reads (254
        tokens for all-MiniLM-L6-v2), so each chunk is indexed by the sub-windows the model can
        read, each point carrying the whole chunk: a passage anywhere in a chunk is found, and
        a recall returns the chunk once (hits are deduplicated by text).
        """
        doc = event.data
        size, overlap = self._chunk
        readable = max(16, self._embedder.max_input_tokens)
        items: list[MemoryItem] = []
        searched: list[str] = []
        for index, chunk in enumerate(self._embedder.windows(doc.text, size, overlap)):
            parts = [chunk]
            if self._embedder.count_tokens(chunk) > readable:
                parts = self._embedder.windows(chunk, readable, min(overlap, readable // 4))
            for part_index, part in enumerate(parts):
                items.append(
                    MemoryItem(
                        id=memory_id(event.tenant, "document", event.subject, index, part_index),
                        text=chunk,
                        kind="document",
                        tenant=event.tenant,
                        source=doc.source or f"document {event.subject}",
                        at=event.time,
                        user_id=doc.user_id,
                        title=doc.title,
                    )
                )
                searched.append(part)
        return await self._remember(items, event, searched)

    async def _forget(self, event: MemoryForgetRequested, context: RecordContext) -> Sequence[Emit]:
        request = event.data
        marker = ForgetMarkerData(
            scope=request.scope, session_id=request.session_id, user_id=request.user_id,
            at=event.time,
        )  # fmt: skip
        scope = Scope(tenant=event.tenant, user_id=request.user_id, session_id=request.session_id)
        ids = await self._store.forget(scope)
        turns = await self._sessions.forget(event.tenant, marker)
        log.info("forgot %s of tenant %s: %d memories, %d tasks' turns", request.scope,
                 clip(event.tenant, 40), len(ids), turns)  # fmt: skip
        record = ForgetMarker(
            id=derive_id(event.id, "forgotten"), source=_SOURCE, subject=event.subject,
            tenant=event.tenant, data=marker,
        )  # fmt: skip
        key = forget_key(event.tenant, marker)
        return [
            Emit(self._topics.memory_items, record, key=key),
            Emit(self._topics.memory_sessions, record, key=key),
            *[
                Emit(self._topics.memory_items, record, key=item_key(i), tombstone=True)
                for i in ids
            ],
        ]

    async def _remember(
        self, items: list[MemoryItem], cause: CloudEvent, searched: list[str] | None = None
    ) -> Sequence[Emit]:
        """Embed (``searched``: the text each item is found by, when not its own), store, and
        journal the items."""
        if not items:
            return []
        texts = searched or [item.text for item in items]
        vectors = await self._embedder.embed(texts)
        await self._store.upsert(items, vectors)
        return [
            item_emit(
                self._topics.memory_items, item, cause.id, embedded=None if t == item.text else t
            )
            for item, t in zip(items, texts, strict=True)
        ]


def _describe(span: Span, recall: MemoryRecalledData) -> None:
    """What a recall found, on its span (the ids and scores, never the texts)."""
    if not span.is_recording():
        return
    span.set_attribute("stepbus.memory.status", recall.status)
    span.set_attribute("stepbus.memory.turns", len(recall.turns))
    span.set_attribute("stepbus.memory.hits", len(recall.hits))
    if recall.hits:
        span.set_attribute("stepbus.memory.top_score", max(hit.score for hit in recall.hits))
        span.set_attribute("stepbus.memory.hit_ids", [hit.id for hit in recall.hits])
        span.set_attribute("stepbus.memory.scores", [hit.score for hit in recall.hits])
    if recall.status != "recalled":
        span.set_status(StatusCode.ERROR, recall.status)
