"""A task's planner state as a pure fold over its history events.

The fold is a union of recorded facts in which the first event for a (step, kind) wins: the
acceptance, one decision per step, one outcome per tool call, one terminal. Folding a
duplicate, or a second decision for a step that already has one, changes nothing, and since a
valid history holds no two different events for one (step, kind), any order and any number of
redeliveries of it fold to the same state. So a redelivered record is harmless and replaying
the history rebuilds exactly the state the planner had.

What the planner trusts is decided before folding, by the handlers (``trust``): the fold
records, it does not judge.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from stepbus_contracts import (
    JournalEvent,
    LlmDecided,
    LlmDecidedData,
    MemoryRecalled,
    MemoryRecalledData,
    TaskAccepted,
    TaskAcceptedData,
    TokenUsage,
    ToolCallCompleted,
    ToolCallCompletedData,
    ToolCallFailed,
    ToolCallFailedData,
)

__all__ = ["HistoryEventT", "TaskState", "fold"]

HistoryEventT = JournalEvent


class TaskState(BaseModel):
    """Everything the planner knows about one task."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    tenant: str
    task: TaskAcceptedData | None = None
    submitted_id: str | None = Field(
        default=None,
        description="Set when the planner accepts the submission, before `task.accepted` is "
        "read back, so an early cancellation or a duplicate submission is recognised.",
    )
    recall: MemoryRecalledData | None = Field(
        default=None, description="The memory recalled before step 0 (tasks with memory)."
    )
    decisions: dict[int, LlmDecidedData] = Field(default_factory=dict)
    outcomes: dict[str, ToolCallCompletedData | ToolCallFailedData] = Field(default_factory=dict)
    terminal: str | None = Field(default=None, description="Type of the terminal event, if any.")

    @property
    def ended(self) -> bool:
        """True once a terminal event is recorded."""
        return self.terminal is not None

    @property
    def awaiting_recall(self) -> bool:
        """True while a task with memory waits for its recall before step 0."""
        return (
            self.task is not None
            and self.task.memory
            and self.recall is None
            and not self.decisions
            and not self.ended
        )

    @property
    def step(self) -> int:
        """The latest step with a decision (-1 before the first)."""
        return max(self.decisions, default=-1)

    @property
    def usage(self) -> TokenUsage:
        """Tokens used by all recorded decisions."""
        total = TokenUsage()
        for decision in self.decisions.values():
            total = total + decision.usage
        return total

    def outcome(
        self, step: int, call_index: int
    ) -> ToolCallCompletedData | ToolCallFailedData | None:
        """The recorded outcome of one tool call."""
        return self.outcomes.get(f"{step}:{call_index}")

    def step_complete(self, step: int) -> bool:
        """True when every tool call of ``step`` has an outcome."""
        decision = self.decisions.get(step)
        return decision is not None and all(
            self.outcome(step, call.call_index) is not None for call in decision.tool_calls
        )


def fold(state: TaskState, event: HistoryEventT) -> tuple[TaskState, bool]:
    """Apply one history event; returns the new state and whether anything changed."""
    if isinstance(event, TaskAccepted):
        if state.task is not None:
            return state, False
        return state.model_copy(update={"task": event.data}), True
    if isinstance(event, MemoryRecalled):
        if state.recall is not None:
            return state, False
        return state.model_copy(update={"recall": event.data}), True
    if isinstance(event, LlmDecided):
        if event.data.step in state.decisions:
            return state, False
        return state.model_copy(
            update={"decisions": {**state.decisions, event.data.step: event.data}}
        ), True
    if isinstance(event, ToolCallCompleted | ToolCallFailed):
        key = f"{event.data.step}:{event.data.call_index}"
        if key in state.outcomes:
            return state, False
        return state.model_copy(update={"outcomes": {**state.outcomes, key: event.data}}), True
    if state.terminal is not None:
        return state, False
    return state.model_copy(update={"terminal": event.type}), True
