"""Approvals and the audit trail of tool calls.

A call the tool policy holds for a person's approval is announced on ``results``
(``stepbus.approval.requested``); any upstream system decides it on ``tasks``
(``stepbus.approval.decided``). The task waits as state on its journal, not in a process: it
survives restarts of every service and of the broker. The planner records the outcome
(``stepbus.approval.resolved``: approved, denied, or expired) on the journal, on ``results``
and on ``audit``.

``audit`` holds every policy decision of the tool-executor (``stepbus.policy.decided``),
every resolved approval, and every tool output flagged as a likely prompt injection
(``stepbus.injection.flagged``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .envelope import CloudEvent, EventData, Timestamp

__all__ = [
    "ApprovalDecided",
    "ApprovalDecidedData",
    "ApprovalOutcome",
    "ApprovalRequested",
    "ApprovalRequestedData",
    "ApprovalResolved",
    "ApprovalResolvedData",
    "InjectionFlagged",
    "InjectionFlaggedData",
    "PolicyDecided",
    "PolicyDecidedData",
    "PolicyDecision",
]

PolicyDecision = Literal["allow", "deny", "approval_required", "review_required"]
"""What the tool policy decided for one call."""

ApprovalOutcome = Literal["approved", "denied", "expired"]
"""How an approval ended: decided either way, or not decided before its expiry (denied)."""

_ApprovalId = Field(min_length=1, max_length=256, description="The approval (derived from the "
                    "call's idempotency key: one per call).")  # fmt: skip


class _CallRef(EventData):
    step: int = Field(ge=0, description="ReAct step of the call.")
    call_index: int = Field(ge=0, description="Position of the call within its step.")
    tool: str = Field(max_length=256, description="The tool the call names.")


class ApprovalRequestedData(_CallRef):
    """A tool call waiting for a person's approval."""

    approval_id: str = _ApprovalId
    arguments: dict[str, Any] = Field(default_factory=dict, description="The call's arguments.")
    approvers: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="Who may approve (roles or names, from the policy rule); enforced by the "
        "system that publishes the decision, e.g. the gateway.",
    )
    rule: str = Field(max_length=256, description="The policy rule that asks for approval.")
    reason: str = Field(default="", max_length=2_000, description="Why, from the rule.")
    expires_at: Timestamp = Field(
        description="Undecided by then, the approval is denied (never later than the task's "
        "deadline)."
    )


class ApprovalRequested(CloudEvent):
    """A call of the task named by ``subject`` waits for approval (on ``results``)."""

    type: Literal["stepbus.approval.requested"] = "stepbus.approval.requested"
    data: ApprovalRequestedData = Field(description="The approval asked for.")


class ApprovalDecidedData(EventData):
    """A person's decision on a waiting approval."""

    approval_id: str = _ApprovalId
    decision: Literal["approve", "deny"] = Field(description="`approve` or `deny`.")
    by: str = Field(min_length=1, max_length=256, description="Who decided (for the audit).")
    reason: str = Field(default="", max_length=2_000, description="Why, for the audit trail.")


class ApprovalDecided(CloudEvent):
    """Decide the approval of a call of the task named by ``subject`` (on ``tasks``).

    The first decision of an approval stands; one for an approval that is not waiting (decided,
    expired, unknown, or of another tenant) changes nothing.
    """

    type: Literal["stepbus.approval.decided"] = "stepbus.approval.decided"
    data: ApprovalDecidedData = Field(description="The decision.")


class ApprovalResolvedData(_CallRef):
    """How an approval ended, as the planner acted on it."""

    approval_id: str = _ApprovalId
    outcome: ApprovalOutcome = Field(description="`approved`, `denied` or `expired`.")
    by: str = Field(default="", max_length=256, description="Who decided (`stepbus`: expiry).")
    reason: str = Field(default="", max_length=2_000, description="Why, as given.")
    decided_id: str | None = Field(
        default=None, max_length=256, description="Id of the `approval.decided` event, if any."
    )


class ApprovalResolved(CloudEvent):
    """An approval ended (on the task's journal, on ``results`` and on ``audit``)."""

    type: Literal["stepbus.approval.resolved"] = "stepbus.approval.resolved"
    data: ApprovalResolvedData = Field(description="The outcome.")


class PolicyDecidedData(_CallRef):
    """One decision of the tool policy, for the audit trail."""

    decision: PolicyDecision = Field(
        description="`allow`, `deny`, `approval_required` or `review_required`."
    )
    rule: str = Field(max_length=256, description="The rule that decided (`default`, "
                      "`not-offered`, `no-policy`, or a rule's name).")  # fmt: skip
    reason: str = Field(default="", max_length=2_000, description="Why.")
    task_id: str = Field(max_length=256, description="The task (also the event's subject).")
    tenant: str = Field(max_length=128, description="The task's tenant.")
    roles: list[str] = Field(default_factory=list, max_length=32, description="The task's roles.")
    server: str | None = Field(default=None, max_length=256, description="The MCP server.")
    idempotency_key: str = Field(max_length=512, description="The call's idempotency key.")
    flagged: bool = Field(
        default=False, description="The task had a tool output flagged as a likely injection."
    )
    approval_id: str | None = Field(
        default=None, max_length=256, description="The approval asked for, or that cleared it."
    )


class PolicyDecided(CloudEvent):
    """The tool policy decided a call (on ``audit``)."""

    type: Literal["stepbus.policy.decided"] = "stepbus.policy.decided"
    data: PolicyDecidedData = Field(description="The decision.")


class InjectionFlaggedData(_CallRef):
    """A tool output that looks like a prompt injection."""

    source: str = Field(max_length=256, description="`builtin` or `mcp:<server>`.")
    findings: list[str] = Field(max_length=8, description="What was found (`kind: excerpt`).")
    idempotency_key: str = Field(max_length=512, description="The call's idempotency key.")


class InjectionFlagged(CloudEvent):
    """A tool output was flagged as a likely prompt injection (on ``audit``)."""

    type: Literal["stepbus.injection.flagged"] = "stepbus.injection.flagged"
    data: InjectionFlaggedData = Field(description="The finding.")
