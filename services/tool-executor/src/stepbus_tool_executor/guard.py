"""What the executor decides for one call before it runs: the task's narrowing, the policy,
and the approval or review a held call comes back with. Pure: no Kafka, no clock of its own.

Order of the checks, first that applies wins:

1. a tool the task was not offered is denied (rule ``not-offered``): the task's ``tools``
   narrows what it may call, and a model naming another tool, or an injected instruction
   asking for one, never widens it;
2. the policy's decision (``Policy.decide``);
3. a decision that holds the call (``require_approval``, ``require_review``) is an ``allow``
   when the call carries the matching clearance: the approval of this very call (its id is
   derived from the idempotency key), or the critic's approving review.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from stepbus_contracts import PolicyDecision, ToolCallRequestedData, derive_id

from .policy import Policy, PolicyRequest
from .registry import Tool

__all__ = ["NOT_OFFERED", "Verdict", "approval_id", "narrowed", "server_of", "verdict"]

NOT_OFFERED = "not-offered"
"""The rule name of a denial for a tool the task was not offered."""


@dataclass(frozen=True)
class Verdict:
    """What happens to one call, for the handler and the audit trail."""

    decision: PolicyDecision
    rule: str
    reason: str
    approvers: tuple[str, ...] = ()
    expires_seconds: float = 3600.0
    approval_id: str | None = None
    """The approval the call waits for, or the one that cleared it."""


def approval_id(idempotency_key: str) -> str:
    """The id of the approval a held call waits for: one per call, the same on redelivery."""
    return derive_id(idempotency_key, "approval")


def server_of(tool: Tool | None) -> str | None:
    """The MCP server a tool comes from, or None for a built-in (or unknown) tool."""
    if tool is None or not tool.source.startswith("mcp:"):
        return None
    return tool.source.removeprefix("mcp:")


def narrowed(call: ToolCallRequestedData) -> Verdict | None:
    """The denial of a call to a tool the task was not offered (registered or not), or None."""
    if call.offered is None or call.name in call.offered:
        return None
    return Verdict(
        "deny",
        NOT_OFFERED,
        f"denied: tool {call.name!r} was not offered to this task; use one of the tools offered",
    )


def verdict(
    policy: Policy,
    call: ToolCallRequestedData,
    tool: Tool,
    *,
    tenant: str,
    flagged: bool,
    now: datetime,
) -> Verdict:
    """Decide ``call`` of a task of ``tenant`` to the registered ``tool``."""
    if (denied := narrowed(call)) is not None:
        return denied
    decided = policy.decide(
        PolicyRequest(
            tenant=tenant,
            roles=frozenset(call.roles),
            tool=call.name,
            server=server_of(tool),
            risk=tool.risk,
            arguments=call.arguments,
            metadata=call.metadata,
            flagged=flagged,
            now=now,
        )
    )
    if decided.effect == "allow":
        return Verdict("allow", decided.rule, decided.reason)
    if decided.effect == "deny":
        return Verdict("deny", decided.rule, decided.reason)
    clearance = call.clearance
    if decided.effect == "require_approval":
        wanted = approval_id(call.idempotency_key)
        if clearance is not None and clearance.gate == "approval":
            if clearance.approval_id == wanted:
                by = f"approved by {clearance.by or 'an approver'}"
                reason = f"{by}: {clearance.reason}" if clearance.reason else by
                return Verdict("allow", decided.rule, reason, approval_id=wanted)
        return Verdict(
            "approval_required",
            decided.rule,
            decided.reason,
            approvers=decided.approvers,
            expires_seconds=decided.expires_seconds,
            approval_id=wanted,
        )
    if clearance is not None and clearance.gate == "review":
        return Verdict("allow", decided.rule, "approved by the critic's review")
    return Verdict("review_required", decided.rule, decided.reason)
