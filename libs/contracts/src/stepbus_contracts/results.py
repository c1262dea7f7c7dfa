"""Public output on the ``results`` topic: progress, and exactly one terminal event per task."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .critic import CriticSummary
from .envelope import CloudEvent, EventData
from .limits import MAX_INPUT_LENGTH
from .planning import TokenUsage
from .tasks import Metadata, SessionId

MAX_OBSERVATIONS = 64
"""Most tool results a completed task reports."""

MAX_OBSERVATION_LENGTH = 4_000
"""Characters of one reported tool result."""

__all__ = [
    "MAX_OBSERVATIONS",
    "MAX_OBSERVATION_LENGTH",
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
    stage: Literal[
        "accepted", "memory", "thought", "action", "observation", "critique", "approval"
    ] = Field(
        description="`accepted`, `memory` (context recalled, or none), `thought` (model text), "
        "`action` (tool call), `observation` (tool result), `critique` (a draft judged or a "
        "tool call reviewed), `approval` (a call waits for approval, or its approval ended)."
    )
    message: str = Field(description="Human-readable summary.")
    tool: str | None = Field(default=None, description="Tool name for action/observation.")
    trace_id: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{32}$",
        description="On `accepted`: the task's OpenTelemetry trace id (find the trace by it).",
    )


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
    input: str | None = Field(
        default=None, max_length=MAX_INPUT_LENGTH, description="The task's input (what was asked)."
    )
    session_id: SessionId | None = Field(
        default=None, description="The session the task belongs to, if any."
    )
    user_id: SessionId | None = Field(
        default=None, description="The end user the task acted for, if any."
    )
    observations: list[Annotated[str, Field(max_length=MAX_OBSERVATION_LENGTH)]] = Field(
        default_factory=list,
        max_length=MAX_OBSERVATIONS,
        description="The tool results the model saw, in order, each cut to "
        f"{MAX_OBSERVATION_LENGTH:,} characters (at most {MAX_OBSERVATIONS}): what session "
        "memory keeps of the task's work.",
    )
    critic: CriticSummary | None = Field(
        default=None,
        description="What the critic made of the answer (final score, revisions, each "
        "round's score); null when the task was not judged.",
    )


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
