"""The critic in the loop, as separate processes on the real broker: drafts judged and revised,
judge replies retried, a dead critic, reviewed tool calls, and crashes mid-critique.

The stack marks the ``remember`` tool for review and waits 20 s for a verdict (a critic killed
and restarted rejoins its group within that: the old member's session ends after 10 s). The scripted
model gives a weak first draft for ``[draft=weak]`` and weaker revisions for ``[draft=worse]``;
its judge scores groundedness in the tool results, halves every score for ``[judge=harsh]``,
answers nonsense for ``[judge=invalid]`` (once for ``[judge=invalid-once]``) and rejects a
reviewed call for ``[review=reject]``.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from stepbus_runtime import read_to_end, topic_partitions

from ..harness import TopicReader
from .conftest import Stack, running_stack
from .test_recovery import of, submit
from .test_task_flow import run_task, terminals

pytestmark = pytest.mark.e2e

CRITIQUE_TIMEOUT = 20.0


@pytest.fixture(scope="module")
async def stack(kafka_bootstrap: str, redis_url: str) -> AsyncIterator[Stack]:
    env = {
        "STEPBUS_TOOL_EXECUTOR_REVIEW_TOOLS": "remember",
        "STEPBUS_PLANNER_CRITIQUE_TIMEOUT_SECONDS": str(CRITIQUE_TIMEOUT),
    }
    async with running_stack(kafka_bootstrap, redis_url, env=env, gateway=False) as running:
        yield running


def completed(events: list[dict[str, Any]], task_id: str) -> dict[str, Any]:
    [end] = terminals(events, task_id)
    assert end["type"] == "stepbus.task.completed", end
    return end["data"]


async def journal(stack: Stack, task_id: str) -> list[dict[str, Any]]:
    async with TopicReader(stack.bootstrap, stack.topics.planner_history) as history:
        await history.wait_for(
            lambda ev: of(ev, task_id, "stepbus.task.completed"), 30, "the journal"
        )
        return [e for e in history.events() if e["subject"] == task_id]


async def topic_events(stack: Stack, topic: str, task_id: str) -> list[dict[str, Any]]:
    """Every event of ``task_id`` on ``topic``, read to the topic's current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await topic_partitions(stack.bootstrap, topic)
        records = await read_to_end(consumer, tps, {tp: 0 for tp in tps})
    finally:
        await consumer.stop()
    events = [json.loads(r.value) for r in records if r.value]
    return [e for e in events if e.get("subject") == task_id]


def distinct(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Events of ``kind`` counted once per id (a retried publish repeats a record)."""
    seen: dict[str, dict[str, Any]] = {}
    for event in events:
        if event["type"] == kind:
            seen.setdefault(event["id"], event)
    return list(seen.values())


async def test_a_weak_draft_is_revised_and_the_result_carries_both_scores(stack: Stack) -> None:
    task_id, events = await run_task(stack, {"input": "What is 17 * 23? [draft=weak]"})

    data = completed(events, task_id)
    assert data["output"] == "391"
    critic = data["critic"]
    assert critic["judged"] is True and critic["revisions"] == 1
    first, second = (r["score"] for r in critic["rounds"])
    assert first < 0.7 <= second == critic["score"]
    assert "391" in critic["rounds"][0]["feedback"]  # the judge said what the tool supports
    stages = [e["data"]["stage"] for e in of(events, task_id, "stepbus.task.progress")]
    assert stages.count("critique") >= 4  # two requests, two verdicts
    # The revision is a step of its own, decided after the verdict that asked for it.
    history = await journal(stack, task_id)
    verdicts = distinct(history, "stepbus.critique.completed")
    assert [v["data"]["step"] for v in verdicts] == [1, 2]


async def test_max_revisions_bounds_the_loop_and_the_best_draft_wins(stack: Stack) -> None:
    task_id, events = await run_task(
        stack,
        {
            "input": "What is 17 * 23? [draft=worse] [judge=harsh]",
            "critic": {"max_revisions": 2},
        },
    )

    data = completed(events, task_id)
    assert data["output"] == "391"  # the first draft: every revision was worse
    critic = data["critic"]
    assert critic["revisions"] == 2 and len(critic["rounds"]) == 3
    scores = [r["score"] for r in critic["rounds"]]
    assert critic["score"] == max(scores) == scores[0] < 0.7


async def test_the_critic_disabled_for_a_task_is_not_asked(stack: Stack) -> None:
    task_id, events = await run_task(
        stack, {"input": "What is 17 * 23? [draft=weak]", "critic": {"enabled": False}}
    )

    data = completed(events, task_id)
    assert data["critic"] is None
    assert data["output"].startswith("I believe")  # the weak draft, unjudged
    history = await journal(stack, task_id)
    assert distinct(history, "stepbus.critique.completed") == []


async def test_an_invalid_judge_reply_is_retried_once(stack: Stack) -> None:
    task_id, events = await run_task(stack, {"input": "What is 17 * 23? [judge=invalid-once]"})

    assert completed(events, task_id)["critic"]["judged"] is True
    [verdict] = distinct(await journal(stack, task_id), "stepbus.critique.completed")
    assert verdict["data"]["attempts"] == 2


async def test_a_judge_that_never_replies_validly_leaves_the_task_unjudged(stack: Stack) -> None:
    task_id, events = await run_task(stack, {"input": "What is 17 * 23? [judge=invalid]"})

    data = completed(events, task_id)
    assert data["output"] == "391"
    assert (data["critic"]["judged"], data["critic"]["score"]) == (False, None)
    [failure] = distinct(await journal(stack, task_id), "stepbus.critique.failed")
    assert (failure["data"]["reason"], failure["data"]["attempts"]) == ("invalid_reply", 2)


async def test_a_rejected_tool_call_never_reaches_the_tool_executor(stack: Stack) -> None:
    task_id, events = await run_task(
        stack, {"input": "Remember that my locker is 42 [review=reject]"}
    )
    completed(events, task_id)
    assert await topic_events(stack, stack.topics.tool_calls, task_id) == []
    history = await journal(stack, task_id)
    [rejected] = distinct(history, "stepbus.tool.call_failed")
    assert rejected["data"]["error_type"] == "denied"
    assert rejected["data"]["error"].startswith("rejected by review")
    [review] = distinct(history, "stepbus.critique.completed")[:1]
    assert (review["data"]["kind"], review["data"]["approved"]) == ("tool_call", False)


async def test_an_approved_tool_call_runs_once(stack: Stack) -> None:
    task_id, events = await run_task(stack, {"input": "Remember that my locker is 42"})
    assert completed(events, task_id)["output"] == "I will remember that."
    history = await journal(stack, task_id)
    calls = await topic_events(stack, stack.topics.tool_calls, task_id)
    [request] = distinct(calls, "stepbus.tool.call_requested")
    assert request["data"]["name"] == "remember"
    reviews = [
        v
        for v in distinct(history, "stepbus.critique.completed")
        if v["data"]["kind"] == "tool_call"
    ]
    assert [v["data"]["approved"] for v in reviews] == [True]
    assert len(distinct(history, "stepbus.tool.call_completed")) == 1


# The last two tests stop and kill the critic: its group rejoins after them, not before
# another test's critique.


async def test_a_dead_critic_delays_a_task_by_the_critique_timeout_only(stack: Stack) -> None:
    critic = stack.services["critic"].process
    assert critic is not None
    critic.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        task_id, events = await run_task(stack, {"input": "What is 17 * 23?"})
        elapsed = time.monotonic() - started
    finally:
        critic.send_signal(signal.SIGCONT)

    data = completed(events, task_id)
    assert (data["output"], data["critic"]["judged"]) == ("391", False)
    assert CRITIQUE_TIMEOUT <= elapsed < CRITIQUE_TIMEOUT + 10
    [failure] = distinct(await journal(stack, task_id), "stepbus.critique.failed")
    assert failure["data"]["reason"] == "timed_out"


async def test_killing_the_critic_and_the_planner_mid_critique_loses_nothing(
    stack: Stack,
) -> None:
    critic, planner = stack.services["critic"], stack.services["planner"]
    assert critic.process is not None
    async with (
        TopicReader(stack.bootstrap, stack.topics.results) as results,
        TopicReader(stack.bootstrap, stack.topics.critic_requests) as requests,
    ):
        critic.process.send_signal(signal.SIGSTOP)  # the request waits, unanswered
        task_id = await submit(stack, {"input": "What is 17 * 23? [draft=weak]"})
        await requests.wait_for(
            lambda ev: of(ev, task_id, "stepbus.critique.requested"), 30, "the critique request"
        )
        planner.stop(signal.SIGKILL)
        critic.stop(signal.SIGKILL)
        critic.start()
        await critic.wait_ready()
        planner.start()
        await planner.wait_ready()
        await results.wait_for(lambda ev: terminals(ev, task_id), 60, "the task to finish")

    data = completed(results.events(), task_id)
    history = await journal(stack, task_id)
    verdicts = distinct(history, "stepbus.critique.completed") + distinct(
        history, "stepbus.critique.failed"
    )
    steps = [v["data"]["step"] for v in verdicts]
    assert len(steps) == len(set(steps)), "a draft was judged twice"
    requested = await topic_events(stack, stack.topics.critic_requests, task_id)
    asked = distinct(requested, "stepbus.critique.requested")
    assert sorted(r["data"]["step"] for r in asked) == sorted(set(steps))
    # The restarted critic judged the weak draft and its revision; nothing timed out.
    assert (data["output"], data["critic"]["judged"], steps) == ("391", True, [1, 2])
    assert len(data["critic"]["rounds"]) == len(steps)
    decided = {json.dumps(e, sort_keys=True) for e in history if e["type"] == "stepbus.llm.decided"}
    assert len(decided) == len({json.loads(d)["data"]["step"] for d in decided})
