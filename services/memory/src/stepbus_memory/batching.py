"""Concurrent embedding requests coalesced into batches.

The processor handles many records at once, each asking for one or a few vectors; a model runs
far faster on a batch than on texts one by one. ``BatchingEmbedder`` queues what concurrent
callers ask for and runs it as one batch as soon as the model is free (or ``max_batch`` texts
are waiting), so no caller waits on a timer when the machine is idle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from .ports import Embedder

__all__ = ["BatchingEmbedder"]


class BatchingEmbedder:
    """An ``Embedder`` that batches the calls of concurrent callers into ``inner``.

    Args:
        inner: The model.
        max_batch: Most texts per batch.
    """

    def __init__(self, inner: Embedder, *, max_batch: int = 64) -> None:
        self._inner = inner
        self._max_batch = max_batch
        self._waiting: list[tuple[str, asyncio.Future[list[float]]]] = []
        self._worker: asyncio.Task[None] | None = None
        self.model_id = inner.model_id
        self.dimensions = inner.dimensions
        self.max_input_tokens: int = getattr(inner, "max_input_tokens", 254)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit vector per text; waits for the batch it joined."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in texts]
        self._waiting.extend(zip(texts, futures, strict=True))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return list(await asyncio.gather(*futures))

    def count_tokens(self, text: str) -> int:
        """See ``Embedder.count_tokens``."""
        return self._inner.count_tokens(text)

    def windows(self, text: str, size: int, overlap: int) -> list[str]:
        """See ``Embedder.windows``."""
        return self._inner.windows(text, size, overlap)

    async def _drain(self) -> None:
        while self._waiting:
            await asyncio.sleep(0)  # let callers that are ready in this turn join the batch
            batch, self._waiting = (
                self._waiting[: self._max_batch],
                self._waiting[self._max_batch :],
            )
            try:
                vectors = await self._inner.embed([text for text, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), vector in zip(batch, vectors, strict=True):
                if not future.done():
                    future.set_result(vector)
