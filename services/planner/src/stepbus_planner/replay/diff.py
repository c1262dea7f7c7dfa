"""Step-by-step comparison of a recorded task with its replay, and how it is printed.

A step is the same when the model chose the same tools with the same arguments, or gave the
same answer; the critic's score and the tokens are shown beside it but are not decisions (a
changed prompt changes the prompt's tokens on every step). The first step that differs is the
divergence; a task whose steps agree but that ends otherwise diverges at its end. Pure logic.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from stepbus_contracts import CritiqueCompleted, TaskCompleted, TaskFailed

from .recording import Recording

__all__ = ["StepView", "TaskDiff", "compare", "render", "render_summary", "steps_of"]

Status = Literal["same", "diverged", "failed"]
_CELL = 46


@dataclass(frozen=True)
class StepView:
    """What one step decided, as the diff compares it."""

    step: int
    calls: tuple[tuple[str, str], ...] = ()
    """(tool, arguments as canonical JSON) of each call, in order."""
    answer: str | None = None
    """The text of a step without calls (a draft or the final answer)."""
    score: float | None = None
    """The critic's score of the step's draft, if it was judged."""
    tokens: int = 0

    @property
    def decision(self) -> tuple[tuple[tuple[str, str], ...], str | None]:
        """What must be equal for the step to be the same."""
        return (self.calls, None if self.calls else self.answer)

    def describe(self) -> str:
        """One line: the calls, or the answer."""
        if self.calls:
            return "; ".join(f"{name} {arguments}" for name, arguments in self.calls)
        return f"answer {json.dumps(self.answer or '', ensure_ascii=False)}"


def steps_of(recording: Recording) -> dict[int, StepView]:
    """The decisions of a recording, by step."""
    scores = {
        critique.data.step: critique.data.score
        for critique in recording.critiques().values()
        if isinstance(critique, CritiqueCompleted) and critique.data.kind == "answer"
    }
    views = {}
    for step, decision in sorted(recording.decisions().items()):
        calls = tuple(
            (c.name, json.dumps(c.arguments, sort_keys=True, ensure_ascii=False))
            for c in decision.tool_calls
        )
        views[step] = StepView(
            step=step,
            calls=calls,
            answer=decision.content,
            score=scores.get(step),
            tokens=decision.usage.prompt_tokens + decision.usage.completion_tokens,
        )
    return views


def _end(recording: Recording | None) -> str:
    terminal = recording.terminal() if recording is not None else None
    if terminal is None:
        return "did not end"
    if isinstance(terminal, TaskFailed):
        return f"failed ({terminal.data.reason})"
    if isinstance(terminal, TaskCompleted):
        return "completed"
    return "cancelled"


@dataclass
class TaskDiff:
    """The comparison of one task."""

    task_id: str
    tenant: str
    recorded: dict[int, StepView]
    replayed: dict[int, StepView]
    recorded_end: str
    replayed_end: str
    diverged_at: int | None = None
    """The first step that differs (the step after the last one when only the end does)."""
    gaps: list[str] = field(default_factory=list)
    """What the replay asked for that the record lacks."""
    error: str | None = None
    """Why the task could not be replayed."""
    seconds: float = 0.0

    @property
    def status(self) -> Status:
        """``same``, ``diverged`` or ``failed`` (could not replay)."""
        if self.error is not None:
            return "failed"
        return "same" if self.diverged_at is None else "diverged"


def compare(
    recorded: Recording,
    replayed: Recording | None,
    *,
    gaps: Sequence[str] = (),
    error: str | None = None,
    seconds: float = 0.0,
) -> TaskDiff:
    """Compare a recording with its replay (``replayed`` None: the replay produced nothing)."""
    before = steps_of(recorded)
    after = steps_of(replayed) if replayed is not None else {}
    diff = TaskDiff(
        task_id=recorded.task_id,
        tenant=recorded.tenant,
        recorded=before,
        replayed=after,
        recorded_end=_end(recorded),
        replayed_end=_end(replayed),
        gaps=list(gaps),
        error=error,
        seconds=seconds,
    )
    if error is not None:
        return diff
    for step in range(max([*before, *after], default=-1) + 1):
        one, other = before.get(step), after.get(step)
        if one is None or other is None or one.decision != other.decision:
            diff.diverged_at = step
            return diff
    if diff.recorded_end != diff.replayed_end:
        diff.diverged_at = max([*before, *after], default=-1) + 1
    return diff


def _cell(view: StepView | None) -> str:
    if view is None:
        return "-"
    text = view.describe()
    return text if len(text) <= _CELL else text[: _CELL - 1] + "…"


def _score(view: StepView | None) -> str:
    return "" if view is None or view.score is None else f"{view.score:.2f}"


def render(
    diff: TaskDiff, mode: str = "recorded", *, sides: tuple[str, str] = ("recorded", "replayed")
) -> str:
    """The step-by-step diff of one task, as printed by ``stepbus replay`` (``sides`` names
    the two columns: ``stepbus shadow-report`` prints live and shadow)."""
    one_side, other_side = sides
    replay = sides == ("recorded", "replayed")
    title = f"replay of task {diff.task_id}" if replay else f"task {diff.task_id}"
    lines = [f"{title} (tenant {diff.tenant}), model: {mode}"]
    if diff.error is not None:
        lines.append(f"could not replay: {diff.error}")
        return "\n".join(lines)
    header = f"{'step':>4}  {one_side:<{_CELL}}  {other_side:<{_CELL}}  score      tokens"
    lines += [header, "-" * len(header)]
    steps = range(max([*diff.recorded, *diff.replayed], default=-1) + 1)
    for step in steps:
        one, other = diff.recorded.get(step), diff.replayed.get(step)
        mark = ""
        if diff.diverged_at == step:
            mark = f"   <- diverged at step {step}"
        elif diff.diverged_at is not None and step > diff.diverged_at:
            mark = "   (after the divergence)"
        scores = f"{_score(one) or '-':>4}/{_score(other) or '-':<4}"
        tokens = f"{one.tokens if one else '-'}/{other.tokens if other else '-'}"
        lines.append(
            f"{step:>4}  {_cell(one):<{_CELL}}  {_cell(other):<{_CELL}}  {scores}  {tokens:>9}"
            + mark
        )
    total_before = sum(v.tokens for v in diff.recorded.values())
    total_after = sum(v.tokens for v in diff.replayed.values())
    lines.append(f"end: {one_side} {diff.recorded_end}, {other_side} {diff.replayed_end}")
    lines.append(f"tokens: {one_side} {total_before}, {other_side} {total_after}")
    for gap in diff.gaps:
        lines.append(f"not recorded (answered as such, nothing run): {gap}")
    if diff.diverged_at is None:
        lines.append(f"same: every decision reproduced ({len(diff.replayed)} steps)")
    elif diff.diverged_at >= len(steps):
        lines.append(f"diverged at step {diff.diverged_at}: the steps agree, the end does not")
    else:
        lines.append(f"diverged at step {diff.diverged_at}")
    if replay:
        lines.append(f"replayed in {diff.seconds:.2f}s")
    return "\n".join(lines)


def render_summary(diffs: Sequence[TaskDiff]) -> str:
    """The table of a suite's replay: one line per task, then the counts."""
    width = max([len(d.task_id) for d in diffs] + [4])
    lines = [f"{'task':<{width}}  {'tenant':<16}  result", "-" * (width + 40)]
    for d in diffs:
        if d.status == "same":
            result = "same"
        elif d.status == "diverged":
            result = f"diverged at step {d.diverged_at}"
        else:
            result = f"failed: {d.error}"
        lines.append(f"{d.task_id:<{width}}  {d.tenant:<16}  {result}")
    counts = {s: sum(1 for d in diffs if d.status == s) for s in ("same", "diverged", "failed")}
    lines.append(
        f"{len(diffs)} tasks: {counts['same']} same, {counts['diverged']} diverged, "
        f"{counts['failed']} failed"
    )
    return "\n".join(lines)
