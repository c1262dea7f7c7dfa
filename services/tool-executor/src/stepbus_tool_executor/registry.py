"""The tools the executor can run, by name."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from stepbus_contracts import MAX_FACT_LENGTH

from .calculator import CalculatorError, evaluate, format_number

__all__ = [
    "CallContext",
    "Tool",
    "ToolError",
    "ToolFailedError",
    "ToolInputError",
    "ToolRegistry",
    "ToolUnavailableError",
    "builtin_registry",
]


class ToolError(Exception):
    """Root of the errors a tool raises to say how its call failed (none is retried)."""


class ToolInputError(ToolError):
    """The arguments are wrong; the model should correct them (not retryable as is)."""


class ToolUnavailableError(ToolError):
    """The tool cannot be reached now (its server is down); the model may try another way."""


class ToolFailedError(ToolError):
    """The tool ran and reported an error; retrying the same call would not help."""


class CallContext(str):
    """The idempotency key of a call (the string itself), with the task and tenant it is for.

    A ``str`` so that a tool written as ``run(arguments, idempotency_key)`` keeps working.
    ``permits(url)`` asks the policy whether the same call with ``url`` instead would be
    allowed (None) or why not: ``http_fetch`` checks every redirect with it.
    """

    task_id: str
    tenant: str
    permits: Callable[[str], str | None] | None

    def __new__(
        cls,
        idempotency_key: str,
        task_id: str = "",
        tenant: str = "",
        permits: Callable[[str], str | None] | None = None,
    ) -> CallContext:
        context = super().__new__(cls, idempotency_key)
        context.task_id = task_id
        context.tenant = tenant
        context.permits = permits
        return context

    @property
    def idempotency_key(self) -> str:
        """``task_id:step:call_index``."""
        return str(self)


@dataclass(frozen=True)
class Tool:
    """A callable tool: ``run(arguments, call) -> text``, ``call`` being its ``CallContext``."""

    name: str
    description: str
    parameters: dict[str, Any]
    run: Callable[[dict[str, Any], CallContext], Awaitable[str]]
    remembers: str | None = None
    """The argument holding a fact to keep in long-term memory: the executor asks the memory
    service to remember it (``stepbus.memory.remember_requested``) when the call succeeds."""
    source: str = "builtin"
    """``builtin`` or ``mcp:<server>`` (the catalog's ``source``)."""
    check: Callable[[dict[str, Any]], None] | None = None
    """Validates the arguments before the call is run (or logged as run); raises
    ``ToolInputError``."""
    risk: str = "medium"
    """``low``, ``medium`` or ``high``: the policy's resource attribute, in the catalog too."""
    idempotent: bool = False
    """Running the call twice does no more than once: a call that failed unexpectedly is
    retried (with backoff); any other is not, since its effect may have happened."""


@dataclass
class ToolRegistry:
    """Tools by name."""

    tools: dict[str, Tool] = field(default_factory=dict)

    def add(self, tool: Tool) -> None:
        """Register ``tool`` under its name."""
        self.tools[tool.name] = tool

    def remove(self, name: str) -> None:
        """Forget the tool called ``name``, if registered."""
        self.tools.pop(name, None)

    def get(self, name: str) -> Tool | None:
        """The tool called ``name``, if registered."""
        return self.tools.get(name)


async def _calculator(arguments: dict[str, Any], call: CallContext) -> str:
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
    risk="low",
    idempotent=True,
)


async def _remember(arguments: dict[str, Any], call: CallContext) -> str:
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
    idempotent=True,  # the memory service keeps one fact per idempotency key
)


def builtin_registry() -> ToolRegistry:
    """A registry holding the built-in tools."""
    registry = ToolRegistry()
    registry.add(CALCULATOR)
    registry.add(REMEMBER)
    return registry
