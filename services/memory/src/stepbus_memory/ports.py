"""What the memory service needs from the outside world, as Protocols (adapters implement them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from stepbus_contracts import MemoryKind

__all__ = [
    "Embedder",
    "LongTermStore",
    "MemoryError",
    "MemoryItem",
    "Scope",
    "ScoredItem",
]


class MemoryError(Exception):
    """A memory store failed; ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class Scope:
    """Whose memories: a tenant, optionally narrowed to one user and/or one session."""

    tenant: str
    user_id: str | None = None
    session_id: str | None = None


@dataclass(frozen=True)
class MemoryItem:
    """One long-term memory: a chunk of text with where it came from.

    ``id`` is derived from the item's cause (the event that produced it and the chunk's
    index), so writing the same item twice leaves one point.
    """

    id: str
    text: str
    kind: MemoryKind
    tenant: str
    source: str
    at: datetime
    user_id: str | None = None
    session_id: str | None = None
    task_id: str | None = None
    title: str | None = None


@dataclass(frozen=True)
class ScoredItem:
    """A memory found for a query, with its cosine similarity."""

    item: MemoryItem
    score: float


class Embedder(Protocol):
    """Turns texts into unit vectors; also counts tokens the way its model does."""

    model_id: str
    dimensions: int
    max_input_tokens: int
    """Tokens of a text the model reads; the rest is not embedded."""

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit vector per text, computed off the event loop, in batches."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` has for this model's tokenizer (no special tokens)."""
        ...

    def windows(self, text: str, size: int, overlap: int) -> list[str]:
        """``text`` cut into windows of at most ``size`` tokens overlapping by ``overlap``."""
        ...


class LongTermStore(Protocol):
    """A vector store of memory items, every query filtered by scope inside the store."""

    async def upsert(self, items: Sequence[MemoryItem], vectors: Sequence[Sequence[float]]) -> None:
        """Write items (same id: replaced, never duplicated)."""
        ...

    async def search(
        self, vector: Sequence[float], scope: Scope, *, limit: int
    ) -> list[ScoredItem]:
        """The best ``limit`` items of the tenant (and user, when the scope has one): items of
        the tenant without a user, plus the user's own; ``session_id`` does not narrow it."""
        ...

    async def forget(self, scope: Scope) -> list[str]:
        """Delete every item of ``scope`` (tenant; or its user; or its session); their ids."""
        ...

    async def count(self, tenant: str) -> int:
        """Items the tenant has."""
        ...
