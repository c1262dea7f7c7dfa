"""One discriminated union and one ``TypeAdapter`` per topic: what may appear where."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, TypeAdapter

from .approvals import (
    ApprovalDecided,
    ApprovalRequested,
    ApprovalResolved,
    InjectionFlagged,
    PolicyDecided,
)
from .critic import CritiqueCompleted, CritiqueFailed, CritiqueRequested
from .memory import (
    MemoryDocumentAdded,
    MemoryForgetRequested,
    MemoryRecalled,
    MemoryRecallRequested,
    MemoryRememberRequested,
)
from .planning import LlmDecided, TaskAccepted
from .results import TaskCancelled, TaskCompleted, TaskFailed, TaskProgress
from .snapshots import StateSnapshot
from .tasks import TaskCancelRequested, TaskSubmitted
from .tools import (
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallHeld,
    ToolCallRequested,
    ToolRegistered,
)

__all__ = [
    "AuditEvent",
    "AuditRecord",
    "CriticCommand",
    "HistoryEvent",
    "JournalEvent",
    "MemoryCommand",
    "ResultEvent",
    "TaskInput",
    "TaskInputEvent",
    "TerminalEvent",
    "ToolCommand",
    "audit_adapter",
    "critic_requests_adapter",
    "history_adapter",
    "memory_requests_adapter",
    "results_adapter",
    "snapshot_adapter",
    "tasks_adapter",
    "tool_calls_adapter",
    "tool_catalog_adapter",
]

TaskInput = (
    TaskSubmitted
    | TaskCancelRequested
    | ApprovalDecided
    | MemoryDocumentAdded
    | MemoryForgetRequested
)
"""Any event of ``tasks`` (a plain union, for annotations)."""

TaskInputEvent = Annotated[TaskInput, Field(discriminator="type")]
"""What upstream systems publish to ``tasks``."""

TerminalEvent = TaskCompleted | TaskFailed | TaskCancelled
"""The events that end a task; exactly one per task reaches ``results``."""

JournalEvent = (
    TaskAccepted
    | MemoryRecalled
    | LlmDecided
    | CritiqueCompleted
    | CritiqueFailed
    | ToolCallCompleted
    | ToolCallFailed
    | ToolCallHeld
    | ApprovalResolved
    | TaskCompleted
    | TaskFailed
    | TaskCancelled
)
"""Any event of ``planner.history`` (a plain union, for ``isinstance`` and annotations)."""

HistoryEvent = Annotated[JournalEvent, Field(discriminator="type")]
"""What ``planner.history`` holds: a task's journal."""

ToolCommand = Annotated[ToolCallRequested, Field(discriminator="type")]
"""What ``tool.calls`` holds."""

MemoryCommand = Annotated[
    MemoryRecallRequested | MemoryRememberRequested, Field(discriminator="type")
]
"""What ``memory.requests`` holds."""

CriticCommand = Annotated[CritiqueRequested, Field(discriminator="type")]
"""What ``critic.requests`` holds."""

ResultEvent = Annotated[
    TaskProgress
    | ApprovalRequested
    | ApprovalResolved
    | TaskCompleted
    | TaskFailed
    | TaskCancelled,
    Field(discriminator="type"),
]
"""What ``results`` holds."""

AuditRecord = PolicyDecided | ApprovalResolved | InjectionFlagged
"""Any event of ``audit`` (a plain union)."""

AuditEvent = Annotated[AuditRecord, Field(discriminator="type")]
"""What ``audit`` holds: policy decisions, resolved approvals, flagged tool outputs."""

tasks_adapter: TypeAdapter[TaskInput] = TypeAdapter(TaskInputEvent)
history_adapter: TypeAdapter[JournalEvent] = TypeAdapter(HistoryEvent)
tool_calls_adapter: TypeAdapter[ToolCallRequested] = TypeAdapter(ToolCommand)
results_adapter: TypeAdapter[
    TaskProgress | ApprovalRequested | ApprovalResolved | TaskCompleted | TaskFailed | TaskCancelled
] = TypeAdapter(ResultEvent)
audit_adapter: TypeAdapter[AuditRecord] = TypeAdapter(AuditEvent)
tool_catalog_adapter: TypeAdapter[ToolRegistered] = TypeAdapter(ToolRegistered)
memory_requests_adapter: TypeAdapter[MemoryRecallRequested | MemoryRememberRequested] = TypeAdapter(
    MemoryCommand
)
critic_requests_adapter: TypeAdapter[CritiqueRequested] = TypeAdapter(CriticCommand)
snapshot_adapter: TypeAdapter[StateSnapshot] = TypeAdapter(StateSnapshot)
