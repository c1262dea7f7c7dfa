"""Cost of the long-term memory engine: ``python -m stepbus_devtools.memory_bench``.

Measures, on this machine: embedding throughput of the default model (one core, batch 32,
short texts); insert throughput; recall latency p50/p99 (embed the query + search, and search
alone) with ``--points`` memories in the collection, in Qdrant's local mode, while 20 % of the
points belong to other tenants and half of the tenant's carry user ids (every search filters
by tenant and user, as the service does); and what reopening a local store of that size costs.

Embedding 100,000 texts on one core takes minutes, so ``--real`` texts (default 2,000) are
embedded with the real model and the other points are derived from them: a real vector plus
Gaussian noise (sigma 0.03 per dimension, cosine about 0.86 to its source), re-normalised.
Local mode searches exhaustively, so its latency does not depend on how vectors are spread.
The evaluation set's facts are stored in the tenant too, and its questions are the queries, so
the run also reports recall@5 among that many distractors.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from stepbus_memory.adapters.onnx_embedder import OnnxEmbedder
from stepbus_memory.adapters.qdrant_store import QdrantStore
from stepbus_memory.ports import MemoryItem, Scope

from .memory_eval import DATA_DIR, read_jsonl

__all__ = ["main"]

_TENANT = "bench"
_OTHERS = [f"tenant-{i}" for i in range(9)]
_USERS = [f"user-{i}" for i in range(100)]
_NOISE = 0.03
_BATCH = 32
_UPSERT = 256
_NAMES = "Anna Ben Clara Daniel Elena Fatima Greta Jonas Karim Lena Marco Noah Priya Sofia Tom"
_THINGS = [
    "flight to {city} leaves at {h}:{m:02d}",
    "dentist appointment is on {d} {month} at {h}:{m:02d}",
    "invoice {n} over {n2} euros is due on {d} {month}",
    "favourite restaurant is on {street} Street near the {city} station",
    "gym membership renews on {d} {month} for {n3} euros a month",
    "parcel with {n3} books from {city} arrives on {d} {month}",
    "team meeting moved to room {street} at {h}:{m:02d} on {day}",
    "password manager entry for the {city} office was rotated on {d} {month}",
]
_CITIES = "Oslo Osaka Berlin Bern Lisbon Lyon Madrid Munich Zurich Zug Dublin Prague Paris Leeds"
_STREETS = "Elm Oak Pine Birch Maple Cedar Linden Aurora Borealis Harbor"
_MONTHS = "January February March April May June July August September October November December"
_DAYS = "Monday Tuesday Wednesday Thursday Friday"


def short_texts(count: int, seed: int = 7) -> list[str]:
    """Varied one-sentence memories of 15 to 25 tokens, like facts and task answers."""
    rng = np.random.default_rng(seed)
    names, cities, streets = _NAMES.split(), _CITIES.split(), _STREETS.split()
    months, days = _MONTHS.split(), _DAYS.split()
    out = []
    for _ in range(count):
        thing = _THINGS[rng.integers(len(_THINGS))].format(
            city=cities[rng.integers(len(cities))],
            street=streets[rng.integers(len(streets))],
            month=months[rng.integers(12)],
            day=days[rng.integers(5)],
            d=int(rng.integers(1, 29)),
            h=int(rng.integers(6, 22)),
            m=int(rng.integers(0, 60)),
            n=int(rng.integers(1000, 9999)),
            n2=int(rng.integers(100, 50_000)),
            n3=int(rng.integers(2, 500)),
        )
        out.append(f"{names[rng.integers(len(names))]}'s {thing}.")
    return out


def _percentiles(samples: list[float]) -> str:
    ms = sorted(1000 * s for s in samples)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return f"p50 {statistics.median(ms):8.1f} ms   p99 {p99:8.1f} ms   (n={len(ms)})"


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


async def _embedding_throughput(model: OnnxEmbedder, texts: list[str]) -> None:
    await model.embed(texts[:_BATCH])
    began = time.perf_counter()
    await model.embed(texts)
    elapsed = time.perf_counter() - began
    tokens = statistics.mean(model.count_tokens(t) for t in texts)
    print(
        f"embedding      {len(texts) / elapsed:7.0f} texts/s on 1 thread, batch {_BATCH} "
        f"({len(texts)} texts of {tokens:.0f} tokens on average; "
        f"{1000 * elapsed / (len(texts) / _BATCH):.0f} ms a batch)"
    )


def _derive(real: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    base = real[rng.integers(len(real), size=count)]
    noisy = base + rng.normal(0.0, _NOISE, size=base.shape).astype(np.float32)
    return noisy / np.linalg.norm(noisy, axis=1, keepdims=True)  # type: ignore[no-any-return]


async def _fill(
    store: QdrantStore,
    texts: list[str],
    real: np.ndarray,
    start: int,
    stop: int,
    rng: np.random.Generator,
) -> float:
    """Add points ``start..stop``; the seconds the upserts took."""
    at = datetime.now(UTC)
    elapsed = 0.0
    for first in range(start, stop, _UPSERT):
        last = min(first + _UPSERT, stop)
        vectors = _derive(real, last - first, rng)
        items = []
        for n in range(first, last):
            other = n % 5 == 4  # 20 % of the collection: other tenants
            tenant = _OTHERS[n % len(_OTHERS)] if other else _TENANT
            user = _USERS[n % len(_USERS)] if n % 2 else None
            items.append(
                MemoryItem(
                    id=str(uuid.uuid5(uuid.NAMESPACE_OID, f"bench:{n}")),
                    text=texts[n % len(texts)],
                    kind="fact",
                    tenant=tenant,
                    source="bench",
                    at=at,
                    user_id=user,
                    session_id=f"s-{n % 1000}",
                )
            )
        began = time.perf_counter()
        await store.upsert(items, vectors.tolist())
        elapsed += time.perf_counter() - began
    return elapsed


async def _measure(
    store: QdrantStore,
    model: OnnxEmbedder,
    questions: list[dict[str, str]],
    fact_ids: dict[str, str],
    queries: int,
) -> None:
    asked = questions[:queries]
    vectors = await model.embed([q["question"] for q in asked])
    scope = Scope(_TENANT, user_id=_USERS[1])
    search_only, end_to_end, found = [], [], 0
    for question, vector in zip(asked, vectors, strict=True):
        began = time.perf_counter()
        hits = await store.search(vector, scope, limit=5)
        search_only.append(time.perf_counter() - began)
        found += fact_ids[question["expected"]] in {h.item.id for h in hits}
    for question in asked:
        began = time.perf_counter()
        (vector,) = await model.embed([question["question"]])
        await store.search(vector, scope, limit=5)
        end_to_end.append(time.perf_counter() - began)
    print(f"  recall, embed + search  {_percentiles(end_to_end)}")
    print(f"  recall, search alone    {_percentiles(search_only)}")
    print(
        f"  recall@5 of the eval set among them: {found / len(asked):.3f} ({len(asked)} questions)"
    )


async def run(points: list[int], real_count: int, queries: int | None, keep: Path | None) -> None:
    """Print every figure; ``keep`` keeps the local store there instead of a temp dir."""
    print(f"memory bench: {os.cpu_count()} cores here; ONNX on 1 thread; Qdrant local mode")
    began = time.perf_counter()
    model = await OnnxEmbedder.load(threads=1, batch_size=_BATCH)
    print(f"model load     {time.perf_counter() - began:.2f} s")
    texts = short_texts(real_count)
    await _embedding_throughput(model, texts[:2048])
    real = np.asarray(await model.embed(texts), dtype=np.float32)
    print(
        f"corpus         {real_count} real embeddings; the other points are real vectors plus "
        f"N(0, {_NOISE}^2) noise, re-normalised"
    )

    facts = read_jsonl(DATA_DIR / "facts.jsonl")
    questions = read_jsonl(DATA_DIR / "questions.jsonl")
    fact_ids = {f["id"]: str(uuid.uuid5(uuid.NAMESPACE_OID, f["id"])) for f in facts}
    fact_items = [
        MemoryItem(
            id=fact_ids[f["id"]],
            text=f["text"],
            kind="fact",
            tenant=_TENANT,
            source="eval",
            at=datetime.now(UTC),
        )
        for f in facts
    ]
    rng = np.random.default_rng(11)
    with tempfile.TemporaryDirectory(prefix="stepbus-memory-bench-") as tmp:
        path = keep or Path(tmp)
        store = QdrantStore(path=path, model_id=model.model_id, dimensions=model.dimensions)
        await store.upsert(fact_items, await model.embed([f["text"] for f in facts]))
        have = 0
        for target in sorted(points):
            added = target - len(facts) - have
            elapsed = await _fill(store, texts, real, have, have + added, rng)
            have += added
            print(
                f"{target:>7,} points ({await store.count(_TENANT):,} the tenant's): inserted "
                f"{added:,} at {added / elapsed:,.0f} points/s"
            )
            asked = queries or (100 if target <= 20_000 else 30)
            await _measure(store, model, questions, fact_ids, min(asked, len(questions)))
            await store.close()
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"  on disk {_dir_size(path) / 1e6:,.0f} MB; peak RSS so far {rss:,.0f} MB")
            began = time.perf_counter()
            store = QdrantStore(path=path, model_id=model.model_id, dimensions=model.dimensions)
            await store.start()
            print(
                f"  reopening the local store (service start): {time.perf_counter() - began:.1f} s"
            )
        await store.close()
    model.close()
    print(
        "Qdrant server: not measured. No server binary is available to this machine: PyPI has "
        "only clients, crates.io's `qdrant` is an empty 0.0.0 placeholder, and there is no "
        "Docker daemon. With a server, set QDRANT_URL and compare."
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(prog="python -m stepbus_devtools.memory_bench")
    parser.add_argument(
        "--points", default="10000,100000", help="collection sizes, comma-separated"
    )
    parser.add_argument("--real", type=int, default=2_000, help="texts embedded for real")
    parser.add_argument(
        "--queries",
        type=int,
        default=None,
        help="queries per size (max 120; default 100, and 30 above 20,000 points, where one "
        "local-mode search takes seconds)",
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep the local store here")
    args = parser.parse_args(argv)
    points = [int(p.replace("_", "")) for p in args.points.split(",")]
    asyncio.run(run(points, args.real, args.queries, args.keep))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
