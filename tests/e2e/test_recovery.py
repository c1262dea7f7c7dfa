"""Budgets, cancellation and crash recovery through the real services on the real broker."""

from __future__ import annotations

import json
import signal
import uuid
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis

from ..harness import TopicReader
from .conftest import Stack
from .test_task_flow import cloudevent, publish_plain, run_task, terminals

pytestmark = pytest.mark.e2e


async def submit(stack: Stack, data: dict[str, Any]) -> str:
    task_id = f"task-{uuid.uuid4().hex[:8]}"
    await publish_plain(stack.bootstrap, stack.topics.tasks, [(task_id, cloudevent(task_id, data))])
    return task_id


async def cancel(stack: Stack, task_id: str) -> None:
    event = cloudevent(task_id, {}).replace(
        b"stepbus.task.submitted", b"stepbus.task.cancel_requested"
    )
    await publish_plain(stack.bootstrap, stack.topics.tasks, [(task_id, event)])


def of(events: list[dict[str, Any]], task_id: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["subject"] == task_id and e["type"] == kind]


async def test_token_budget_ends_the_task_with_failed(stack: Stack) -> None:
    task_id, events = await run_task(
        stack, {"input": "Compute 1+2, then 3+4 [usage=600]", "token_budget": 1000}
    )
    [end] = terminals(events, task_id)
    assert end["type"] == "stepbus.task.failed"
    assert end["data"]["reason"] == "token_budget"
    assert end["data"]["usage"]["completion_tokens"] >= 1000


async def test_deadline_cuts_a_slow_llm_call(stack: Stack) -> None:
    task_id, events = await run_task(
        stack, {"input": "What is 2+2? [latency=5000]", "deadline_seconds": 1}
    )
    [end] = terminals(events, task_id)
    assert end["type"] == "stepbus.task.failed"
    assert end["data"]["reason"] == "deadline"


async def test_deadline_ends_a_task_waiting_on_a_tool_that_never_answers(stack: Stack) -> None:
    executor = stack.services["tool-executor"].process
    assert executor is not None
    async with TopicReader(stack.bootstrap, stack.topics.results) as results:
        executor.send_signal(signal.SIGSTOP)  # the tool call is dispatched and never answered
        try:
            task_id = await submit(stack, {"input": "What is 6*7?", "deadline_seconds": 2})
            await results.wait_for(lambda ev: terminals(ev, task_id), 30, "the deadline")
        finally:
            executor.send_signal(signal.SIGCONT)
    [end] = terminals(results.events(), task_id)
    assert (end["type"], end["data"]["reason"]) == ("stepbus.task.failed", "deadline")


async def test_cancellation_mid_tool_ends_the_task_once(stack: Stack) -> None:
    executor = stack.services["tool-executor"].process
    assert executor is not None
    async with (
        TopicReader(stack.bootstrap, stack.topics.results) as results,
        TopicReader(stack.bootstrap, stack.topics.tool_calls) as calls,
    ):
        executor.send_signal(signal.SIGSTOP)
        try:
            task_id = await submit(stack, {"input": "What is 6*7?"})
            await calls.wait_for(
                lambda ev: of(ev, task_id, "stepbus.tool.call_requested"), 30, "the tool call"
            )
            await cancel(stack, task_id)
            await results.wait_for(lambda ev: terminals(ev, task_id), 30, "the cancellation")
        finally:
            executor.send_signal(signal.SIGCONT)  # the late tool outcome must change nothing
        async with TopicReader(stack.bootstrap, stack.topics.planner_history) as history:
            await history.wait_for(
                lambda ev: of(ev, task_id, "stepbus.tool.call_completed"), 30, "the late outcome"
            )
        await results.poll()
    ends = terminals(results.events(), task_id)
    assert [e["type"] for e in ends] == ["stepbus.task.cancelled"]


async def test_cancellation_interrupts_a_slow_llm_call(stack: Stack) -> None:
    async with TopicReader(stack.bootstrap, stack.topics.results) as results:
        task_id = await submit(stack, {"input": "What is 6*7? [latency=20000]"})
        await results.wait_for(lambda ev: of(ev, task_id, "stepbus.task.progress"), 30, "accepted")
        await cancel(stack, task_id)
        await results.wait_for(lambda ev: terminals(ev, task_id), 8, "the cancellation")
    assert [e["type"] for e in terminals(results.events(), task_id)] == ["stepbus.task.cancelled"]


async def test_a_killed_planner_resumes_from_the_journal_without_asking_again(
    stack: Stack,
) -> None:
    planner = stack.services["planner"]
    executor = stack.services["tool-executor"].process
    assert executor is not None
    async with TopicReader(stack.bootstrap, stack.topics.results) as results:
        executor.send_signal(signal.SIGSTOP)  # park the task at its first tool call
        try:
            task_id = await submit(stack, {"input": "Compute 5*5, then 6*6, then 7*7"})
            await results.wait_for(
                lambda ev: [
                    e
                    for e in of(ev, task_id, "stepbus.task.progress")
                    if e["data"]["stage"] == "action"
                ],
                30,
                "the first tool call",
            )
            planner.stop(signal.SIGKILL)
            planner.start()
            await planner.wait_ready()
        finally:
            executor.send_signal(signal.SIGCONT)
        await results.wait_for(lambda ev: terminals(ev, task_id), 60, "the task to finish")
    [end] = terminals(results.events(), task_id)
    assert end["data"]["output"] == "Results: 25, 36, 49"
    async with TopicReader(stack.bootstrap, stack.topics.planner_history) as history:
        await history.wait_for(lambda ev: of(ev, task_id, "stepbus.task.completed"), 30, "journal")
        # A publish retried at-least-once repeats a record byte for byte; asking the model again
        # would record a new decision (its own time and duration). Count distinct records.
        decided = Counter(
            step
            for step, _ in {
                (e["data"]["step"], json.dumps(e, sort_keys=True))
                for e in of(history.events(), task_id, "stepbus.llm.decided")
            }
        )
    # One decision per step: the restarted planner never asked the model for a recorded step.
    assert decided == Counter({0: 1, 1: 1, 2: 1, 3: 1})


async def test_a_killed_tool_executor_and_flushed_redis_lose_nothing(stack: Stack) -> None:
    executor = stack.services["tool-executor"]
    task_ids = [await submit(stack, {"input": f"Compute {i}*2, then {i}+1"}) for i in range(5)]
    executor.stop(signal.SIGKILL)
    async with aioredis.from_url(stack.redis_url) as client:
        await client.flushall()
    executor.start()
    await executor.wait_ready()
    async with TopicReader(stack.bootstrap, stack.topics.results) as results:
        await results.wait_for(
            lambda ev: all(terminals(ev, t) for t in task_ids), 60, "every task to end"
        )
    for i, task_id in enumerate(task_ids):
        ends = {e["id"]: e for e in terminals(results.events(), task_id)}
        assert len(ends) == 1, f"{task_id} ended {len(ends)} times"
        [end] = ends.values()
        assert end["data"]["output"] == f"Results: {i * 2}, {i + 1}"
