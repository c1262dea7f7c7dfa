"""``make chaos``: run many tasks through the real stack while killing its parts at random.

Against the local stack of :mod:`stepbus_devtools.stack` (Kafka, Redis and the services as
processes), under a fresh topic prefix per run, this

1. submits ``--tasks`` arithmetic tasks (``Compute a*b, then c+d, then e-f [latency=50-300]``,
   so every expected output is known) as raw CloudEvents on ``<prefix>tasks``, spread over
   ``--duration`` seconds;
2. meanwhile, at random (seeded) moments of that period, SIGKILLs a random service (planner,
   tool-executor, gateway, scripted-llm) and restarts it 0-2 s later, SIGKILLs the broker once
   (``kafka.sh kill9``) and restarts it, and runs Redis ``FLUSHALL`` once. Disruptions of
   different targets overlap; those of one target queue behind its restart (~10 s: the
   consumer group waits out the dead member's session), so the chaos goes on after the last
   submission, which lands at roughly the first third of the run;
3. waits until every task has a terminal event on ``<prefix>results`` (or the timeout), reads
   both ``results`` and ``planner.history`` from the beginning and prints a report: tasks
   completed exactly once with the right output, wrong outputs, failures, lost tasks, duplicate
   terminal events, tool effects that ran twice, the chaos performed and the longest time a
   task went without progress across a kill.

It exits 1 when a task is lost, has two distinct terminal events or a wrong output, or a tool
effect ran twice (invariants 1, 3 and 4 of the design). Everything is read from the
environment like the stack itself (``KAFKA_BOOTSTRAP_SERVERS``, ``REDIS_URL``, ``STEPBUS_HOME``,
the service ports), so it runs against a stack on any ports. The stack is left running.

    python -m stepbus_devtools.chaos [--tasks 200] [--steps 3] [--kills 12] [--seed N]
                                     [--timeout 600] [--duration SECONDS]

The same run is importable (:func:`run_chaos` with a :class:`ChaosConfig`) for the e2e test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from stepbus_contracts import TaskSubmitted, TaskSubmittedData, Topics
from stepbus_runtime import ensure_topics, topic_partitions

from stepbus_devtools import stack

__all__ = [
    "SERVICES",
    "ChaosAction",
    "ChaosConfig",
    "ChaosReport",
    "main",
    "run_chaos",
    "stop_services",
]

SERVICES = ("scripted-llm", "tool-executor", "planner", "gateway")
"""The service processes of the stack, in start order."""

KILL_TARGETS = ("planner", "tool-executor", "gateway", "scripted-llm")
TERMINAL = ("stepbus.task.completed", "stepbus.task.failed", "stepbus.task.cancelled")
EXECUTION_LOG_ENV = "STEPBUS_TOOL_EXECUTOR_EXECUTION_LOG"
SHOWN = 8  # examples listed per category


def _say(message: str) -> None:
    print(message, flush=True)


# --- configuration -----------------------------------------------------------------------------


@dataclass
class ChaosConfig:
    """One chaos run.

    Attributes:
        tasks: Tasks submitted.
        steps: Tool steps per task (each task makes ``steps + 1`` LLM calls).
        kills: Service SIGKILLs (each followed by a restart).
        seed: Seed of every random choice (task numbers, moments, targets, delays).
        timeout: Longest wait, from the first submission, for every task to end.
        duration: Seconds over which the tasks are submitted and the disruptions start (at
            random moments). A restart takes ~10 s and the kills of one service queue behind
            its restart, so the chaos goes on well after the last submission and the
            submissions cover roughly the first third of the run. ``None``: from the number
            of disruptions.
        latency: Scripted model latency range per call (``[latency=...]`` in every input).
        targets: Services a kill may hit.
        must_kill: Services killed at least once (when ``kills`` allows).
        broker_kill: SIGKILL and restart the broker once.
        flushall: Run Redis ``FLUSHALL`` once.
        restart_delay: Range of the pause between a kill and the restart, seconds.
        settle: Seconds to keep reading after every task ended (late duplicates show up).
        prefix: Topic prefix; a fresh ``chaos-<id>.`` by default.
        bootstrap: Kafka bootstrap servers; ``KAFKA_BOOTSTRAP_SERVERS`` by default.
        redis_url: Redis; ``REDIS_URL`` by default.
        broker_home: ``STEPBUS_HOME`` under which ``kafka.sh`` manages the broker to kill; the
            stack's home by default (the test passes the harness's).
        execution_log: Where the tool-executor logs real tool runs; under the stack's logs
            by default.
        prepare: Restart the services so they use the prefix and the execution log (stop the
            running ones, then ``stack.up``).
        start_infra: With ``prepare``, also start Kafka and Redis when they are not running
            (``False`` when someone else owns them, as in the test harness).
    """

    tasks: int = 200
    steps: int = 3
    kills: int = 12
    seed: int | None = None
    timeout: float = 600.0
    duration: float | None = None
    latency: str = "50-300"
    targets: tuple[str, ...] = KILL_TARGETS
    must_kill: tuple[str, ...] = ("planner", "tool-executor")
    broker_kill: bool = True
    flushall: bool = True
    restart_delay: tuple[float, float] = (0.0, 2.0)
    settle: float = 5.0
    prefix: str | None = None
    bootstrap: str | None = None
    redis_url: str | None = None
    broker_home: Path | None = None
    execution_log: Path | None = None
    prepare: bool = True
    start_infra: bool = True

    def window(self) -> float:
        """Seconds over which tasks are submitted and disruptions start."""
        if self.duration is not None:
            return self.duration
        actions = self.kills + int(self.broker_kill) + int(self.flushall)
        return float(max(10, 1.5 * actions))


# --- report ------------------------------------------------------------------------------------


@dataclass
class ChaosAction:
    """One disruption performed."""

    kind: str  # "kill", "broker", "flushall"
    target: str
    at: float  # wall clock (epoch seconds) of the kill / flush
    offset: float  # seconds since the run started
    in_flight: int  # tasks submitted and not ended at that moment
    pid: int | None = None
    restart_delay: float | None = None
    back_after: float | None = None  # seconds from the kill until ready again
    error: str | None = None

    def describe(self) -> str:
        when = datetime.fromtimestamp(self.at, UTC).strftime("%H:%M:%S.%f")[:-3]
        head = f"+{self.offset:6.1f}s {when}Z"
        if self.kind == "flushall":
            text = f"{head}  Redis FLUSHALL ({self.in_flight} tasks in flight)"
        else:
            what = "broker (kafka.sh kill9)" if self.kind == "broker" else self.target
            pid = f" pid {self.pid}" if self.pid else ""
            delay = f"{self.restart_delay:.2f}s" if self.restart_delay is not None else "?"
            back = f"{self.back_after:.1f}s" if self.back_after is not None else "never"
            text = (
                f"{head}  SIGKILL {what}{pid}; restart after {delay}, ready again after {back} "
                f"({self.in_flight} tasks in flight)"
            )
        return text + (f"  ERROR: {self.error}" if self.error else "")


@dataclass
class ChaosReport:
    """What a chaos run found; :attr:`problems` is empty when the invariants held."""

    run_id: str
    prefix: str
    seed: int
    bootstrap: str
    submitted: int = 0
    completed_ok: int = 0
    wrong_output: list[tuple[str, str, str]] = field(default_factory=list)  # id, want, got
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # id, reason, message
    cancelled: list[str] = field(default_factory=list)
    lost: list[tuple[str, str]] = field(default_factory=list)  # id, last event seen
    duplicate_terminals: list[tuple[str, list[str]]] = field(default_factory=list)
    raw_duplicate_records: int = 0  # same event id on results more than once (allowed)
    executions_log: dict[str, int] | None = None  # key -> runs, None: no log
    executions_log_note: str = ""
    executions_history: dict[str, int] = field(default_factory=dict)  # key -> replayed=false
    actions: list[ChaosAction] = field(default_factory=list)
    longest_stall: tuple[float, str, str] | None = None  # seconds, task id, kills inside
    longest_open_stall: tuple[float, str, str] | None = None  # for tasks that never ended
    dlq_records: int = 0
    history_records: int = 0
    results_records: int = 0
    run_seconds: float = 0.0
    logs: str = ""

    @property
    def doubled_log(self) -> dict[str, int]:
        return {k: n for k, n in (self.executions_log or {}).items() if n > 1}

    @property
    def doubled_history(self) -> dict[str, int]:
        return {k: n for k, n in self.executions_history.items() if n > 1}

    @property
    def problems(self) -> list[str]:
        """Violated invariants; the run fails when there is any."""
        found = []
        if self.lost:
            found.append(f"{len(self.lost)} task(s) lost (no terminal event)")
        if self.duplicate_terminals:
            found.append(f"{len(self.duplicate_terminals)} task(s) with >1 distinct terminal event")
        if self.wrong_output:
            found.append(f"{len(self.wrong_output)} task(s) completed with a wrong output")
        doubled = self.doubled_log if self.executions_log is not None else self.doubled_history
        if doubled:
            source = "execution log" if self.executions_log is not None else "history"
            found.append(f"{len(doubled)} tool call(s) executed more than once ({source})")
        errors = [a for a in self.actions if a.error]
        if errors:
            found.append(f"{len(errors)} chaos action(s) failed: {errors[0].error}")
        return found

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        lines = [
            f"stepbus chaos run {self.run_id}: prefix {self.prefix!r}, seed {self.seed}, "
            f"broker {self.bootstrap}",
            f"  tasks submitted                         {self.submitted}",
            f"  completed exactly once, right output    {self.completed_ok}",
            f"  completed with a wrong output           {len(self.wrong_output)}",
        ]
        lines += [f"      {t}: expected {w!r}, got {g!r}" for t, w, g in self.wrong_output[:SHOWN]]
        lines.append(f"  failed                                  {len(self.failed)}")
        reasons = Counter(reason for _, reason, _ in self.failed)
        for reason, count in reasons.most_common():
            example = next(m for _, r, m in self.failed if r == reason)
            lines.append(f"      {count} x {reason}: e.g. {example[:160]}")
        if self.cancelled:
            lines.append(f"  cancelled                               {len(self.cancelled)}")
        lines.append(f"  lost (no terminal event)                {len(self.lost)}")
        lines += [f"      {t}: last event {last}" for t, last in self.lost[:SHOWN]]
        if len(self.lost) > SHOWN:
            lasts = Counter(last.split(" ")[0] for _, last in self.lost)
            lines.append(f"      last events of all lost tasks: {dict(lasts)}")
        lines.append(f"  tasks with >1 distinct terminal event   {len(self.duplicate_terminals)}")
        lines += [f"      {t}: {types}" for t, types in self.duplicate_terminals[:SHOWN]]
        lines.append(
            f"  raw duplicate records on results        {self.raw_duplicate_records} "
            "(same event id again: allowed, at-least-once)"
        )
        if self.executions_log is None:
            log_line = f"n/a ({self.executions_log_note})"
        else:
            log_line = (
                f"{len(self.doubled_log)} of {len(self.executions_log)} keys "
                f"({self.executions_log_note})"
            )
        lines.append(f"  tool calls executed >1x (execution log) {log_line}")
        lines += [f"      {k}: {n} runs" for k, n in list(self.doubled_log.items())[:SHOWN]]
        lines.append(
            f"  tool calls executed >1x (history)       {len(self.doubled_history)} of "
            f"{len(self.executions_history)} keys (call_completed with replayed=false)"
        )
        lines += [
            f"      {k}: {n} x replayed=false"
            for k, n in list(self.doubled_history.items())[:SHOWN]
        ]
        lines.append(f"  chaos performed ({len(self.actions)} actions):")
        lines += [f"      {action.describe()}" for action in self.actions]
        if self.longest_stall is not None:
            gap, task, kills = self.longest_stall
            lines.append(
                f"  longest time without progress across a kill: {gap:.1f}s (task {task}; {kills})"
            )
        else:
            lines.append("  longest time without progress across a kill: n/a (no gap spans a kill)")
        if self.longest_open_stall is not None:
            gap, task, kills = self.longest_open_stall
            lines.append(
                f"  ... and tasks that never resumed: {gap:.1f}s since their last event "
                f"(task {task}; {kills})"
            )
        lines.append(
            f"  records read: results {self.results_records}, planner.history "
            f"{self.history_records}, dlq {self.dlq_records}"
        )
        lines.append(f"  total run time                          {self.run_seconds:.1f}s")
        lines.append(f"  logs: {self.logs}")
        problems = self.problems
        lines.append(
            "RESULT: "
            + ("OK: every invariant held" if not problems else "FAIL: " + "; ".join(problems))
        )
        return "\n".join(lines)


# --- tasks -------------------------------------------------------------------------------------


@dataclass
class _Task:
    task_id: str
    input: str
    expected: str
    offset: float  # planned submission, seconds after the run start
    submitted_at: float | None = None  # wall clock of the first send attempt


def _make_tasks(rng: random.Random, config: ChaosConfig, run_id: str) -> list[_Task]:
    window = config.window()
    tasks = []
    for index in range(config.tasks):
        expressions, results = [], []
        for step in range(config.steps):
            a = index + 2 if step == 0 else rng.randint(2, 999)  # the index keeps inputs apart
            b = rng.randint(1, 99)
            op = "*+-"[step % 3]
            expressions.append(f"{a}{op}{b}")
            results.append(str(a * b if op == "*" else a + b if op == "+" else a - b))
        text = "Compute " + ", then ".join(expressions)
        if config.latency:
            text += f" [latency={config.latency}]"
        expected = results[0] if len(results) == 1 else "Results: " + ", ".join(results)
        tasks.append(_Task(f"chaos-{run_id}-{index:04d}", text, expected, rng.uniform(0, window)))
    tasks.sort(key=lambda t: t.offset)
    return tasks


def _plan_actions(
    rng: random.Random, config: ChaosConfig, targets: Sequence[str]
) -> list[tuple[float, str, str, float]]:
    """(offset, kind, target, restart delay) sorted by offset, all drawn up front."""
    must = [name for name in config.must_kill if name in targets][: config.kills]
    picks = must + [rng.choice(targets) for _ in range(config.kills - len(must))]
    rng.shuffle(picks)
    kinds = [("kill", name) for name in picks]
    if config.broker_kill:
        kinds.append(("broker", "kafka"))
    if config.flushall:
        kinds.append(("flushall", "redis"))
    rng.shuffle(kinds)
    window = config.window()
    moments = sorted(rng.uniform(0.05 * window, window) for _ in kinds)
    return [
        (moment, kind, target, rng.uniform(*config.restart_delay))
        for moment, (kind, target) in zip(moments, kinds, strict=True)
    ]


# --- the stack -----------------------------------------------------------------------------------


def _wait_dead(name: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while stack.is_running(name):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _orphans(name: str) -> list[int]:
    """Live processes of ``name`` started under this ``STEPBUS_HOME`` that no pid file names.

    ``stack.up`` can take a process that is still inside ``execve`` (its ``/proc/<pid>/cmdline``
    reads empty for a moment, which happens under load) for one that "exited during startup":
    it then forgets the pid while the process lives on and a retry starts a second one.
    """
    process = stack._lookup(name)
    if process.module is None:
        return []
    home = f"STEPBUS_HOME={stack.stepbus_home()}".encode()
    known = stack.status().get(name)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (known, os.getpid()):
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        # The service itself (`python -m <module>`), not a launcher that mentions it.
        is_service = b"-m" in argv and process.module.encode() in argv and b"-c" not in argv
        if is_service and home in environ and state != "Z":
            found.append(int(entry.name))
    return sorted(found)


def _adopt_orphan(name: str, log: Callable[[str], None]) -> None:
    """Give the pid file back to a lone orphan of ``name``; kill several (a retry starts one)."""
    if stack.is_running(name):
        return
    orphans = _orphans(name)
    if len(orphans) == 1:
        stack._pid_file(name).write_text(f"{orphans[0]}\n")
        log(f"  {name}: adopted pid {orphans[0]}, which stack.up had given up on while it ran")
    for pid in orphans if len(orphans) > 1 else ():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def stop_services(names: Sequence[str] = SERVICES, timeout: float = 20.0) -> None:
    """SIGTERM the running services among ``names`` (SIGKILL after ``timeout``); not Kafka/Redis.

    Orphans of this ``STEPBUS_HOME`` (see :func:`_orphans`) are stopped too.
    """
    for name in names:
        _adopt_orphan(name, lambda _: None)
    running = [name for name in reversed(names) if stack.is_running(name)]
    for name in running:
        with contextlib.suppress(stack.StackError):
            stack.kill(name, signal.SIGTERM)
    for name in running:
        if not _wait_dead(name, timeout):
            with contextlib.suppress(stack.StackError):
                stack.kill(name, signal.SIGKILL)
            _wait_dead(name, 5)
    for name in names:
        for pid in _orphans(name):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def _restart(name: str, within: float = 90.0, log: Callable[[str], None] = _say) -> None:
    """``stack.up([name])`` like a supervisor: retried while it fails (the old process's port
    not yet released, the broker away during a broker kill, ...), for up to ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        try:
            _adopt_orphan(name, log)
            stack.up([name])
            return
        except stack.StackError as error:
            if time.monotonic() > deadline:
                raise
            log(f"  restart of {name} failed, retrying in 1s: {error}")
            time.sleep(1.0)


def _kafka_script(command: str, bootstrap: str, home: Path) -> None:
    script = stack._scripts_dir() / "kafka.sh"
    env = {**os.environ, "STEPBUS_HOME": str(home), "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    result = subprocess.run(
        ["bash", str(script), command], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise stack.StackError(
            f"kafka.sh {command} failed ({result.returncode}): "
            f"{result.stdout.strip()} {result.stderr.strip()}"
        )


def _broker_port_open(bootstrap: str) -> bool:
    host, port = bootstrap.split(",")[0].removeprefix("PLAINTEXT://").rsplit(":", 1)
    return stack._port_open(int(port)) if host in ("127.0.0.1", "localhost") else True


# --- Kafka reading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Record:
    topic: str
    timestamp: float  # seconds (CreateTime, set by the producing service)
    event: dict[str, Any]


async def _read_all(bootstrap: str, topics: Sequence[str], attempts: int = 10) -> list[_Record]:
    """Every record of ``topics`` from the beginning up to their current end."""
    for attempt in range(1, attempts + 1):
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        try:
            await consumer.start()
            tps = await topic_partitions(bootstrap, *topics)
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            out: list[_Record] = []
            pending = {tp for tp in tps if ends[tp] > 0}
            deadline = time.monotonic() + 120
            while pending:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not read {topics} to their end")
                batches = await consumer.getmany(timeout_ms=200, max_records=5000)
                for tp, records in batches.items():
                    for record in records:
                        try:
                            event = json.loads(record.value)
                        except (TypeError, ValueError):
                            continue
                        if isinstance(event, dict):
                            out.append(_Record(tp.topic, record.timestamp / 1000, event))
                    if tp in pending and await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
            return out
        except (KafkaError, TimeoutError, OSError):
            if attempt == attempts:
                raise
            await asyncio.sleep(2)
        finally:
            await consumer.stop()
    raise AssertionError("unreachable")


class _Monitor:
    """Tails ``results`` in the background to know which tasks have ended (best effort)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self.ended: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        while True:
            consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, enable_auto_commit=False)
            try:
                await consumer.start()
                tps = await topic_partitions(self._bootstrap, self._topic)
                consumer.assign(tps)
                await consumer.seek_to_beginning(*tps)
                while True:
                    batches = await consumer.getmany(timeout_ms=200, max_records=5000)
                    for records in batches.values():
                        for record in records:
                            with contextlib.suppress(TypeError, ValueError, KeyError):
                                event = json.loads(record.value)
                                if event["type"] in TERMINAL:
                                    self.ended.add(event["subject"])
            except asyncio.CancelledError:
                raise
            except Exception:  # broker away: start over from the beginning (the set dedupes)
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()


# --- the run -------------------------------------------------------------------------------------


class _Runner:
    def __init__(self, config: ChaosConfig, log: Callable[[str], None]) -> None:
        self.config = config
        self.log = log
        self.seed = config.seed if config.seed is not None else random.randrange(2**31)
        self.rng = random.Random(self.seed)
        self.run_id = uuid.uuid4().hex[:8]
        self.prefix = config.prefix or f"chaos-{self.run_id}."
        self.topics = Topics(self.prefix)
        self.bootstrap = config.bootstrap or os.environ.get(
            "KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"
        )
        self.redis_url = config.redis_url or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        self.broker_home = config.broker_home or stack.stepbus_home()
        self.execution_log = config.execution_log or (
            stack.stepbus_home() / "logs" / f"chaos-{self.run_id}-executions.jsonl"
        )
        self.tasks = _make_tasks(self.rng, config, self.run_id)
        self.plan: list[tuple[float, str, str, float]] = []  # made once the services run
        self.actions: list[ChaosAction] = []
        self.started = 0.0  # monotonic
        self.started_wall = 0.0
        self.monitor = _Monitor(self.bootstrap, self.topics.results)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def in_flight(self) -> int:
        return sum(
            1
            for t in self.tasks
            if t.submitted_at is not None and t.task_id not in self.monitor.ended
        )

    # -- setup --

    def prepare(self) -> None:
        os.environ["STEPBUS_TOPIC_PREFIX"] = self.prefix
        os.environ[EXECUTION_LOG_ENV] = str(self.execution_log)
        self.execution_log.parent.mkdir(parents=True, exist_ok=True)
        if not self.config.prepare:
            return
        self.log(f"restarting the services with STEPBUS_TOPIC_PREFIX={self.prefix}")
        stop_services()
        stack.up(None if self.config.start_infra else list(SERVICES))

    # -- submissions --

    async def submit_all(self, producer: AIOKafkaProducer) -> None:
        for task in self.tasks:
            delay = task.offset - self.elapsed()
            if delay > 0:
                await asyncio.sleep(delay)
            event = TaskSubmitted(
                source="urn:stepbus:chaos",
                subject=task.task_id,
                tenant="chaos",
                data=TaskSubmittedData(
                    input=task.input,
                    tools=["calculator"],
                    max_iterations=self.config.steps + 3,
                    deadline_seconds=max(300.0, 2 * self.config.timeout),
                    metadata={"chaos_run": self.run_id},
                ),
            )
            task.submitted_at = time.time()
            value = event.model_dump_json().encode()
            while True:  # the broker may be down right now: the same event again
                try:
                    await producer.send_and_wait(
                        self.topics.tasks, value, key=task.task_id.encode()
                    )
                    break
                except KafkaError as exc:
                    self.log(f"  submit {task.task_id} failed ({exc!r}); retrying")
                    await asyncio.sleep(0.5)

    # -- chaos --

    async def chaos(self) -> None:
        """Start each planned disruption at its moment; disruptions of different targets
        overlap (a kill does not wait for the previous restart), those of one target queue."""
        locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        incidents = []
        for offset, kind, target, restart_delay in self.plan:
            delay = offset - self.elapsed()
            if delay > 0:
                await asyncio.sleep(delay)
            incidents.append(
                asyncio.create_task(self._incident(kind, target, restart_delay, locks[target]))
            )
        await asyncio.gather(*incidents)

    async def _incident(
        self, kind: str, target: str, restart_delay: float, lock: asyncio.Lock
    ) -> None:
        async with lock:
            action = ChaosAction(kind, target, time.time(), self.elapsed(), self.in_flight())
            action.restart_delay = None if kind == "flushall" else restart_delay
            self.actions.append(action)
            try:
                if kind == "flushall":
                    await self._flushall()
                elif kind == "broker":
                    await self._kill_broker(action)
                else:
                    await self._kill_service(action)
            except Exception as exc:
                action.error = f"{type(exc).__name__}: {exc}"
            self.log(f"  {action.describe()}")

    async def _flushall(self) -> None:
        from redis.asyncio import Redis

        redis = Redis.from_url(self.redis_url)
        try:
            await redis.flushall()
        finally:
            await redis.aclose()

    async def _kill_service(self, action: ChaosAction) -> None:
        name = action.target
        if not stack.is_running(name):  # a previous restart failed: bring it back first
            await asyncio.to_thread(_restart, name, 90.0, self.log)
        action.at = time.time()
        killed = time.monotonic()
        action.pid = stack.kill(name, signal.SIGKILL)
        await asyncio.to_thread(_wait_dead, name, 10.0)
        await asyncio.sleep(max(0.0, (action.restart_delay or 0.0) - (time.monotonic() - killed)))
        await asyncio.to_thread(_restart, name, 90.0, self.log)
        action.back_after = time.monotonic() - killed

    async def _kill_broker(self, action: ChaosAction) -> None:
        status = await asyncio.to_thread(
            subprocess.run,
            ["bash", str(stack._scripts_dir() / "kafka.sh"), "status"],
            env={**os.environ, "STEPBUS_HOME": str(self.broker_home),
                 "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap},
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        pid_file = self.broker_home / "run" / "kafka.pid"
        if status.returncode != 0 or not pid_file.exists():
            raise stack.StackError(
                f"the broker at {self.bootstrap} is not managed by kafka.sh under "
                f"STEPBUS_HOME={self.broker_home}; cannot kill it"
            )
        action.pid = int(pid_file.read_text().strip())
        action.at = time.time()
        killed = time.monotonic()
        await asyncio.to_thread(_kafka_script, "kill9", self.bootstrap, self.broker_home)
        closed = time.monotonic() + 10  # the sockets close a moment after the pid is gone
        while _broker_port_open(self.bootstrap):
            if time.monotonic() > closed:
                raise stack.StackError(f"{self.bootstrap} still answers after kafka.sh kill9")
            await asyncio.sleep(0.05)
        await asyncio.sleep(max(0.0, (action.restart_delay or 0.0) - (time.monotonic() - killed)))
        await asyncio.to_thread(_kafka_script, "start", self.bootstrap, self.broker_home)
        action.back_after = time.monotonic() - killed

    # -- the whole run --

    async def run(self) -> ChaosReport:
        config = self.config
        self.log(
            f"stepbus chaos {self.run_id}: {config.tasks} tasks x {config.steps} tool steps, "
            f"{config.kills} kills + {'1 broker kill' if config.broker_kill else 'no broker kill'}"
            f" + {'1 FLUSHALL' if config.flushall else 'no FLUSHALL'} over "
            f"{config.window():.0f}s, seed {self.seed}, broker {self.bootstrap}, "
            f"prefix {self.prefix!r}"
        )
        await asyncio.to_thread(self.prepare)
        running = tuple(t for t in config.targets if stack.is_running(t))
        if running != config.targets:
            self.log(f"  not running, so not killed: {sorted(set(config.targets) - set(running))}")
        if config.kills and not running:
            raise stack.StackError("none of the services to kill runs")
        self.plan = _plan_actions(self.rng, config, running)
        await ensure_topics(self.bootstrap, self.topics)
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, enable_idempotence=True, acks="all"
        )
        await producer.start()
        self.monitor.start()
        self.started = time.monotonic()
        self.started_wall = time.time()
        submitter = asyncio.create_task(self.submit_all(producer))
        chaos = asyncio.create_task(self.chaos())
        end_wall = self.started_wall
        try:
            last_note, last_ended = 0.0, -1
            while True:
                await asyncio.sleep(0.5)
                if submitter.done() and submitter.exception():
                    raise submitter.exception()  # type: ignore[misc]
                ended = sum(1 for t in self.tasks if t.task_id in self.monitor.ended)
                if submitter.done() and chaos.done() and ended == len(self.tasks):
                    break
                if self.elapsed() > config.timeout:
                    self.log(f"  timeout after {config.timeout:.0f}s: {ended} of "
                             f"{len(self.tasks)} tasks ended")  # fmt: skip
                    break
                quiet = ended == last_ended  # nothing new: say so less often
                if self.elapsed() - last_note >= (60 if quiet else 10):
                    last_note, last_ended = self.elapsed(), ended
                    self.log(
                        f"  +{self.elapsed():6.1f}s {ended}/{len(self.tasks)} tasks ended, "
                        f"{sum(t.submitted_at is not None for t in self.tasks)} submitted, "
                        f"{len(self.actions)}/{len(self.plan)} chaos actions"
                    )
            if not chaos.done():  # never leave a service half-restarted
                self.log("  waiting for the chaos in progress to finish")
                await chaos
            submitter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await submitter
            await asyncio.sleep(config.settle)
            end_wall = time.time()
        finally:
            await self.monitor.stop()
            await producer.stop()
        records = await _read_all(
            self.bootstrap,
            [self.topics.results, self.topics.planner_history, self.topics.dlq],
        )
        report = self.analyse(records, end_wall)
        report.run_seconds = time.monotonic() - self.started
        return report

    # -- analysis --

    def analyse(self, records: list[_Record], end_wall: float) -> ChaosReport:
        report = ChaosReport(self.run_id, self.prefix, self.seed, self.bootstrap)
        report.actions = sorted(self.actions, key=lambda a: a.at)
        report.logs = f"{stack.stepbus_home() / 'logs'} (<service>.log; executions: " \
            f"{self.execution_log})"  # fmt: skip
        ours = {t.task_id: t for t in self.tasks}
        report.submitted = sum(1 for t in self.tasks if t.submitted_at is not None)

        results = [r for r in records if r.topic == self.topics.results]
        history = [r for r in records if r.topic == self.topics.planner_history]
        report.results_records = len(results)
        report.history_records = len(history)
        report.dlq_records = sum(1 for r in records if r.topic == self.topics.dlq)

        by_task: dict[str, list[_Record]] = defaultdict(list)
        for record in results + history:
            subject = record.event.get("subject")
            if subject in ours:
                by_task[subject].append(record)

        # Terminal events on the public topic: distinct ids per task, raw duplicates overall.
        terminals: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        seen_ids: Counter[str] = Counter()
        for record in results:
            event = record.event
            seen_ids[str(event.get("id"))] += 1
            if event.get("type") in TERMINAL and event.get("subject") in ours:
                terminals[event["subject"]].setdefault(str(event.get("id")), event)
        report.raw_duplicate_records = sum(n - 1 for n in seen_ids.values() if n > 1)

        for task in self.tasks:
            if task.submitted_at is None:
                continue
            ends = terminals.get(task.task_id, {})
            if not ends:
                report.lost.append((task.task_id, _last_event(by_task.get(task.task_id, []))))
                continue
            if len(ends) > 1:
                types = sorted(e["type"].rsplit(".", 1)[-1] for e in ends.values())
                report.duplicate_terminals.append((task.task_id, types))
                continue
            (end,) = ends.values()
            data = end.get("data") or {}
            if end["type"] == "stepbus.task.completed":
                if data.get("output") == task.expected:
                    report.completed_ok += 1
                else:
                    report.wrong_output.append(
                        (task.task_id, task.expected, str(data.get("output")))
                    )
            elif end["type"] == "stepbus.task.failed":
                report.failed.append(
                    (task.task_id, str(data.get("reason")), str(data.get("message")))
                )
            else:
                report.cancelled.append(task.task_id)

        # Tool runs: outcomes the executor says it did not replay, per idempotency key.
        for record in history:
            event = record.event
            if (
                event.get("type") != "stepbus.tool.call_completed"
                or event.get("subject") not in ours
            ):
                continue
            data = event.get("data") or {}
            key = str(data.get("idempotency_key"))
            report.executions_history.setdefault(key, 0)
            if not data.get("replayed", False):
                report.executions_history[key] += 1
        report.executions_log, report.executions_log_note = self._execution_log(ours)

        # Progress gaps that contain a kill instant.
        kills = [(a.at, a) for a in self.actions if a.kind in ("kill", "broker")]
        for task in self.tasks:
            if task.submitted_at is None:
                continue
            moments = sorted([task.submitted_at] + [r.timestamp for r in by_task[task.task_id]])
            for before, after in itertools.pairwise(moments):
                inside = [a for at, a in kills if before <= at < after]
                if inside and (
                    report.longest_stall is None or after - before > report.longest_stall[0]
                ):
                    report.longest_stall = (after - before, task.task_id, _names(inside))
            if task.task_id not in terminals:
                inside = [a for at, a in kills if moments[-1] <= at]
                gap = end_wall - moments[-1]
                if inside and (
                    report.longest_open_stall is None or gap > report.longest_open_stall[0]
                ):
                    report.longest_open_stall = (gap, task.task_id, _names(inside))
        return report

    def _execution_log(self, ours: dict[str, _Task]) -> tuple[dict[str, int] | None, str]:
        path = self.execution_log
        if not path.exists():
            return None, f"{path} does not exist: the tool-executor does not write it yet"
        runs: Counter[str] = Counter()
        bad = 0
        for line in path.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                key = str(json.loads(line)["idempotency_key"])
            except (ValueError, KeyError, TypeError):
                bad += 1
                continue
            if key.rsplit(":", 2)[0] in ours:
                runs[key] += 1
        note = f"from {path}" + (f", {bad} unreadable lines" if bad else "")
        return dict(runs), note


def _last_event(records: list[_Record]) -> str:
    if not records:
        return "none (not even task.accepted)"
    last = max(records, key=lambda r: r.timestamp)
    event = last.event
    step = (event.get("data") or {}).get("step")
    suffix = f" step {step}" if step is not None else ""
    topic = last.topic.rsplit(".", 1)[-1] if last.topic.endswith("results") else "history"
    return f"{event.get('type', '?').removeprefix('stepbus.')}{suffix} ({topic})"


def _names(actions: list[ChaosAction]) -> str:
    names = [
        f"{'broker' if a.kind == 'broker' else a.target} killed at +{a.offset:.1f}s"
        for a in actions
    ]
    more = f" and {len(names) - 3} more kills" if len(names) > 3 else ""
    return ", ".join(names[:3]) + more


async def run_chaos(config: ChaosConfig, log: Callable[[str], None] = _say) -> ChaosReport:
    """Run one chaos experiment and return its report (nothing is asserted here).

    Sets ``STEPBUS_TOPIC_PREFIX`` and ``STEPBUS_TOOL_EXECUTOR_EXECUTION_LOG`` in this process's
    environment so that the services (re)started through :mod:`stack` use them.
    """
    return await _Runner(config, log).run()


# --- command line ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stepbus_devtools.chaos",
        description="Kill stepbus services, the broker and Redis at random while tasks run; "
        "check that every task still ends exactly once with the right output.",
    )
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--steps", type=int, default=3, help="tool steps per task")
    parser.add_argument("--kills", type=int, default=12, help="service SIGKILLs")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for tasks")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds over which tasks are submitted and disruptions start "
        "(default: 1.5 s per disruption, at least 10)",
    )
    parser.add_argument("--latency", default="50-300", help="scripted model latency per call, ms")
    parser.add_argument("--no-broker-kill", action="store_true")
    parser.add_argument("--no-flushall", action="store_true")
    args = parser.parse_args(argv)
    targets: tuple[str, ...] = KILL_TARGETS
    if os.environ.get("OPENAI_BASE_URL"):  # a real endpoint: the stand-in is not running
        targets = tuple(t for t in targets if t != stack.SCRIPTED_LLM)
    config = ChaosConfig(
        tasks=args.tasks,
        steps=args.steps,
        kills=args.kills,
        seed=args.seed,
        timeout=args.timeout,
        duration=args.duration,
        latency=args.latency,
        targets=targets,
        broker_kill=not args.no_broker_kill,
        flushall=not args.no_flushall,
    )
    # aiokafka logs every failed reconnect while the broker is down: noise here.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        report = asyncio.run(run_chaos(config))
    except stack.StackError as error:
        print(f"stepbus: {error}", file=sys.stderr)
        return 2
    _say(report.text())
    _say(
        f"the stack keeps running with STEPBUS_TOPIC_PREFIX={report.prefix} (`make down` stops it)"
    )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
