"""Public input events, published by upstream systems to the ``tasks`` topic."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .envelope import CloudEvent, EventData

__all__ = [
    "TaskCancelRequested",
    "TaskCancelRequestedData",
    "TaskSubmitted",
    "TaskSubmittedData",
]


class TaskSubmittedData(EventData):
    """What the agent should do and the bounds it must respect."""

    input: str = Field(
        min_length=1, max_length=100_000, description="The user's request, in natural language."
    )
    session_id: str | None = Field(
        default=None,
        max_length=256,
        description="Conversation the task belongs to; tasks of one session share memory.",
    )
    tools: list[str] | None = Field(
        default=None,
        max_length=64,
        description="Names of the tools the agent may use; null means every registered tool.",
    )
    max_iterations: int = Field(
        default=8,
        ge=1,
        le=100,
        description="Most LLM steps (thought → action) before the task fails.",
    )
    deadline_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="Wall-clock budget from acceptance; past it the task fails.",
    )
    token_budget: int | None = Field(
        default=None,
        ge=1,
        description="Most LLM tokens (prompt + completion, all steps) before the task fails.",
    )
    metadata: dict[str, str] = Field(
        default_factory=dict, description="Opaque labels carried to the result unchanged."
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
