"""Public output on the ``results`` topic: progress, and exactly one terminal event per task."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .envelope import CloudEvent, EventData
from .planning import TokenUsage
from .tasks import Metadata

__all__ = [
    "FailureReason",
    "TaskCancelled",
    "TaskCancelledData",
    "TaskCompleted",
    "TaskCompletedData",
    "TaskFailed",
    "TaskFailedData",
    "TaskProgress",
    "TaskProgressData",
]

FailureReason = Literal[
    "max_iterations",
    "deadline",
    "token_budget",
    "llm_error",
    "invalid_task",
    "task_id_conflict",
    "internal",
]
"""Why a task failed; see ``TaskFailedData.reason``. New reasons are added, never renamed."""


class TaskProgressData(EventData):
    """One visible step of a running task."""

    step: int = Field(ge=0, description="ReAct step the progress belongs to.")
    stage: Literal["accepted", "thought", "action", "observation"] = Field(
        description="`accepted`, `thought` (model text), `action` (tool call), "
        "`observation` (tool result)."
    )
    message: str = Field(description="Human-readable summary.")
    tool: str | None = Field(default=None, description="Tool name for action/observation.")


class TaskProgress(CloudEvent):
    """Progress of a running task, for consumers and the gateway's SSE stream."""

    type: Literal["stepbus.task.progress"] = "stepbus.task.progress"
    data: TaskProgressData = Field(description="The progress.")


class TaskCompletedData(EventData):
    """The agent's final answer."""

    output: str = Field(description="The final answer.")
    steps: int = Field(ge=0, description="LLM steps the task took.")
    usage: TokenUsage = Field(default_factory=TokenUsage, description="Tokens of all steps.")
    metadata: Metadata = Field(default_factory=dict, description="Labels from submission.")


class TaskCompleted(CloudEvent):
    """Terminal: the task finished with an answer."""

    type: Literal["stepbus.task.completed"] = "stepbus.task.completed"
    data: TaskCompletedData = Field(description="The result.")


class TaskFailedData(EventData):
    """Why the task ended without an answer."""

    reason: FailureReason = Field(
        description="Machine-readable cause: `max_iterations` (no final answer within the "
        "task's steps), `deadline` (its wall-clock budget ran out), `token_budget` (its token "
        "budget ran out), `llm_error` (the model could not be reached or answered nonsense), "
        "`invalid_task` (e.g. unknown tools), `task_id_conflict` (the task id is held by "
        "another tenant: submit with another task id), `internal` (a stepbus fault)."
    )
    message: str = Field(description="Human-readable explanation.")
    steps: int = Field(default=0, ge=0, description="LLM steps taken before failing.")
    usage: TokenUsage = Field(default_factory=TokenUsage, description="Tokens consumed.")
    metadata: Metadata = Field(default_factory=dict, description="Labels from submission.")


class TaskFailed(CloudEvent):
    """Terminal: the task failed (budget exceeded, LLM unavailable, invalid task, ...)."""

    type: Literal["stepbus.task.failed"] = "stepbus.task.failed"
    data: TaskFailedData = Field(description="The failure.")


class TaskCancelledData(EventData):
    """Why the task was cancelled."""

    reason: str = Field(default="", description="The reason given with the cancel request.")
    steps: int = Field(default=0, ge=0, description="LLM steps taken before cancellation.")


class TaskCancelled(CloudEvent):
    """Terminal: the task was cancelled on request."""

    type: Literal["stepbus.task.cancelled"] = "stepbus.task.cancelled"
    data: TaskCancelledData = Field(description="The cancellation.")
