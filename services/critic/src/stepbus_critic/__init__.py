"""stepbus critic service: an LLM judge that scores draft answers and reviews tool calls."""

from .handlers import CriticHandlers
from .ports import CriticError, InvalidReplyError, Judge, JudgeError, JudgeReply
from .settings import CriticSettings

__all__ = [
    "CriticError",
    "CriticHandlers",
    "CriticSettings",
    "InvalidReplyError",
    "Judge",
    "JudgeError",
    "JudgeReply",
]
