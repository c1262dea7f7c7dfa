"""The memory service's handlers on the real model, a local Qdrant and the real Redis.

No Kafka: records are handed to the handlers as the processor would, and what they return is
inspected (the journal records) alongside the stores.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from stepbus_contracts import (
    MemoryDocumentAdded,
    MemoryDocumentAddedData,
    MemoryForgetRequested,
    MemoryForgetRequestedData,
    MemoryRecalled,
    MemoryRecallRequested,
    MemoryRecallRequestedData,
    MemoryRememberRequested,
    MemoryRememberRequestedData,
    TaskCompleted,
    TaskCompletedData,
    Topics,
)
from stepbus_memory.adapters.onnx_embedder import OnnxEmbedder
from stepbus_memory.adapters.qdrant_store import QdrantStore
from stepbus_memory.batching import BatchingEmbedder
from stepbus_memory.handlers import MemoryHandlers
from stepbus_memory.ports import Scope
from stepbus_memory.sessions import SessionMemory
from stepbus_runtime import RecordContext

pytestmark = pytest.mark.integration

TOPICS = Topics("mem-test.")
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def embedder() -> BatchingEmbedder:
    return BatchingEmbedder(OnnxEmbedder())


@pytest.fixture
async def handlers(
    embedder: BatchingEmbedder, tmp_path: Path, redis_url: str
) -> AsyncIterator[tuple[MemoryHandlers, QdrantStore, SessionMemory]]:
    redis = Redis.from_url(redis_url.rsplit("/", 1)[0] + "/14", decode_responses=True)
    await redis.flushdb()
    store = QdrantStore(
        path=tmp_path / "qdrant", model_id=embedder.model_id, dimensions=embedder.dimensions
    )
    sessions = SessionMemory(redis, namespace=TOPICS.prefix, ttl_seconds=3600, max_tasks=3)
    sessions._whole.set()  # no rebuild in these tests (the e2e tests cover it)
    memory = MemoryHandlers(
        embedder=embedder,
        store=store,
        sessions=sessions,
        topics=TOPICS,
        clock=lambda: NOW,
        session_token_budget=200,
        chunk_tokens=64,
        chunk_overlap=8,
    )
    try:
        yield memory, store, sessions
    finally:
        await store.close()
        await redis.flushdb()
        await redis.aclose()


def ctx(topic: str) -> RecordContext:
    return RecordContext(topic, 0, 0, "k", 1, 5)


def completed(task_id: str, tenant: str, question: str, answer: str, **data: Any) -> TaskCompleted:
    return TaskCompleted(
        id=f"done-{task_id}", subject=task_id, tenant=tenant, time=NOW,
        data=TaskCompletedData(output=answer, steps=1, input=question, **data),
    )  # fmt: skip


def recall(task_id: str, tenant: str, query: str, **data: Any) -> MemoryRecallRequested:
    return MemoryRecallRequested(
        id=f"recall-{task_id}", subject=task_id, tenant=tenant,
        data=MemoryRecallRequestedData(query=query, **data),
    )  # fmt: skip


async def recalled(memory: MemoryHandlers, request: MemoryRecallRequested) -> MemoryRecalled:
    [emit] = await memory.on_request(request, ctx(TOPICS.memory_requests))
    assert emit.topic == TOPICS.planner_history and isinstance(emit.event, MemoryRecalled)
    return emit.event


async def test_a_finished_task_is_remembered_in_its_session_and_long_term(handlers: Any) -> None:
    memory, store, _ = handlers
    done = completed("t1", "acme", "What is the capital of Norway?", "Oslo", session_id="s1",
                     observations=["search: Oslo is the capital of Norway"])  # fmt: skip
    emits = await memory.on_result(done, ctx(TOPICS.results))
    assert {e.topic for e in emits} == {TOPICS.memory_sessions, TOPICS.memory_items}
    answer = await recalled(memory, recall("t2", "acme", "Norway's capital city?", session_id="s1"))
    assert [t.role for t in answer.data.turns] == ["user", "tool", "assistant"]
    assert answer.data.hits and "Oslo" in answer.data.hits[0].text
    # Another tenant with the same session id sees neither.
    other = await recalled(memory, recall("t3", "rival", "Norway's capital city?", session_id="s1"))
    assert other.data.turns == [] and other.data.hits == []
    assert await store.count("acme") == 1


async def test_a_redelivered_write_leaves_one_memory(handlers: Any) -> None:
    memory, store, _ = handlers
    fact = MemoryRememberRequested(
        id="r1", subject="t1", tenant="acme",
        data=MemoryRememberRequestedData(fact="The release train leaves on Thursdays.",
                                         idempotency_key="t1:0:0"),
    )  # fmt: skip
    for _ in range(3):
        await memory.on_request(fact, ctx(TOPICS.memory_requests))
    document = MemoryDocumentAdded(
        id="d1", subject="doc-1", tenant="acme",
        data=MemoryDocumentAddedData(text="Short handbook.", title="Handbook"),
    )  # fmt: skip
    for _ in range(2):
        await memory.on_task(document, ctx(TOPICS.tasks))
    assert await store.count("acme") == 2


async def test_a_document_is_chunked_and_a_later_passage_is_recalled(handlers: Any) -> None:
    memory, store, _ = handlers
    topics = [
        "Visitors sign in at the front desk and wear a badge at all times.",
        "Expense claims are filed through the finance portal within thirty days.",
        "The kitchen is cleaned by a rota; the schedule hangs next to the fridge.",
        "Parking spaces in the basement are assigned by the facilities team.",
        "Laptops are replaced every three years; ask IT for a loaner meanwhile.",
        "Holiday requests need two weeks' notice and a manager's approval.",
        "Fire drills happen twice a year and everyone leaves by the east stairs.",
        "The mail room closes at four in the afternoon on Fridays.",
    ]
    text = " ".join(topics * 2) + " The emergency generator is tested every first Monday at 9am."
    document = MemoryDocumentAdded(
        id="d2", subject="handbook", tenant="acme",
        data=MemoryDocumentAddedData(text=text, title="Office handbook", source="wiki"),
    )  # fmt: skip
    emits = await memory.on_task(document, ctx(TOPICS.tasks))
    assert len(emits) > 3 and await store.count("acme") == len(emits)
    answer = await recalled(
        memory, recall("t9", "acme", "When do they check the backup generator?")
    )
    assert "generator" in answer.data.hits[0].text
    assert answer.data.hits[0].title == "Office handbook"


async def test_user_scoped_memories_stay_with_their_user(handlers: Any) -> None:
    memory, _, _ = handlers
    for user, colour in (("ann", "teal"), ("bob", "orange")):
        fact = MemoryRememberRequested(
            id=f"r-{user}", subject=f"t-{user}", tenant="acme",
            data=MemoryRememberRequestedData(fact=f"My favourite colour is {colour}.",
                                             user_id=user, idempotency_key=f"t-{user}:0:0"),
        )  # fmt: skip
        await memory.on_request(fact, ctx(TOPICS.memory_requests))
    ann = await recalled(memory, recall("q1", "acme", "Which colour do I like?", user_id="ann"))
    assert [h.text for h in ann.data.hits] == ["My favourite colour is teal."]
    nobody = await recalled(memory, recall("q2", "acme", "Which colour do I like?"))
    assert nobody.data.hits == []  # private memories of users are not the tenant's


async def test_forgetting_a_session_and_a_tenant_empties_both_stores(handlers: Any) -> None:
    memory, store, _ = handlers
    for task, session in (("t1", "s1"), ("t2", "s2")):
        done = completed(task, "acme", f"Question of {session}?", "Answer.", session_id=session)
        await memory.on_result(done, ctx(TOPICS.results))
    forget = MemoryForgetRequested(
        id="f1", subject="f1", tenant="acme",
        data=MemoryForgetRequestedData(scope="session", session_id="s1"),
    )  # fmt: skip
    emits = await memory.on_task(forget, ctx(TOPICS.tasks))
    assert any(e.tombstone for e in emits)  # the forgotten memory leaves the journal too
    gone = await recalled(memory, recall("q", "acme", "Question of s1?", session_id="s1"))
    assert gone.data.turns == []
    assert all("s1" not in h.text for h in gone.data.hits)
    assert await store.count("acme") == 1
    everything = MemoryForgetRequested(
        id="f2", subject="f2", tenant="acme", data=MemoryForgetRequestedData(scope="tenant")
    )
    await memory.on_task(everything, ctx(TOPICS.tasks))
    assert await store.count("acme") == 0
    left = await recalled(memory, recall("q", "acme", "Question of s2?", session_id="s2"))
    assert left.data.turns == [] and left.data.hits == []
    assert await store.search([0.0] * 384, Scope("acme"), limit=5) == []


async def test_session_turns_are_trimmed_to_the_budget_newest_kept(handlers: Any) -> None:
    memory, _, _ = handlers
    for index in range(5):
        done = completed(f"t{index}", "acme", f"question number {index} " * 10, "ok",
                         session_id="long")  # fmt: skip
        await memory.on_result(done.model_copy(update={"time": NOW.replace(minute=index)}),
                               ctx(TOPICS.results))  # fmt: skip
    answer = await recalled(memory, recall("q", "acme", "anything", session_id="long"))
    tasks = [t.task_id for t in answer.data.turns]
    assert tasks and tasks[-1] == "t4"  # the newest is there, oldest first
    assert "t0" not in tasks  # max_tasks=3 and a 200-token budget keep the recent ones only


async def test_a_passage_late_in_a_512_token_chunk_is_found(
    handlers: Any, embedder: BatchingEmbedder
) -> None:
    _, store, sessions = handlers
    memory = MemoryHandlers(
        embedder=embedder, store=store, sessions=sessions, topics=TOPICS, clock=lambda: NOW
    )  # the defaults: 512-token chunks, more than the model reads (254)
    lines = [
        f"Meeting note {i}: the team reviewed the quarterly budget figures." for i in range(30)
    ]
    text = " ".join(lines) + " Finally, the parking garage will close for repairs in March."
    assert 300 < embedder.count_tokens(text) < 512  # one chunk; the passage beyond token 254
    document = MemoryDocumentAdded(
        id="d3", subject="notes", tenant="acme",
        data=MemoryDocumentAddedData(text=text, title="Notes"),
    )  # fmt: skip
    emits = await memory.on_task(document, ctx(TOPICS.tasks))
    assert len(emits) >= 2  # the chunk is indexed by the parts the model can read
    answer = await recalled(memory, recall("q", "acme", "When is the car park shut for repair?"))
    [hit] = [h for h in answer.data.hits if h.title == "Notes"]  # the chunk, once
    assert "parking garage" in hit.text and hit.text.startswith("Meeting note 0")


async def test_a_recall_nobody_waits_for_any_more_is_skipped(handlers: Any) -> None:
    memory, _, _ = handlers
    late = recall("t1", "acme", "anything", answer_by=NOW.replace(hour=11))  # an hour ago
    assert await memory.on_request(late, ctx(TOPICS.memory_requests)) == []
    in_time = recall("t2", "acme", "anything", answer_by=NOW.replace(hour=13))
    assert len(await memory.on_request(in_time, ctx(TOPICS.memory_requests))) == 1


class CountingEmbedder:
    """The real model, counting the texts it embeds."""

    def __init__(self, inner: OnnxEmbedder) -> None:
        self.inner = inner
        self.texts: list[str] = []
        self.model_id = inner.model_id
        self.dimensions = inner.dimensions
        self.max_input_tokens = inner.max_input_tokens

    async def embed(self, texts: Any) -> list[list[float]]:
        self.texts.extend(texts)
        return await self.inner.embed(texts)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def windows(self, text: str, size: int, overlap: int) -> list[str]:
        return self.inner.windows(text, size, overlap)


async def test_a_task_remembered_after_its_recall_costs_the_model_no_second_text(
    handlers: Any, tmp_path: Path
) -> None:
    _, _, sessions = handlers
    counting = CountingEmbedder(OnnxEmbedder())
    batching = BatchingEmbedder(counting, cache_size=2)
    store = QdrantStore(path=tmp_path / "q2", model_id=batching.model_id,
                        dimensions=batching.dimensions)  # fmt: skip
    memory = MemoryHandlers(embedder=batching, store=store, sessions=sessions, topics=TOPICS,
                            clock=lambda: NOW, query_embedder=batching.urgent)  # fmt: skip
    try:
        question = "How many moons does Mars have?"
        await recalled(memory, recall("m1", "acme", question))
        await memory.on_result(completed("m1", "acme", question, "Two"), ctx(TOPICS.results))
        assert counting.texts == [question]  # the recall's vector was reused
        assert batching.cache_hits == 1
        # Found by its question, in other words; the hit is the whole question and answer.
        answer = await recalled(memory, recall("m2", "acme", "Mars: how many moons?"))
        assert answer.data.hits[0].text == f"Q: {question}\nA: Two"
        # The cache is bounded: old texts are embedded again.
        for text in ("one", "two", "three"):
            await batching.embed([text])
        await batching.embed([question])
        assert counting.texts.count(question) == 2
    finally:
        await store.close()
