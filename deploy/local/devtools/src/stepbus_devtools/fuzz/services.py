"""The services under test, seen from outside: which ones run and how they are configured
(:func:`discover`, from their own environment), whether they stay up and how much memory
they take (:class:`Watch`), what their counters say (:func:`scrape`), how much log they wrote
(:class:`LogGrowth`) and how far their consumer groups lag (:func:`group_lag`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from stepbus_contracts import DEFAULT_PREFIX, Topics

from stepbus_devtools import stack
from stepbus_devtools.chaos.processes import broker_port_open

__all__ = [
    "COUNTERS",
    "SERVICES",
    "Group",
    "LogGrowth",
    "Samples",
    "Service",
    "Watch",
    "deltas",
    "discover",
    "group_lag",
    "scrape",
]

SERVICES = ("planner", "tool-executor", "memory", "critic", "gateway")
"""The services that consume what the fuzz writes (the critic: what the planner asks of it)."""

COUNTERS = ("stepbus_records_total", "stepbus_dlq_records_total", "stepbus_records_dropped_total")
"""The Prometheus counters read before and after the run."""

_PORTS = {
    "planner": ("STEPBUS_PLANNER_METRICS_PORT", 9101),
    "tool-executor": ("STEPBUS_TOOL_EXECUTOR_METRICS_PORT", 9102),
    "memory": ("STEPBUS_MEMORY_METRICS_PORT", 9103),
    "critic": ("STEPBUS_CRITIC_METRICS_PORT", 9104),
    "gateway": ("STEPBUS_GATEWAY_PORT", 8080),
}
_HOSTS = {
    "planner": "STEPBUS_PLANNER_METRICS_HOST",
    "tool-executor": "STEPBUS_TOOL_EXECUTOR_METRICS_HOST",
    "memory": "STEPBUS_MEMORY_METRICS_HOST",
    "critic": "STEPBUS_CRITIC_METRICS_HOST",
    "gateway": "STEPBUS_GATEWAY_HOST",
}


@dataclass(frozen=True)
class Group:
    """A consumer group and the topics it consumes."""

    group_id: str
    topics: tuple[str, ...]


@dataclass(frozen=True)
class Service:
    """One running service as configured by its own environment (``/proc/<pid>/environ``)."""

    name: str
    pid: int
    prefix: str
    metrics_url: str
    group: Group
    log_path: Path


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # not ours, or no procfs: assume it runs with our environment
        return dict(os.environ)
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _service(name: str, pid: int) -> Service:
    env = _environ(pid)
    prefix = env.get("STEPBUS_TOPIC_PREFIX") or DEFAULT_PREFIX
    topics = Topics(prefix)
    port_env, default_port = _PORTS[name]
    port = int(env.get(port_env) or default_port)
    host = env.get(_HOSTS[name]) or "127.0.0.1"
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if name == "planner":
        group_id = prefix + (env.get("STEPBUS_PLANNER_GROUP_ID") or "stepbus-planner")
        group = Group(group_id, (topics.tasks, topics.planner_history))
    elif name == "tool-executor":
        group_id = prefix + (env.get("STEPBUS_TOOL_EXECUTOR_GROUP_ID") or "stepbus-tool-executor")
        group = Group(group_id, (topics.tool_calls,))
    elif name == "memory":
        # The group of its processor that reads what the fuzz writes (tasks, results).
        group_id = prefix + (env.get("STEPBUS_MEMORY_GROUP_ID") or "stepbus-memory") + "-store"
        group = Group(group_id, (topics.results, topics.tasks))
    elif name == "critic":
        group_id = prefix + (env.get("STEPBUS_CRITIC_GROUP_ID") or "stepbus-critic")
        group = Group(group_id, (topics.critic_requests,))
    else:  # GatewaySettings.feed_group_id
        instance = env.get("STEPBUS_GATEWAY_INSTANCE_ID") or f"{socket.gethostname()}-{port}"
        group = Group(f"{prefix}gateway-{instance}", (topics.results,))
    log_path = stack.stepbus_home() / "logs" / f"{name}.log"
    return Service(name, pid, prefix, f"http://{host}:{port}/metrics", group, log_path)


def discover(names: Sequence[str] = SERVICES) -> dict[str, Service]:
    """The running services among ``names``, as their environment configures them.

    Raises:
        stack.StackError: One is not running, or they do not all use the same topic prefix.
    """
    pids = stack.status()
    missing = [name for name in names if pids.get(name) is None]
    if missing:
        raise stack.StackError(
            f"not running: {', '.join(missing)} (under {stack.stepbus_home()}); `make up` "
            "starts them"
        )
    found = {name: _service(name, pids[name]) for name in names}  # type: ignore[arg-type]
    prefixes = {s.prefix for s in found.values()}
    if len(prefixes) > 1:
        which = ", ".join(f"{s.name}: {s.prefix!r}" for s in found.values())
        raise stack.StackError(
            f"the services use different topic prefixes ({which}); restart them with one "
            "(`make down && make up`), or pass --fresh"
        )
    return found


# -- liveness and memory ----------------------------------------------------------------------


def _status_kb(pid: int, field_name: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


@dataclass
class Watch:
    """Polls the services' pid files and memory, and the broker's port, while the run goes on.

    A restart is any moment at which a service's pid file does not name the pid it had at the
    start, alive (:func:`stack.status`); its peak RSS is the highest ``VmHWM`` seen, reset at
    the start when the kernel allows (``/proc/<pid>/clear_refs``), so it is the run's peak.
    The broker is watched because it is shared: when someone else stops it mid-run, the report
    says so next to whatever then fails.
    """

    services: dict[str, Service]
    bootstrap: str
    interval: float = 0.5
    restarts: list[str] = field(default_factory=list)
    """What was seen, e.g. ``planner: pid 123 gone at +12.3s (now pid 456)``."""
    peak_kb: dict[str, int] = field(default_factory=dict)
    rss_kb: dict[str, int] = field(default_factory=dict)
    peak_reset: dict[str, bool] = field(default_factory=dict)
    """Whether the peak counts from the start of the run (else from the process start)."""
    broker_down: list[list[float]] = field(default_factory=list)
    """Periods the broker's port was closed, as [from, to] seconds into the run."""
    _down: set[str] = field(default_factory=set)
    _task: asyncio.Task[None] | None = None
    _started: float = 0.0

    def broker_outages(self) -> str:
        """``""`` when the broker stayed up, else how long it was away."""
        if not self.broker_down:
            return ""
        total = sum(end - start for start, end in self.broker_down)
        first = self.broker_down[0][0]
        return f"{len(self.broker_down)} time(s), {total:.1f}s in all, first at +{first:.1f}s"

    def start(self) -> None:
        self._started = time.monotonic()
        for name, service in self.services.items():
            try:
                Path(f"/proc/{service.pid}/clear_refs").write_text("5")
                self.peak_reset[name] = True
            except OSError:
                self.peak_reset[name] = False
        self.poll()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self.poll()

    def poll(self) -> None:
        at = time.monotonic() - self._started
        if not broker_port_open(self.bootstrap):
            if self.broker_down and self.broker_down[-1][1] >= at - 2 * self.interval:
                self.broker_down[-1][1] = at
            else:
                self.broker_down.append([at, at])
        now = stack.status()
        for name, service in self.services.items():
            pid = now.get(name)
            if pid != service.pid:
                if name not in self._down:
                    self._down.add(name)
                    after = time.monotonic() - self._started
                    seen = f"now pid {pid}" if pid else "not running"
                    self.restarts.append(
                        f"{name}: pid {service.pid} gone at +{after:.1f}s ({seen})"
                    )
                continue
            hwm = _status_kb(service.pid, "VmHWM")
            rss = _status_kb(service.pid, "VmRSS")
            if hwm is not None:
                self.peak_kb[name] = max(self.peak_kb.get(name, 0), hwm)
            if rss is not None:
                self.rss_kb[name] = rss

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await asyncio.to_thread(self.poll)


# -- logs ---------------------------------------------------------------------------------------

_DIGITS = re.compile(r"\d+")


@dataclass
class LogGrowth:
    """What one service's log gained during the run."""

    path: Path
    start: int
    bytes: int = 0
    lines: int = 0
    longest: int = 0
    tracebacks: int = 0
    unexpected: list[str] = field(default_factory=list)
    """First lines of failures the processor did not expect (``failed unexpectedly``)."""
    text: str = ""
    """What was appended (its first ``limit`` bytes), for the evidence lines."""
    top: list[tuple[int, str]] = field(default_factory=list)
    """The most repeated lines (numbers and times masked), with their counts."""

    @classmethod
    def begin(cls, path: Path) -> LogGrowth:
        return cls(path, path.stat().st_size if path.exists() else 0)

    def finish(self, limit: int = 64 * 1024 * 1024) -> None:
        """Read what was appended since :meth:`begin` (at most ``limit`` bytes of it)."""
        if not self.path.exists():
            return
        self.bytes = max(0, self.path.stat().st_size - self.start)
        with open(self.path, "rb") as handle:
            handle.seek(self.start)
            chunk = handle.read(limit)
        self.text = chunk.decode(errors="replace")
        repeated: Counter[str] = Counter()
        for line in chunk.split(b"\n"):
            repeated[_DIGITS.sub("N", line[:160].decode(errors="replace"))] += 1
            self.lines += 1
            self.longest = max(self.longest, len(line))
            if line.startswith(b"Traceback"):
                self.tracebacks += 1
            if b"failed unexpectedly" in line and len(self.unexpected) < 3:
                self.unexpected.append(line[:240].decode(errors="replace"))
        self.top = [(count, line) for line, count in repeated.most_common(3) if count > 1]


# -- metrics ------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""Counter values by (name, sorted labels)."""


def _parse(text: str) -> Samples:
    out: Samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match["name"] not in COUNTERS:
            continue
        labels = tuple(sorted(_LABEL.findall(match["labels"] or "")))
        try:
            out[(match["name"], labels)] = float(match["value"])
        except ValueError:
            continue
    return out


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode(errors="replace"))


async def scrape(services: dict[str, Service]) -> dict[str, Samples | str]:
    """Every service's :data:`COUNTERS` (``_total`` samples), or why they could not be read."""
    out: dict[str, Samples | str] = {}
    for name, service in services.items():
        try:
            out[name] = _parse(await asyncio.to_thread(_get, service.metrics_url))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            out[name] = f"{service.metrics_url}: {exc}"
    return out


def deltas(before: Samples, after: Samples) -> Samples:
    """``after - before`` of every counter that moved."""
    moved: Samples = {}
    for key, value in after.items():
        change = value - before.get(key, 0.0)
        if change:
            moved[key] = change
    return moved


# -- lag ----------------------------------------------------------------------------------------


async def group_lag(bootstrap: str, group: Group) -> dict[TopicPartition, tuple[int, int]]:
    """(committed offset, lag) of every partition of the group's topics; a partition with
    nothing committed counts from its first offset."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        await admin.start()
        await consumer.start()
        committed = await admin.list_consumer_group_offsets(group.group_id)
        tps = await _group_partitions(admin, group.topics)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
    finally:
        await consumer.stop()
        await admin.close()
    out: dict[TopicPartition, tuple[int, int]] = {}
    for tp in tps:
        meta = committed.get(tp)
        position = meta.offset if meta is not None and meta.offset >= 0 else starts[tp]
        out[tp] = (position, max(0, ends[tp] - position))
    return out


async def _group_partitions(
    admin: AIOKafkaAdminClient, topics: Sequence[str]
) -> list[TopicPartition]:
    described = await admin.describe_topics(list(topics))
    by_topic: dict[str, list[int]] = defaultdict(list)
    for topic in described:
        for partition in topic["partitions"]:
            by_topic[topic["topic"]].append(partition["partition"])
    return [TopicPartition(t, p) for t in topics for p in sorted(by_topic.get(t, []))]
