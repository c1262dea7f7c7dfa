"""What the planner needs from the outside world, as Protocols (adapters implement them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from stepbus_contracts import JournalEvent, TokenUsage

__all__ = [
    "ChatModel",
    "EventIds",
    "EventIdsUnavailable",
    "Journals",
    "ModelError",
    "ModelToolCall",
    "ModelTurn",
]


@dataclass(frozen=True)
class ModelToolCall:
    """A tool call as the model produced it (arguments still JSON text)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ModelTurn:
    """One answer of the model."""

    content: str | None
    tool_calls: list[ModelToolCall] = field(default_factory=list)
    usage: TokenUsage = field(default_factory=TokenUsage)
    finish_reason: str | None = None
    model: str = ""


class ModelError(Exception):
    """The model call failed; ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class ChatModel(Protocol):
    """An LLM with function calling."""

    model: str

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        *,
        task_id: str,
        step: int,
    ) -> ModelTurn:
        """Answer the conversation, possibly with tool calls.

        ``task_id`` and ``step`` say which decision is asked for: a live model ignores them;
        the recorded model of a replay answers with the decision recorded for them.

        Raises:
            ModelError: The call failed after the adapter's own retries.
        """
        ...


class EventIdsUnavailable(Exception):
    """The event id index cannot be reached; the caller decides whether to go on without it."""


class EventIds(Protocol):
    """Which event ids of the public input were seen, with what content (a dedupe index).

    CloudEvents ids are unique per source; consumers drop duplicates by id. An id reused for
    a different event (another task, another body) must not run: the index remembers a
    fingerprint of the first event seen under each (source, id).
    """

    async def claim(self, source: str, event_id: str, fingerprint: str) -> str | None:
        """Record ``fingerprint`` for the id unless one is recorded; return the recorded one
        when it differs (None when the id is new or seen with the same fingerprint).

        Raises:
            EventIdsUnavailable: The index cannot be reached.
        """
        ...


class Journals(Protocol):
    """Reads a recorded task's journal (what a fork copies)."""

    async def read(self, task_id: str, tenant: str) -> list[JournalEvent]:
        """The journal events of ``task_id`` of ``tenant``, in order, once each (empty when
        the tenant has no such task).

        Raises:
            Exception: The journal cannot be read now (the caller retries).
        """
        ...
