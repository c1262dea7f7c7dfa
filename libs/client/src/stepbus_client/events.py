"""Building the input events and reading the output events of the public contract.

Input events get deterministic ids: ``uuid5`` of the source, tenant, task id and what the
event asks for. Publishing the same submission twice (a retry after a timeout, a restarted
batch job) therefore yields the same CloudEvents id, and the planner drops the second copy as
a duplicate (it indexes ``(source, id)``; see ADR-21 in ``docs/architecture.md``). The flip
side: a task id is used for one task only; a second, different submission under the same
source, tenant and task id is refused as a reused id.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

from stepbus_contracts import (
    DEFAULT_SOURCE,
    DEFAULT_TENANT,
    ApprovalDecided,
    ApprovalDecidedData,
    ApprovalRequested,
    ApprovalResolved,
    CloudEvent,
    TaskCancelled,
    TaskCancelRequested,
    TaskCancelRequestedData,
    TaskCompleted,
    TaskFailed,
    TaskProgress,
    TaskSubmitted,
    TaskSubmittedData,
    derive_id,
    results_adapter,
    validate_wire,
)

__all__ = [
    "CONTENT_TYPE",
    "Result",
    "Terminal",
    "approval_decided",
    "cancel_requested",
    "decode_result",
    "encode",
    "submitted",
]

CONTENT_TYPE = "application/cloudevents+json; charset=UTF-8"
"""The ``content-type`` header of a structured-mode CloudEvents record (Kafka binding)."""

Result: TypeAlias = (
    TaskProgress | ApprovalRequested | ApprovalResolved | TaskCompleted | TaskFailed | TaskCancelled
)
"""Any event of the ``results`` topic."""

Terminal: TypeAlias = TaskCompleted | TaskFailed | TaskCancelled
"""The events that end a task: exactly one per task reaches ``results``."""


def _event_id(source: str, tenant: str, task_id: str, *parts: object) -> str:
    return derive_id(f"{source}/{tenant}/{task_id}", *parts)


def submitted(
    task_id: str,
    data: TaskSubmittedData,
    *,
    tenant: str = DEFAULT_TENANT,
    source: str = DEFAULT_SOURCE,
    event_id: str | None = None,
) -> TaskSubmitted:
    """A ``stepbus.task.submitted`` event whose id is derived from source, tenant and task id.

    Args:
        task_id: The task id (the event's ``subject`` and record key), chosen by the caller:
            letters, digits and ``. _ : @ -``.
        data: What the agent should do.
        tenant: The tenant that owns the task.
        source: URI-reference of the submitting system, e.g. ``urn:example:billing``.
        event_id: An explicit CloudEvents id instead of the derived one.

    Raises:
        pydantic.ValidationError: An attribute breaks the contract (e.g. a ``/`` in the id).
    """
    return TaskSubmitted(
        id=event_id or _event_id(source, tenant, task_id, "submitted"),
        source=source,
        subject=task_id,
        tenant=tenant,
        data=data,
    )


def cancel_requested(
    task_id: str,
    *,
    reason: str = "",
    tenant: str = DEFAULT_TENANT,
    source: str = DEFAULT_SOURCE,
) -> TaskCancelRequested:
    """A ``stepbus.task.cancel_requested`` event; the task ends with ``stepbus.task.cancelled``."""
    return TaskCancelRequested(
        id=_event_id(source, tenant, task_id, "cancel_requested"),
        source=source,
        subject=task_id,
        tenant=tenant,
        data=TaskCancelRequestedData(reason=reason),
    )


def approval_decided(
    task_id: str,
    approval_id: str,
    decision: Literal["approve", "deny"],
    *,
    by: str,
    reason: str = "",
    tenant: str = DEFAULT_TENANT,
    source: str = DEFAULT_SOURCE,
) -> ApprovalDecided:
    """A ``stepbus.approval.decided`` event for an ``ApprovalRequested`` read from results.

    One id per approval: the first decision stands, and a second one (even the opposite
    decision) is a duplicate of it.
    """
    return ApprovalDecided(
        id=_event_id(source, tenant, task_id, "decided", approval_id),
        source=source,
        subject=task_id,
        tenant=tenant,
        data=ApprovalDecidedData(approval_id=approval_id, decision=decision, by=by, reason=reason),
    )


def encode(event: CloudEvent) -> bytes:
    """The record value of an event: CloudEvents 1.0 in structured JSON mode."""
    return event.model_dump_json().encode()


def decode_result(value: bytes) -> Result:
    """The event a ``results`` record value holds, validated as the published schema does.

    Raises:
        pydantic.ValidationError: Not JSON, or not an event the ``results`` schema accepts.
    """
    return validate_wire(results_adapter, value)
