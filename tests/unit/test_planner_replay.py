"""Regression replay's pure parts: suite files, redaction, answers from the record, the diff."""

from __future__ import annotations

import json

import pytest
from stepbus_contracts import (
    TaskCompleted,
    TaskCompletedData,
    ToolCallRequested,
    ToolCallRequestedData,
)
from stepbus_planner.ports import ModelError
from stepbus_planner.replay.diff import compare, render, render_summary
from stepbus_planner.replay.recorded import RecordedModel, RecordedWorld
from stepbus_planner.replay.recording import Recording, RecordingError, from_lines, redact, to_lines

from .test_planner_react import TASK, accepted, call, completed, decided


def recording(answer: str = "Results: 391") -> Recording:
    task = accepted()
    task = task.model_copy(
        update={
            "data": task.data.model_copy(
                update={"metadata": {"api_key": "sk-live-123", "team": "ops"}}
            )
        }
    )
    return Recording(
        TASK,
        "default",
        [
            task,
            decided(0, [call(0)], tokens=10),
            completed(0, 0),
            decided(1, content=answer, tokens=12),
            TaskCompleted(
                id="done",
                subject=TASK,
                data=TaskCompletedData(output=answer, steps=2, metadata=task.data.metadata),
            ),
        ],
    )


def request(step: int, index: int, expression: str) -> ToolCallRequested:
    return ToolCallRequested(
        id=f"request-{step}-{index}",
        subject=TASK,
        data=ToolCallRequestedData(
            step=step,
            call_index=index,
            name="calculator",
            idempotency_key=f"{TASK}:{step}:{index}",
            arguments={"expression": expression},
        ),
    )


def test_a_suite_file_round_trips_without_its_secrets() -> None:
    lines = list(to_lines([recording()]))

    assert all("sk-live-123" not in line for line in lines)
    [back] = from_lines(lines)
    assert back.accepted.data.metadata == {"api_key": "[redacted]", "team": "ops"}
    assert [e.type for e in back.events] == [e.type for e in recording().events]
    assert back.decisions()[0].tool_calls[0].arguments == {"expression": "17 * 23"}


def test_redaction_keeps_counts_and_names_that_only_look_alike() -> None:
    assert redact({"Authorization": "Bearer x", "github_token": "t", "tokens": 5}) == {
        "Authorization": "[redacted]",
        "github_token": "[redacted]",
        "tokens": 5,
    }
    assert redact([{"nested": {"password": "p", "max_tokens": 9}}]) == [
        {"nested": {"password": "[redacted]", "max_tokens": 9}}
    ]


def test_a_bad_suite_line_is_named_by_its_number() -> None:
    good = next(to_lines([recording()]))
    with pytest.raises(RecordingError, match=r"suite.jsonl:2: not a journal event"):
        from_lines([good, json.dumps({"type": "stepbus.task.accepted"})], source="suite.jsonl")
    with pytest.raises(RecordingError, match="no acceptance"):
        from_lines(list(to_lines([recording()]))[1:])


async def test_the_recorded_model_answers_each_step_and_refuses_an_unrecorded_one() -> None:
    model = RecordedModel([recording()], "test-model")

    first = await model.complete([], [], task_id=TASK, step=0)
    assert [(c.name, json.loads(c.arguments)) for c in first.tool_calls] == [
        ("calculator", {"expression": "17 * 23"})
    ]
    assert (await model.complete([], [], task_id=TASK, step=1)).content == "Results: 391"
    with pytest.raises(ModelError, match="not recorded") as refused:
        await model.complete([], [], task_id=TASK, step=2)
    assert not refused.value.retryable
    assert model.missing == [(TASK, 2)]


def test_a_tool_call_is_answered_from_the_record_and_never_run() -> None:
    world = RecordedWorld([recording()])

    same = world.answer(request(0, 0, "17 * 23"))
    moved = world.answer(request(3, 1, "17 * 23"))  # same call at another place
    unknown = world.answer(request(1, 0, "2 + 2"))

    assert same.type == "stepbus.tool.call_completed" and same.data.output == "391"  # type: ignore[union-attr]
    assert (moved.data.step, moved.data.call_index, moved.data.idempotency_key) == (
        3,
        1,
        f"{TASK}:3:1",
    )
    assert unknown.type == "stepbus.tool.call_failed"
    assert unknown.data.error_type == "not_recorded"  # type: ignore[union-attr]
    assert world.gaps == {("default", TASK): ['step 1: calculator {"expression":"2 + 2"}']}


def test_the_diff_marks_the_first_divergent_step() -> None:
    same = compare(recording(), recording(), seconds=0.5)
    changed = compare(recording(), recording("391"), seconds=0.5)
    unreplayed = compare(recording(), None, error="did not end within 5s")

    assert (same.status, same.diverged_at) == ("same", None)
    assert (changed.status, changed.diverged_at) == ("diverged", 1)
    assert unreplayed.status == "failed"
    text = render(changed, "live")
    assert 'answer "Results: 391"' in text and 'answer "391"' in text
    assert "<- diverged at step 1" in text and text.splitlines()[-2] == "diverged at step 1"
    assert "same: every decision reproduced (2 steps)" in render(same)
    summary = render_summary([same, changed, unreplayed])
    assert "diverged at step 1" in summary and "failed: did not end within 5s" in summary
    assert summary.splitlines()[-1] == "3 tasks: 1 same, 1 diverged, 1 failed"


def test_an_end_that_differs_with_agreeing_steps_is_a_divergence_after_the_last_step() -> None:
    ended_otherwise = recording()
    del ended_otherwise.events[-1]  # the replay never ended

    diff = compare(recording(), ended_otherwise)

    assert (diff.status, diff.diverged_at) == ("diverged", 2)
    assert "the steps agree, the end does not" in render(diff)
