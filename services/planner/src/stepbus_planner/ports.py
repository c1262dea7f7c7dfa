"""What the planner needs from the outside world, as Protocols (adapters implement them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from stepbus_contracts import TokenUsage

__all__ = ["ChatModel", "ModelError", "ModelToolCall", "ModelTurn"]


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
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> ModelTurn:
        """Answer the conversation, possibly with tool calls.

        Raises:
            ModelError: The call failed after the adapter's own retries.
        """
        ...
