"""The ReAct loop as pure functions: state in, the next move out. No Kafka, no I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stepbus_contracts import (
    MAX_OBSERVATION_LENGTH,
    MAX_OBSERVATIONS,
    FailureReason,
    LlmDecided,
    LlmDecidedData,
    MemoryRecalled,
    PlannedToolCall,
    TaskAccepted,
    ToolCallCompleted,
    ToolCallCompletedData,
    ToolCallFailed,
)

from .memory_prompt import memory_context
from .ports import ModelTurn
from .state import HistoryEventT, TaskState

__all__ = [
    "AskModel",
    "Dispatch",
    "Fail",
    "Finish",
    "Move",
    "Recall",
    "Wait",
    "conversation",
    "decision_from_turn",
    "next_move",
    "observations",
]

SYSTEM_PROMPT = (
    "You are a careful assistant. Use the tools offered when they help; never guess a result "
    "a tool can compute. When you have the answer, reply with it plainly."
)


@dataclass(frozen=True)
class Recall:
    """Ask the memory service for the task's context before step 0."""


@dataclass(frozen=True)
class AskModel:
    """Call the model for ``step``."""

    step: int


@dataclass(frozen=True)
class Dispatch:
    """Run the tool calls decided at ``step``."""

    step: int
    calls: list[PlannedToolCall]


@dataclass(frozen=True)
class Finish:
    """End the task with the model's answer."""

    output: str


@dataclass(frozen=True)
class Fail:
    """End the task without an answer."""

    reason: FailureReason
    message: str


@dataclass(frozen=True)
class Wait:
    """Nothing to do until more events arrive."""


Move = Recall | AskModel | Dispatch | Finish | Fail | Wait


def next_move(state: TaskState, trigger: HistoryEventT, now: datetime) -> Move:
    """What the planner does after folding ``trigger`` into ``state``.

    Budgets are checked first; then the trigger decides: an accepted task recalls its memory
    (when it has memory) or asks the model for step 0, a recorded recall asks for step 0, a
    recorded decision is dispatched (or is the final answer), and the last missing tool
    outcome of the current step asks the model for the next step.
    """
    task = state.task
    if task is None or state.ended:
        return Wait()
    if now >= task.deadline_at:
        return Fail("deadline", f"deadline passed at {task.deadline_at.isoformat()}")
    if task.token_budget is not None and state.usage.total_tokens > task.token_budget:
        return Fail(
            "token_budget",
            f"used {state.usage.total_tokens} tokens, budget is {task.token_budget}",
        )
    if isinstance(trigger, TaskAccepted):
        return Recall() if state.awaiting_recall else AskModel(0)
    if isinstance(trigger, MemoryRecalled):
        return AskModel(0) if state.step == -1 else Wait()
    if isinstance(trigger, LlmDecided):
        decision = trigger.data
        if decision.tool_calls:
            return Dispatch(decision.step, decision.tool_calls)
        return Finish(decision.content or "")
    if isinstance(trigger, ToolCallCompleted | ToolCallFailed):
        step = trigger.data.step
        if step != state.step or not state.step_complete(step):
            return Wait()
        if step + 1 >= task.max_iterations:
            return Fail(
                "max_iterations",
                f"no final answer after {task.max_iterations} steps (max_iterations)",
            )
        return AskModel(step + 1)
    return Wait()


def conversation(state: TaskState, system_prompt: str = SYSTEM_PROMPT) -> list[dict[str, Any]]:
    """The chat messages for the model's next call, rebuilt from recorded history."""
    assert state.task is not None
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}]
    if state.recall is not None and (context := memory_context(state.recall)):
        messages.append({"role": "system", "content": context})
    messages.append({"role": "user", "content": state.task.input})
    for step in sorted(state.decisions):
        decision = state.decisions[step]
        assistant: dict[str, Any] = {"role": "assistant", "content": decision.content}
        if decision.tool_calls:
            assistant["tool_calls"] = [
                {
                    "id": call.llm_call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
                }
                for call in decision.tool_calls
            ]
        messages.append(assistant)
        for call in decision.tool_calls:
            outcome = state.outcome(step, call.call_index)
            if outcome is None:
                continue
            content = (
                outcome.output
                if isinstance(outcome, ToolCallCompletedData)
                else f"error: {outcome.error}"
            )
            messages.append({"role": "tool", "tool_call_id": call.llm_call_id, "content": content})
    return messages


def decision_from_turn(step: int, turn: ModelTurn, duration_ms: float) -> LlmDecidedData:
    """Record a model turn; tool arguments are decoded here, once."""
    calls = []
    for index, call in enumerate(turn.tool_calls):
        arguments: dict[str, Any] = {}
        error = None
        try:
            decoded = json.loads(call.arguments or "{}")
            if isinstance(decoded, dict):
                arguments = decoded
            else:
                error = "arguments must be a JSON object"
        except json.JSONDecodeError as exc:
            error = f"arguments are not valid JSON: {exc.msg}"
        calls.append(
            PlannedToolCall(
                call_index=index,
                name=call.name,
                arguments=arguments,
                arguments_error=error,
                llm_call_id=call.id or f"call_{step}_{index}",
            )
        )
    return LlmDecidedData(
        step=step,
        content=turn.content,
        tool_calls=calls,
        usage=turn.usage,
        model=turn.model,
        finish_reason=turn.finish_reason,
        duration_ms=duration_ms,
    )


def observations(state: TaskState) -> list[str]:
    """The tool results the model saw, in order, bounded as ``TaskCompletedData`` wants."""
    seen = []
    for step in sorted(state.decisions):
        for call in state.decisions[step].tool_calls:
            outcome = state.outcome(step, call.call_index)
            if outcome is None:
                continue
            text = (
                outcome.output
                if isinstance(outcome, ToolCallCompletedData)
                else f"error: {outcome.error}"
            )
            seen.append(f"{call.name}: {text}"[:MAX_OBSERVATION_LENGTH])
    return seen[-MAX_OBSERVATIONS:]
