"""One OpenTelemetry trace per task across every service, exported over OTLP/HTTP.

Every service runs as its own process, exporting to a receiver this module runs (``tests.otlp``);
the traces, links and metrics checked here are what a Jaeger or a Prometheus would receive.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..harness import LOGS, REPO, TopicReader, auth
from ..otlp import OtlpReceiver, Span
from .conftest import Stack, running_stack
from .test_task_flow import cloudevent, publish_plain, terminals

pytestmark = pytest.mark.e2e

SERVICES = {"gateway", "planner", "tool-executor", "memory", "critic"}


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[OtlpReceiver]:
    async with OtlpReceiver() as running:
        yield running


@pytest.fixture(scope="module")
async def stack(
    kafka_bootstrap: str, redis_url: str, receiver: OtlpReceiver
) -> AsyncIterator[Stack]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2",  # a black-holed collector fails an export in 2 s
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        # Records past the last commit are handled again after a crash: with a long interval
        # the killed planner's whole recent work is redelivered to its successor.
        "STEPBUS_PLANNER_COMMIT_INTERVAL_SECONDS": "60",
    }
    async with running_stack(kafka_bootstrap, redis_url, env=env) as running:
        yield running


def _task_spans(receiver: OtlpReceiver, task_id: str) -> list[Span]:
    roots = [
        s
        for s in receiver.spans
        if s.name == "invoke_agent stepbus" and s.attributes.get("stepbus.task.id") == task_id
    ]
    return receiver.spans_of_trace(roots[0].trace_id) if roots else []


async def _whole_trace(receiver: OtlpReceiver, task_id: str, needs: set[str]) -> list[Span]:
    """The task's spans once its root and a span of each name prefix in ``needs`` arrived
    (and nothing more came for half a second)."""

    def complete() -> list[Span] | None:
        spans = _task_spans(receiver, task_id)
        names = {s.name.split(" ")[0] for s in spans}
        return spans if spans and needs <= names else None

    await receiver.wait_for(lambda _: complete(), 30, f"the trace of {task_id}")
    count = -1
    while count != len(_task_spans(receiver, task_id)):  # settle: late batches
        count = len(_task_spans(receiver, task_id))
        await asyncio.sleep(0.5)
    return _task_spans(receiver, task_id)


async def _metrics(
    stack: Stack, service: str
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    url = stack.services[service].ready_url.replace("/readyz", "/metrics")
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(url)).text
    values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return values


def _total(
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and wanted <= ls)


def _keep(spans: list[Span], task_id: str) -> None:
    """Save the trace as JSON beside the test logs; with ``STEPBUS_UPDATE_SCREENSHOT`` set,
    also refresh the picture of it in ``docs/`` (``stepbus_devtools.trace_picture``)."""
    rows = [
        {
            "trace_id": s.trace_id,
            "span_id": s.span_id,
            "parent_span_id": s.parent_span_id,
            "name": s.name,
            "kind": s.kind,
            "service": s.service,
            "start_ns": s.start_ns,
            "end_ns": s.end_ns,
            "attributes": s.attributes,
            "links": [
                {"trace_id": k.trace_id, "span_id": k.span_id, "attributes": k.attributes}
                for k in s.links
            ],
            "status": s.status,
        }
        for s in spans
    ]
    path = LOGS / f"trace-{task_id}.json"
    path.write_text(json.dumps(rows, indent=1, default=str))
    if os.environ.get("STEPBUS_UPDATE_SCREENSHOT"):
        from stepbus_devtools.trace_picture import render_png

        render_png(rows, REPO / "docs" / "trace-example.png")


async def _submit_via_gateway(stack: Stack, text: str) -> str:
    assert stack.gateway_url is not None
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as client:
        answer = await client.post(
            "/v1/tasks", json={"input": text, "tools": ["calculator"]}, headers=auth()
        )
        assert answer.status_code == 202, answer.text
        return str(answer.json()["task_id"])


async def test_one_task_is_one_trace_across_all_five_services(
    stack: Stack, receiver: OtlpReceiver
) -> None:
    async with TopicReader(stack.bootstrap, stack.topics.results) as results:
        task_id = await _submit_via_gateway(stack, "Compute 5*5, then 6*6")
        await results.wait_for(lambda ev: terminals(ev, task_id), 60, "the task to end")
        [end] = terminals(results.events(), task_id)
        accepted = [
            e
            for e in results.events()
            if e["subject"] == task_id and e["data"].get("stage") == "accepted"
        ]
    assert end["type"] == "stepbus.task.completed", end
    spans = await _whole_trace(
        receiver, task_id, {"invoke_agent", "chat", "execute_tool", "recall", "critique", "send"}
    )
    _keep(spans, task_id)
    ids = {s.span_id for s in spans}
    [root] = [s for s in spans if s.parent_span_id is None]
    assert root.name == "invoke_agent stepbus"
    # One tree: every other span's parent is in the trace.
    assert all(s.parent_span_id in ids for s in spans if s is not root)
    assert {s.service for s in spans} >= SERVICES
    # Every span of the task names it; the trace id is on the public `accepted` progress.
    assert all(s.attributes.get("stepbus.task.id") == task_id for s in spans)
    assert all(s.attributes.get("stepbus.tenant") == "acme" for s in spans)
    assert accepted and accepted[0]["data"]["trace_id"] == root.trace_id
    # GenAI conventions, with the recorded token counts.
    chats = [s for s in spans if s.name.startswith("chat ")]
    for chat in chats:
        assert chat.kind == "CLIENT"
        assert chat.attributes["gen_ai.operation.name"] == "chat"
        assert chat.attributes["gen_ai.provider.name"] == "openai"
        assert chat.attributes["gen_ai.request.model"] == "stepbus-scripted"
        assert chat.attributes["gen_ai.response.model"]
        assert chat.attributes["gen_ai.response.finish_reasons"]
        assert "gen_ai.input.messages" not in chat.attributes  # contents only when asked
    usage = end["data"]["usage"]
    assert sum(c.attributes["gen_ai.usage.input_tokens"] for c in chats) == usage["prompt_tokens"]
    assert (
        sum(c.attributes["gen_ai.usage.output_tokens"] for c in chats) == usage["completion_tokens"]
    )
    assert root.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert {c.service for c in chats} == {"planner", "critic"}
    tools = [s for s in spans if s.name.startswith("execute_tool ")]
    assert len(tools) == 2
    assert {t.attributes["gen_ai.tool.name"] for t in tools} == {"calculator"}
    assert len({t.attributes["gen_ai.tool.call.id"] for t in tools}) == 2
    [recall] = [s for s in spans if s.name == "recall memory"]
    assert recall.service == "memory" and "stepbus.memory.hits" in recall.attributes
    critiques = [s for s in spans if s.name.startswith("critique ")]
    assert critiques and all("stepbus.critic.score" in c.attributes for c in critiques)
    # Messaging spans: a process span per record handled, under what sent it.
    processes = [s for s in spans if s.name.startswith("process ")]
    assert processes and all(s.kind == "CONSUMER" for s in processes)
    assert all(s.attributes["messaging.system"] == "kafka" for s in processes)
    # The root covers the task's life.
    assert root.start_ns <= min(s.start_ns for s in spans)
    assert root.end_ns >= max(s.end_ns for s in spans if s.service == "planner") - 1_000_000


async def test_a_task_published_with_kcat_continues_the_upstream_trace(
    stack: Stack, receiver: OtlpReceiver
) -> None:
    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    assert kcat is not None, "kcat is installed by .ci/run"
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    task_id = f"task-{uuid.uuid4().hex[:8]}"
    async with TopicReader(stack.bootstrap, stack.topics.results) as results:
        process = await asyncio.create_subprocess_exec(
            kcat, "-P", "-b", stack.bootstrap, "-t", stack.topics.tasks, "-k", task_id,
            "-H", f"traceparent=00-{trace_id}-{parent_id}-01",
            stdin=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await asyncio.wait_for(
            process.communicate(cloudevent(task_id, {"input": "What is 2+3?"})), 30
        )
        assert process.returncode == 0
        await results.wait_for(lambda ev: terminals(ev, task_id), 60, "the task to end")
    spans = await _whole_trace(receiver, task_id, {"invoke_agent", "chat"})
    [root] = [s for s in spans if s.name == "invoke_agent stepbus"]
    assert (root.trace_id, root.parent_span_id) == (trace_id, parent_id)
    assert all(s.trace_id == trace_id for s in spans)


async def test_a_killed_planner_replays_with_links_and_counts_tokens_once(
    stack: Stack, receiver: OtlpReceiver
) -> None:
    planner = stack.services["planner"]
    executor = stack.services["tool-executor"].process
    assert executor is not None
    task_id = f"task-{uuid.uuid4().hex[:8]}"
    base = _total(await _metrics(stack, "planner"), "stepbus_model_tokens_total")
    async with TopicReader(stack.bootstrap, stack.topics.results) as results:
        executor.send_signal(signal.SIGSTOP)  # park the task at its first tool call
        try:
            await publish_plain(
                stack.bootstrap,
                stack.topics.tasks,
                [(task_id, cloudevent(task_id, {"input": "Compute 5*5, then 6*6, then 7*7"}))],
            )
            await results.wait_for(
                lambda ev: [
                    e for e in ev if e["subject"] == task_id and e["data"].get("stage") == "action"
                ],
                30,
                "the first tool call",
            )
            await asyncio.sleep(1.0)  # the spans of the first step are exported (200 ms)
            before = _total(await _metrics(stack, "planner"), "stepbus_model_tokens_total")
            planner.stop(signal.SIGKILL)
            planner.start()
            await planner.wait_ready()
        finally:
            executor.send_signal(signal.SIGCONT)
        await results.wait_for(lambda ev: terminals(ev, task_id), 60, "the task to end")
    [end] = terminals(results.events(), task_id)
    assert end["data"]["output"] == "Results: 25, 36, 49"
    after = _total(await _metrics(stack, "planner"), "stepbus_model_tokens_total")
    async with TopicReader(stack.bootstrap, stack.topics.planner_history) as history:
        await history.wait_for(
            lambda ev: [e for e in ev if e["subject"] == task_id and e["type"] in TERMINAL],
            30,
            "the journal",
        )
        decided = {
            json.dumps(e, sort_keys=True): e
            for e in history.events()
            if e["subject"] == task_id and e["type"] == "stepbus.llm.decided"
        }.values()
    recorded = sum(
        d["data"]["usage"]["prompt_tokens"] + d["data"]["usage"]["completion_tokens"]
        for d in decided
    )
    assert Counter(d["data"]["step"] for d in decided) == Counter({0: 1, 1: 1, 2: 1, 3: 1})
    # The killed planner counted what it recorded, its successor the rest: not more.
    assert (before - base) + after == recorded
    spans = await _whole_trace(receiver, task_id, {"invoke_agent", "execute_tool"})
    replays = [s for s in spans if s.attributes.get("stepbus.replay") is True]
    assert replays, "the successor handled the redelivered journal records"
    ids = {s.span_id: s for s in spans}
    originals = [
        ids[link.span_id]
        for replay in replays
        for link in replay.links
        if link.attributes.get("stepbus.link") == "original" and link.span_id in ids
    ]
    # Some replayed step links to the span the killed planner exported for it.
    assert originals and all(o.service == "planner" for o in originals)
    assert all(o.attributes.get("stepbus.replay") is None for o in originals)
    # Every decision asked of the model once: one planner chat span per step.
    chats = [s for s in spans if s.name.startswith("chat ") and s.service == "planner"]
    assert len(chats) == 4


TERMINAL = {"stepbus.task.completed", "stepbus.task.failed", "stepbus.task.cancelled"}


async def test_metrics_match_the_events(stack: Stack, receiver: OtlpReceiver) -> None:
    planner0 = await _metrics(stack, "planner")
    tools0 = await _metrics(stack, "tool-executor")
    ids = [f"task-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    async with TopicReader(stack.bootstrap, stack.topics.results) as results:
        await publish_plain(
            stack.bootstrap,
            stack.topics.tasks,
            [
                (i, cloudevent(i, {"input": f"Compute {n}*3, then {n}+4"}))
                for n, i in enumerate(ids)
            ],
        )
        await results.wait_for(
            lambda ev: all(terminals(ev, i) for i in ids), 60, "the three tasks to end"
        )
        ends = [terminals(results.events(), i)[0] for i in ids]
        observations = [
            e
            for e in results.events()
            if e["subject"] in ids and e["data"].get("stage") == "observation"
        ]
    await asyncio.sleep(0.5)  # counted once acknowledged: just after the terminal went out
    planner1 = await _metrics(stack, "planner")
    tools1 = await _metrics(stack, "tool-executor")

    def delta(before: Any, after: Any, name: str, **labels: str) -> float:
        return _total(after, name, **labels) - _total(before, name, **labels)

    assert all(e["type"] == "stepbus.task.completed" for e in ends)
    assert delta(planner0, planner1, "stepbus_tasks_finished_total", outcome="completed") == 3
    assert delta(planner0, planner1, "stepbus_tasks_accepted_total") == 3
    assert delta(
        tools0, tools1, "stepbus_tool_calls_total", tool="calculator", outcome="ok"
    ) == len(observations)
    # Tokens: those of the planner's recorded decisions (the critic counts its own).
    async with TopicReader(stack.bootstrap, stack.topics.planner_history) as history:
        await history.wait_for(
            lambda ev: sum(e["subject"] in ids and e["type"] in TERMINAL for e in ev) >= 3,
            30,
            "the journal",
        )
        decided = {
            json.dumps(e, sort_keys=True): e
            for e in history.events()
            if e["subject"] in ids and e["type"] == "stepbus.llm.decided"
        }.values()
    recorded = sum(
        d["data"]["usage"]["prompt_tokens"] + d["data"]["usage"]["completion_tokens"]
        for d in decided
    )
    tokens = delta(planner0, planner1, "stepbus_model_tokens_total", service="planner")
    assert tokens == recorded > 0
    assert (
        delta(planner0, planner1, "stepbus_task_duration_seconds_count", outcome="completed") == 3
    )
    lag = _total(planner1, "stepbus_consumer_lag_records")
    assert lag >= 0
    assert _total(planner1, "stepbus_trace_spans_exported_total") > 0


async def test_a_black_holed_collector_slows_no_task_and_drops_are_counted(
    stack: Stack, receiver: OtlpReceiver
) -> None:
    async def batch(tag: str) -> float:
        ids = [f"task-{tag}-{uuid.uuid4().hex[:6]}" for _ in range(8)]
        async with TopicReader(stack.bootstrap, stack.topics.results) as results:
            started = time.perf_counter()
            await publish_plain(
                stack.bootstrap,
                stack.topics.tasks,
                [(i, cloudevent(i, {"input": "Compute 4*4, then 5+5"})) for i in ids],
            )
            await results.wait_for(lambda ev: all(terminals(ev, i) for i in ids), 60, tag)
            return time.perf_counter() - started

    healthy = await batch("ok")
    receiver.mode = "blackhole"
    try:
        dropped0 = _total(await _metrics(stack, "planner"), "stepbus_trace_spans_dropped_total")
        held = await batch("hole")
        # The export thread waits on the collector; the services never do.
        assert held < healthy * 2 + 2.0, (healthy, held)

        async def counted() -> bool:
            now = _total(await _metrics(stack, "planner"), "stepbus_trace_spans_dropped_total")
            return now > dropped0

        deadline = time.monotonic() + 20
        while not await counted():
            assert time.monotonic() < deadline, "no drop counted while the collector hung"
            await asyncio.sleep(0.5)
    finally:
        receiver.mode = "accept"
    print(f"8 tasks: {healthy:.2f}s with the collector, {held:.2f}s with it black-holed")
