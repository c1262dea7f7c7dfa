"""``make bench``: what orchestration through Kafka costs per ReAct step, and throughput.

Against the running local stack (``make up``; the scripted model at zero latency unless
``STEPBUS_SCRIPTED_LLM_LATENCY_MS`` says otherwise) it

1. runs multi-step tasks one after another and, from each task's journal, measures every
   ReAct step's wall time and its orchestration overhead (wall time minus the model's and the
   tool's own time),
2. measures a raw aiokafka produce→consume round trip (acks=all) on the same broker, and
   prints p50/p99 of both and their ratio, then
3. throughput: submits ``--throughput-tasks`` tasks of 3 tool steps (4 LLM calls each, the
   model answering in 200 ms: ``[latency=200]`` in the input) all at once to the one replica
   of each service, and prints tasks/s, LLM steps/s, p50/p99 task latency (submit → terminal
   event), the wall time for all of them, how many completed or failed, and the peak memory
   (``VmHWM``) of every stack process — once with memory off (no memory service, the planner
   restarted with ``STEPBUS_PLANNER_MEMORY=false``) and once with memory on (every task
   recalls, in sessions of 10 tasks, and is remembered), and once with the critic judging every
   answer (one more model call per task), side by side (``--memory on|off|both``,
   ``--critic on|off|both``); the baseline turns both off (memory service stopped, every task
   submitted with ``critic.enabled: false``), then
4. ``make bench`` also runs ``stepbus_devtools.memory_bench``: embedding throughput and recall
   latency with 10,000 and 100,000 memories in the tenant's collection.

The topic prefix is ``STEPBUS_TOPIC_PREFIX``, else the one the running planner was started
with (``make chaos`` leaves the stack on its own prefix).

    python -m stepbus_devtools.bench [--tasks 30] [--steps 5] [--round-trips 300]
        [--throughput-tasks 1000] [--skip-throughput | --only-throughput]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from collections import Counter
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from stepbus_contracts import CriticPolicy, TaskSubmitted, TaskSubmittedData, Topics
from stepbus_runtime import topic_partitions

from stepbus_devtools import stack

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


def _throughput_task(index: int, steps: int, latency_ms: int) -> tuple[str, str]:
    """An input with ``steps`` calculator steps, and its expected output."""
    expressions, results = [], []
    for step in range(steps):
        a, b = index + 2 + step, 7 + step
        op = "*+-"[step % 3]
        expressions.append(f"{a}{op}{b}")
        results.append(str(a * b if op == "*" else a + b if op == "+" else a - b))
    text = "Compute " + ", then ".join(expressions) + f" [latency={latency_ms}]"
    return text, results[0] if steps == 1 else "Results: " + ", ".join(results)


async def throughput(
    bootstrap: str,
    topics: Topics,
    count: int,
    steps: int,
    latency_ms: int,
    wait_seconds: float,
    sessions: bool = False,
    critic: bool = False,
) -> dict[str, Any]:
    """Submit ``count`` tasks at once; collect each one's terminal event on ``results``.

    With ``sessions``, every 10 tasks share a session (so recalls return turns); with
    ``critic``, the critic judges every answer (else each task turns it off).
    """
    run = uuid.uuid4().hex[:8]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    tps = await topic_partitions(bootstrap, topics.results)
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:  # resolve positions now, before any task is submitted
        await consumer.position(tp)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5
    )
    await producer.start()
    expected: dict[str, str] = {}
    submitted: dict[str, float] = {}
    ends: dict[str, tuple[float, dict[str, Any]]] = {}
    recalls: dict[str, str] = {}  # the memory progress message of each task
    try:
        records = []
        for index in range(count):
            task_id = f"tput-{run}-{index:05d}"
            text, expected[task_id] = _throughput_task(index, steps, latency_ms)
            event = TaskSubmitted(
                source="urn:stepbus:bench",
                subject=task_id,
                data=TaskSubmittedData(
                    input=text,
                    session_id=f"bench-{run}-{index // 10}" if sessions else None,
                    tools=["calculator"],
                    max_iterations=steps + 2,
                    deadline_seconds=max(300.0, 2 * wait_seconds),
                    critic=CriticPolicy(enabled=critic),
                ),
            )
            records.append((task_id, event.model_dump_json().encode()))
        cpu_before = _cpu_seconds()
        first = time.time()
        futures = []
        for task_id, value in records:
            submitted[task_id] = time.time()
            futures.append(await producer.send(topics.tasks, value, key=task_id.encode()))
        await asyncio.gather(*futures)
        submit_seconds = time.time() - first
        print(f"  {count} tasks submitted in {submit_seconds:.2f}s; waiting for their results")
        deadline = time.monotonic() + wait_seconds
        next_note = time.monotonic() + 10
        while len(ends) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for batch in batches.values():
                for record in batch:
                    event = json.loads(record.value)
                    subject = event.get("subject")
                    if subject in submitted and event["type"] in TERMINAL and subject not in ends:
                        ends[subject] = (record.timestamp / 1000, event)
                    elif subject in submitted and event["type"] == "stepbus.task.progress":
                        data = event.get("data", {})
                        if data.get("stage") == "memory":
                            recalls[subject] = str(data.get("message", ""))
            if time.monotonic() >= next_note:
                next_note += 10
                print(f"  +{time.time() - first:6.1f}s {len(ends)}/{count} tasks ended")
        cpu_after = _cpu_seconds()
    finally:
        await producer.stop()
        await consumer.stop()
    return {
        "cpu_before": cpu_before,
        "cpu_after": cpu_after,
        "first": first,
        "submit_seconds": submit_seconds,
        "submitted": submitted,
        "expected": expected,
        "ends": ends,
        "recalls": recalls,
    }


def _memory(pid: int) -> tuple[float, float] | None:
    """(VmHWM, VmRSS) of a process in MiB."""
    try:
        lines = open(f"/proc/{pid}/status").read().splitlines()
    except OSError:
        return None
    values = {}
    for line in lines:
        name, _, rest = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            values[name] = int(rest.split()[0]) / 1024  # kB
    if len(values) != 2:
        return None
    return values["VmHWM"], values["VmRSS"]


def _cpu_seconds() -> dict[str, float]:
    """User + system CPU seconds so far of every running stack process."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, pid in stack.status().items():
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except (OSError, TypeError):
            continue
        out[name] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return out


def _print_throughput(result: dict[str, Any], args: argparse.Namespace) -> float:
    """Print a throughput run's figures; its wall time."""
    ends = result["ends"]
    submitted = result["submitted"]
    expected = result["expected"]
    count = len(submitted)
    completed = [t for t, (_, e) in ends.items() if e["type"] == "stepbus.task.completed"]
    wrong = [t for t in completed if ends[t][1]["data"].get("output") != expected[t]]
    failed = Counter(
        e["data"].get("reason", "?") for _, e in ends.values() if e["type"] == "stepbus.task.failed"
    )
    latencies = [(ends[t][0] - submitted[t]) * 1000 for t in ends]
    last = max((at for at, _ in ends.values()), default=result["first"])
    wall = max(last - result["first"], 1e-9)
    llm_steps = sum(int(e["data"].get("steps", 0)) for _, e in ends.values())
    print(
        f"throughput: {count} tasks x {args.throughput_steps} tool steps "
        f"({args.throughput_steps + 1} LLM calls each), model latency "
        f"{args.throughput_latency} ms, all submitted at once "
        f"(in {result['submit_seconds']:.2f}s), one replica of each service"
    )
    print(
        f"  completed {len(completed)} ({len(wrong)} with a wrong output), "
        f"failed {sum(failed.values())}{' ' + str(dict(failed)) if failed else ''}, "
        f"not ended {count - len(ends)} (timeout {args.throughput_timeout:.0f}s)"
    )
    print(f"  wall time, first submit -> last terminal event  {wall:8.1f} s")
    if result["recalls"]:
        recalled = sum(1 for m in result["recalls"].values() if m.startswith("recalled"))
        print(
            f"  recalls: {recalled} answered in time, "
            f"{len(result['recalls']) - recalled} went on without memory (timed out or "
            "unavailable)"
        )
    print(f"  tasks/s (completed / wall time)                 {len(completed) / wall:8.1f}")
    print(f"  LLM steps/s (steps of ended tasks / wall time)  {llm_steps / wall:8.1f}")
    if latencies:
        print(
            f"  task latency, submit -> terminal event         "
            f"p50 {percentile(latencies, 50) / 1000:7.2f} s   "
            f"p99 {percentile(latencies, 99) / 1000:7.2f} s   "
            f"(min {min(latencies) / 1000:.2f} s; model time alone "
            f"{(args.throughput_steps + 1) * args.throughput_latency / 1000:.2f} s)"
        )
    print("  peak memory of each stack process (VmHWM; VmRSS now; CPU used during the run):")
    cpu_before, cpu_after = result["cpu_before"], result["cpu_after"]
    for name, pid in stack.status().items():
        memory = _memory(pid) if pid else None
        if memory is None:
            print(f"    {name:<14} n/a (not running under stepbus's pid files)")
            continue
        cpu = ""
        if name in cpu_before and name in cpu_after:
            used = cpu_after[name] - cpu_before[name]
            cpu = f", CPU {used:.1f}s = {100 * used / wall:.0f}% of one core"
        print(f"    {name:<14} pid {pid:<8} {memory[0]:8.1f} MiB   ({memory[1]:.1f} MiB now{cpu})")
    return wall


def _running_prefix() -> str:
    """``STEPBUS_TOPIC_PREFIX``, else the running planner's, else the default."""
    if os.environ.get("STEPBUS_TOPIC_PREFIX"):
        return os.environ["STEPBUS_TOPIC_PREFIX"]
    pid = stack.status().get("planner")
    if pid:
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            environ = []
        for entry in environ:
            if entry.startswith(b"STEPBUS_TOPIC_PREFIX="):
                return entry.split(b"=", 1)[1].decode()
    return "stepbus."


async def run(args: argparse.Namespace) -> None:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    topics = Topics(_running_prefix())
    print(f"stepbus bench on {bootstrap} (topics {topics.prefix}*)")
    if not args.only_throughput:
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
            "(a step crosses Kafka twice, command -> executor and outcome -> planner, and "
            "waits for writes acknowledged in stages: the decision before its tool calls, "
            "the ledger entry before the outcome, snapshots last)"
        )
    if args.skip_throughput:
        return
    runs = [("baseline", False, False)]  # (name, memory, critic)
    if args.memory in ("on", "both"):
        runs.append(("memory on", True, False))
    if args.critic in ("on", "both"):
        runs.append(("critic on", False, True))
    if args.memory == "on" and args.critic == "on":
        runs = runs[1:]
    walls: dict[str, float] = {}
    latencies: dict[str, float] = {}
    for name, memory, critic in runs:
        _planner_memory(memory)
        print(
            f"--- {name} (memory {'on' if memory else 'off'}, critic {'on' if critic else 'off'})"
        )
        result = await throughput(
            bootstrap,
            topics,
            args.throughput_tasks,
            args.throughput_steps,
            args.throughput_latency,
            args.throughput_timeout,
            sessions=memory,
            critic=critic,
        )
        walls[name] = _print_throughput(result, args)
        ended = result["ends"]
        latencies[name] = percentile(
            [(ended[t][0] - result["submitted"][t]) * 1000 for t in ended] or [0.0], 50
        )
    _planner_memory(True)  # as the stack runs by default
    base = walls.get("baseline")
    if base and "memory on" in walls:
        print(
            f"memory on vs off: wall time {walls['memory on']:.1f} s vs {base:.1f} s "
            f"({100 * (walls['memory on'] / base - 1):+.0f} %; budget +25 %)"
        )
    if base and "critic on" in walls:
        extra = latencies["critic on"] - latencies["baseline"]
        beyond = (extra - args.throughput_latency) / 1000
        print(
            f"critic on vs off: wall time {walls['critic on']:.1f} s vs {base:.1f} s "
            f"({100 * (walls['critic on'] / base - 1):+.0f} %); task latency p50 "
            f"{extra / 1000:+.2f} s, of which the judge's model call is "
            f"{args.throughput_latency / 1000:.2f} s: {beyond:+.2f} s beyond it"
        )


def _planner_memory(on: bool) -> None:
    """Run the stack with memory on (the memory service up, the planner recalling) or off (the
    memory service stopped, the planner restarted with ``STEPBUS_PLANNER_MEMORY=false``): off
    is the stack as it was without memory, nothing recalled and nothing remembered."""
    if on:
        stack.up(["memory"])
    elif stack.status().get("memory"):
        stack.kill("memory", "TERM")
        while stack.is_running("memory"):
            time.sleep(0.1)
    wanted = "true" if on else "false"
    pid = stack.status().get("planner")
    current = "true"
    if pid:
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            environ = []
        for entry in environ:
            if entry.startswith(b"STEPBUS_PLANNER_MEMORY="):
                current = entry.split(b"=", 1)[1].decode().lower()
    if pid and current == wanted:
        return
    os.environ["STEPBUS_PLANNER_MEMORY"] = wanted
    stack.restart("planner")


def main() -> None:
    parser = argparse.ArgumentParser(description="stepbus orchestration benchmark")
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--steps", type=int, default=5, help="tool steps per task")
    parser.add_argument("--round-trips", type=int, default=300)
    parser.add_argument(
        "--throughput-tasks", type=int, default=1000, help="tasks submitted at once"
    )
    parser.add_argument("--throughput-steps", type=int, default=3, help="tool steps per task")
    parser.add_argument(
        "--throughput-latency", type=int, default=200, help="model latency per call, ms"
    )
    parser.add_argument(
        "--throughput-timeout", type=float, default=600.0, help="seconds to wait for the results"
    )
    parser.add_argument(
        "--memory",
        choices=("on", "off", "both"),
        default="both",
        help="throughput with the planner's memory on, off, or both side by side",
    )
    parser.add_argument(
        "--critic",
        choices=("on", "off", "both"),
        default="both",
        help="throughput with the critic judging every answer, not at all, or both",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--skip-throughput", action="store_true", help="only the step overhead")
    which.add_argument("--only-throughput", action="store_true", help="only the throughput run")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
