"""``make bench``, tracing part: what exporting every span costs, against tracing off.

Against the running local stack (``make up``) it starts a local OTLP/HTTP receiver (the
"collector": a ``ThreadingHTTPServer`` on 127.0.0.1 in a thread of this process, answering
``POST /v1/traces`` with an empty ``ExportTraceServiceResponse`` and counting the spans it
parses, gzip or deflate bodies included), then, for each of ``--runs`` runs and each mode in
an alternating order (off, on / on, off / ...):

1. sets (on: ``OTEL_EXPORTER_OTLP_ENDPOINT`` = the receiver, ``OTEL_EXPORTER_OTLP_PROTOCOL`` =
   ``http/protobuf``: every span recorded and exported) or unsets (off: no span recorded, ids
   still propagated) the tracing variables and restarts every running service of the stack
   (tool-executor, memory, critic, planner, gateway; not Kafka, Redis or the scripted model),
   so each measurement starts from freshly started services;
2. runs ``--warmup`` tasks (not measured: connections, group joins), then the per-step
   orchestration overhead of ``bench.react_steps`` (``--step-tasks`` tasks of 5 calculator
   steps, 6 LLM steps each, zero-latency model: p50/p99 of each step's wall time minus the
   model's and the tool's own time);
3. the throughput of ``bench.throughput``: ``--tasks`` tasks of ``--steps`` calculator steps at
   ``--latency`` ms a model call, submitted at once, with memory off and the critic off (as
   ``make bench``'s baseline: memory service stopped, the planner without recall);
4. in the on mode, waits until the receiver has had no span for a few seconds, then counts
   the spans of the throughput's tasks (by their ``stepbus.task.id`` attribute) and reads every
   service's ``stepbus_trace_spans_exported_total`` / ``_dropped_total``.

It prints the median over the runs of each mode (tasks/s, wall time, step overhead p50/p99,
spans received per task), the throughput cost of tracing, ``100 * (1 - on / off)`` of the
median tasks/s, against the budget of 10 %, and every run's raw figures. At the end the
tracing variables get their values from before the bench, memory is turned back on
(``bench._planner_memory(True)``) and the services are restarted: the stack is left as
``make up`` leaves it. The receiver shares the two cores with the stack, as a collector agent
on the same host would.

    python -m stepbus_devtools.tracing_bench [--runs 3] [--tasks 1000] [--steps 3]
        [--latency 200] [--step-tasks 20] [--warmup 2] [--timeout 600]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import statistics
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from stepbus_contracts import Topics

from stepbus_devtools import bench, stack

BUDGET_PERCENT = 10.0
TRACING_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
)
# Restarted for each measurement, when running: the services (the Python processes of the
# stack other than the scripted model), in the stack's start order.
SERVICES = tuple(
    p.name for p in stack.PROCESSES if p.module is not None and p.name != stack.SCRIPTED_LLM
)
TASK_ID_KEY = "stepbus.task.id"
SETTLE_QUIET_SECONDS = 3.0  # the export processors send at least every second
SETTLE_LIMIT_SECONDS = 60.0


# --- the collector -----------------------------------------------------------------------------


class Collector:
    """Counts the spans OTLP/HTTP exporters send it; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self.reset()

    def reset(self) -> None:
        """Forget every count (a new measurement starts)."""
        with self._lock:
            self.spans = 0
            self.requests = 0
            self.bad_requests = 0
            self.by_task: Counter[str] = Counter()
            self.by_service: Counter[str] = Counter()
            self.by_name: Counter[str] = Counter()  # "service: span name"
            self.untasked: Counter[str] = Counter()  # the same, of spans without a task id
            self.cpu_seconds = 0.0  # handler threads' CPU: parsing and counting
            self.last_task_span = time.monotonic()

    def start(self) -> str:
        """Serve on a free port of 127.0.0.1 in a daemon thread; the endpoint URL."""
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.collector = self
        thread = threading.Thread(
            target=self._server.serve_forever, name="otlp-collector", daemon=True
        )
        thread.start()
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def receive(self, body: bytes, encoding: str) -> bool:
        """Count the spans of one export request; False when it cannot be parsed."""
        started = time.thread_time()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            request = ExportTraceServiceRequest.FromString(body)
        except Exception:
            with self._lock:
                self.bad_requests += 1
            return False
        spans = 0
        by_task: Counter[str] = Counter()
        by_service: Counter[str] = Counter()
        by_name: Counter[str] = Counter()
        untasked: Counter[str] = Counter()
        for resource_spans in request.resource_spans:
            service = next(
                (
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                ),
                "?",
            )
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans += 1
                    by_service[service] += 1
                    by_name[f"{service}: {span.name}"] += 1
                    for attribute in span.attributes:
                        if attribute.key == TASK_ID_KEY:
                            by_task[attribute.value.string_value] += 1
                            break
                    else:
                        untasked[f"{service}: {span.name}"] += 1
        with self._lock:
            self.requests += 1
            self.spans += spans
            self.by_task.update(by_task)
            self.by_service.update(by_service)
            self.by_name.update(by_name)
            self.untasked.update(untasked)
            if by_task:
                self.last_task_span = time.monotonic()
            self.cpu_seconds += time.thread_time() - started
        return True

    def settle(self) -> float:
        """Wait until no span of a task arrived for SETTLE_QUIET_SECONDS (at most
        SETTLE_LIMIT_SECONDS; spans of no task, such as the gateway's, never stop); the seconds
        waited."""
        started = time.monotonic()
        while time.monotonic() - started < SETTLE_LIMIT_SECONDS:
            with self._lock:
                quiet = time.monotonic() - self.last_task_span
            if quiet >= SETTLE_QUIET_SECONDS:
                break
            time.sleep(0.2)
        return time.monotonic() - started


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    collector: Collector


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the exporter's session reuses its connection
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path.rstrip("/") != "/v1/traces":
            self._answer(404, b"", "text/plain")
            return
        encoding = (self.headers.get("Content-Encoding") or "").strip().lower()
        if self.server.collector.receive(body, encoding):
            self._answer(200, ExportTraceServiceResponse().SerializeToString())
        else:
            self._answer(400, b"", "text/plain")

    def _answer(
        self, status: int, body: bytes, content_type: str = "application/x-protobuf"
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: one line per export request would flood the bench's output."""


# --- the stack ---------------------------------------------------------------------------------


def _set_tracing(endpoint: str | None) -> None:
    """Tracing variables for the services started from now on: export to ``endpoint``, or
    (None) no endpoint at all."""
    for name in TRACING_VARIABLES:
        os.environ.pop(name, None)
    if endpoint is not None:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"


def _restart_services() -> float:
    """Restart every running service (each ready before the next); the seconds it took."""
    started = time.monotonic()
    for name in SERVICES:
        if stack.is_running(name):
            stack.restart(name)
    return time.monotonic() - started


def _span_counters() -> dict[str, tuple[float, float]]:
    """(exported, dropped) spans of each running service since it started, from /metrics."""
    out: dict[str, tuple[float, float]] = {}
    for process in stack.PROCESSES:
        if process.name not in SERVICES or not stack.is_running(process.name):
            continue
        url = f"http://127.0.0.1:{process.resolved_port()}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5.0) as response:
                text = response.read().decode(errors="replace")
        except (urllib.error.URLError, OSError):
            continue
        exported = dropped = 0.0
        for line in text.splitlines():
            if line.startswith("stepbus_trace_spans_exported_total"):
                exported += float(line.rsplit(" ", 1)[1])
            elif line.startswith("stepbus_trace_spans_dropped_total"):
                dropped += float(line.rsplit(" ", 1)[1])
        out[process.name] = (exported, dropped)
    return out


# --- one measurement ---------------------------------------------------------------------------


@dataclass
class Measurement:
    """The figures of one mode in one run."""

    run: int
    mode: str  # "off" or "on"
    restart_seconds: float = 0.0
    step_p50: float = 0.0  # ms
    step_p99: float = 0.0  # ms
    step_count: int = 0
    wall: float = 0.0  # s, first submit -> last terminal event
    tasks_per_second: float = 0.0  # completed / wall
    latency_p50: float = 0.0  # s, submit -> terminal event
    completed: int = 0
    wrong: int = 0
    failed: int = 0
    not_ended: int = 0
    stack_cpu: float = 0.0  # s, every stack process during the throughput run
    planner_cpu: float = 0.0
    spans: int = 0  # received since the services restarted
    spans_per_task: float = 0.0  # carrying a throughput task's id, per task
    by_service: dict[str, int] = field(default_factory=dict)
    by_name: dict[str, int] = field(default_factory=dict)  # "service: span name"
    untasked: dict[str, int] = field(default_factory=dict)  # spans of no task, by name
    exported: float = 0.0  # the services' own counters
    dropped: float = 0.0
    collector_cpu: float = 0.0  # s


async def _measure(
    args: argparse.Namespace,
    bootstrap: str,
    topics: Topics,
    collector: Collector,
    endpoint: str,
    run: int,
    mode: str,
) -> Measurement:
    figures = Measurement(run=run, mode=mode)
    _set_tracing(endpoint if mode == "on" else None)
    print(f"--- run {run}, tracing {mode}: restarting {', '.join(_running_services())}")
    figures.restart_seconds = _restart_services()
    collector.reset()
    if args.warmup:
        await bench.react_steps(bootstrap, topics, tasks=args.warmup, steps=5)
    react = await bench.react_steps(bootstrap, topics, tasks=args.step_tasks, steps=5)
    overheads = react["overheads"]
    figures.step_p50 = bench.percentile(overheads, 50)
    figures.step_p99 = bench.percentile(overheads, 99)
    figures.step_count = len(overheads)
    print(
        f"  step orchestration overhead: p50 {figures.step_p50:.2f} ms, "
        f"p99 {figures.step_p99:.2f} ms (n={len(overheads)})"
    )
    result = await bench.throughput(
        bootstrap,
        topics,
        args.tasks,
        args.steps,
        args.latency,
        args.timeout,
        sessions=False,
        critic=False,
    )
    printable = argparse.Namespace(
        throughput_steps=args.steps,
        throughput_latency=args.latency,
        throughput_timeout=args.timeout,
    )
    figures.wall = bench._print_throughput(result, printable)
    ends: dict[str, tuple[float, dict[str, Any]]] = result["ends"]
    submitted: dict[str, float] = result["submitted"]
    completed = [t for t, (_, e) in ends.items() if e["type"] == "stepbus.task.completed"]
    figures.completed = len(completed)
    figures.wrong = sum(
        1 for t in completed if ends[t][1]["data"].get("output") != result["expected"][t]
    )
    figures.failed = sum(1 for _, e in ends.values() if e["type"] == "stepbus.task.failed")
    figures.not_ended = len(submitted) - len(ends)
    figures.tasks_per_second = len(completed) / figures.wall
    latencies = [(ends[t][0] - submitted[t]) * 1000 for t in ends]
    figures.latency_p50 = bench.percentile(latencies, 50) / 1000 if latencies else 0.0
    before, after = result["cpu_before"], result["cpu_after"]
    used = {name: after[name] - before[name] for name in after if name in before}
    figures.stack_cpu = sum(used.values())
    figures.planner_cpu = used.get("planner", 0.0)
    if mode == "on":
        waited = collector.settle()
        print(f"  waited {waited:.1f}s for the last spans")
    counters = _span_counters()
    figures.exported = sum(exported for exported, _ in counters.values())
    figures.dropped = sum(dropped for _, dropped in counters.values())
    with collector._lock:
        figures.spans = collector.spans
        figures.spans_per_task = sum(collector.by_task[t] for t in submitted) / max(
            1, len(submitted)
        )
        figures.by_service = dict(collector.by_service)
        figures.by_name = dict(collector.by_name)
        figures.untasked = dict(collector.untasked)
        figures.collector_cpu = collector.cpu_seconds
    print(
        f"  spans received {figures.spans} ({figures.spans_per_task:.1f} per throughput task; "
        f"services: {figures.exported:.0f} exported, {figures.dropped:.0f} dropped; "
        f"collector CPU {figures.collector_cpu:.2f}s)"
    )
    return figures


def _running_services() -> list[str]:
    return [name for name in SERVICES if stack.is_running(name)]


# --- report ------------------------------------------------------------------------------------


def _median(measurements: list[Measurement], attribute: str) -> float:
    return float(statistics.median(getattr(m, attribute) for m in measurements))


def _report(args: argparse.Namespace, measurements: list[Measurement]) -> None:
    off = [m for m in measurements if m.mode == "off"]
    on = [m for m in measurements if m.mode == "on"]
    print()
    print(
        f"tracing off vs on, median of {args.runs} run(s) each (throughput: {args.tasks} tasks x "
        f"{args.steps} tool steps, {args.latency} ms model, submitted at once, memory and critic "
        f"off; step overhead: {args.step_tasks} tasks x 6 LLM steps, zero-latency model; "
        "every service restarted before each measurement)"
    )
    rows: list[tuple[str, str, str]] = [
        ("tasks/s", "tasks_per_second", "{:.1f}"),
        ("wall time, s", "wall", "{:.2f}"),
        ("task latency p50, s", "latency_p50", "{:.2f}"),
        ("step orchestration overhead p50, ms", "step_p50", "{:.2f}"),
        ("step orchestration overhead p99, ms", "step_p99", "{:.2f}"),
        ("spans received per task", "spans_per_task", "{:.1f}"),
        ("spans dropped by the services", "dropped", "{:.0f}"),
        ("stack CPU during the throughput run, s", "stack_cpu", "{:.1f}"),
        ("planner CPU during the throughput run, s", "planner_cpu", "{:.1f}"),
    ]
    print("| figure | tracing off | tracing on |")
    print("|---|---|---|")
    for label, attribute, shape in rows:
        values = [
            shape.format(_median(group, attribute)) if group else "n/a" for group in (off, on)
        ]
        print(f"| {label} | {values[0]} | {values[1]} |")
    if off and on:
        off_rate, on_rate = _median(off, "tasks_per_second"), _median(on, "tasks_per_second")
        cost = 100 * (1 - on_rate / off_rate) if off_rate else float("nan")
        verdict = "within the budget" if cost <= BUDGET_PERCENT else "OVER the budget"
        step = _median(on, "step_p50") - _median(off, "step_p50")
        print(
            f"throughput cost of tracing: 100 * (1 - {on_rate:.1f} / {off_rate:.1f}) = "
            f"{cost:+.1f} % ({verdict} of {BUDGET_PERCENT:.0f} %); step overhead p50 "
            f"{step:+.2f} ms"
        )
    print("raw figures of each run:")
    print(
        "| run | tracing | tasks/s | wall s | latency p50 s | step p50 ms | step p99 ms "
        "| completed / wrong / failed / not ended | spans/task | spans exported / dropped "
        "| stack CPU s | collector CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for m in measurements:
        print(
            f"| {m.run} | {m.mode} | {m.tasks_per_second:.1f} | {m.wall:.2f} | "
            f"{m.latency_p50:.2f} | {m.step_p50:.2f} | {m.step_p99:.2f} | "
            f"{m.completed} / {m.wrong} / {m.failed} / {m.not_ended} | "
            f"{m.spans_per_task:.1f} | {m.exported:.0f} / {m.dropped:.0f} | "
            f"{m.stack_cpu:.1f} | {m.collector_cpu:.2f} |"
        )
    services = Counter[str]()
    for m in on:
        services.update(m.by_service)
    if services:
        total = sum(services.values())
        shares = ", ".join(f"{name} {100 * n / total:.0f} %" for name, n in services.most_common())
        print(f"spans by service (tracing on, all runs): {shares}")
    names = Counter[str]()
    for m in on:
        names.update(m.by_name)
    if names:
        total = sum(names.values())
        print("most frequent spans (tracing on, all runs; share of all spans received):")
        for name, n in names.most_common(12):
            print(f"  {name:<60} {100 * n / total:5.1f} %")
    untasked = Counter[str]()
    for m in on:
        untasked.update(m.untasked)
    if untasked:
        listed = ", ".join(f"{name} {n}" for name, n in untasked.most_common(8))
        print(f"spans of no task (tracing on, all runs): {listed}")


# --- main --------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> list[Measurement]:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    topics = Topics(bench._running_prefix())
    if not stack.is_running("planner"):
        raise SystemExit("stepbus: the planner is not running; start the stack with `make up`")
    collector = Collector()
    endpoint = collector.start()
    print(
        f"stepbus tracing bench on {bootstrap} (topics {topics.prefix}*), "
        f"OTLP/HTTP receiver at {endpoint}"
    )
    saved = {name: os.environ.get(name) for name in (*TRACING_VARIABLES, "STEPBUS_PLANNER_MEMORY")}
    measurements: list[Measurement] = []
    try:
        bench._planner_memory(False)  # as the baseline of `make bench`
        os.environ["STEPBUS_PLANNER_MEMORY"] = "false"  # for every restart of the planner
        for index in range(args.runs):
            modes = ("off", "on") if index % 2 == 0 else ("on", "off")
            for mode in modes:
                measurements.append(
                    await _measure(args, bootstrap, topics, collector, endpoint, index + 1, mode)
                )
    finally:
        print("--- restoring the stack (tracing as before the bench, memory on)")
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _restart_services()
        bench._planner_memory(True)  # as the stack runs by default
        collector.stop()
    _report(args, measurements)
    return measurements


def main() -> None:
    parser = argparse.ArgumentParser(description="stepbus tracing overhead benchmark")
    parser.add_argument("--runs", type=int, default=3, help="runs of each mode (off and on)")
    parser.add_argument("--tasks", type=int, default=1000, help="throughput tasks, at once")
    parser.add_argument("--steps", type=int, default=3, help="tool steps per throughput task")
    parser.add_argument("--latency", type=int, default=200, help="model latency per call, ms")
    parser.add_argument(
        "--step-tasks", type=int, default=20, help="sequential tasks for the step overhead"
    )
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured tasks after each restart")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for the throughput results"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
