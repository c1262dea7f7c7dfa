"""Where the planner keeps each task's folded state between events."""

from __future__ import annotations

from typing import Protocol

from .state import TaskState

__all__ = ["MemoryStateStore", "StateStore"]


class StateStore(Protocol):
    """Per-task planner state."""

    async def get(self, task_id: str, tenant: str) -> TaskState:
        """The task's state (an empty state for a task never seen)."""
        ...

    async def put(self, state: TaskState) -> None:
        """Replace the task's state."""
        ...


class MemoryStateStore:
    """States in process memory (lost on restart; the history is the truth)."""

    def __init__(self) -> None:
        self._states: dict[str, TaskState] = {}

    async def get(self, task_id: str, tenant: str) -> TaskState:
        """The task's state (an empty state for a task never seen)."""
        return self._states.get(task_id) or TaskState(task_id=task_id, tenant=tenant)

    async def put(self, state: TaskState) -> None:
        """Replace the task's state."""
        self._states[state.task_id] = state
