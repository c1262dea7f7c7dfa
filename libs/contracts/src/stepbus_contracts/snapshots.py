"""State snapshots: a service's folded state for one task, on a compacted topic.

Snapshots bound replay: a service restores the latest snapshot of each task it owns and
replays only the journal after it, never the whole topic. The state is the owning service's
own JSON document; ``version`` lets the service refuse a shape it does not understand.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .envelope import CloudEvent, EventData

__all__ = ["StateSnapshot", "StateSnapshotData"]


class StateSnapshotData(EventData):
    """One task's state as the owning service folded it."""

    service: str = Field(description="The service whose state this is, e.g. `planner`.")
    version: int = Field(ge=1, description="Version of the state document's shape.")
    state: dict[str, Any] = Field(description="The state document.")


class StateSnapshot(CloudEvent):
    """The latest state of the task named by ``subject`` (compacted topic, key = task id)."""

    type: Literal["stepbus.state.snapshot"] = "stepbus.state.snapshot"
    data: StateSnapshotData = Field(description="The snapshot.")
