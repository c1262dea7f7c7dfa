"""The planner's journal: events on ``planner.history`` that record each ReAct decision.

Folding a task's history rebuilds the planner's state for it exactly; a decision recorded
here is never asked of the LLM again.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .envelope import CloudEvent, EventData, Timestamp
from .limits import (
    MAX_DURATION_MS,
    MAX_EVENT_ID_LENGTH,
    MAX_INPUT_LENGTH,
    MAX_ITERATIONS,
    MAX_MODEL_NAME_LENGTH,
    MAX_ROLES,
    MAX_TOOLS,
)
from .tasks import CriticPolicy, ForkOrigin, Metadata, Role, SessionId, TokenBudget, ToolName

__all__ = [
    "TRACE_ID_PATTERN",
    "LlmDecided",
    "LlmDecidedData",
    "PlannedToolCall",
    "TaskAccepted",
    "TaskAcceptedData",
    "TaskTrace",
    "TokenUsage",
]

TRACE_ID_PATTERN = r"^[0-9a-f]{32}$"
SPAN_ID_PATTERN = r"^[0-9a-f]{16}$"


class TaskTrace(EventData):
    """The task's OpenTelemetry trace: every span of the task belongs to it.

    The root span (``invoke_agent stepbus``) is recorded by the planner when the task ends,
    with these ids, from ``started_at``; every step's spans are its children.
    """

    trace_id: str = Field(pattern=TRACE_ID_PATTERN, description="W3C trace id, 32 hex digits.")
    span_id: str = Field(
        pattern=SPAN_ID_PATTERN, description="Id of the task's root span, 16 hex digits."
    )
    parent_span_id: str | None = Field(
        default=None,
        pattern=SPAN_ID_PATTERN,
        description="The upstream span the task continues (from the submission's "
        "`traceparent`); null when the task started the trace.",
    )
    sampled: bool = Field(default=True, description="Whether the trace is recorded.")
    started_at: Timestamp = Field(description="When the task entered stepbus.")
    origin_trace_id: str | None = Field(
        default=None,
        pattern=TRACE_ID_PATTERN,
        description="A replayed or shadow run's own trace links to the original task's: its "
        "trace id (null for production tasks).",
    )
    origin_span_id: str | None = Field(
        default=None,
        pattern=SPAN_ID_PATTERN,
        description="The original task's root span (with `origin_trace_id`).",
    )


class TokenUsage(EventData):
    """Tokens an LLM call (or a whole task) consumed."""

    prompt_tokens: int = Field(default=0, ge=0, description="Tokens sent to the model.")
    completion_tokens: int = Field(default=0, ge=0, description="Tokens the model produced.")

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
        )


class TaskAcceptedData(EventData):
    """The task as the planner will run it: everything replay needs, resolved once.

    Bounded like a submission, so a forged acceptance cannot ask for more than a submission
    may.
    """

    input: str = Field(min_length=1, max_length=MAX_INPUT_LENGTH, description="The user's request.")
    session_id: SessionId | None = Field(
        default=None, description="Conversation the task belongs to."
    )
    user_id: SessionId | None = Field(
        default=None, description="The end user the task acts for (scopes long-term memory)."
    )
    memory: bool = Field(
        default=False,
        description="Whether the planner recalls memory before the first step (and waits for "
        "`stepbus.memory.recalled`).",
    )
    critic: CriticPolicy | None = Field(
        default=None,
        description="How the final answer is judged, resolved from the task and the "
        "deployment; null: not judged.",
    )
    roles: list[Role] = Field(
        default_factory=list, max_length=MAX_ROLES, description="Roles from the submission."
    )
    tools: list[ToolName] = Field(
        max_length=MAX_TOOLS,
        description=f"Tools offered to the model (resolved, never null; at most {MAX_TOOLS}).",
    )
    max_iterations: int = Field(
        ge=1, le=MAX_ITERATIONS, description="Most LLM steps before the task fails."
    )
    deadline_at: Timestamp = Field(description="Past this instant the task fails.")
    token_budget: TokenBudget | None = Field(
        default=None, description="Most tokens for the whole task."
    )
    metadata: Metadata = Field(default_factory=dict, description="Labels from submission.")
    submitted_id: str = Field(
        min_length=1,
        max_length=MAX_EVENT_ID_LENGTH,
        description="Id of the `stepbus.task.submitted` event.",
    )
    model: str = Field(
        min_length=1,
        max_length=MAX_MODEL_NAME_LENGTH,
        description="The LLM the planner uses for this task.",
    )
    trace: TaskTrace | None = Field(
        default=None, description="The task's trace (null from planners without tracing)."
    )
    fork: ForkOrigin | None = Field(
        default=None,
        description="Set on a forked task: the original and the step it continues from (the "
        "journal events before that step that follow this acceptance are copies).",
    )


class TaskAccepted(CloudEvent):
    """The planner took the task; the first record of every task's history."""

    type: Literal["stepbus.task.accepted"] = "stepbus.task.accepted"
    data: TaskAcceptedData = Field(description="The resolved task.")


class PlannedToolCall(EventData):
    """One tool call the model asked for in a step."""

    call_index: int = Field(ge=0, description="Position of the call within its step.")
    name: str = Field(description="Tool name.")
    arguments: dict[str, Any] = Field(
        default_factory=dict, description="Arguments the model gave, decoded from JSON."
    )
    arguments_error: str | None = Field(
        default=None, description="Set when the model's arguments were not a JSON object."
    )
    llm_call_id: str = Field(
        description="The model's own tool_call_id: used only to pair the answer in the "
        "conversation, never as an idempotency key."
    )
    review: bool = Field(
        default=False,
        description="The tool was marked for review when the call was decided: the critic "
        "approves or rejects it before it runs.",
    )


class LlmDecidedData(EventData):
    """What the model answered at one step: a thought, tool calls, or the final answer."""

    step: int = Field(ge=0, description="ReAct step, 0-based.")
    content: str | None = Field(default=None, description="Text the model produced, if any.")
    tool_calls: list[PlannedToolCall] = Field(
        default_factory=list, description="Tool calls to run; empty means a final answer."
    )
    usage: TokenUsage = Field(default_factory=TokenUsage, description="Tokens of this call.")
    model: str = Field(description="Model that answered.")
    finish_reason: str | None = Field(default=None, description="As the model reported it.")
    duration_ms: float = Field(
        default=0.0, ge=0, le=MAX_DURATION_MS, description="Wall time of the LLM call."
    )


class LlmDecided(CloudEvent):
    """A recorded LLM decision. Written before any tool call it asks for is dispatched."""

    type: Literal["stepbus.llm.decided"] = "stepbus.llm.decided"
    data: LlmDecidedData = Field(description="The decision.")
