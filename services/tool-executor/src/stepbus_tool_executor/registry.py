"""The tools the executor can run, by name."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from stepbus_contracts import MAX_FACT_LENGTH

from .calculator import CalculatorError, evaluate, format_number

__all__ = ["Tool", "ToolInputError", "ToolRegistry", "builtin_registry"]


class ToolInputError(Exception):
    """The arguments are wrong; the model should correct them (not retryable as is)."""


@dataclass(frozen=True)
class Tool:
    """A callable tool: ``run(arguments, idempotency_key) -> text``."""

    name: str
    description: str
    parameters: dict[str, Any]
    run: Callable[[dict[str, Any], str], Awaitable[str]]
    remembers: str | None = None
    """The argument holding a fact to keep in long-term memory: the executor asks the memory
    service to remember it (``stepbus.memory.remember_requested``) when the call succeeds."""


@dataclass
class ToolRegistry:
    """Tools by name."""

    tools: dict[str, Tool] = field(default_factory=dict)

    def add(self, tool: Tool) -> None:
        """Register ``tool`` under its name."""
        self.tools[tool.name] = tool

    def get(self, name: str) -> Tool | None:
        """The tool called ``name``, if registered."""
        return self.tools.get(name)


async def _calculator(arguments: dict[str, Any], idempotency_key: str) -> str:
    expression = arguments.get("expression")
    if not isinstance(expression, str) or not expression.strip():
        raise ToolInputError('calculator needs {"expression": "<arithmetic>"}')
    try:
        return format_number(evaluate(expression))
    except CalculatorError as exc:
        raise ToolInputError(str(exc)) from None


CALCULATOR = Tool(
    name="calculator",
    description="Evaluate an arithmetic expression exactly, e.g. '17 * 23' or '(2 ^ 10) / 4'.",
    parameters={
        "type": "object",
        "properties": {"expression": {"type": "string", "description": "Arithmetic to compute."}},
        "required": ["expression"],
    },
    run=_calculator,
)


async def _remember(arguments: dict[str, Any], idempotency_key: str) -> str:
    fact = arguments.get("fact")
    if not isinstance(fact, str) or not fact.strip():
        raise ToolInputError('remember needs {"fact": "<what to remember>"}')
    if len(fact) > MAX_FACT_LENGTH:
        raise ToolInputError(f"a fact is at most {MAX_FACT_LENGTH} characters; say it shorter")
    return f"Remembered: {fact.strip()}"


REMEMBER = Tool(
    name="remember",
    description="Store a fact in long-term memory so later tasks (of this tenant and user) can "
    "recall it, e.g. a preference or a decision the user stated.",
    parameters={
        "type": "object",
        "properties": {"fact": {"type": "string", "description": "The fact, self-contained."}},
        "required": ["fact"],
    },
    run=_remember,
    remembers="fact",
)


def builtin_registry() -> ToolRegistry:
    """A registry holding the built-in tools."""
    registry = ToolRegistry()
    registry.add(CALCULATOR)
    registry.add(REMEMBER)
    return registry
