"""Families of well-formed records that claim what they may not (findings 6, 7 and 9): another
tenant's task id or cancellation, journal events the planner did not write, submissions the
contract must refuse, an event id used again.

Each family is a function ``(forge, n) -> n records``, like those of :mod:`.findings`. Records
aimed at a valid task name it in ``target`` and are sent once it was accepted (or ended).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from stepbus_contracts import (
    LlmDecided,
    LlmDecidedData,
    PlannedToolCall,
    TaskAccepted,
    TaskAcceptedData,
    TaskCancelled,
    TaskCancelledData,
    TaskCancelRequested,
    TaskCancelRequestedData,
    TaskCompleted,
    TaskCompletedData,
    TaskFailed,
    TaskFailedData,
    TaskSubmitted,
    TaskSubmittedData,
    ToolCallCompleted,
    ToolCallCompletedData,
    ToolCallFailed,
    ToolCallFailedData,
    derive_id,
)

from .records import INTRUDER, SOURCE, Forge, FuzzRecord, Variant, cycle, dumps

__all__ = [
    "BIG_ATTRIBUTE_BYTES",
    "contract_looseness",
    "duplicate_event_id",
    "foreign_cancel",
    "forged_accepted",
    "forged_terminal",
    "tenant_collision",
    "unknown_task_events",
]

BIG_ATTRIBUTE_BYTES = 1_000_000
"""Size of the ~1 MB ``source`` or extension attribute of finding 9."""


# -- finding 6: tenant collisions -------------------------------------------------------------


def tenant_collision(forge: Forge, n: int) -> list[FuzzRecord]:
    """Another tenant submits the id of a valid task, while it runs or once it ended: that
    tenant must get ``task_id_conflict``; the owner's task is untouched."""

    def make(after: str) -> Variant:
        def build() -> FuzzRecord:
            task = forge.aim()
            event = TaskSubmitted(
                id=forge.uuid(),
                source=f"{SOURCE}:intruder",
                subject=task.task_id,
                tenant=INTRUDER,
                data=TaskSubmittedData(input="Compute 1+1", tools=["calculator"]),
            )
            return forge.record(
                "tenant_collision",
                f"after_{after}",
                "6",
                "tasks",
                event.model_dump_json().encode(),
                key=task.task_id,
                expect="conflict",
                target=task.task_id,
                after=after,
                tenant=INTRUDER,
            )

        return build

    return cycle(n, [make("accepted"), make("ended")])


def foreign_cancel(forge: Forge, n: int) -> list[FuzzRecord]:
    """Another tenant cancels a running valid task: refused, the task completes."""

    def build() -> FuzzRecord:
        task = forge.aim()
        event = TaskCancelRequested(
            id=forge.uuid(),
            source=f"{SOURCE}:intruder",
            subject=task.task_id,
            tenant=INTRUDER,
            data=TaskCancelRequestedData(reason="fuzz: not my task"),
        )
        return forge.record(
            "foreign_cancel",
            "cancel_running",
            "6",
            "tasks",
            event.model_dump_json().encode(),
            key=task.task_id,
            expect="refused",
            target=task.task_id,
            after="accepted",
            tenant=INTRUDER,
        )

    return cycle(n, [build])


# -- finding 7: forged internal events on planner.history -------------------------------------


def forged_terminal(forge: Forge, n: int) -> list[FuzzRecord]:
    """A terminal event for a running valid task written to the journal by someone else than
    the planner: ignored, the real terminal still arrives and is the only one."""

    def make(kind: str, same_tenant: bool) -> Variant:
        def build() -> FuzzRecord:
            task = forge.aim()
            tenant = task.tenant if same_tenant else INTRUDER
            common: dict[str, Any] = {
                "id": forge.uuid(),
                "source": "urn:stepbus:planner",
                "subject": task.task_id,
                "tenant": tenant,
            }
            event: Any
            if kind == "completed":
                event = TaskCompleted(**common, data=TaskCompletedData(output="forged", steps=1))
            elif kind == "failed":
                event = TaskFailed(
                    **common, data=TaskFailedData(reason="internal", message="forged")
                )
            else:
                event = TaskCancelled(**common, data=TaskCancelledData(reason="forged"))
            variant = f"{kind}_{'same' if same_tenant else 'other'}_tenant"
            return forge.record(
                "forged_terminal",
                variant,
                "7",
                "planner.history",
                event.model_dump_json().encode(),
                key=task.task_id,
                expect="refused",
                target=task.task_id,
                after="accepted",
                tenant=tenant,
            )

        return build

    return cycle(
        n,
        [
            make("completed", True),
            make("completed", False),
            make("failed", True),
            make("cancelled", True),
        ],
    )


def forged_accepted(forge: Forge, n: int) -> list[FuzzRecord]:
    """``stepbus.task.accepted`` for tasks never submitted, with bounds no submission may ask
    for (``max_iterations`` 10^9, a deadline centuries away) or plausible ones: refused."""

    def make(variant: str) -> Variant:
        def build() -> FuzzRecord:
            subject = forge.subject()
            submitted = forge.uuid()
            data = TaskAcceptedData(
                input="Compute 5*6",
                tools=["calculator"],
                max_iterations=4,
                deadline_at=datetime.now(UTC) + timedelta(hours=1),
                submitted_id=submitted,
                model="fuzz",
            )
            event_id = derive_id(submitted, "accepted") if variant == "derived_id" else forge.uuid()
            event = json.loads(
                TaskAccepted(
                    id=event_id,
                    source="urn:stepbus:planner",
                    subject=subject,
                    tenant="fuzz",
                    data=data,
                ).model_dump_json()
            )
            if variant != "plain_bounds":  # beyond what the contract may allow: built as JSON
                event["data"].update(max_iterations=10**9, deadline_at="9999-01-01T00:00:00Z")
            return forge.record(
                "forged_accepted",
                variant,
                "7",
                "planner.history",
                dumps(event),
                expect="refused",
                fresh=[subject],
            )

        return build

    return cycle(n, [make("huge_bounds"), make("derived_id"), make("plain_bounds")])


def unknown_task_events(forge: Forge, n: int) -> list[FuzzRecord]:
    """Journal events of tasks that never existed: dropped, no snapshot, no progress."""

    def make(kind: str) -> Variant:
        def build() -> FuzzRecord:
            subject = forge.subject()
            common: dict[str, Any] = {
                "id": forge.uuid(),
                "source": "urn:stepbus:planner",
                "subject": subject,
                "tenant": "fuzz",
            }
            ref: dict[str, Any] = {
                "step": 0,
                "call_index": 0,
                "name": "calculator",
                "idempotency_key": f"{subject}:0:0",
            }
            event: Any
            if kind == "decided_tool_call":
                call = PlannedToolCall(
                    call_index=0,
                    name="calculator",
                    arguments={"expression": "6*7"},
                    llm_call_id="call_fuzz",
                )
                event = LlmDecided(
                    **common, data=LlmDecidedData(step=0, tool_calls=[call], model="fuzz")
                )
            elif kind == "decided_answer":
                event = LlmDecided(**common, data=LlmDecidedData(step=0, content="42", model="f"))
            elif kind == "call_completed":
                event = ToolCallCompleted(**common, data=ToolCallCompletedData(**ref, output="42"))
            elif kind == "call_failed":
                event = ToolCallFailed(
                    **common, data=ToolCallFailedData(**ref, error="x", error_type="tool_error")
                )
            elif kind == "completed":
                event = TaskCompleted(**common, data=TaskCompletedData(output="42", steps=1))
            elif kind == "failed":
                event = TaskFailed(**common, data=TaskFailedData(reason="internal", message="x"))
            else:
                event = TaskCancelled(**common, data=TaskCancelledData())
            return forge.record(
                "unknown_task_events",
                kind,
                "7",
                "planner.history",
                event.model_dump_json().encode(),
                expect="refused",
                fresh=[subject],
            )

        return build

    kinds = [
        "decided_tool_call",
        "decided_answer",
        "call_completed",
        "call_failed",
        "completed",
        "failed",
        "cancelled",
    ]
    return cycle(n, [make(kind) for kind in kinds])


# -- finding 9: contract looseness on tasks ---------------------------------------------------


def contract_looseness(forge: Forge, n: int) -> list[FuzzRecord]:
    """Submissions the contract must refuse (dead-letter, never run): missing required
    attributes, strings or booleans for numbers, key other than subject, ~1 MB attributes (one
    in 60 of the family, at least one of each: they weigh on the broker and the DLQ)."""

    def mutated(name: str, change: Callable[[dict[str, Any]], None], **extra: Any) -> Variant:
        def make() -> FuzzRecord:
            subject = forge.subject()
            event = forge.event("tasks", subject)
            change(event)
            return forge.record(
                "contract_looseness", name, "9", "tasks", dumps(event), fresh=[subject], **extra
            )

        return make

    def key_not_subject() -> FuzzRecord:
        key, subject = forge.subject(), forge.subject()
        return forge.record(
            "contract_looseness",
            "key_not_subject",
            "9",
            "tasks",
            dumps(forge.event("tasks", subject)),
            key=key,
            fresh=[key, subject],
        )

    small = [
        mutated("missing_id", lambda e: e.pop("id")),
        mutated("missing_source", lambda e: e.pop("source")),
        mutated("missing_specversion", lambda e: e.pop("specversion")),
        mutated("max_iterations_string", lambda e: e["data"].update(max_iterations="8")),
        mutated("deadline_seconds_string", lambda e: e["data"].update(deadline_seconds="300")),
        mutated("max_iterations_true", lambda e: e["data"].update(max_iterations=True)),
        mutated("deadline_seconds_true", lambda e: e["data"].update(deadline_seconds=True)),
        mutated("token_budget_true", lambda e: e["data"].update(token_budget=True)),
        key_not_subject,
    ]
    large = [
        mutated("source_1mb", lambda e: e.update(source="urn:" + "s" * BIG_ATTRIBUTE_BYTES)),
        mutated("extension_1mb", lambda e: e.update(fuzzext="x" * BIG_ATTRIBUTE_BYTES)),
    ]
    n_large = max(len(large), n // 60)
    return cycle(n - n_large, small) + cycle(n_large, large)


def duplicate_event_id(forge: Forge, n: int) -> list[FuzzRecord]:
    """The id (and source) of a valid task's submission used again for another event, once
    that task was accepted: the second event is dead-lettered, not run."""

    def make(variant: str) -> Variant:
        def build() -> FuzzRecord:
            task = forge.aim()
            original = json.loads(task.value)
            event = dict(original)
            fresh: list[str] = []
            if variant != "same_subject_other_body":
                event["subject"] = forge.subject()
                fresh.append(event["subject"])
            if variant != "other_subject_same_body":
                event["data"] = {**original["data"], "input": "Compute 9*9"}
            return forge.record(
                "duplicate_event_id",
                variant,
                "9",
                "tasks",
                dumps(event),
                key=event["subject"],
                fresh=fresh,
                target=task.task_id,
                after="accepted",
                tenant=task.tenant,
            )

        return build

    variants = ["other_subject_same_body", "other_subject_other_body", "same_subject_other_body"]
    return cycle(n, [make(v) for v in variants])
