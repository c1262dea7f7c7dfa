"""Concurrent embedding requests coalesced into batches.

The processor handles many records at once, each asking for one or a few vectors; a model runs
far faster on a batch than on texts one by one. ``BatchingEmbedder`` queues what concurrent
callers ask for and runs it as one batch as soon as the model is free (or ``max_batch`` texts
are waiting), so no caller waits on a timer when the machine is idle.

Recalls are waited for (a task cannot start without its recall, or its recall timeout), while
remembering can lag: ``urgent`` is a view of the same batcher whose texts go before every
waiting text of the plain one.

The vectors of recent texts are kept (``cache_size``, least recently used out): a finished task
is remembered by its question, which its recall embedded a few seconds earlier, so each task
costs the model one text, not two (ADR-30).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence

from .ports import Embedder

__all__ = ["BatchingEmbedder"]


class BatchingEmbedder:
    """An ``Embedder`` that batches the calls of concurrent callers into ``inner``.

    Args:
        inner: The model.
        max_batch: Most texts per batch.
        cache_size: Vectors of recent texts kept (0: none).
    """

    def __init__(self, inner: Embedder, *, max_batch: int = 64, cache_size: int = 4096) -> None:
        self._inner = inner
        self._max_batch = max_batch
        self._cache: OrderedDict[str, list[float]] = OrderedDict()
        self._cache_size = cache_size
        self.cache_hits = 0
        self._waiting: list[tuple[str, asyncio.Future[list[float]]]] = []
        self._first: list[tuple[str, asyncio.Future[list[float]]]] = []
        self._worker: asyncio.Task[None] | None = None
        self.model_id = inner.model_id
        self.dimensions = inner.dimensions
        self.max_input_tokens: int = getattr(inner, "max_input_tokens", 254)

    @property
    def urgent(self) -> _Urgent:
        """The same model, for callers whose texts go first (recall queries)."""
        return _Urgent(self)

    async def embed(self, texts: Sequence[str], *, first: bool = False) -> list[list[float]]:
        """One unit vector per text; waits for the batch it joined (``first``: ahead of the
        texts already waiting)."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[list[float]]] = []
        queue = self._first if first else self._waiting
        for text in texts:
            future: asyncio.Future[list[float]] = loop.create_future()
            if (cached := self._cache.get(text)) is not None:
                self._cache.move_to_end(text)
                self.cache_hits += 1
                future.set_result(cached)
            else:
                queue.append((text, future))
            futures.append(future)
        if queue and (self._worker is None or self._worker.done()):
            self._worker = asyncio.create_task(self._drain())
        return list(await asyncio.gather(*futures))

    def count_tokens(self, text: str) -> int:
        """See ``Embedder.count_tokens``."""
        return self._inner.count_tokens(text)

    def windows(self, text: str, size: int, overlap: int) -> list[str]:
        """See ``Embedder.windows``."""
        return self._inner.windows(text, size, overlap)

    async def _drain(self) -> None:
        while self._first or self._waiting:
            await asyncio.sleep(0)  # let callers that are ready in this turn join the batch
            queue = self._first if self._first else self._waiting
            batch = queue[: self._max_batch]
            del queue[: self._max_batch]
            try:
                vectors = await self._inner.embed([text for text, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (text, future), vector in zip(batch, vectors, strict=True):
                self._keep(text, vector)
                if not future.done():
                    future.set_result(vector)

    def _keep(self, text: str, vector: list[float]) -> None:
        if self._cache_size <= 0:
            return
        self._cache[text] = vector
        self._cache.move_to_end(text)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


class _Urgent:
    """A ``BatchingEmbedder`` whose texts jump the queue."""

    def __init__(self, batcher: BatchingEmbedder) -> None:
        self._batcher = batcher
        self.model_id = batcher.model_id
        self.dimensions = batcher.dimensions
        self.max_input_tokens = batcher.max_input_tokens

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """See ``Embedder.embed``: ahead of every text of the plain batcher."""
        return await self._batcher.embed(texts, first=True)

    def count_tokens(self, text: str) -> int:
        """See ``Embedder.count_tokens``."""
        return self._batcher.count_tokens(text)

    def windows(self, text: str, size: int, overlap: int) -> list[str]:
        """See ``Embedder.windows``."""
        return self._batcher.windows(text, size, overlap)
