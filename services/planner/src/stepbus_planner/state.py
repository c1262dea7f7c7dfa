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
    ApprovalResolved,
    ApprovalResolvedData,
    CritiqueCompleted,
    CritiqueCompletedData,
    CritiqueFailed,
    CritiqueFailedData,
    CritiqueKind,
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
    ToolCallHeld,
    ToolCallHeldData,
)

__all__ = ["Critique", "HistoryEventT", "TaskState", "critique_key", "fold"]

HistoryEventT = JournalEvent

Critique = CritiqueCompletedData | CritiqueFailedData
"""A recorded critique: a verdict, or why there is none."""


def critique_key(kind: CritiqueKind, step: int, call_index: int | None = None) -> str:
    """Where a critique is recorded: ``answer:<step>`` or ``tool_call:<step>:<call_index>``."""
    return f"answer:{step}" if kind == "answer" else f"tool_call:{step}:{call_index or 0}"


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
    critiques: dict[str, Critique] = Field(
        default_factory=dict,
        description="The critic's verdicts (or failures), by `critique_key`.",
    )
    holds: dict[str, ToolCallHeldData] = Field(
        default_factory=dict,
        description="Calls the tool policy holds for an approval or a review, by `step:call`.",
    )
    approvals: dict[str, ApprovalResolvedData] = Field(
        default_factory=dict, description="How each held call's approval ended, by `step:call`."
    )
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
    def copying(self) -> bool:
        """True while a fork waits for its copied history to be read back: its recall (a task
        with memory) and every event of the steps before the fork's step."""
        task = self.task
        if task is None or task.fork is None or self.ended:
            return False
        if task.memory and self.recall is None:
            return True
        last = task.fork.step - 1
        if last < 0:
            return False
        if not self.step_complete(last):
            return True
        judged = task.critic is not None and self.is_draft(last)
        return judged and self.critique("answer", last) is None

    @property
    def step(self) -> int:
        """The latest step with a decision (-1 before the first)."""
        return max(self.decisions, default=-1)

    @property
    def usage(self) -> TokenUsage:
        """Tokens used by all recorded decisions and critiques (the judge's tokens are spent
        for the task too)."""
        total = TokenUsage()
        for decision in self.decisions.values():
            total = total + decision.usage
        for critique in self.critiques.values():
            total = total + critique.usage
        return total

    @property
    def revisions(self) -> int:
        """Drafts sent back to the model: judged answers with a later step after them."""
        last = self.step
        return sum(1 for c in self.critiques.values() if c.kind == "answer" and c.step < last)

    @property
    def step_limit(self) -> int:
        """Steps the task may take: ``max_iterations``, plus one per revision (revisions do not
        count against ``max_iterations``)."""
        return (self.task.max_iterations if self.task else 0) + self.revisions

    @property
    def revision_due(self) -> bool:
        """True when the latest step is a draft the critic scored below the task's threshold
        and revisions are left: the model is asked for the revision next."""
        policy = self.task.critic if self.task else None
        critique = self.critique("answer", self.step) if self.is_draft(self.step) else None
        return (
            policy is not None
            and isinstance(critique, CritiqueCompletedData)
            and (critique.score or 0.0) < policy.threshold
            and self.revisions < policy.max_revisions
        )

    def is_draft(self, step: int) -> bool:
        """True when the decision at ``step`` is a final answer (no tool calls)."""
        decision = self.decisions.get(step)
        return decision is not None and not decision.tool_calls

    def critique(
        self, kind: CritiqueKind, step: int, call_index: int | None = None
    ) -> Critique | None:
        """The recorded critique of a draft or of a reviewed call."""
        return self.critiques.get(critique_key(kind, step, call_index))

    @property
    def flagged(self) -> bool:
        """True once a tool output of the task was flagged as a likely prompt injection."""
        return any(
            isinstance(outcome, ToolCallCompletedData) and outcome.flags
            for outcome in self.outcomes.values()
        )

    def hold(self, step: int, call_index: int) -> ToolCallHeldData | None:
        """The policy's hold on a call, if any."""
        return self.holds.get(f"{step}:{call_index}")

    def approval(self, step: int, call_index: int) -> ApprovalResolvedData | None:
        """How the approval of a held call ended, if it did."""
        return self.approvals.get(f"{step}:{call_index}")

    def needs_review(self, step: int, call_index: int) -> bool:
        """True when the critic must approve the call before it runs: its tool was marked for
        review when decided, or the policy held it for review."""
        decision = self.decisions.get(step)
        marked = decision is not None and any(
            c.review for c in decision.tool_calls if c.call_index == call_index
        )
        hold = self.hold(step, call_index)
        return marked or (hold is not None and hold.gate == "review")

    @property
    def pending_approvals(self) -> list[ToolCallHeldData]:
        """Calls of the latest step waiting for a person's approval."""
        if self.task is None or self.ended:
            return []
        return [
            hold
            for hold in self.holds.values()
            if hold.gate == "approval"
            and hold.step == self.step
            and self.approval(hold.step, hold.call_index) is None
            and self.outcome(hold.step, hold.call_index) is None
        ]

    @property
    def pending_critiques(self) -> list[tuple[CritiqueKind, int, int | None]]:
        """Critiques the task waits for: of its latest draft (when judged), and of each
        reviewed call of its latest step that has neither a verdict nor an outcome."""
        if self.task is None or self.ended or not self.decisions:
            return []
        step = self.step
        decision = self.decisions[step]
        if not decision.tool_calls:
            judged = self.task.critic is not None
            return [("answer", step, None)] if judged and not self.critique("answer", step) else []
        return [
            ("tool_call", step, call.call_index)
            for call in decision.tool_calls
            if self.needs_review(step, call.call_index)
            and self.critique("tool_call", step, call.call_index) is None
            and self.outcome(step, call.call_index) is None
        ]

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
    if isinstance(event, CritiqueCompleted | CritiqueFailed):
        key = critique_key(event.data.kind, event.data.step, event.data.call_index)
        if key in state.critiques:
            return state, False
        return state.model_copy(update={"critiques": {**state.critiques, key: event.data}}), True
    if isinstance(event, ToolCallCompleted | ToolCallFailed):
        key = f"{event.data.step}:{event.data.call_index}"
        if key in state.outcomes:
            return state, False
        return state.model_copy(update={"outcomes": {**state.outcomes, key: event.data}}), True
    if isinstance(event, ToolCallHeld):
        key = f"{event.data.step}:{event.data.call_index}"
        if key in state.holds:
            return state, False
        return state.model_copy(update={"holds": {**state.holds, key: event.data}}), True
    if isinstance(event, ApprovalResolved):
        key = f"{event.data.step}:{event.data.call_index}"
        if key in state.approvals:
            return state, False
        return state.model_copy(update={"approvals": {**state.approvals, key: event.data}}), True
    if state.terminal is not None:
        return state, False
    return state.model_copy(update={"terminal": event.type}), True
