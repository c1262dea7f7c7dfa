"""Tool-call commands in, tool outcomes out (to the planner's history)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from stepbus_contracts import (
    MAX_FACT_LENGTH,
    CloudEvent,
    MemoryRememberRequested,
    MemoryRememberRequestedData,
    ToolCallCompleted,
    ToolCallCompletedData,
    ToolCallFailed,
    ToolCallFailedData,
    ToolCallRequested,
    Topics,
    derive_id,
)
from stepbus_runtime import Emit, RecordContext, clip
from stepbus_runtime.metrics import DROPPED_RECORDS

from .audit import ExecutionLog
from .ledger import Ledger
from .registry import (
    CallContext,
    ToolFailedError,
    ToolInputError,
    ToolRegistry,
    ToolUnavailableError,
)

__all__ = ["ToolCallHandler"]

_SOURCE = "urn:stepbus:tool-executor"

log = logging.getLogger(__name__)


class ToolCallHandler:
    """Runs one tool call per command, at most once per idempotency key."""

    def __init__(
        self,
        registry: ToolRegistry,
        ledger: Ledger,
        topics: Topics,
        executions: ExecutionLog | None = None,
    ) -> None:
        self._registry = registry
        self._ledger = ledger
        self._topics = topics
        self._executions = executions or ExecutionLog(None)

    async def __call__(self, command: ToolCallRequested, context: RecordContext) -> Sequence[Emit]:
        """Run the call (or replay its recorded outcome) and report it.

        The ledger record goes out first; the outcome event is a later stage, sent once the
        entry is acknowledged, so an outcome on the journal always has its ledger entry.
        """
        call = command.data
        owner = self._ledger.tenant(command.subject)
        if owner is not None and owner != command.tenant:
            # A task belongs to one tenant: another's call must neither run under its keys nor
            # read its recorded outcomes.
            log.warning(
                "call %s of task %s from tenant %s refused: the task belongs to another tenant",
                clip(call.idempotency_key, 80), clip(command.subject, 80), clip(command.tenant, 40),
            )  # fmt: skip
            DROPPED_RECORDS.labels("tool-executor", context.topic, "foreign_tenant").inc()
            return []
        recorded = self._ledger.recorded(command.subject, call.idempotency_key)
        if recorded is not None:  # its memory request again too: the memory dedupes by key
            return [*self._remembered(command, recorded), self._emit(command, recorded, True)]
        outcome = await self._run(command, context)
        entry = self._ledger.record(
            command.subject, command.tenant, call.idempotency_key, outcome, context.partition
        )
        return [entry, *self._remembered(command, outcome), self._emit(command, outcome, False)]

    def _remembered(self, command: ToolCallRequested, outcome: dict[str, Any]) -> list[Emit]:
        """The memory request of a successful call to a tool that remembers (stage 0, with
        the ledger entry: on the log before the outcome is)."""
        tool = self._registry.get(command.data.name)
        if tool is None or tool.remembers is None or "error" in outcome:
            return []
        fact = command.data.arguments.get(tool.remembers)
        if not isinstance(fact, str) or not fact.strip():
            return []
        request = MemoryRememberRequested(
            id=derive_id(command.id, "remember"),
            source=_SOURCE,
            subject=command.subject,
            tenant=command.tenant,
            data=MemoryRememberRequestedData(
                fact=fact.strip()[:MAX_FACT_LENGTH],
                session_id=command.data.session_id,
                user_id=command.data.user_id,
                idempotency_key=command.data.idempotency_key,
            ),
        )
        return [Emit(self._topics.memory_requests, request)]

    async def _run(self, command: ToolCallRequested, context: RecordContext) -> dict[str, Any]:
        call = command.data
        tool = self._registry.get(call.name)
        started = time.perf_counter()
        if tool is None:
            known = ", ".join(sorted(self._registry.tools)) or "none"
            return _failure(f"unknown tool {call.name!r}; available: {known}", "unknown_tool")
        if tool.check is not None:
            try:
                tool.check(call.arguments)  # before the call is run, or logged as run
            except ToolInputError as exc:
                return _failure(str(exc), "invalid_arguments")
        self._executions.executed(call.idempotency_key, call.name)
        run = tool.run(
            call.arguments, CallContext(call.idempotency_key, command.subject, command.tenant)
        )
        try:
            output = await asyncio.wait_for(run, timeout=call.timeout_seconds)
        except ToolInputError as exc:
            return _failure(str(exc), "invalid_arguments")
        except ToolUnavailableError as exc:
            return _failure(str(exc), "unavailable")
        except ToolFailedError as exc:
            return _failure(str(exc), "tool_error")
        except TimeoutError:
            return _failure(f"timed out after {call.timeout_seconds:g}s", "timeout")
        except Exception as exc:
            if not context.last_attempt:
                raise  # maybe transient: the processor retries with backoff
            return _failure(f"{type(exc).__name__}: {exc}", "tool_error")
        return {"output": output, "duration_ms": (time.perf_counter() - started) * 1000}

    def _emit(self, command: ToolCallRequested, outcome: dict[str, Any], replayed: bool) -> Emit:
        call = command.data
        ref = {
            "step": call.step,
            "call_index": call.call_index,
            "name": call.name,
            "idempotency_key": call.idempotency_key,
        }
        envelope = {
            "id": derive_id(command.id, "outcome"),
            "source": _SOURCE,
            "subject": command.subject,
            "tenant": command.tenant,
        }
        event: CloudEvent
        if "error" in outcome:
            event = ToolCallFailed(
                **envelope,
                data=ToolCallFailedData(
                    **ref, error=str(outcome["error"]), error_type=str(outcome["error_type"])
                ),
            )
        else:
            event = ToolCallCompleted(
                **envelope,
                data=ToolCallCompletedData(
                    **ref,
                    output=str(outcome["output"]),
                    duration_ms=float(outcome.get("duration_ms", 0.0)),
                    replayed=replayed,
                ),
            )
        return Emit(self._topics.planner_history, event, stage=0 if replayed else 1)


def _failure(error: str, error_type: str) -> dict[str, Any]:
    return {"error": error, "error_type": error_type}
