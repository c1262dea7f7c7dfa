"""End to end: tasks published by a plain Kafka client run through the real services."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from ..harness import TopicReader, auth
from .conftest import Stack

pytestmark = pytest.mark.e2e

TERMINAL = {"stepbus.task.completed", "stepbus.task.failed", "stepbus.task.cancelled"}


def cloudevent(task_id: str, data: dict[str, Any], tenant: str = "acme") -> bytes:
    """A task submission written by hand, exactly as the README shows it."""
    return json.dumps(
        {
            "specversion": "1.0",
            "type": "stepbus.task.submitted",
            "source": "urn:example:billing",
            "id": str(uuid.uuid4()),
            "subject": task_id,
            "time": "2026-11-25T12:00:00Z",
            "datacontenttype": "application/json",
            "tenant": tenant,
            "data": data,
        }
    ).encode()


async def publish_plain(bootstrap: str, topic: str, records: list[tuple[str, bytes]]) -> None:
    """Publish with kcat (a plain Kafka client) when installed, else a bare aiokafka producer."""
    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    if kcat:
        for key, value in records:
            process = await asyncio.create_subprocess_exec(
                kcat, "-P", "-b", bootstrap, "-t", topic, "-k", key, stdin=asyncio.subprocess.PIPE
            )
            await asyncio.wait_for(process.communicate(value), 30)
            assert process.returncode == 0, f"kcat failed with {process.returncode}"
        return
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key.encode())
    finally:
        await producer.stop()


def terminals(events: list[dict[str, Any]], task_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e["subject"] == task_id and e["type"] in TERMINAL]


async def run_task(stack: Stack, data: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """Submit one task; return its id and every results event once it ended (plus a margin)."""
    task_id = f"task-{uuid.uuid4().hex[:8]}"
    async with TopicReader(stack.bootstrap, stack.topics.results) as results:
        await publish_plain(
            stack.bootstrap, stack.topics.tasks, [(task_id, cloudevent(task_id, data))]
        )
        await results.wait_for(lambda ev: terminals(ev, task_id), 60, f"{task_id} to end")
        return task_id, [e for e in results.events() if e["subject"] == task_id]


async def test_cloudevent_from_plain_kafka_client_completes_exactly_once(stack: Stack) -> None:
    task_id, events = await run_task(
        stack, {"input": "What is 17 * 23?", "session_id": "s-1", "tools": ["calculator"]}
    )
    ends = terminals(events, task_id)
    assert [e["type"] for e in ends] == ["stepbus.task.completed"]
    assert ends[0]["data"]["output"] == "391"
    assert ends[0]["tenant"] == "acme"
    stages = [e["data"]["stage"] for e in events if e["type"] == "stepbus.task.progress"]
    assert stages == ["accepted", "memory", "action", "observation", "critique", "critique"]


async def test_multi_step_task_runs_one_tool_call_per_step(stack: Stack) -> None:
    task_id, events = await run_task(
        stack, {"input": "Compute 1+2, then (3*4)-5, then 2^10", "max_iterations": 8}
    )
    end = terminals(events, task_id)[0]
    assert end["type"] == "stepbus.task.completed"
    assert end["data"]["output"] == "Results: 3, 7, 1024"
    assert end["data"]["steps"] == 4  # three tool steps and the final answer


async def test_max_iterations_ends_a_looping_task_with_failed(stack: Stack) -> None:
    task_id, events = await run_task(stack, {"input": "[loop] keep adding", "max_iterations": 3})
    ends = terminals(events, task_id)
    assert len(ends) == 1
    assert ends[0]["type"] == "stepbus.task.failed"
    assert ends[0]["data"]["reason"] == "max_iterations"
    assert "3 steps" in ends[0]["data"]["message"]
    assert ends[0]["data"]["steps"] == 3


async def test_unknown_tool_fails_the_task_with_a_clear_reason(stack: Stack) -> None:
    task_id, events = await run_task(stack, {"input": "What is 2+2?", "tools": ["shell"]})
    end = terminals(events, task_id)[0]
    assert end["type"] == "stepbus.task.failed"
    assert end["data"]["reason"] == "invalid_task"
    assert "shell" in end["data"]["message"] and "calculator" in end["data"]["message"]


async def test_poison_records_on_tasks_go_to_dlq_and_the_next_task_completes(
    stack: Stack,
) -> None:
    task_id = f"task-{uuid.uuid4().hex[:8]}"
    async with (
        TopicReader(stack.bootstrap, stack.topics.results) as results,
        TopicReader(stack.bootstrap, stack.topics.dlq) as dlq,
    ):
        await publish_plain(
            stack.bootstrap,
            stack.topics.tasks,
            [
                ("poison-1", b"this is not json"),
                ("poison-2", cloudevent("poison-2", {"input": ""})),  # schema-invalid: empty
                (task_id, cloudevent(task_id, {"input": "What is 6 * 7?"})),
            ],
        )
        await results.wait_for(lambda ev: terminals(ev, task_id), 60, "the valid task")
        await dlq.wait_for(
            lambda _: {b"poison-1", b"poison-2"} <= {r.key for r in dlq.records}, 30, "DLQ"
        )
    assert terminals(results.events(), task_id)[0]["data"]["output"] == "42"
    reasons = {r.key: dict(r.headers)["stepbus.error"] for r in dlq.records}
    assert b"invalid event" in reasons[b"poison-1"]
    assert b"data.input" in reasons[b"poison-2"]


async def test_gateway_accepts_at_once_and_streams_progress_until_the_result(
    stack: Stack,
) -> None:
    assert stack.gateway_url is not None, "the gateway service is part of the stack"
    headers = auth("acme")
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
        response = await client.post(
            "/v1/tasks",
            json={"input": "What is 17 * 23?", "tools": ["calculator"]},
            headers=headers,
        )
        assert response.status_code == 202
        task = response.json()
        types: list[str] = []
        final: dict[str, Any] = {}
        async with client.stream("GET", task["events_url"], headers=headers) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            async for line in stream.aiter_lines():
                if line.startswith("event:"):
                    types.append(line[6:].strip())
                elif line.startswith("data:") and types[-1] in TERMINAL:
                    final = json.loads(line[5:])
        status = (await client.get(task["status_url"], headers=headers)).json()
        hidden = await client.get(task["status_url"], headers=auth("other"))
    assert types[0] == "stepbus.task.progress"
    assert types[-1] == "stepbus.task.completed"  # the stream ends after the terminal event
    assert sum(t in TERMINAL for t in types) == 1
    assert final["data"]["output"] == "391"
    assert status["status"] == "completed" and status["output"] == "391"
    assert hidden.status_code == 404


async def test_a_transient_llm_error_is_retried_and_the_task_completes(stack: Stack) -> None:
    # The scripted model answers 503 (Retry-After: 0) the first time it sees each request.
    task_id, events = await run_task(stack, {"input": "What is 12 * 12? [fail=503]"})
    [end] = terminals(events, task_id)
    assert end["type"] == "stepbus.task.completed"
    assert end["data"]["output"] == "144"


async def test_a_persistent_llm_error_fails_the_task_with_llm_error(stack: Stack) -> None:
    task_id, events = await run_task(stack, {"input": "What is 12 * 12? [fail=400]"})
    [end] = terminals(events, task_id)
    assert end["type"] == "stepbus.task.failed"
    assert end["data"]["reason"] == "llm_error"
    assert "400" in end["data"]["message"]


async def _messages(stream: httpx.Response) -> AsyncIterator[dict[str, str]]:
    """The SSE messages of a stream (comments skipped)."""
    message: dict[str, str] = {}
    async for line in stream.aiter_lines():
        if line == "":
            if message:
                yield message
            message = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            message[name] = value.removeprefix(" ")


async def test_a_stream_resumed_after_a_gateway_sigkill_gets_each_later_event_once(
    stack: Stack,
) -> None:
    assert stack.gateway_url is not None
    headers = auth("acme")
    # Slow model steps: the task is still running while the gateway is killed.
    body = {"input": "Compute 1+2, then 3+4, then 5+6 [latency=700]", "tools": ["calculator"]}
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
        task = (await client.post("/v1/tasks", json=body, headers=headers)).json()
        first: list[dict[str, str]] = []
        async with client.stream("GET", task["events_url"], headers=headers) as stream:
            async for message in _messages(stream):
                first.append(message)
                if len(first) == 3:
                    break
    gateway = stack.services["gateway"]
    gateway.stop(signal.SIGKILL)
    gateway.start()
    await gateway.wait_ready()
    rest: list[dict[str, str]] = []
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        resume = {**headers, "Last-Event-ID": first[-1]["id"]}
        async with client.stream("GET", task["events_url"], headers=resume) as stream:
            assert stream.status_code == 200
            rest = [message async for message in _messages(stream)]
    async with TopicReader(stack.bootstrap, stack.topics.results) as results:
        await results.wait_for(lambda ev: terminals(ev, task["task_id"]), 30, "the result")
        published = [e["id"] for e in results.events() if e["subject"] == task["task_id"]]
    received = [m["id"] for m in first + rest]
    assert len(received) == len(set(received))  # nothing twice
    assert received == list(dict.fromkeys(published))  # everything, once, in order
    assert rest[-1]["event"] == "stepbus.task.completed"


def cli(
    stack: Stack | None, *args: str, key: str = "test-key-acme-0123456789"
) -> subprocess.CompletedProcess[str]:
    """Run the ``stepbus`` CLI against the stack's gateway (None: an address nothing serves)."""
    url = stack.gateway_url if stack is not None else "http://127.0.0.1:9"
    assert url is not None
    env = {**os.environ, "STEPBUS_URL": url, "STEPBUS_API_KEY": key}
    return subprocess.run(
        [sys.executable, "-m", "stepbus_cli", *args],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


async def test_the_cli_submits_follows_the_steps_and_prints_the_answer(stack: Stack) -> None:
    followed = await asyncio.to_thread(
        cli, stack, "submit", "What is 17 * 23?", "--tool", "calculator", "--follow"
    )
    assert followed.returncode == 0, followed.stderr
    lines = followed.stdout.splitlines()
    task_id = lines[0].strip()  # the id first
    assert "action" in followed.stdout and "calculator" in followed.stdout
    assert "answer: 391" in followed.stdout
    status = await asyncio.to_thread(cli, stack, "status", task_id, "--json")
    assert json.loads(status.stdout)["status"] == "completed"
    scripted = await asyncio.to_thread(
        cli, stack, "submit", "What is 2 + 3?", "--tool", "calculator", "--follow", "--json"
    )
    events = [json.loads(line) for line in scripted.stdout.splitlines()]
    assert events[0]["status"] == "submitted" and events[-1]["type"] == "stepbus.task.completed"
    refused = await asyncio.to_thread(cli, stack, "status", task_id, key="nope-0123456789abcdef")
    assert refused.returncode == 3 and "STEPBUS_API_KEY" in refused.stderr
    down = await asyncio.to_thread(cli, None, "status", task_id)
    assert down.returncode == 3 and "cannot reach the gateway" in down.stderr
