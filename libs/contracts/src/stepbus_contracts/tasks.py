"""Public input events, published by upstream systems to the ``tasks`` topic."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .envelope import CloudEvent, EventData
from .limits import (
    MAX_DEADLINE_SECONDS,
    MAX_INPUT_LENGTH,
    MAX_ITERATIONS,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY_LENGTH,
    MAX_METADATA_VALUE_LENGTH,
    MAX_ROLES,
    MAX_SESSION_ID_LENGTH,
    MAX_TASK_ID_LENGTH,
    MAX_TOKEN_BUDGET,
    MAX_TOOLS,
    ROLE_PATTERN,
    TASK_ID_PATTERN,
    TOOL_NAME_PATTERN,
)

__all__ = [
    "MAX_REVISIONS",
    "CriticPolicy",
    "ForkOrigin",
    "Metadata",
    "Role",
    "Score",
    "SessionId",
    "TaskCancelRequested",
    "TaskCancelRequestedData",
    "TaskSubmitted",
    "TaskSubmittedData",
    "TokenBudget",
    "ToolName",
]

MAX_REVISIONS = 10
"""Most revisions a task may ask for."""

Score = Annotated[float, Field(ge=0.0, le=1.0)]
"""A judgement between 0 (worst) and 1 (best)."""

ToolName = Annotated[str, Field(pattern=TOOL_NAME_PATTERN)]
"""A tool name a task may name (``TOOL_NAME_PATTERN``)."""

Role = Annotated[str, Field(pattern=ROLE_PATTERN)]
"""A role a task carries, for the tool policy (``ROLE_PATTERN``)."""

SessionId = Annotated[str, Field(min_length=1, max_length=MAX_SESSION_ID_LENGTH)]
"""A conversation id."""

TokenBudget = Annotated[int, Field(ge=1, le=MAX_TOKEN_BUDGET)]
"""Most LLM tokens a task may use."""

Metadata = Annotated[
    dict[
        Annotated[str, Field(min_length=1, max_length=MAX_METADATA_KEY_LENGTH)],
        Annotated[str, Field(max_length=MAX_METADATA_VALUE_LENGTH)],
    ],
    Field(max_length=MAX_METADATA_ENTRIES),
]
"""Opaque string labels of a task: a few short names with bounded values."""


class CriticPolicy(EventData):
    """How a task is judged (``critic`` of ``stepbus.task.submitted``; every field optional)."""

    enabled: bool = Field(
        default=True,
        description="Judge the task's final answer (the deployment's switch can still turn "
        "the critic off for every task).",
    )
    threshold: Score = Field(
        default=0.7, description="Below this score a draft goes back to the model for revision."
    )
    max_revisions: int = Field(
        default=2,
        ge=0,
        le=MAX_REVISIONS,
        description="Most revisions; then the best-scoring draft is the answer.",
    )


class ForkOrigin(EventData):
    """Where a forked task comes from: a recorded task of the same tenant and the step it
    continues from. The planner copies the original's history before ``step`` from its own
    journal (never from the submission) and asks the model for ``step`` afresh."""

    task_id: str = Field(
        min_length=1,
        max_length=MAX_TASK_ID_LENGTH,
        pattern=TASK_ID_PATTERN,
        description="The original task (same tenant).",
    )
    step: int = Field(
        ge=0,
        le=MAX_ITERATIONS + MAX_REVISIONS,
        description="Steps before this one are copied (recall, decisions, tool outcomes, "
        "holds, approvals, critiques); the model decides this one live. At most the "
        "original's last step.",
    )
    input: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_INPUT_LENGTH,
        description="A new user turn the model reads at `step`, after the copied steps; null: "
        "the conversation goes on as recorded.",
    )


class TaskSubmittedData(EventData):
    """What the agent should do and the bounds it must respect."""

    input: str = Field(
        min_length=1,
        max_length=MAX_INPUT_LENGTH,
        description=f"The user's request, in natural language (at most {MAX_INPUT_LENGTH:,} "
        "characters).",
    )
    session_id: SessionId | None = Field(
        default=None,
        description="Conversation the task belongs to; tasks of one session share memory.",
    )
    user_id: SessionId | None = Field(
        default=None,
        description="The end user the task acts for; when given, long-term memory is scoped to "
        "tenant + user.",
    )
    roles: list[Role] = Field(
        default_factory=list,
        max_length=MAX_ROLES,
        description=f"Roles the task acts with (at most {MAX_ROLES}): the subject of the tool "
        "policy's rules. The gateway sets them from the caller's API key.",
    )
    tools: list[ToolName] | None = Field(
        default=None,
        max_length=MAX_TOOLS,
        description=f"Names of the tools the agent may use (at most {MAX_TOOLS}, each "
        "`^[A-Za-z0-9_-]{1,64}$`); null means every registered tool.",
    )
    max_iterations: int = Field(
        default=8,
        ge=1,
        le=MAX_ITERATIONS,
        description="Most LLM steps (thought → action) before the task fails.",
    )
    deadline_seconds: float = Field(
        default=300.0,
        gt=0,
        le=MAX_DEADLINE_SECONDS,
        description="Wall-clock budget from acceptance; past it the task fails.",
    )
    token_budget: TokenBudget | None = Field(
        default=None,
        description="Most LLM tokens (prompt + completion, all steps) before the task fails.",
    )
    critic: CriticPolicy | None = Field(
        default=None,
        description="How the critic judges the final answer (`enabled`, `threshold`, "
        "`max_revisions`); null: the deployment's defaults.",
    )
    metadata: Metadata = Field(
        default_factory=dict,
        description=f"Opaque labels carried to the result unchanged: at most "
        f"{MAX_METADATA_ENTRIES}, names of 1-{MAX_METADATA_KEY_LENGTH} characters, values of at "
        f"most {MAX_METADATA_VALUE_LENGTH}.",
    )
    fork: ForkOrigin | None = Field(
        default=None,
        description="Fork a recorded task of the same tenant: its history before `fork.step` "
        "is copied and the task continues live from there. A fork runs the original's task "
        "(input, tools, bounds, memory and critic, whatever this submission says of them); "
        "the submission gives its deadline, labels and roles.",
    )


class TaskSubmitted(CloudEvent):
    """An upstream system asks stepbus to run an agent task. ``subject`` is the task id."""

    type: Literal["stepbus.task.submitted"] = "stepbus.task.submitted"
    data: TaskSubmittedData = Field(description="The task.")


class TaskCancelRequestedData(EventData):
    """Why the task should stop."""

    reason: str = Field(default="", max_length=2_000, description="Free text, for the audit trail.")


class TaskCancelRequested(CloudEvent):
    """Stop the task named by ``subject``; it ends with one ``stepbus.task.cancelled``."""

    type: Literal["stepbus.task.cancel_requested"] = "stepbus.task.cancel_requested"
    data: TaskCancelRequestedData = Field(
        default_factory=TaskCancelRequestedData, description="The request."
    )
