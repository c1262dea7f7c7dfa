"""What the critic needs from the outside world (the judge model), and the critic's errors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from stepbus_contracts import TokenUsage

__all__ = ["CriticError", "InvalidReplyError", "Judge", "JudgeError", "JudgeReply"]


class CriticError(Exception):
    """Root of the critic's errors."""


class JudgeError(CriticError):
    """The judge model could not be asked; ``retryable`` says whether trying again may help
    (429, 5xx, timeouts, lost connections) or not (any other refusal of the request)."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class InvalidReplyError(CriticError, ValueError):
    """The judge replied, but not with the JSON object asked for; the message says what was
    wrong, in words the judge is shown when it is asked again."""


@dataclass(frozen=True)
class JudgeReply:
    """One answer of the judge model: its text (the JSON object, maybe wrapped), what it cost,
    and the model that answered."""

    text: str
    usage: TokenUsage = field(default_factory=TokenUsage)
    model: str = ""
    finish_reason: str | None = None


class Judge(Protocol):
    """An LLM asked to judge, replying with one JSON object."""

    model: str

    async def judge(
        self,
        messages: Sequence[dict[str, Any]],
        schema_name: str,
        schema: dict[str, Any],
    ) -> JudgeReply:
        """Ask the judge.

        Args:
            messages: The chat messages (``rubric.answer_messages`` or ``tool_messages``).
            schema_name: Name of the reply's schema (``critic_reply`` or ``tool_review_reply``).
            schema: Strict JSON Schema of the reply, for endpoints with structured output.

        Raises:
            JudgeError: The call failed after the adapter's own retries.
        """
        ...
