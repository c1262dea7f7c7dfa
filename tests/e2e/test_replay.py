"""Regression replay, end to end: ``stepbus replay`` and ``stepbus export`` as a user runs
them, against tasks the real stack recorded (a calculator task of four steps, and a call of a
real MCP server whose effect is a line in a file, with claim-checked payloads)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from stepbus_runtime.claimcheck import claim_reference

from ..harness import ServiceProcess, TopicReader, free_port, wait_until
from .conftest import Stack, mcp_server_files, running_stack
from .test_task_flow import cloudevent, publish_plain, run_task, terminals

pytestmark = pytest.mark.e2e

SERVER = Path(__file__).with_name("mcp_effects_server.py")
TOOL = "effects__append_slowly"
STEPBUS = Path(sys.executable).with_name("stepbus")
LONG_LINE = "x" * 1500
"""An argument and a result above the claim-check threshold (1024 bytes here)."""
SECRET = "s3cret-value-never-exported"


@pytest.fixture(scope="module")
async def stack(kafka_bootstrap: str, redis_url: str) -> AsyncIterator[Stack]:
    files = mcp_server_files("replay", "effects", SERVER, STEPBUS_TEST_DELAY="0")
    env = {
        "STEPBUS_MCP_CONFIG": str(files / "mcp.json"),
        "STEPBUS_CLAIM_CHECK_THRESHOLD_BYTES": "1024",
    }
    async with running_stack(kafka_bootstrap, redis_url, env=env, gateway=False) as running:
        running.files = files  # type: ignore[attr-defined]
        yield running


@pytest.fixture(scope="module")
async def recorded(stack: Stack) -> dict[str, str]:
    """Two recorded tasks: ``calc`` (three tool calls, then the answer) and ``mcp``."""
    calc, events = await run_task(
        stack,
        {
            "input": "What is 17 * 23, then (391 - 1) / 2, then 2 + 2?",
            "tools": ["calculator"],
            "metadata": {"api_key": SECRET, "team": "ops"},
        },
    )
    [end] = terminals(events, calc)
    assert end["data"]["output"] == "Results: 391, 195, 4"
    mcp, events = await run_task(
        stack,
        {"input": f'Note it [tool={TOOL}] {{"line": "{LONG_LINE}"}}', "tools": [TOOL]},
    )
    [end] = terminals(events, mcp)
    assert end["type"] == "stepbus.task.completed"
    return {"calc": calc, "mcp": mcp}


def stepbus(stack: Stack, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The ``stepbus`` command, configured like the stack's planner."""
    return subprocess.run(
        [str(STEPBUS), *args],
        env={**os.environ, **stack.services["planner"].env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def record_count(stack: Stack, topic: str) -> int:
    async with TopicReader(stack.bootstrap, topic) as reader:
        for _ in range(20):
            await reader.poll()
        return len(reader.records)


async def replay_topics(stack: Stack) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        return [
            t for t in await admin.list_topics() if t.startswith(f"{stack.topics.prefix}replay.")
        ]
    finally:
        await admin.close()


async def redeliver_a_journal_record(stack: Stack, task_id: str) -> None:
    """Publish one of the task's journal records again, byte for byte: what a crash between a
    publish and its commit leaves on the journal."""
    async with TopicReader(stack.bootstrap, stack.topics.planner_history) as history:
        await history.wait_for(
            lambda ev: [e for e in ev if e["subject"] == task_id], 30, "the journal"
        )
        decided = [
            r
            for r in history.records
            if r.key == task_id.encode() and b'"stepbus.llm.decided"' in r.value
        ]
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
    await producer.start()
    try:
        record = decided[1]
        await producer.send_and_wait(
            stack.topics.planner_history, record.value, key=record.key, partition=record.partition
        )
    finally:
        await producer.stop()


async def test_replay_with_recorded_answers_reproduces_every_decision_and_runs_nothing(
    stack: Stack, recorded: dict[str, str]
) -> None:
    files: Path = stack.files  # type: ignore[attr-defined]
    await redeliver_a_journal_record(stack, recorded["calc"])
    async with TopicReader(stack.bootstrap, stack.topics.planner_history) as history:
        await history.wait_for(lambda ev: ev, 30, "the journal")
        for _ in range(20):
            await history.poll()
        claimed = [
            r
            for r in history.records
            if r.key == recorded["mcp"].encode() and claim_reference(r.value) is not None
        ]
    assert claimed, "the MCP task's journal holds claim-checked records"
    effects, calls = lines(files / "effects.jsonl"), lines(files / "calls.jsonl")
    ledger = await record_count(stack, stack.topics.tool_ledger)

    done = await asyncio.to_thread(stepbus, stack, "replay", recorded["calc"], recorded["mcp"])

    assert done.returncode == 0, done.stdout + done.stderr
    assert "same: every decision reproduced (4 steps)" in done.stdout
    assert "same: every decision reproduced (2 steps)" in done.stdout
    assert 'calculator {"expression": "(391 - 1) / 2"}' in done.stdout
    assert "not recorded" not in done.stdout
    # Nothing ran: no tool call reached the MCP server, the ledger holds what it held.
    assert (lines(files / "effects.jsonl"), lines(files / "calls.jsonl")) == (effects, calls)
    assert await record_count(stack, stack.topics.tool_ledger) == ledger
    assert await replay_topics(stack) == []  # the namespace is cleaned up


async def test_a_changed_prompt_diverges_at_the_final_step_and_a_suite_fails_past_the_threshold(
    stack: Stack, recorded: dict[str, str], tmp_path: Path
) -> None:
    suite, prompt = tmp_path / "suite.jsonl", tmp_path / "prompt.txt"
    prompt.write_text("You are a careful assistant. Give the bare results. [terse]\n")
    exported = await asyncio.to_thread(
        stepbus, stack, "export", recorded["calc"], recorded["mcp"], "--out", str(suite)
    )
    assert exported.returncode == 0, exported.stderr
    text = suite.read_text()
    assert SECRET not in text and '"api_key":"[redacted]"' in text
    assert LONG_LINE in text  # claim checks resolved: the payloads themselves are in the file
    assert {json.loads(line)["subject"] for line in text.splitlines()} == set(recorded.values())

    same = await asyncio.to_thread(
        stepbus, stack, "replay", "--suite", str(suite), "--model", "live"
    )
    assert same.returncode == 0, same.stdout + same.stderr
    assert "2 tasks: 2 same, 0 diverged, 0 failed" in same.stdout

    changed = await asyncio.to_thread(
        stepbus, stack, "replay", "--suite", str(suite), "--model", "live", "--prompt", str(prompt)
    )
    assert changed.returncode == 1, changed.stdout + changed.stderr
    assert f"{recorded['calc']}  acme              diverged at step 3" in changed.stdout
    assert 'answer "Results: 391, 195, 4"' in changed.stdout
    assert 'answer "391, 195, 4"' in changed.stdout
    assert "<- diverged at step 3" in changed.stdout
    assert "2 tasks: 1 same, 1 diverged, 0 failed" in changed.stdout

    tolerated = await asyncio.to_thread(
        stepbus, stack, "replay", "--suite", str(suite), "--model", "live", "--prompt",
        str(prompt), "--max-diverged", "1",
    )  # fmt: skip
    assert tolerated.returncode == 0, tolerated.stdout + tolerated.stderr

    one = await asyncio.to_thread(
        stepbus, stack, "replay", recorded["calc"], "--model", "live", "--prompt", str(prompt),
        "--from-step", "3",
    )  # fmt: skip
    assert one.returncode == 1 and "<- diverged at step 3" in one.stdout, one.stdout


async def test_what_cannot_be_replayed_exits_2_with_a_clear_error(
    stack: Stack, tmp_path: Path
) -> None:
    missing = await asyncio.to_thread(stepbus, stack, "replay", "no-such-task")
    assert missing.returncode == 2
    assert "no journal for task 'no-such-task'" in missing.stderr

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"specversion": "1.0"}\n')
    broken = await asyncio.to_thread(stepbus, stack, "replay", "--suite", str(bad))
    assert broken.returncode == 2
    assert f"{bad}:1: not a journal event" in broken.stderr


async def journal_records(stack: Stack, task_id: str) -> list[bytes]:
    """The task's journal records, byte for byte."""
    async with TopicReader(stack.bootstrap, stack.topics.planner_history) as history:
        for _ in range(20):
            await history.poll()
        return [r.value for r in history.records if r.key == task_id.encode()]


async def ledger_keys(stack: Stack, prefix: str) -> set[str]:
    async with TopicReader(stack.bootstrap, stack.topics.tool_ledger) as ledger:
        for _ in range(20):
            await ledger.poll()
        keys = {r.key.decode() for r in ledger.records if r.key is not None}
        return {k for k in keys if k.startswith(prefix)}


async def test_a_fork_at_step_2_continues_live_to_a_result_and_leaves_the_original_untouched(
    stack: Stack, recorded: dict[str, str]
) -> None:
    calc = recorded["calc"]
    forked = f"{calc}.fork"
    original = await journal_records(stack, calc)

    done = await asyncio.to_thread(stepbus, stack, "fork", calc, "--at-step", "2", "--as", forked)

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        f"{forked}  (fork of {calc} at step 2)",
        "Results: 391, 195, 4",
    ]
    journal = [json.loads(v) for v in await journal_records(stack, forked)]
    assert journal[0]["type"] == "stepbus.task.accepted"
    assert journal[0]["data"]["fork"] == {"task_id": calc, "step": 2, "input": None}
    copied = [
        (e["type"], e["data"].get("step")) for e in journal if e["source"] == "urn:stepbus:fork"
    ]
    assert copied == [
        ("stepbus.memory.recalled", None),  # the model reads the memory the original read
        ("stepbus.llm.decided", 0),
        ("stepbus.tool.call_completed", 0),
        ("stepbus.llm.decided", 1),
        ("stepbus.tool.call_completed", 1),
    ]
    live = [e["data"]["step"] for e in journal if e["type"] == "stepbus.llm.decided"][2:]
    assert live == [2, 3]  # decided by the model, after the copy
    # Only the live step's call ran: the copied calls have outcomes and never reach a tool.
    assert await ledger_keys(stack, f"{forked}#") == {f"{forked}#{forked}:2:0"}
    assert await journal_records(stack, calc) == original

    other = await asyncio.to_thread(stepbus, stack, "fork", calc, "--at-step", "9")
    assert other.returncode == 2
    assert f"task {calc!r} has steps 0-3: cannot fork at step 9" in other.stderr


SHADOWED = [
    {"input": "What is 17 * 23, then (391 - 1) / 2, then 2 + 2?", "tools": ["calculator"]},
    {"input": "Compute 1+2, then (3*4)-5, then 2^10", "tools": ["calculator"]},
    {"input": "What is 17 * 23?", "tools": ["calculator"]},
]
LIVE_TOPICS = ("results", "planner_history", "tool_calls", "memory_requests", "critic_requests")


async def run_batch(stack: Stack, tenant: str) -> list[str]:
    """Submit the ``SHADOWED`` tasks at once as ``tenant`` (its memory is empty); their ids once
    every one has ended."""
    ids = [f"{tenant}-{i}" for i in range(len(SHADOWED))]
    async with TopicReader(stack.bootstrap, stack.topics.results) as results:
        await publish_plain(
            stack.bootstrap,
            stack.topics.tasks,
            [
                (i, cloudevent(i, body, tenant=tenant))
                for i, body in zip(ids, SHADOWED, strict=True)
            ],
        )
        await results.wait_for(
            lambda ev: all(terminals(ev, i) for i in ids), 90, "the batch to end"
        )
    return ids


async def live_records(stack: Stack, ids: list[str]) -> dict[str, list[list[Any]]]:
    """Per live topic, per task (in order): what its records say, less what differs between
    two runs by construction (ids, times, tenant, durations)."""
    volatile = {"id", "time", "tenant", "subject", "traceparent", "tracestate"}
    out: dict[str, list[list[Any]]] = {}
    for name in LIVE_TOPICS:
        async with TopicReader(stack.bootstrap, getattr(stack.topics, name)) as reader:
            for _ in range(20):
                await reader.poll()
            per_task = []
            for task_id in ids:
                values = [r.value for r in reader.records if r.key == task_id.encode()]
                per_task.append([_stable(json.loads(v), volatile) for v in values])
            out[name] = per_task
    return out


def _stable(value: Any, volatile: set[str]) -> Any:
    if isinstance(value, dict):
        return {
            k: _stable(v, volatile)
            for k, v in value.items()
            if k not in volatile and not k.endswith(("_ms", "_at", "_by", "_id", "_key", "seconds"))
        }
    if isinstance(value, list):
        return [_stable(v, volatile) for v in value]
    return value


async def test_a_shadow_planner_changes_no_live_result_and_its_report_counts_the_divergences(
    stack: Stack,
) -> None:
    run = uuid.uuid4().hex[:6]
    baseline = await run_batch(stack, f"base{run}")
    port = free_port()
    shadow = ServiceProcess(
        "planner-shadow",
        ["stepbus_planner", "--shadow", f"terse{run}"],
        {
            **stack.services["planner"].env,
            "STEPBUS_PLANNER_METRICS_PORT": str(port),
            "STEPBUS_PLANNER_SYSTEM_PROMPT": "You are a careful assistant. Give the bare "
            "results. [terse]",
        },
        f"http://127.0.0.1:{port}/readyz",
    )
    shadow.start()
    try:
        await shadow.wait_ready()
        shadowed = await run_batch(stack, f"shad{run}")

        async def compared() -> dict[str, Any] | None:
            done = await asyncio.to_thread(stepbus, stack, "shadow-report", f"terse{run}", "--json")
            assert done.returncode == 0, done.stderr
            document = json.loads(done.stdout)
            return document if document["compared"] == len(SHADOWED) else None

        report = await wait_until(compared, 60, "the shadow to finish its tasks")
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    finally:
        shadow.stop()

    # Production saw nothing of the shadow: every live topic holds, for each task, the same
    # records as for the same task without a shadow.
    assert await live_records(stack, shadowed) == await live_records(stack, baseline)
    # The changed prompt shortens both multi-result answers; the single result is the same.
    assert (report["same"], report["diverged"], report["running"]) == (1, 2, 0)
    by_task = {t["task_id"]: t for t in report["tasks"]}
    assert by_task[shadowed[0]]["diverged_at"] == 3 and by_task[shadowed[1]]["diverged_at"] == 3
    assert by_task[shadowed[2]]["status"] == "same"
    assert report["tokens"]["live"] > 0 and report["tokens"]["shadow"] > 0
    # Its work is counted as shadow work, never as production's.
    assert 'stepbus_tasks_finished_total{mode="shadow",outcome="completed",reason=""} 3.0' in (
        metrics
    )
    assert 'mode="live"' not in metrics.split("stepbus_tasks_finished_total", 1)[1][:2000]

    text = await asyncio.to_thread(stepbus, stack, "shadow-report", f"terse{run}")
    assert f"shadow terse{run}: 3 tasks compared, 2 diverged, 0 still running" in text.stdout
    assert "<- diverged at step 3" in text.stdout
    gate = await asyncio.to_thread(
        stepbus, stack, "shadow-report", f"terse{run}", "--max-diverged", "1"
    )
    assert gate.returncode == 1
