"""Tool calls: commands on ``tool.calls`` and their outcomes on ``planner.history``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .envelope import CloudEvent, EventData, Timestamp
from .limits import MAX_DEADLINE_SECONDS, MAX_DURATION_MS, MAX_ROLES, MAX_TOOLS
from .tasks import Metadata, Role, ToolName

__all__ = [
    "MAX_FLAGS",
    "Clearance",
    "Gate",
    "Risk",
    "ToolCallCompleted",
    "ToolCallCompletedData",
    "ToolCallFailed",
    "ToolCallFailedData",
    "ToolCallHeld",
    "ToolCallHeldData",
    "ToolCallRequested",
    "ToolCallRequestedData",
    "ToolRegistered",
    "ToolRegisteredData",
    "idempotency_key",
]

MAX_FLAGS = 8
"""Most prompt-injection findings recorded on one tool outcome."""

Gate = Literal["approval", "review"]
"""What a held call waits for: a person's approval, or the critic's review."""

Risk = Literal["low", "medium", "high"]
"""How much harm a tool can do: the policy's resource attribute (``risk``)."""


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


class Clearance(EventData):
    """Why a held call may now run: the approval or the review it waited for."""

    gate: Gate = Field(description="`approval` (a person approved) or `review` (the critic).")
    approval_id: str | None = Field(
        default=None, max_length=256, description="The approval granted (gate `approval`)."
    )
    by: str = Field(default="", max_length=256, description="Who approved.")
    reason: str = Field(default="", max_length=2_000, description="Why, as given.")


class ToolCallRequestedData(_ToolCallRef):
    """Run one tool, with what the tool policy decides on: the task's subject and bounds."""

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
    roles: list[Role] = Field(
        default_factory=list, max_length=MAX_ROLES, description="The task's roles (policy)."
    )
    offered: list[ToolName] | None = Field(
        default=None,
        max_length=MAX_TOOLS,
        description="The tools the task was offered: a call to any other is denied, whatever "
        "the policy says. Null: not narrowed.",
    )
    metadata: Metadata = Field(default_factory=dict, description="The task's labels (policy).")
    flagged: bool = Field(
        default=False,
        description="An earlier tool output of the task was flagged as a likely prompt "
        "injection (the policy's `flagged` condition).",
    )
    clearance: Clearance | None = Field(
        default=None,
        description="The approval or review a call held by the policy waited for; the policy "
        "is checked again with it.",
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
    source: str = Field(
        default="builtin",
        max_length=256,
        description="Where the output comes from (`builtin` or `mcp:<server>`): the model "
        "reads it as untrusted data labelled with this source.",
    )
    flags: list[str] = Field(
        default_factory=list,
        max_length=MAX_FLAGS,
        description="Likely prompt injections found in the output (`kind: excerpt`); empty "
        "when none. A flagged output never widens what the task may call.",
    )
    truncated: bool = Field(
        default=False,
        description="The output was longer than the executor's cap and was cut (the model "
        "reads a note saying so).",
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
        description="`invalid_arguments`, `unknown_tool`, `denied` (by the policy, a reviewer or "
        "an approver), `timeout`, `unavailable` or `tool_error`.",
    )
    attempts: int = Field(default=1, ge=1, description="How many times the call was tried.")


class ToolCallFailed(CloudEvent):
    """A tool call failed for good (after its retries)."""

    type: Literal["stepbus.tool.call_failed"] = "stepbus.tool.call_failed"
    data: ToolCallFailedData = Field(description="The failure.")


class ToolCallHeldData(_ToolCallRef):
    """The policy holds the call until a person approves it or the critic reviews it."""

    gate: Gate = Field(description="What the call waits for.")
    rule: str = Field(max_length=256, description="The policy rule that holds it.")
    reason: str = Field(default="", max_length=2_000, description="Why, from the rule.")
    approval_id: str | None = Field(
        default=None, max_length=256, description="The approval to decide (gate `approval`)."
    )
    approvers: list[str] = Field(
        default_factory=list, max_length=32, description="Who may approve, from the rule."
    )
    expires_at: Timestamp | None = Field(
        default=None, description="Past this instant the approval is denied (gate `approval`)."
    )


class ToolCallHeld(CloudEvent):
    """A tool call did not run: the policy holds it for an approval or a review."""

    type: Literal["stepbus.tool.call_held"] = "stepbus.tool.call_held"
    data: ToolCallHeldData = Field(description="The hold.")


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
    risk: Risk = Field(
        default="medium",
        description="`low`, `medium` or `high`: from the MCP tool's annotations (read-only: "
        "low, destructive: high) unless the policy file sets it.",
    )


class ToolRegistered(CloudEvent):
    """The tool catalog entry named by ``subject`` (compacted topic, key = tool name)."""

    type: Literal["stepbus.tool.registered"] = "stepbus.tool.registered"
    data: ToolRegisteredData = Field(description="The tool.")
