"""``make bench``: what orchestration through Kafka costs per ReAct step.

Against the running local stack (``make up``; the scripted model at zero latency unless
``STEPBUS_SCRIPTED_LLM_LATENCY_MS`` says otherwise) it

1. runs multi-step tasks one after another and, from each task's journal, measures every
   ReAct step's wall time and its orchestration overhead (wall time minus the model's and the
   tool's own time), and
2. measures a raw aiokafka produce→consume round trip (acks=all) on the same broker,

then prints p50/p99 of both and their ratio.

    python -m stepbus_devtools.bench [--tasks 30] [--steps 5] [--round-trips 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from stepbus_contracts import TaskSubmitted, TaskSubmittedData, Topics
from stepbus_runtime import topic_partitions

TERMINAL = ("stepbus.task.completed", "stepbus.task.failed", "stepbus.task.cancelled")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))]


class Journal:
    """Tails topics from their current end; collects events by task id."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self._topics = topics
        self._bootstrap = bootstrap
        self.by_task: dict[str, list[tuple[str, dict[str, Any]]]] = {}

    async def start(self) -> None:
        await self._consumer.start()
        tps = await topic_partitions(self._bootstrap, *self._topics)
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        for tp in tps:  # resolve positions now, before any task is submitted
            await self._consumer.position(tp)

    async def stop(self) -> None:
        await self._consumer.stop()

    async def until_terminal(self, task_id: str, wait_seconds: float) -> list[tuple[str, dict]]:
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            batches = await self._consumer.getmany(timeout_ms=50)
            for tp, records in batches.items():
                for record in records:
                    event = json.loads(record.value)
                    self.by_task.setdefault(event["subject"], []).append((tp.topic, event))
            events = self.by_task.get(task_id, [])
            if any(e["type"] in TERMINAL for topic, e in events if topic.endswith("results")):
                return events
        raise TimeoutError(f"task {task_id} did not end within {wait_seconds}s")


def step_figures(events: list[tuple[str, dict[str, Any]]]) -> tuple[list[float], list[float]]:
    """Per-step wall times and orchestration overheads (ms) from one task's journal."""
    history = [e for topic, e in events if topic.endswith("planner.history")]

    def at(event: dict[str, Any]) -> float:
        return datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp() * 1000

    accepted = next(e for e in history if e["type"] == "stepbus.task.accepted")
    decided = {e["data"]["step"]: e for e in history if e["type"] == "stepbus.llm.decided"}
    tool_ms: dict[int, float] = {}
    for e in history:
        if e["type"] in ("stepbus.tool.call_completed", "stepbus.tool.call_failed"):
            step = e["data"]["step"]
            tool_ms[step] = max(tool_ms.get(step, 0.0), e["data"].get("duration_ms", 0.0))
    walls, overheads = [], []
    previous = at(accepted)
    for step in sorted(decided):
        wall = at(decided[step]) - previous
        own = decided[step]["data"]["duration_ms"] + tool_ms.get(step - 1, 0.0)
        walls.append(wall)
        overheads.append(max(0.0, wall - own))
        previous = at(decided[step])
    return walls, overheads


async def react_steps(bootstrap: str, topics: Topics, tasks: int, steps: int) -> dict[str, Any]:
    expressions = ", then ".join(f"{i + 2} * {i + 3}" for i in range(steps))
    journal = Journal(bootstrap, [topics.planner_history, topics.results])
    await journal.start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    walls: list[float] = []
    overheads: list[float] = []
    task_ms: list[float] = []
    try:
        for _ in range(tasks):
            task_id = f"bench-{uuid.uuid4().hex[:10]}"
            event = TaskSubmitted(
                source="urn:stepbus:bench",
                subject=task_id,
                data=TaskSubmittedData(input=f"Compute {expressions}", max_iterations=steps + 2),
            )
            started = time.perf_counter()
            await producer.send_and_wait(
                topics.tasks, event.model_dump_json().encode(), key=task_id.encode()
            )
            events = await journal.until_terminal(task_id, wait_seconds=60)
            task_ms.append((time.perf_counter() - started) * 1000)
            w, o = step_figures(events)
            walls += w
            overheads += o
    finally:
        await producer.stop()
        await journal.stop()
    return {"walls": walls, "overheads": overheads, "tasks": task_ms}


async def round_trips(bootstrap: str, count: int) -> list[float]:
    topic = f"bench-rtt-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 1, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await producer.start()
    await consumer.start()
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    await consumer.seek_to_end(tp)
    await consumer.position(tp)
    times = []
    try:
        for i in range(count):
            started = time.perf_counter()
            await producer.send_and_wait(topic, b"x" * 300, key=str(i).encode())
            while not (await consumer.getmany(tp, timeout_ms=1000)).get(tp):
                pass
            times.append((time.perf_counter() - started) * 1000)
    finally:
        await producer.stop()
        await consumer.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        await admin.delete_topics([topic])
        await admin.close()
    return times[min(10, count // 10) :]  # drop warm-up


def _row(name: str, values: list[float]) -> str:
    return (
        f"  {name:<44} p50 {percentile(values, 50):7.2f} ms   p99 {percentile(values, 99):7.2f} ms"
        f"   (n={len(values)}, mean {statistics.fmean(values):.2f})"
    )


async def run(args: argparse.Namespace) -> None:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    topics = Topics(os.environ.get("STEPBUS_TOPIC_PREFIX", "stepbus."))
    print(f"stepbus bench on {bootstrap} (topics {topics.prefix}*)")
    react = await react_steps(bootstrap, topics, args.tasks, args.steps)
    rtt = await round_trips(bootstrap, args.round_trips)
    print(f"ReAct steps: {args.tasks} tasks x {args.steps + 1} LLM steps, zero-latency model")
    print(_row("step wall time (LLM decision to decision)", react["walls"]))
    print(_row("step orchestration overhead (minus LLM, tool)", react["overheads"]))
    print(_row("whole task (submit to terminal event)", react["tasks"]))
    print("raw aiokafka produce->consume round trip (acks=all, idempotent):")
    print(_row("round trip", rtt))
    ratio = percentile(react["overheads"], 50) / percentile(rtt, 50)
    print(
        f"ratio: step overhead p50 / raw round trip p50 = {ratio:.1f}x "
        "(a step crosses Kafka 3 times: decision -> planner, command -> executor, "
        "outcome -> planner)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="stepbus orchestration benchmark")
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--steps", type=int, default=5, help="tool steps per task")
    parser.add_argument("--round-trips", type=int, default=300)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
