"""Tool calls: commands on ``tool.calls`` and their outcomes on ``planner.history``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .envelope import CloudEvent, EventData
from .limits import MAX_DEADLINE_SECONDS, MAX_DURATION_MS

__all__ = [
    "ToolCallCompleted",
    "ToolCallCompletedData",
    "ToolCallFailed",
    "ToolCallFailedData",
    "ToolCallRequested",
    "ToolCallRequestedData",
    "ToolRegistered",
    "ToolRegisteredData",
    "idempotency_key",
]


def idempotency_key(task_id: str, step: int, call_index: int) -> str:
    """The key a tool call's effect is recorded under: ``task_id:step:call_index``.

    Derived from the task's own position, never from the LLM's tool_call_id, so a replayed
    or re-decided step maps to the same key.
    """
    return f"{task_id}:{step}:{call_index}"


class _ToolCallRef(EventData):
    step: int = Field(ge=0, description="ReAct step that asked for the call.")
    call_index: int = Field(ge=0, description="Position of the call within its step.")
    name: str = Field(description="Tool name.")
    idempotency_key: str = Field(description="`task_id:step:call_index`; handed to the tool.")


class ToolCallRequestedData(_ToolCallRef):
    """Run one tool."""

    arguments: dict[str, Any] = Field(default_factory=dict, description="Tool arguments.")
    timeout_seconds: float = Field(
        default=30.0, gt=0, le=MAX_DEADLINE_SECONDS, description="Per-attempt time limit."
    )
    session_id: str | None = Field(
        default=None, max_length=256, description="The task's session (for tools that remember)."
    )
    user_id: str | None = Field(
        default=None, max_length=256, description="The task's user (for tools that remember)."
    )


class ToolCallRequested(CloudEvent):
    """A command to the tool-executor to run one tool call."""

    type: Literal["stepbus.tool.call_requested"] = "stepbus.tool.call_requested"
    data: ToolCallRequestedData = Field(description="The call.")


class ToolCallCompletedData(_ToolCallRef):
    """The observation a tool returned."""

    output: str = Field(description="The tool's result, as text shown to the model.")
    duration_ms: float = Field(
        default=0.0, ge=0, le=MAX_DURATION_MS, description="Wall time of the tool run."
    )
    replayed: bool = Field(
        default=False, description="True when the result came from the ledger, not a new run."
    )


class ToolCallCompleted(CloudEvent):
    """A tool call succeeded."""

    type: Literal["stepbus.tool.call_completed"] = "stepbus.tool.call_completed"
    data: ToolCallCompletedData = Field(description="The outcome.")


class ToolCallFailedData(_ToolCallRef):
    """Why a tool call failed; shown to the model so it can recover or give up."""

    error: str = Field(description="What went wrong, phrased for the model.")
    error_type: str = Field(
        default="tool_error",
        description="`invalid_arguments`, `unknown_tool`, `denied`, `timeout`, `unavailable` or "
        "`tool_error`.",
    )
    attempts: int = Field(default=1, ge=1, description="How many times the call was tried.")


class ToolCallFailed(CloudEvent):
    """A tool call failed for good (after its retries)."""

    type: Literal["stepbus.tool.call_failed"] = "stepbus.tool.call_failed"
    data: ToolCallFailedData = Field(description="The failure.")


class ToolRegisteredData(EventData):
    """A tool the executor can run, described for the model (OpenAI function-tool shape)."""

    name: str = Field(description="Tool name, unique in the deployment.")
    description: str = Field(description="What the tool does, shown to the model.")
    parameters: dict[str, Any] = Field(description="JSON Schema of the arguments object.")
    source: str = Field(default="builtin", description="`builtin` or `mcp:<server>`.")
    review: bool = Field(
        default=False,
        description="Calls to this tool are approved or rejected by the critic before they run "
        "(set by the operator).",
    )


class ToolRegistered(CloudEvent):
    """The tool catalog entry named by ``subject`` (compacted topic, key = tool name)."""

    type: Literal["stepbus.tool.registered"] = "stepbus.tool.registered"
    data: ToolRegisteredData = Field(description="The tool.")
