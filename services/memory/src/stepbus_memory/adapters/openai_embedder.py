"""``Embedder`` over the OpenAI embeddings API (or any compatible endpoint).

Used only when the memory service's settings choose it (e.g. ``STEPBUS_EMBEDDINGS=openai``),
never because ``OPENAI_BASE_URL`` is set: changing the embedder changes the collection, so it
must be a decision, not a side effect of configuring the planner's LLM.

Token counts and windows use the WordPiece tokenizer shipped with the local model (offline),
not the API model's BPE (``tiktoken`` fetches its vocabulary at run time): for English text a
WordPiece count is about the same as, or a little above, ``cl100k_base``'s, so a window of
512 counted tokens stays far below the API's 8,192-token input limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import openai
from tokenizers import Tokenizer

from ..ports import MemoryError
from .onnx_embedder import token_windows, wordpiece_tokenizer

__all__ = ["KNOWN_DIMENSIONS", "OpenAIEmbedder"]

_PROBE = "dimension probe"


KNOWN_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
"""Vector sizes of OpenAI's embeddings models (each response is checked against them)."""


class OpenAIEmbedder:
    """Embeddings from ``client.embeddings.create``, in batches.

    Args:
        model: The embeddings model.
        client: A configured ``openai.AsyncOpenAI``; default: one built from the standard
            ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``.
        tokenizer: The tokenizer for :meth:`count_tokens` and :meth:`windows` (default: the
            local model's WordPiece tokenizer).
        dimensions: The vector size ``model`` returns; default: :data:`KNOWN_DIMENSIONS`. For
            another model, pass it or build the embedder with :meth:`connect`, which asks.
        batch_size: Texts per request (the API takes up to 2,048).

    Raises:
        ValueError: ``dimensions`` is not given and not known for ``model``.
    """

    max_input_tokens: int = 8_000
    """Tokens the API embeds per text (8,192 for its models, less a margin for the count)."""

    def __init__(
        self,
        *,
        model: str = "text-embedding-3-small",
        client: openai.AsyncOpenAI | None = None,
        tokenizer: Tokenizer | None = None,
        dimensions: int | None = None,
        batch_size: int = 256,
    ) -> None:
        dimensions = dimensions or KNOWN_DIMENSIONS.get(model)
        if dimensions is None:
            raise ValueError(
                f"dimensions of {model!r} unknown: pass dimensions=, or build the embedder with "
                "`await OpenAIEmbedder.connect(model=...)`, which asks the API"
            )
        self._client = client or openai.AsyncOpenAI()
        self._tokenizer = tokenizer or wordpiece_tokenizer()
        self.model_id = f"openai-{model}"
        self.model = model
        self.dimensions = dimensions
        self.batch_size = batch_size

    @classmethod
    async def connect(
        cls,
        *,
        model: str = "text-embedding-3-small",
        client: openai.AsyncOpenAI | None = None,
        tokenizer: Tokenizer | None = None,
        batch_size: int = 256,
    ) -> OpenAIEmbedder:
        """An embedder whose ``dimensions`` come from one probe request to the API.

        Raises:
            MemoryError: The API failed (``retryable`` for connection errors, 429 and 5xx).
        """
        client = client or openai.AsyncOpenAI()
        (vector,) = await _create(client, model, [_PROBE])
        return cls(
            model=model,
            client=client,
            tokenizer=tokenizer,
            dimensions=len(vector),
            batch_size=batch_size,
        )

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order (the API's are unit length); empty texts are sent
        as a single space, which the API accepts.

        Raises:
            MemoryError: The API failed, or answered with vectors of another size.
        """
        out: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = [t if t.strip() else " " for t in texts[start : start + self.batch_size]]
            vectors = await _create(self._client, self.model, batch)
            if any(len(v) != self.dimensions for v in vectors):
                raise MemoryError(
                    f"{self.model} returned vectors of another size than {self.dimensions}: the "
                    "model behind the endpoint changed; re-embed into a new collection",
                    retryable=False,
                )
            out.extend(vectors)
        return out

    def count_tokens(self, text: str) -> int:
        """WordPiece tokens of ``text`` (an estimate of the API model's count)."""
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def windows(self, text: str, size: int = 512, overlap: int = 64) -> list[str]:
        """``text`` cut into windows of at most ``size`` counted tokens overlapping by
        ``overlap``; slices of the original text."""
        offsets = self._tokenizer.encode(text, add_special_tokens=False).offsets
        return token_windows(text, offsets, size, overlap)


async def _create(client: openai.AsyncOpenAI, model: str, texts: list[str]) -> list[list[float]]:
    try:
        response: Any = await client.embeddings.create(
            model=model, input=texts, encoding_format="float"
        )
    except (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError) as exc:
        raise MemoryError(f"embeddings API: {type(exc).__name__}: {exc}", retryable=True) from exc
    except openai.APIStatusError as exc:
        raise MemoryError(
            f"embeddings API: HTTP {exc.status_code}: {exc.message}",
            retryable=exc.status_code >= 500,
        ) from exc
    data = sorted(response.data, key=lambda d: d.index)
    if len(data) != len(texts):
        raise MemoryError(
            f"embeddings API returned {len(data)} vectors for {len(texts)} texts", retryable=True
        )
    return [list(d.embedding) for d in data]
