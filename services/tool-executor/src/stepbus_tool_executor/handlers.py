"""Tool-call commands in, tool outcomes out (to the planner's history), every decision audited.

Per call: a recorded outcome is replayed; otherwise the call is decided (``guard.verdict``:
the task's narrowing, the policy, a clearance) and the decision goes to ``audit``. A denied call
is answered as a ``denied`` failure without reaching the tool; a held one is answered with
``stepbus.tool.call_held`` (recorded nowhere else: the planner re-sends it with its clearance);
an allowed one runs. Its output is scanned for prompt injections: findings go on the outcome,
in a metric and to ``audit``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import StatusCode
from stepbus_contracts import (
    MAX_FACT_LENGTH,
    MAX_FLAGS,
    CloudEvent,
    InjectionFlagged,
    InjectionFlaggedData,
    MemoryRememberRequested,
    MemoryRememberRequestedData,
    PolicyDecided,
    PolicyDecidedData,
    ToolCallCompleted,
    ToolCallCompletedData,
    ToolCallFailed,
    ToolCallFailedData,
    ToolCallHeld,
    ToolCallHeldData,
    ToolCallRequested,
    ToolCallRequestedData,
    Topics,
    derive_id,
    utcnow,
)
from stepbus_runtime import Emit, RecordContext, clip
from stepbus_runtime.metrics import DROPPED_RECORDS
from stepbus_runtime.tracing import REPLAY

from .audit import ExecutionLog
from .guard import Verdict, narrowed, server_of, verdict
from .injection import reasons, scan
from .ledger import Ledger
from .mcp_config import SEPARATOR
from .metrics import FLAGGED_OUTPUTS, POLICY_DECISIONS, POLICY_SECONDS, TOOL_CALLS, TOOL_SECONDS
from .policy import Policy, allow_all
from .registry import (
    CallContext,
    Tool,
    ToolFailedError,
    ToolInputError,
    ToolRegistry,
    ToolUnavailableError,
)

__all__ = ["ToolCallHandler"]

_SOURCE = "urn:stepbus:tool-executor"

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("stepbus.tool_executor")


TRUNCATED_NOTE = "\n[stepbus: output truncated at {limit:,} of {size:,} characters]"


class ToolCallHandler:
    """Runs one tool call per command, at most once per idempotency key, as the policy allows.

    Args:
        registry: The tools.
        ledger: Recorded outcomes.
        topics: Topic names.
        executions: The log of real executions (audit, chaos checks).
        policy: The tool policy (``allow_all`` without a policy file).
        max_output_chars: Longest output kept; a longer one is cut, with a note saying so
            (outputs above the claim-check threshold travel by reference, uncut).
        clock: Current time (injectable for tests).
        servers: The configured MCP servers: a call to a tool of one that never came up is
            ``unavailable``, not ``unknown_tool``.
    """

    def __init__(
        self,
        registry: ToolRegistry,
        ledger: Ledger,
        topics: Topics,
        executions: ExecutionLog | None = None,
        *,
        policy: Policy | None = None,
        max_output_chars: int = 1_000_000,
        clock: Callable[[], datetime] = utcnow,
        servers: frozenset[str] = frozenset(),
    ) -> None:
        self._servers = servers
        self._registry = registry
        self._ledger = ledger
        self._topics = topics
        self._executions = executions or ExecutionLog(None)
        self._policy = policy or allow_all()
        self._max_output = max_output_chars
        self._clock = clock

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
        tool = self._registry.get(call.name)
        label = tool.name if tool is not None else "unknown"  # bounded: the registry's names
        with _tracer.start_as_current_span(
            f"execute_tool {label}",
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": call.name,
                "gen_ai.tool.call.id": call.idempotency_key,
                "gen_ai.tool.type": "extension" if server_of(tool) else "function",
                "stepbus.step": call.step,
            },
        ) as span:
            started = time.perf_counter()
            outputs, outcome = await self._handle(command, context, tool)
            if span.is_recording():
                span.set_attribute("stepbus.tool.outcome", outcome)
                if outcome == "replayed":
                    span.set_attribute(REPLAY, True)
                elif outcome not in ("ok", "held"):
                    span.set_status(StatusCode.ERROR, outcome)
        seconds = time.perf_counter() - started

        def counted() -> None:  # once the outcome is recorded: a redelivery counts once
            TOOL_CALLS.labels(label, outcome).inc()
            if outcome not in ("replayed", "held", "denied"):
                TOOL_SECONDS.labels(label).observe(seconds)

        return [*outputs[:-1], replace(outputs[-1], on_acked=counted)] if outputs else []

    async def _handle(
        self, command: ToolCallRequested, context: RecordContext, tool: Tool | None
    ) -> tuple[list[Emit], str]:
        """The outputs of a call, and its outcome for the metrics (``ok``, ``error``,
        ``timeout``, ``denied``, ``held``, ``replayed``)."""
        call = command.data
        recorded = self._ledger.recorded(command.subject, call.idempotency_key)
        if recorded is not None:  # its memory request again too: the memory dedupes by key
            return [
                *self._remembered(command, recorded),
                self._emit(command, recorded, True),
            ], "replayed"
        audit: list[Emit] = []
        refused = narrowed(call)
        if tool is None and refused is None:
            outcome = self._missing(call.name)
        else:
            decided = refused or self._decide(command, tool)
            audit.append(self._audited(command, tool, decided))
            if decided.decision in ("approval_required", "review_required"):
                return [*audit, self._held(command, decided)], "held"  # not run: not recorded
            if decided.decision == "deny":
                outcome = _failure(decided.reason, "denied")
            else:
                outcome = await self._run(command, context, tool)
                audit.extend(self._scanned(command, tool, outcome))
        entry = self._ledger.record(
            command.subject, command.tenant, call.idempotency_key, outcome, context.partition
        )
        return [
            entry,
            *audit,
            *self._remembered(command, outcome),
            self._emit(command, outcome, False),
        ], _outcome(outcome)

    def _missing(self, name: str) -> dict[str, Any]:
        """The failure of a call to a tool that is not registered: ``unavailable`` when it
        belongs to a configured MCP server whose tools are not listed (it has not come up)."""
        server = name.split(SEPARATOR, 1)[0] if SEPARATOR in name else None
        if server in self._servers:
            return _failure(
                f"MCP server {server!r} is not up: its tools are not available now", "unavailable"
            )
        known = ", ".join(sorted(self._registry.tools)) or "none"
        return _failure(f"unknown tool {name!r}; available: {known}", "unknown_tool")

    def _decide(self, command: ToolCallRequested, tool: Tool) -> Verdict:
        started = time.perf_counter()
        flagged = command.data.flagged or self._ledger.flagged(command.subject)
        decided = verdict(
            self._policy,
            command.data,
            tool,
            tenant=command.tenant,
            flagged=flagged,
            now=self._clock(),
        )
        POLICY_SECONDS.observe(time.perf_counter() - started)
        POLICY_DECISIONS.labels(tool.name, decided.decision).inc()
        return decided

    def permits(self, command: ToolCallRequested, tool: Tool) -> Callable[[str], str | None]:
        """Whether the same call with another ``url`` would be allowed (None) or why not: how
        ``http_fetch`` checks a redirect against the policy's hosts."""

        def check(url: str) -> str | None:
            arguments = {**command.data.arguments, "url": url}
            again = command.model_copy(
                update={"data": command.data.model_copy(update={"arguments": arguments})}
            )
            decided = self._decide(again, tool)
            return None if decided.decision == "allow" else decided.reason

        return check

    def _audited(self, command: ToolCallRequested, tool: Tool | None, decided: Verdict) -> Emit:
        """The decision's record on the audit trail (stage 0: before anything it lets run)."""
        call = command.data
        event = PolicyDecided(
            **_envelope(command, "policy"),
            data=PolicyDecidedData(
                step=call.step,
                call_index=call.call_index,
                tool=call.name,
                decision=decided.decision,
                rule=decided.rule[:256],
                reason=clip(decided.reason, 2_000),
                task_id=command.subject,
                tenant=command.tenant,
                roles=call.roles,
                server=server_of(tool),
                idempotency_key=call.idempotency_key,
                flagged=call.flagged or self._ledger.flagged(command.subject),
                approval_id=decided.approval_id,
            ),
        )
        return Emit(self._topics.audit, event, key=command.subject)

    def _held(self, command: ToolCallRequested, decided: Verdict) -> Emit:
        """The answer to a call the policy holds: the planner waits for its approval or review
        and re-sends the call with the clearance (stage 1: after its audit record)."""
        call = command.data
        gate = "approval" if decided.decision == "approval_required" else "review"
        expires = self._clock() + timedelta(seconds=decided.expires_seconds)
        held = ToolCallHeld(
            **_envelope(command, "held"),
            data=ToolCallHeldData(
                **_ref(call),
                gate=gate,
                rule=decided.rule[:256],
                reason=clip(decided.reason, 2_000),
                approval_id=decided.approval_id if gate == "approval" else None,
                approvers=list(decided.approvers)[:32],
                expires_at=expires if gate == "approval" else None,
            ),
        )
        return Emit(self._topics.planner_history, held, stage=1)

    def _scanned(
        self, command: ToolCallRequested, tool: Tool, outcome: dict[str, Any]
    ) -> list[Emit]:
        """Flag a likely prompt injection in the output: on the outcome (which the planner
        shows the model with a warning, and the policy's ``flagged`` reads), in a metric and
        on the audit trail."""
        if "output" not in outcome:
            return []
        offered = command.data.offered or list(self._registry.tools)
        findings = scan(str(outcome["output"]), offered)
        if not findings:
            return []
        flags = [clip(reason, 300) for reason in reasons(findings)][:MAX_FLAGS]
        outcome["flags"] = flags
        for finding in findings:
            FLAGGED_OUTPUTS.labels(tool.name, finding.kind).inc()
        log.warning(
            "output of %s for task %s flagged as a likely prompt injection: %s",
            tool.name, clip(command.subject, 80), "; ".join(flags),
        )  # fmt: skip
        call = command.data
        event = InjectionFlagged(
            **_envelope(command, "flagged"),
            data=InjectionFlaggedData(
                step=call.step,
                call_index=call.call_index,
                tool=call.name,
                source=tool.source,
                findings=flags,
                idempotency_key=call.idempotency_key,
            ),
        )
        return [Emit(self._topics.audit, event, key=command.subject)]

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
            **_envelope(command, "remember"),
            data=MemoryRememberRequestedData(
                fact=fact.strip()[:MAX_FACT_LENGTH],
                session_id=command.data.session_id,
                user_id=command.data.user_id,
                idempotency_key=command.data.idempotency_key,
            ),
        )
        return [Emit(self._topics.memory_requests, request)]

    async def _run(
        self, command: ToolCallRequested, context: RecordContext, tool: Tool
    ) -> dict[str, Any]:
        call = command.data
        started = time.perf_counter()
        if tool.check is not None:
            try:
                tool.check(call.arguments)  # before the call is run, or logged as run
            except ToolInputError as exc:
                return _failure(str(exc), "invalid_arguments")
        self._executions.executed(call.idempotency_key, call.name)
        run = tool.run(
            call.arguments,
            CallContext(
                call.idempotency_key, command.subject, command.tenant, self.permits(command, tool)
            ),
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
            if tool.idempotent and not context.last_attempt:
                raise  # maybe transient, and harmless to repeat: the processor retries
            # Maybe it did its effect: running it again could do it twice.
            return _failure(f"{type(exc).__name__}: {exc}", "tool_error")
        text = str(output)
        outcome: dict[str, Any] = {"output": text, "source": tool.source}
        if len(text) > self._max_output:
            note = TRUNCATED_NOTE.format(limit=self._max_output, size=len(text))
            outcome.update(output=text[: self._max_output] + note, truncated=True)
        outcome["duration_ms"] = (time.perf_counter() - started) * 1000
        return outcome

    def _emit(self, command: ToolCallRequested, outcome: dict[str, Any], replayed: bool) -> Emit:
        call = command.data
        ref = _ref(call)
        envelope = _envelope(command, "outcome")
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
                    source=str(outcome.get("source", "builtin"))[:256],
                    flags=[str(flag) for flag in outcome.get("flags", ())][:MAX_FLAGS],
                    truncated=bool(outcome.get("truncated", False)),
                ),
            )
        return Emit(self._topics.planner_history, event, stage=0 if replayed else 1)


def _envelope(command: ToolCallRequested, part: str) -> dict[str, Any]:
    """Attributes of an event caused by ``command``: its task and tenant, an id derived from it."""
    return {
        "id": derive_id(command.id, part),
        "source": _SOURCE,
        "subject": command.subject,
        "tenant": command.tenant,
    }


def _ref(call: ToolCallRequestedData) -> dict[str, Any]:
    """The fields naming the call in its outcome or hold."""
    return {
        "step": call.step,
        "call_index": call.call_index,
        "name": call.name,
        "idempotency_key": call.idempotency_key,
    }


def _outcome(outcome: dict[str, Any]) -> str:
    """The metric outcome of a ledger outcome."""
    kind = outcome.get("error_type")
    if "error" not in outcome:
        return "ok"
    return kind if kind in ("timeout", "denied") else "error"


def _failure(error: str, error_type: str) -> dict[str, Any]:
    return {"error": error, "error_type": error_type}
