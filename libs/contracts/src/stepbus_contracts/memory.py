"""Memory: what tasks remember and recall.

Upstream systems add documents and ask to forget on ``tasks``; the planner asks the memory
service for context on ``memory.requests`` and reads the answer, a recorded step, on its
journal (``planner.history``); the tool-executor's ``remember`` tool stores facts through
``memory.requests``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from .envelope import CloudEvent, EventData, Timestamp
from .limits import MAX_INPUT_LENGTH, MAX_SESSION_ID_LENGTH

__all__ = [
    "MAX_DOCUMENT_LENGTH",
    "MAX_FACT_LENGTH",
    "MemoryDocumentAdded",
    "MemoryDocumentAddedData",
    "MemoryForgetRequested",
    "MemoryForgetRequestedData",
    "MemoryHit",
    "MemoryKind",
    "MemoryRecallRequested",
    "MemoryRecallRequestedData",
    "MemoryRecalled",
    "MemoryRecalledData",
    "MemoryRememberRequested",
    "MemoryRememberRequestedData",
    "MemoryTurn",
    "RecallStatus",
    "UserId",
]

MAX_FACT_LENGTH = 4_000
"""Longest fact the ``remember`` tool stores, in characters."""

MAX_DOCUMENT_LENGTH = 2_000_000
"""Longest document text, in characters (a big one travels by claim check)."""

_MAX_TURN_LENGTH = 20_000
_MAX_HIT_LENGTH = 20_000

UserId = Annotated[str, Field(min_length=1, max_length=MAX_SESSION_ID_LENGTH)]
"""The end user a task acts for: long-term memory is scoped to tenant + user when given."""

MemoryKind = Literal["task", "fact", "document"]
"""What a long-term memory came from: a completed task, the ``remember`` tool, a document."""

RecallStatus = Literal["recalled", "unavailable", "timed_out"]
"""``recalled``: the memory service answered; ``unavailable``: it could not read its stores;
``timed_out``: no answer came within the planner's recall timeout (recorded by the planner)."""


class MemoryTurn(EventData):
    """One turn of a session, as the model saw it."""

    role: Literal["user", "assistant", "tool"] = Field(
        description="`user` (the task's input), `assistant` (its final answer) or `tool` (a tool "
        "result as the model saw it)."
    )
    content: str = Field(max_length=_MAX_TURN_LENGTH, description="The text of the turn.")
    task_id: str = Field(max_length=256, description="The task the turn belongs to.")
    at: Timestamp = Field(description="When the task that produced the turn ended.")


class MemoryHit(EventData):
    """One long-term memory found for a query."""

    id: str = Field(max_length=64, description="The memory's id (stable: derived from its cause).")
    text: str = Field(max_length=_MAX_HIT_LENGTH, description="What is remembered.")
    score: float = Field(ge=-1.0, le=1.0, description="Cosine similarity to the query.")
    kind: MemoryKind = Field(description="`task`, `fact` or `document`.")
    source: str = Field(max_length=2048, description="Where it came from (a task, a document).")
    title: str | None = Field(default=None, max_length=1024, description="A document's title.")
    at: Timestamp = Field(description="When it was remembered.")


class MemoryRecallRequestedData(EventData):
    """What to recall for a task that is starting."""

    query: str = Field(
        min_length=1, max_length=MAX_INPUT_LENGTH, description="The text to search for."
    )
    session_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SESSION_ID_LENGTH,
        description="Session whose turns to return.",
    )
    user_id: UserId | None = Field(default=None, description="Scope of long-term memory.")
    limit: int = Field(default=5, ge=0, le=50, description="Most long-term hits to return.")
    answer_by: Timestamp | None = Field(
        default=None,
        description="After this instant nobody waits for the answer (the task went on without "
        "memory): the memory service skips the recall instead of answering late.",
    )


class MemoryRecallRequested(CloudEvent):
    """The planner asks the memory service for a task's context (on ``memory.requests``)."""

    type: Literal["stepbus.memory.recall_requested"] = "stepbus.memory.recall_requested"
    data: MemoryRecallRequestedData = Field(description="The recall.")


class MemoryRecalledData(EventData):
    """A task's recalled context: recorded on its journal, read instead of asked on replay."""

    status: RecallStatus = Field(description="`recalled`, `unavailable` or `timed_out`.")
    turns: list[MemoryTurn] = Field(
        default_factory=list,
        max_length=200,
        description="The session's recent turns, oldest first.",
    )
    hits: list[MemoryHit] = Field(
        default_factory=list, max_length=50, description="Long-term memories, best first."
    )
    embedding_model: str | None = Field(
        default=None, max_length=256, description="The model the hits were searched with."
    )
    message: str = Field(
        default="", max_length=2_000, description="Why, when nothing was recalled."
    )
    recalled_at: Timestamp | None = Field(
        default=None, description="When the recall was made: what the memories' ages count from."
    )
    duration_ms: float = Field(default=0.0, ge=0, le=86_400_000, description="Time to recall.")


class MemoryRecalled(CloudEvent):
    """The context recalled for the task named by ``subject`` (on ``planner.history``)."""

    type: Literal["stepbus.memory.recalled"] = "stepbus.memory.recalled"
    data: MemoryRecalledData = Field(description="The recall.")


class MemoryRememberRequestedData(EventData):
    """A fact to keep in long-term memory (written by the ``remember`` tool)."""

    fact: str = Field(min_length=1, max_length=MAX_FACT_LENGTH, description="The fact, as text.")
    session_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SESSION_ID_LENGTH,
        description="Session it was learnt in.",
    )
    user_id: UserId | None = Field(default=None, description="User it belongs to, if any.")
    idempotency_key: str = Field(
        max_length=600, description="The tool call that stored it (`task_id:step:call_index`)."
    )


class MemoryRememberRequested(CloudEvent):
    """Remember a fact for the tenant (and user); ``subject`` is the task that learnt it."""

    type: Literal["stepbus.memory.remember_requested"] = "stepbus.memory.remember_requested"
    data: MemoryRememberRequestedData = Field(description="The fact.")


class MemoryDocumentAddedData(EventData):
    """A document for the tenant's long-term memory, chunked and embedded by the memory service."""

    text: str = Field(
        min_length=1, max_length=MAX_DOCUMENT_LENGTH, description="The document's text."
    )
    title: str | None = Field(default=None, max_length=1024, description="Its title.")
    source: str | None = Field(
        default=None, max_length=2048, description="Where it comes from (a URL, a path, a name)."
    )
    user_id: UserId | None = Field(
        default=None, description="When given, only this user's tasks recall it."
    )


class MemoryDocumentAdded(CloudEvent):
    """Add a document (``subject``: the document id; the same id again replaces nothing)."""

    type: Literal["stepbus.memory.document_added"] = "stepbus.memory.document_added"
    data: MemoryDocumentAddedData = Field(description="The document.")


_SCOPE_NEEDS = {"session": "session_id", "user": "user_id"}
"""The field a forget scope needs, non-empty: the validator checks it and the published schema
states it (``if``/``then``), so that the schema refuses what ``decode`` refuses."""


class MemoryForgetRequestedData(EventData):
    """What to forget: a session, a user, or everything of the tenant."""

    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                {
                    "if": {"properties": {"scope": {"const": scope}}, "required": ["scope"]},
                    "then": {
                        "properties": {field: {"type": "string", "minLength": 1}},
                        "required": [field],
                    },
                }
                for scope, field in _SCOPE_NEEDS.items()
            ]
        }
    )

    scope: Literal["session", "user", "tenant"] = Field(
        description="`session` (needs `session_id`), `user` (needs `user_id`) or `tenant`."
    )
    session_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SESSION_ID_LENGTH,
        description="The session to forget.",
    )
    user_id: UserId | None = Field(default=None, description="The user to forget.")

    @model_validator(mode="after")
    def _scoped(self) -> MemoryForgetRequestedData:
        field = _SCOPE_NEEDS.get(self.scope)
        if field is not None and not getattr(self, field):
            raise ValueError(f"scope `{self.scope}` needs `{field}`")
        return self


class MemoryForgetRequested(CloudEvent):
    """Forget memories of the tenant in ``tenant`` (``subject``: the request's id)."""

    type: Literal["stepbus.memory.forget_requested"] = "stepbus.memory.forget_requested"
    data: MemoryForgetRequestedData = Field(description="The request.")
