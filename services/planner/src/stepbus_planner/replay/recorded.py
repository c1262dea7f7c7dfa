"""The world of a replay, answered from the record: the model's turns, tool outcomes, recalls,
critiques and approvals. Nothing here runs a tool or calls a model; what the record lacks is
answered as "not recorded" and reported. Pure logic, no Kafka.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from stepbus_contracts import (
    ApprovalDecided,
    ApprovalDecidedData,
    ApprovalRequested,
    ApprovalResolved,
    CritiqueCompleted,
    CritiqueFailed,
    CritiqueFailedData,
    CritiqueRequested,
    MemoryRecalled,
    MemoryRecalledData,
    MemoryRecallRequested,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallFailedData,
    ToolCallHeld,
    ToolCallRequested,
    derive_id,
    utcnow,
)

from ..ports import ModelError, ModelToolCall, ModelTurn
from ..state import critique_key
from .recording import Recording

__all__ = ["NOT_RECORDED", "Answer", "RecordedModel", "RecordedWorld", "Request"]

SOURCE = "urn:stepbus:replay"
NOT_RECORDED = "not_recorded"
"""``error_type`` of a tool call the record lacks (the replay never runs a tool)."""

Outcome = ToolCallCompleted | ToolCallFailed | ToolCallHeld
Request = ToolCallRequested | MemoryRecallRequested | CritiqueRequested | ApprovalRequested
"""What a replayed or shadow planner asks the world for."""
Answer = Outcome | MemoryRecalled | CritiqueCompleted | CritiqueFailed | ApprovalDecided


def _canonical(arguments: dict[str, Any]) -> str:
    return json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class RecordedModel:
    """A ``ChatModel`` that answers each step with the decision recorded for it: a replay of
    new planner code against the model's recorded answers (a determinism check).

    A step the record has no decision for fails the call (not retryable): the new code asked
    for more than the original did, which the diff reports.
    """

    def __init__(self, recordings: list[Recording], model: str = "recorded") -> None:
        self.model = model
        self._turns = {r.task_id: r.decisions() for r in recordings}
        self.missing: list[tuple[str, int]] = []

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        *,
        task_id: str,
        step: int,
    ) -> ModelTurn:
        """The recorded turn of ``task_id`` at ``step``.

        Raises:
            ModelError: The record has no decision for the step.
        """
        decision = self._turns.get(task_id, {}).get(step)
        if decision is None:
            self.missing.append((task_id, step))
            raise ModelError(f"not recorded: the record has no decision for step {step}",
                             retryable=False)  # fmt: skip
        calls = [
            ModelToolCall(id=c.llm_call_id, name=c.name, arguments=json.dumps(c.arguments))
            for c in decision.tool_calls
        ]
        return ModelTurn(
            content=decision.content,
            tool_calls=calls,
            usage=decision.usage,
            finish_reason=decision.finish_reason,
            model=decision.model,
        )


@dataclass
class _Calls:
    """A task's recorded tool outcomes, by call and by (tool, arguments)."""

    by_call: dict[tuple[int, int], list[Outcome]] = field(default_factory=dict)
    by_content: dict[tuple[str, str], list[tuple[int, int]]] = field(default_factory=dict)
    arguments: dict[tuple[int, int], str] = field(default_factory=dict)


class RecordedWorld:
    """Answers a replayed task's requests from its recording.

    A tool call is answered with the outcome recorded for the same call (same step, position,
    tool and arguments), else with the outcome of the same tool and arguments elsewhere in the
    task, else as not recorded. Each answer is rebuilt for the request (its step, position and
    idempotency key), so the planner folds it like any outcome. ``gaps`` lists what was
    answered as not recorded, for the report.

    The ``find_*`` methods return None where the record has no answer (a shadow waits for
    the live task to record one); ``answer`` gives the recorded answer or the not-recorded one.
    """

    def __init__(self, recordings: list[Recording]) -> None:
        self._recordings: dict[tuple[str, str], Recording] = {}
        self._calls: dict[tuple[str, str], _Calls] = {}
        self.gaps: dict[tuple[str, str], list[str]] = {}
        for recording in recordings:
            self.update(recording)

    def update(self, recording: Recording) -> None:
        """(Re)index one task's recording: it grew, or is new."""
        key = (recording.tenant, recording.task_id)
        self._recordings[key] = recording
        calls = _Calls()
        for step, decision in recording.decisions().items():
            for call in decision.tool_calls:
                where = (step, call.call_index)
                calls.arguments[where] = _canonical(call.arguments)
                calls.by_content.setdefault((call.name, calls.arguments[where]), []).append(where)
        for event in recording.events:
            if isinstance(event, ToolCallCompleted | ToolCallFailed | ToolCallHeld):
                where = (event.data.step, event.data.call_index)
                calls.by_call.setdefault(where, []).append(event)
        self._calls[key] = calls

    def forget(self, tenant: str, task_id: str) -> None:
        """Drop a task's recording and gaps."""
        self._recordings.pop((tenant, task_id), None)
        self._calls.pop((tenant, task_id), None)
        self.gaps.pop((tenant, task_id), None)

    def answer(self, request: Request) -> Answer:
        """The recorded answer to ``request``, or the not-recorded one (noted in ``gaps``)."""
        found = self.find(request)
        return found if found is not None else self.not_recorded(request)

    def find(self, request: Request) -> Answer | None:
        """The recorded answer to ``request``, rebuilt for it; None when the record has none."""
        if isinstance(request, ToolCallRequested):
            return self.find_outcome(request)
        if isinstance(request, MemoryRecallRequested):
            recording = self._recordings.get((request.tenant, request.subject))
            recorded = recording.recall() if recording is not None else None
            if recorded is None:
                return None
            return recorded.model_copy(update={"id": derive_id(request.id, "replayed")})
        if isinstance(request, CritiqueRequested):
            return self._find_critique(request)
        return self._find_approval(request)

    def find_outcome(self, request: ToolCallRequested) -> Outcome | None:
        """The recorded outcome of a call, rebuilt for ``request``."""
        data = request.data
        calls = self._calls.get((request.tenant, request.subject), _Calls())
        arguments = _canonical(data.arguments)
        where = (data.step, data.call_index)
        candidates = [where] if calls.arguments.get(where) == arguments else []
        candidates += calls.by_content.get((data.name, arguments), [])
        for candidate in candidates:
            recorded = calls.by_call.get(candidate, [])
            if not recorded or recorded[0].data.name != data.name:
                continue
            # A held call is answered with its hold first, then (approved) with its outcome.
            final = [o for o in recorded if not isinstance(o, ToolCallHeld)]
            held = [o for o in recorded if isinstance(o, ToolCallHeld)]
            chosen: Outcome | None = held[0] if held and data.clearance is None else None
            if chosen is None and final:
                chosen = final[0]
            if chosen is None:
                continue
            update = {
                "step": data.step,
                "call_index": data.call_index,
                "idempotency_key": data.idempotency_key,
            }
            return chosen.model_copy(
                update={
                    "id": derive_id(request.id, "replayed"),
                    "subject": request.subject,
                    "data": chosen.data.model_copy(update=update),
                }
            )
        return None

    def _find_critique(
        self, request: CritiqueRequested
    ) -> CritiqueCompleted | CritiqueFailed | None:
        """The recorded verdict on the same draft or call (None when the record judged
        something else, or nothing)."""
        data = request.data
        recording = self._recordings.get((request.tenant, request.subject))
        call_index = data.call_index if data.kind == "tool_call" else None
        recorded = None
        if recording is not None:
            recorded = recording.critiques().get(critique_key(data.kind, data.step, call_index))
        if recording is None or recorded is None:
            return None
        decision = recording.decisions().get(data.step)
        same = False
        if decision is not None and data.kind == "answer":
            same = decision.content == data.draft
        elif decision is not None:
            planned = next((c for c in decision.tool_calls if c.call_index == call_index), None)
            same = planned is not None and (planned.name, _canonical(planned.arguments)) == (
                data.tool,
                _canonical(data.arguments or {}),
            )
        if not same:
            return None
        return recorded.model_copy(update={"id": derive_id(request.id, "replayed")})

    def _find_approval(self, request: ApprovalRequested) -> ApprovalDecided | None:
        """The recorded decision on the same held call."""
        data = request.data
        recording = self._recordings.get((request.tenant, request.subject))
        resolved = None
        if recording is not None:
            resolved = next(
                (
                    e
                    for e in recording.events
                    if isinstance(e, ApprovalResolved)
                    and (e.data.step, e.data.call_index) == (data.step, data.call_index)
                ),
                None,
            )
        if resolved is None:
            return None
        return ApprovalDecided(
            id=derive_id(request.id, "replayed"),
            source=SOURCE,
            subject=request.subject,
            tenant=request.tenant,
            data=ApprovalDecidedData(
                approval_id=data.approval_id,
                decision="approve" if resolved.data.outcome == "approved" else "deny",
                by=resolved.data.by or "replay",
                reason=resolved.data.reason,
            ),
        )

    def not_recorded(self, request: Request) -> Answer:
        """The answer to a request the record has none for, noted in ``gaps``: a tool call
        fails (``error_type=not_recorded``, nothing runs), a recall is unavailable, a critique
        fails (the draft is the answer, unjudged), an approval is denied."""
        key = (request.tenant, request.subject)
        envelope: dict[str, Any] = {
            "id": derive_id(request.id, "replayed"),
            "source": SOURCE,
            "subject": request.subject,
            "tenant": request.tenant,
        }
        if isinstance(request, ToolCallRequested):
            data = request.data
            arguments = _canonical(data.arguments)
            shown = arguments if len(arguments) <= 200 else arguments[:200] + "…"
            self.gaps.setdefault(key, []).append(f"step {data.step}: {data.name} {shown}")
            return ToolCallFailed(
                **envelope,
                data=ToolCallFailedData(
                    step=data.step,
                    call_index=data.call_index,
                    name=data.name,
                    idempotency_key=data.idempotency_key,
                    error="not recorded: the original task made no such call, and a replay "
                    "never runs tools",
                    error_type=NOT_RECORDED,
                ),
            )
        if isinstance(request, MemoryRecallRequested):
            self.gaps.setdefault(key, []).append("recall")
            return MemoryRecalled(
                **envelope,
                data=MemoryRecalledData(
                    status="unavailable", message="not recorded", recalled_at=utcnow()
                ),
            )
        if isinstance(request, CritiqueRequested):
            data_c = request.data
            self.gaps.setdefault(key, []).append(f"critique of {data_c.kind} at step {data_c.step}")
            return CritiqueFailed(
                **envelope,
                data=CritiqueFailedData(
                    kind=data_c.kind,
                    step=data_c.step,
                    call_index=data_c.call_index if data_c.kind == "tool_call" else None,
                    attempts=0,
                    reason="model_error",
                    message="not recorded: the record holds no verdict on this "
                    + ("draft" if data_c.kind == "answer" else "call"),
                ),
            )
        self.gaps.setdefault(key, []).append(f"approval at step {request.data.step}")
        return ApprovalDecided(
            **envelope,
            data=ApprovalDecidedData(
                approval_id=request.data.approval_id,
                decision="deny",
                by="replay",
                reason="not recorded",
            ),
        )
