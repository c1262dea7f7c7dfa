"""The critic: a judge in the loop, asked by the planner on ``critic.requests``.

Two kinds of critique: an ``answer`` (a final draft, scored on a rubric; below the task's
threshold it goes back to the model with the feedback) and a ``tool_call`` (a call to a tool
marked for review, approved or rejected before it runs). Verdicts are recorded on the task's
journal (``planner.history``): a replay reads them and never asks again.

The judge model's reply is the documented contract for anyone who brings their own judge
model or prompt (``CriticReply``, ``ToolReviewReply``); extra keys are ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from .envelope import CloudEvent, EventData, Timestamp
from .limits import MAX_DURATION_MS, MAX_INPUT_LENGTH, MAX_MODEL_NAME_LENGTH
from .planning import TokenUsage
from .tasks import MAX_REVISIONS, CriticPolicy, Score

__all__ = [
    "MAX_DRAFT_LENGTH",
    "MAX_FEEDBACK_LENGTH",
    "CriticPolicy",
    "CriticReply",
    "CriticRound",
    "CriticSummary",
    "CritiqueCompleted",
    "CritiqueCompletedData",
    "CritiqueFailed",
    "CritiqueFailedData",
    "CritiqueFailure",
    "CritiqueKind",
    "CritiqueRequested",
    "CritiqueRequestedData",
    "Score",
    "ToolReviewReply",
]

MAX_DRAFT_LENGTH = 100_000
"""Characters of a draft answer sent to the critic."""

MAX_FEEDBACK_LENGTH = 4_000
"""Characters of the critic's feedback kept (a longer one is cut)."""

CritiqueKind = Literal["answer", "tool_call"]
"""``answer``: a final draft is scored; ``tool_call``: a call to a reviewed tool is approved or
rejected before it runs."""

CritiqueFailure = Literal["invalid_reply", "model_error", "timed_out"]
"""Why a critique has no verdict: the judge's reply was not valid twice (``invalid_reply``),
the judge model could not be reached (``model_error``), or no verdict came within the
planner's critique timeout (``timed_out``, recorded by the planner)."""


class CritiqueRequestedData(EventData):
    """What the critic judges: a draft answer, or a tool call before it runs."""

    kind: CritiqueKind = Field(description="`answer` or `tool_call`.")
    step: int = Field(ge=0, description="The ReAct step of the draft or of the call.")
    call_index: int | None = Field(
        default=None, ge=0, description="Position of the call in its step (`tool_call` only)."
    )
    round: int = Field(
        default=0, ge=0, le=MAX_REVISIONS, description="Revision round of a draft (0: first)."
    )
    input: str = Field(
        min_length=1, max_length=MAX_INPUT_LENGTH, description="The task's input (what was asked)."
    )
    draft: str | None = Field(
        default=None, max_length=MAX_DRAFT_LENGTH, description="The draft answer (`answer`)."
    )
    observations: list[Annotated[str, Field(max_length=4_000)]] = Field(
        default_factory=list,
        max_length=64,
        description="The tool results the draft rests on, as the model saw them.",
    )
    tool: str | None = Field(default=None, max_length=128, description="Tool name (`tool_call`).")
    tool_description: str | None = Field(
        default=None, max_length=4_000, description="What the tool does (`tool_call`)."
    )
    arguments: dict[str, Any] | None = Field(
        default=None, description="The call's arguments (`tool_call`)."
    )
    answer_by: Timestamp | None = Field(
        default=None,
        description="After this instant nobody waits for the verdict (the planner recorded a "
        "timeout): the critic skips the request instead of judging late.",
    )


class CritiqueRequested(CloudEvent):
    """The planner asks the critic to judge (on ``critic.requests``; ``subject``: the task)."""

    type: Literal["stepbus.critique.requested"] = "stepbus.critique.requested"
    data: CritiqueRequestedData = Field(description="The request.")


class _CritiqueRef(EventData):
    kind: CritiqueKind = Field(description="`answer` or `tool_call`.")
    step: int = Field(ge=0, description="The step of the judged draft or call.")
    call_index: int | None = Field(
        default=None, ge=0, description="Position of the reviewed call (`tool_call` only)."
    )
    model: str | None = Field(
        default=None, max_length=MAX_MODEL_NAME_LENGTH, description="The judge model."
    )
    usage: TokenUsage = Field(default_factory=TokenUsage, description="Tokens the judge used.")
    attempts: int = Field(default=1, ge=0, le=10, description="Judge calls made (a retry: 2).")
    duration_ms: float = Field(
        default=0.0, ge=0, le=MAX_DURATION_MS, description="Wall time of the critique."
    )


class CritiqueCompletedData(_CritiqueRef):
    """The critic's verdict."""

    score: Score | None = Field(
        default=None, description="Overall score of a draft (`answer`), 0 to 1."
    )
    relevance: Score | None = Field(default=None, description="Does it answer what was asked.")
    completeness: Score | None = Field(default=None, description="Does it answer all of it.")
    groundedness: Score | None = Field(
        default=None, description="Is every claim supported by the observations or the input."
    )
    approved: bool | None = Field(
        default=None, description="Whether a reviewed tool call may run (`tool_call`)."
    )
    feedback: str = Field(
        default="",
        max_length=MAX_FEEDBACK_LENGTH,
        description="What is wrong and how to fix it (a draft), or why a call was rejected.",
    )


class CritiqueCompleted(CloudEvent):
    """A verdict, recorded on the task's journal (``planner.history``)."""

    type: Literal["stepbus.critique.completed"] = "stepbus.critique.completed"
    data: CritiqueCompletedData = Field(description="The verdict.")


class CritiqueFailedData(_CritiqueRef):
    """Why there is no verdict. A draft is then the answer, marked unjudged; a reviewed call
    does not run (the gate fails closed)."""

    reason: CritiqueFailure = Field(description="`invalid_reply`, `model_error` or `timed_out`.")
    message: str = Field(default="", max_length=2_000, description="What went wrong.")


class CritiqueFailed(CloudEvent):
    """A critique without a verdict, recorded on the task's journal."""

    type: Literal["stepbus.critique.failed"] = "stepbus.critique.failed"
    data: CritiqueFailedData = Field(description="The failure.")


class CriticRound(EventData):
    """One judged draft of a task."""

    step: int = Field(ge=0, description="The step of the draft.")
    score: Score | None = Field(default=None, description="Its score; null when unjudged.")
    feedback: str = Field(
        default="", max_length=MAX_FEEDBACK_LENGTH, description="The critic's feedback."
    )


class CriticSummary(EventData):
    """What the critic made of a task (``data.critic`` of ``stepbus.task.completed``)."""

    judged: bool = Field(description="False when the answer's critique failed (unjudged).")
    score: Score | None = Field(description="The score of the answer given; null when unjudged.")
    revisions: int = Field(ge=0, le=MAX_REVISIONS, description="Drafts sent back for revision.")
    rounds: list[CriticRound] = Field(
        default_factory=list, max_length=MAX_REVISIONS + 1, description="Each draft's score."
    )


class CriticReply(EventData):
    """What a judge model must reply for a draft, as a JSON object (extra keys ignored).

    ``{"score": 0-1, "relevance": 0-1, "completeness": 0-1, "groundedness": 0-1,
    "feedback": "..."}``
    """

    score: Score = Field(description="Overall, 0 to 1.")
    relevance: Score = Field(description="Does the answer address what was asked.")
    completeness: Score = Field(description="Does it answer every part.")
    groundedness: Score = Field(
        description="Is every claim supported by the tool observations or the input."
    )
    feedback: str = Field(description="What to fix; empty when nothing.")


class ToolReviewReply(EventData):
    """What a judge model must reply for a tool call, as a JSON object (extra keys ignored).

    ``{"approved": true|false, "reason": "..."}``
    """

    approved: bool = Field(description="Whether the call may run.")
    reason: str = Field(description="Why (shown to the agent's model when rejected).")
