"""End to end: memory through the real services, Kafka, Redis, Qdrant local mode and the real
embedding model (all-MiniLM-L6-v2 on ONNX).

The scripted model answers an input without arithmetic from the memory the planner put in the
prompt ("Earlier you asked: <last user turn> I answered: <last assistant turn>" when the
session has turns, else "From memory: <best stored memory>"), so outputs show what was
recalled; each task's ``stepbus.memory.recalled`` event on ``planner.history`` shows exactly
what. Every test uses tenants of its own, so the tests of the module do not see each other.

The stack runs on its own Redis database (``REDIS_DB``): the tests flush it, which must not
touch the other users of the shared Redis (db 0). The planner's recall timeout is short
(``RECALL_TIMEOUT``) so that a dead memory service costs a task little.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from stepbus_contracts import (
    CloudEvent,
    MemoryDocumentAdded,
    MemoryDocumentAddedData,
    MemoryForgetRequested,
    MemoryForgetRequestedData,
    MemoryRememberRequested,
    MemoryRememberRequestedData,
    TaskSubmitted,
    TaskSubmittedData,
)
from stepbus_runtime import encode

from ..harness import TopicReader, produce, wait_until
from .conftest import Stack, running_stack

pytestmark = pytest.mark.e2e

REDIS_DB = 11
"""The Redis database of this module's stack (FLUSHDB'd by its tests; other tests use 0)."""

RECALL_TIMEOUT = 1.0
"""The planner's ``STEPBUS_PLANNER_RECALL_TIMEOUT_SECONDS`` in this module."""

TERMINAL = {"stepbus.task.completed", "stepbus.task.failed", "stepbus.task.cancelled"}


@pytest.fixture(scope="module")
async def memory_stack(kafka_bootstrap: str, redis_url: str) -> AsyncIterator[Stack]:
    """The stack without the gateway, on Redis db ``REDIS_DB``, with a short recall timeout."""
    url = urlsplit(redis_url)._replace(path=f"/{REDIS_DB}").geturl()
    env = {"STEPBUS_PLANNER_RECALL_TIMEOUT_SECONDS": str(RECALL_TIMEOUT)}
    async with running_stack(kafka_bootstrap, url, env=env, gateway=False) as stack:
        yield stack


# -- helpers ---------------------------------------------------------------------------------


def tenant(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


@dataclass
class Run:
    """A finished task as its journal tells it."""

    task_id: str
    journal: list[dict[str, Any]]

    def first(self, kind: str) -> dict[str, Any]:
        return next(e for e in self.journal if e["type"] == kind)

    @property
    def output(self) -> str:
        end = next(e for e in self.journal if e["type"] in TERMINAL)
        assert end["type"] == "stepbus.task.completed", end
        return str(end["data"]["output"])

    @property
    def recalled(self) -> dict[str, Any]:
        """The recall the planner folded: the first on the journal (a late one is ignored)."""
        return dict(self.first("stepbus.memory.recalled")["data"])


def decoded(records: list[Any], accept: Callable[[Any], bool] = lambda _: True) -> list[Any]:
    """JSON values of the records ``accept`` lets through (filtered before decoding: a
    journal holds every task's records and is polled often)."""
    return [json.loads(r.value) for r in records if r.value is not None and accept(r)]


async def run_task(
    stack: Stack, tenant: str, text: str, *, session: str | None = None, timeout: float = 30
) -> Run:
    """Submit a task on ``tasks`` and wait for its terminal event on its journal."""
    task_id = f"task-{uuid.uuid4().hex[:10]}"
    event = TaskSubmitted(
        subject=task_id, tenant=tenant, data=TaskSubmittedData(input=text, session_id=session)
    )
    key = task_id.encode()
    async with TopicReader(stack.bootstrap, stack.topics.planner_history) as history:
        await produce(stack.bootstrap, stack.topics.tasks, [(key, encode(event))])

        async def ended() -> list[Any] | None:
            journal = decoded(await history.poll(), lambda r: r.key == key)
            return journal if any(e["type"] in TERMINAL for e in journal) else None

        journal = await wait_until(ended, timeout, f"{task_id} ({text!r}) to end")
    return Run(task_id, journal)


async def publish(stack: Stack, topic: str, *events: CloudEvent) -> None:
    await produce(stack.bootstrap, topic, [(e.subject.encode(), encode(e)) for e in events])


async def journaled(
    stack: Stack,
    topic: str,
    what: str,
    accept: Callable[[Any], bool],
    count: int = 1,
    by: Callable[[Any], object] = id,
) -> list[Any]:
    """Wait until ``count`` records of ``topic`` pass ``accept`` (``count`` different values
    of ``by``, when given); their JSON values."""
    async with TopicReader(stack.bootstrap, topic) as reader:

        async def found() -> list[Any] | None:
            hits = decoded(await reader.poll(), accept)
            return hits if len({by(hit) for hit in hits}) >= count else None

        return await wait_until(found, 30, what)  # type: ignore[no-any-return]


def keyed(key: str) -> Callable[[Any], bool]:
    return lambda record: record.key == key.encode()


def item_of(tenant: str, kind: str, **data: str) -> Callable[[Any], bool]:
    """A ``memory.items`` record of ``tenant``'s ``kind`` whose data has ``data``."""

    def accept(record: Any) -> bool:
        if not record.key or not record.key.startswith(b"item/") or record.value is None:
            return False
        value = json.loads(record.value)
        return bool(
            value["tenant"] == tenant
            and value["data"]["kind"] == kind
            and all(value["data"].get(k) == v for k, v in data.items())
        )

    return accept


async def session_recorded(stack: Stack, run: Run, tenant: str) -> None:
    """Wait until the memory service has recorded ``run``'s turns (and, before them, its
    question and answer in long-term memory: both are written before the record goes out).

    The memory service learns a session's turns from ``stepbus.task.completed`` on
    ``results``, at the same time as whoever reads that result: a follow-up submitted as soon
    as the answer is seen can be recalled before the turns are stored. A client that chains
    tasks that fast has the same race; the test waits for the record to test memory, not it.
    """
    key = f"turns/{tenant}/{run.task_id}"
    await journaled(stack, stack.topics.memory_sessions, key, keyed(key))


async def memory_committed(stack: Stack, run: Run) -> None:
    """Wait until the memory service's group has committed ``run``'s completion on ``results``,
    so that a killed service does not read it again (and re-learn its turns from it)."""
    key = run.task_id.encode()
    async with TopicReader(stack.bootstrap, stack.topics.results) as results:

        async def completion() -> Any:
            return next(
                (r for r in await results.poll() if r.key == key and b"task.completed" in r.value),
                None,
            )

        record = await wait_until(completion, 30, f"{run.task_id} on results")
    partition = TopicPartition(record.topic, record.partition)
    group = f"{stack.topics.prefix}stepbus-memory-store"  # the group that reads results
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:

        async def committed() -> bool:
            offsets = await admin.list_consumer_group_offsets(group, partitions=[partition])
            return partition in offsets and offsets[partition].offset > record.offset

        await wait_until(committed, 30, f"the memory service to commit {run.task_id}", 0.1)
    finally:
        await admin.close()


def _whole_key(stack: Stack) -> str:
    return f"stepbus:mem:{stack.topics.prefix}whole"


async def session_cache_whole(stack: Stack) -> None:
    """Wait until the memory service marked its Redis session cache whole (rebuilt)."""
    async with aioredis.from_url(stack.redis_url) as client:
        await wait_until(lambda: client.exists(_whole_key(stack)), 30, "session cache rebuilt")


async def start_memory(stack: Stack) -> None:
    """Start the memory service (if it is not running) and wait for its session cache.

    A recall made while the cache is rebuilding waits for it only within the planner's recall
    timeout, here a short one; these tests are about what comes back, not how fast.
    """
    memory = stack.services["memory"]
    if memory.process is None or memory.process.poll() is not None:
        memory.start()
    await memory.wait_ready()
    await session_cache_whole(stack)


async def flush_redis(stack: Stack) -> None:
    """FLUSHDB the stack's own database (never db 0, which other users share)."""
    assert urlsplit(stack.redis_url).path == f"/{REDIS_DB}"
    async with aioredis.from_url(stack.redis_url) as client:
        await client.flushdb()
        assert await client.dbsize() == 0


def stored_texts(path: str, tenant: str, kind: str) -> list[str]:
    """Texts of the points of ``tenant``'s ``kind`` in a local Qdrant directory."""
    client = QdrantClient(path=path)
    try:
        where = qm.Filter(
            must=[
                qm.FieldCondition(key="tenant", match=qm.MatchValue(value=tenant)),
                qm.FieldCondition(key="kind", match=qm.MatchValue(value=kind)),
            ]
        )
        texts = []
        for collection in client.get_collections().collections:
            points, _ = client.scroll(collection.name, scroll_filter=where, limit=100)
            texts += [str((point.payload or {})["text"]) for point in points]
        return texts
    finally:
        client.close()


def hit_texts(run: Run) -> list[str]:
    return [h["text"] for h in run.recalled["hits"]]


def from_task(run: Run, origin: Run) -> bool:
    """Whether ``run`` recalled anything of the task ``origin``: a turn or a memory."""
    recall = run.recalled
    return any(t["task_id"] == origin.task_id for t in recall["turns"]) or any(
        h["source"] == f"task {origin.task_id}" for h in recall["hits"]
    )


def document(tenant: str, doc_id: str, text: str, title: str) -> MemoryDocumentAdded:
    return MemoryDocumentAdded(
        subject=doc_id,
        tenant=tenant,
        data=MemoryDocumentAddedData(text=text, title=title, source=f"urn:test:{doc_id}"),
    )


def forget(
    tenant: str, scope: Literal["session", "tenant"], session: str | None = None
) -> MemoryForgetRequested:
    return MemoryForgetRequested(
        subject=f"forget-{uuid.uuid4().hex[:8]}",
        tenant=tenant,
        data=MemoryForgetRequestedData(scope=scope, session_id=session),
    )


def seconds_between(earlier: dict[str, Any], later: dict[str, Any]) -> float:
    return (
        datetime.fromisoformat(later["time"]) - datetime.fromisoformat(earlier["time"])
    ).total_seconds()


# -- 1. sessions, tenants -------------------------------------------------------------------


async def test_a_follow_up_sees_its_session_and_another_tenant_sees_nothing_of_it(
    memory_stack: Stack,
) -> None:
    stack, acme, other = memory_stack, tenant("acme"), tenant("other")
    await start_memory(stack)
    first = await run_task(stack, acme, "What is 6 * 7 for the Zanzibar invoice?", session="s-1")
    assert first.output == "42"
    await session_recorded(stack, first, acme)

    follow_up = await run_task(
        stack, acme, "What did I ask you about the Zanzibar invoice?", session="s-1"
    )
    assert follow_up.output == (
        "Earlier you asked: What is 6 * 7 for the Zanzibar invoice? I answered: 42"
    )
    assert [t["task_id"] for t in follow_up.recalled["turns"]] == [first.task_id] * 3
    # The question also finds the first task in acme's long-term memory...
    assert any("Zanzibar" in text for text in hit_texts(follow_up))

    # ...but not for another tenant asking the same in a session of the same id.
    stranger = await run_task(
        stack, other, "What did I ask you about the Zanzibar invoice?", session="s-1"
    )
    recall = stranger.recalled
    assert recall["status"] == "recalled"
    assert recall["turns"] == []
    assert not any("Zanzibar" in text or "42" in text for text in hit_texts(stranger))
    assert "Zanzibar" not in stranger.output


# -- 2. session memory is a cache of memory.sessions ----------------------------------------


async def test_session_turns_survive_a_redis_flush_and_a_killed_memory_service(
    memory_stack: Stack,
) -> None:
    stack, acme = memory_stack, tenant("acme")
    await start_memory(stack)
    first = await run_task(stack, acme, "What is 12 * 12 for the Oslo shipment?", session="s-2")
    assert first.output == "144"
    await session_recorded(stack, first, acme)
    # Killed before committing the completion, the service would read it again and re-learn
    # the turns from it: this test is about the turns coming back from memory.sessions.
    await memory_committed(stack, first)

    memory = stack.services["memory"]
    memory.stop(signal.SIGKILL)
    await flush_redis(stack)  # every session's turns gone, and the "cache is whole" marker
    await start_memory(stack)  # rebuilds from memory.sessions

    follow_up = await run_task(
        stack, acme, "What did I ask you about the Oslo shipment?", session="s-2"
    )
    assert follow_up.recalled["status"] == "recalled"
    assert follow_up.output == (
        "Earlier you asked: What is 12 * 12 for the Oslo shipment? I answered: 144"
    )


# -- 3. the remember tool, by meaning, per tenant --------------------------------------------


async def test_a_remembered_fact_is_recalled_by_meaning_in_another_session_of_its_tenant(
    memory_stack: Stack,
) -> None:
    stack, acme, other = memory_stack, tenant("acme"), tenant("other")
    await start_memory(stack)
    stored = await asyncio.gather(
        run_task(stack, acme, "Remember that my favourite colour is teal", session="s-a"),
        run_task(stack, other, "Remember that my favourite colour is orange", session="s-a"),
    )
    assert [run.output for run in stored] == ["I will remember that."] * 2
    # The tool-executor asks the memory service to remember while the task goes on: wait for
    # both facts (the conflicting one too, or its absence below would prove nothing).
    for who, colour in ((acme, "teal"), (other, "orange")):
        fact = f"my favourite colour is {colour}"
        await journaled(stack, stack.topics.memory_items, fact, item_of(who, "fact", text=fact))

    question = await run_task(stack, acme, "Which colour do I like best?", session="s-b")
    assert question.recalled["turns"] == []  # another session: the answer is long-term memory
    assert "teal" in question.output
    hits = question.recalled["hits"]
    assert {"kind": "fact", "text": "my favourite colour is teal"} in [
        {"kind": h["kind"], "text": h["text"]} for h in hits
    ]
    assert not any("orange" in h["text"] for h in hits)
    assert "orange" not in question.output


# -- 4. documents, forgetting, reindexing ---------------------------------------------------

_PLACES = ("north pier", "old mill", "fish market", "chapel", "boatyard", "ferry slip")
_KEY_PASSAGE = (
    "Office note: the spare key to the server room is kept under the blue ceramic frog on the "
    "reception desk. Whoever borrows the spare server room key signs the blue notebook beside "
    "the frog. The spare key goes back under the ceramic frog before the office closes, and "
    "nobody takes the server room key home. If the spare key is not under the frog, ask the "
    "office manager where the server room key is."
)


def harbour_log() -> str:
    """About 1,550 tokens: four chunks of the default 512 (overlap 64, so chunks start at
    tokens 0, 448, 896 and 1,344), the key passage after the first 30 log entries, in the
    second half of the second chunk and at the start of the third."""

    def entry(day: int) -> str:
        return (
            f"Harbour log, day {day}: calm water by the {_PLACES[day % len(_PLACES)]}, "
            f"{day % 7 + 2} fishing boats out, a light westerly breeze and gulls over the nets."
        )

    before = " ".join(entry(day) for day in range(1, 31))
    after = " ".join(entry(day) for day in range(31, 50))
    return f"{before} {_KEY_PASSAGE} {after}"


async def test_a_long_document_is_chunked_and_a_later_passage_is_recalled(
    memory_stack: Stack,
) -> None:
    stack, acme = memory_stack, tenant("acme")
    await start_memory(stack)
    text = harbour_log()
    await publish(stack, stack.topics.tasks, document(acme, "doc-harbour", text, "Harbour log"))
    await journaled(
        stack,
        stack.topics.memory_items,
        "several chunks of the document",
        item_of(acme, "document", source="urn:test:doc-harbour"),
        count=3,
        by=lambda item: item["data"]["text"],  # a chunk may be indexed as several points
    )

    question = await run_task(stack, acme, "Where is the spare key to the server room kept?")
    [best, *_] = question.recalled["hits"]
    assert best["kind"] == "document" and best["title"] == "Harbour log"
    assert "blue ceramic frog" in best["text"]
    assert not text.startswith(best["text"][:100])  # a later chunk, not the first
    assert "blue ceramic frog" in question.output


async def test_forgotten_sessions_and_tenants_stay_forgotten_through_a_reindex(
    memory_stack: Stack,
) -> None:
    stack = memory_stack
    acme, gone, kept = tenant("acme"), tenant("gone"), tenant("kept")
    lisbon, zanzibar, oslo = (
        "Lisbon order: how many crates is 9 * 9?",
        "What is 6 * 7 for the Zanzibar invoice?",
        "What is 12 * 12 for the Oslo shipment?",
    )
    await start_memory(stack)
    await publish(
        stack,
        stack.topics.tasks,
        document(gone, "doc-oslo", "The Oslo shipment is forty crates of dried cod.", "Oslo"),
        document(kept, "doc-bergen", "The Bergen warehouse closes at six on Fridays.", "Bergen"),
    )
    forgotten_session, kept_session, forgotten_tenant = await asyncio.gather(
        run_task(stack, acme, lisbon, session="s-forget"),
        run_task(stack, acme, zanzibar, session="s-keep"),
        run_task(stack, gone, oslo, session="s-gone"),
    )
    for run, who in ((forgotten_session, acme), (kept_session, acme), (forgotten_tenant, gone)):
        await session_recorded(stack, run, who)
    for who, doc in ((gone, "doc-oslo"), (kept, "doc-bergen")):
        source = f"urn:test:{doc}"
        await journaled(
            stack, stack.topics.memory_items, doc, item_of(who, "document", source=source)
        )

    await publish(
        stack, stack.topics.tasks, forget(acme, "session", "s-forget"), forget(gone, "tenant")
    )
    for marker in (f"forget/{acme}/session/s-forget", f"forget/{gone}/tenant/"):
        await journaled(stack, stack.topics.memory_items, marker, keyed(marker))
        await journaled(stack, stack.topics.memory_sessions, marker, keyed(marker))

    async def check_forgotten(lisbon_again: str, oslo_again: str, *, first_round: bool) -> None:
        # Questions close to the forgotten ones: those would be their best matches if they
        # were there. The first round's tasks become memories of their own (newer than the
        # forget markers, so kept): the second round looks for the originals by origin. Each
        # round asks in other words, since a recall returns a text once (an original brought
        # back would hide behind a later memory of the very same text).
        again = await run_task(stack, acme, lisbon_again, session="s-forget")
        gone_again = await run_task(stack, gone, oslo_again, session="s-gone")
        for run, original in ((again, forgotten_session), (gone_again, forgotten_tenant)):
            assert run.recalled["status"] == "recalled"
            assert not from_task(run, original)
        assert not any(h["kind"] == "document" for h in gone_again.recalled["hits"])
        if first_round:
            assert again.recalled["turns"] == [] and gone_again.recalled["turns"] == []
            assert not any("Lisbon" in text for text in hit_texts(again))
            assert gone_again.recalled["hits"] == []

    await check_forgotten(
        "Lisbon order, once more: how many crates is 9 * 9?",
        "What is 12 * 12 for the Oslo shipment, once more?",
        first_round=True,
    )

    # Lose both stores: Qdrant's directory and Redis; rebuild Qdrant from memory.items.
    memory = stack.services["memory"]
    memory.stop(signal.SIGTERM)
    shutil.rmtree(memory.env["STEPBUS_MEMORY_QDRANT_PATH"], ignore_errors=True)
    await flush_redis(stack)
    reindex = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stepbus_memory.reindex",
        env={**os.environ, **memory.env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(reindex.communicate(), 120)
    assert reindex.returncode == 0, out.decode(errors="replace")
    assert b"reindexed" in out
    await start_memory(stack)

    await check_forgotten(
        "How many crates were in the Lisbon order?",
        "What did I ask you about the Oslo shipment?",
        first_round=False,
    )
    survivor = await run_task(stack, acme, zanzibar, session="s-keep")
    # The tenant's other session kept its turns (Redis rebuilt) and its memory (reindexed),
    # and so did another tenant's document.
    assert kept_session.task_id in {t["task_id"] for t in survivor.recalled["turns"]}
    assert f"task {kept_session.task_id}" in {h["source"] for h in survivor.recalled["hits"]}
    bergen = await run_task(stack, kept, "When does the Bergen warehouse close on Fridays?")
    assert bergen.output == "From memory: The Bergen warehouse closes at six on Fridays."


# -- 5. idempotent writes, a dead memory service ---------------------------------------------


async def test_a_redelivered_memory_write_leaves_one_memory(memory_stack: Stack) -> None:
    stack, acme = memory_stack, tenant("acme")
    await start_memory(stack)
    fact = "The wifi password of the Lisbon office is heron-and-gull"
    request = MemoryRememberRequested(
        subject="task-remembered-by-hand",
        tenant=acme,
        data=MemoryRememberRequestedData(
            fact=fact, session_id="s-5", idempotency_key="task-remembered-by-hand:0:0"
        ),
    )
    await publish(stack, stack.topics.memory_requests, request, request)  # the same record twice
    await journaled(
        stack, stack.topics.memory_items, "both writes", item_of(acme, "fact", text=fact), count=2
    )

    question = await run_task(stack, acme, "What is the wifi password of the Lisbon office?")
    assert hit_texts(question).count(fact) == 1
    assert question.output == f"From memory: {fact}"
    # A recall returns a text once whatever the store holds: count the points themselves, in
    # the local Qdrant directory, which one process may open at a time.
    memory = stack.services["memory"]
    memory.stop(signal.SIGTERM)  # the next test starts it again (if it needs it)
    path = memory.env["STEPBUS_MEMORY_QDRANT_PATH"]
    assert await asyncio.to_thread(stored_texts, path, acme, "fact") == [fact]


async def test_a_dead_memory_service_delays_a_task_by_the_recall_timeout_at_most(
    memory_stack: Stack,
) -> None:
    stack, acme = memory_stack, tenant("acme")
    stack.services["memory"].stop(signal.SIGTERM)  # if still running; start_memory restarts it
    run = await run_task(stack, acme, "What is 7 * 8?", session="s-dead")
    assert run.output == "56"
    assert run.recalled["status"] == "timed_out"
    gap = seconds_between(run.first("stepbus.task.accepted"), run.first("stepbus.llm.decided"))
    # At least the timeout (the planner waited for the recall), and not much more: the sweep
    # looks every timeout/4, then the model is asked. Margin for a loaded 2-core machine.
    assert RECALL_TIMEOUT - 0.05 <= gap < RECALL_TIMEOUT + 2.0, gap
