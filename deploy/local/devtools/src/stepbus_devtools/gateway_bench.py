"""``make bench``, gateway part: submit latency at a fixed request rate, and SSE fan-out.

Starts a gateway process of its own (its own topic prefix, so no planner runs what it
submits: the figures are the gateway's, with Kafka and Redis of the local stack), then:

1. **Submits**: ``--rate`` requests a second (open loop: each request is sent on schedule,
   whether earlier ones answered or not) for ``--seconds``; prints p50/p99 of the time to 202
   and how many were not 202.
2. **Fan-out**: ``--streams`` SSE streams over ``--tasks`` tasks, while this process publishes
   progress events of those tasks to the results topic (as the planner would) at ``--events``
   a second in all; each event carries its publish time, and each stream records when it
   arrived. Prints delivery latency p50/p99 and the gateway's resident memory.

    python -m stepbus_devtools.gateway_bench [--rate 500] [--seconds 10] [--streams 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from aiokafka import AIOKafkaProducer
from stepbus_contracts import TaskProgress, TaskProgressData, Topics
from stepbus_runtime import ensure_topics

KEY = "bench-key-0123456789abcdef"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else 0.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _spawn(env: dict[str, str]) -> tuple[Any, subprocess.Popen[bytes]]:
    """The gateway process, its output in ``.stepbus/gateway-bench.log``."""
    log = (Path(os.environ.get("STEPBUS_HOME", ".stepbus")) / "gateway-bench.log").open("ab")
    command = [sys.executable, "-m", "stepbus_gateway"]
    return log, subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


@contextlib.asynccontextmanager
async def _gateway(bootstrap: str, redis_url: str, topics: Topics) -> AsyncIterator[Any]:
    port = _free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "REDIS_URL": redis_url,
        "STEPBUS_TOPIC_PREFIX": topics.prefix,
        "STEPBUS_GATEWAY_PORT": str(port),
        "STEPBUS_API_KEYS": f"{KEY}:bench",
        "STEPBUS_GATEWAY_RATE_LIMIT_PER_SECOND": "100000",
        "STEPBUS_GATEWAY_RATE_LIMIT_BURST": "100000",
    }
    log, process = _spawn(env)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            for _ in range(600):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{url}/readyz")).status_code == 200:
                        break
                if process.poll() is not None:
                    raise SystemExit("the bench gateway exited; see .stepbus/gateway-bench.log")
                await asyncio.sleep(0.1)
        yield url, process
    finally:
        process.terminate()
        process.wait(30)
        log.close()


async def submits(url: str, rate: float, seconds: float) -> None:
    """Open-loop submits with aiohttp (a lighter client than httpx: the load generator shares
    the machine's two cores with the gateway, Kafka and Redis)."""
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    body = json.dumps({"input": "What is 17 * 23?"}).encode()
    latencies: list[float] = []
    failed = 0
    connector = aiohttp.TCPConnector(limit=400)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        base_url=url, headers=headers, connector=connector, timeout=timeout
    ) as session:

        async def one() -> None:
            nonlocal failed
            started = time.perf_counter()
            try:
                async with session.post("/v1/tasks", data=body) as response:
                    await response.read()
                    ok = response.status == 202
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            latencies.append((time.perf_counter() - started) * 1000)
            failed += not ok

        for _ in range(50):  # warm up connections
            await one()
        latencies.clear()
        total = int(rate * seconds)
        start = time.perf_counter()
        pending = []
        for index in range(total):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(one()))
        sent = time.perf_counter() - start
        await asyncio.gather(*pending)
    print(f"submit: {total} requests at {rate:g}/s (sent at {total / sent:.0f}/s)")
    print(
        f"  202 latency p50 {_percentile(latencies, 50):7.2f} ms   "
        f"p99 {_percentile(latencies, 99):7.2f} ms   not 202: {failed}"
    )


async def fanout(
    url: str, process: Any, bootstrap: str, topics: Topics, streams: int, tasks: int, events: int,
    seconds: float,
) -> None:  # fmt: skip
    headers = {"Authorization": f"Bearer {KEY}"}
    limits = httpx.Limits(max_connections=streams + 50, max_keepalive_connections=streams + 50)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as c:
        ids = []
        for _ in range(tasks):
            response = await c.post("/v1/tasks", json={"input": "follow me"})
            ids.append(response.json()["task_id"])
        latencies: list[float] = []
        opened = 0
        all_open = asyncio.Event()

        async def follow(task_id: str) -> None:
            nonlocal opened
            async with c.stream("GET", f"/v1/tasks/{task_id}/events") as stream:
                opened += 1
                if opened == streams:
                    all_open.set()
                async for line in stream.aiter_lines():
                    if line.startswith("data:"):
                        sent = json.loads(line[5:])["data"]["message"]
                        if sent.startswith("t="):
                            latencies.append((time.time() - float(sent[2:])) * 1000)

        followers = [asyncio.create_task(follow(ids[i % tasks])) for i in range(streams)]
        await asyncio.wait_for(all_open.wait(), 120)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1)
        await producer.start()
        try:
            total = int(events * seconds)
            start = time.perf_counter()
            for index in range(total):
                delay = start + index / events - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task_id = ids[index % tasks]
                event = TaskProgress(
                    subject=task_id,
                    tenant="bench",
                    data=TaskProgressData(step=index, stage="thought", message=f"t={time.time()}"),
                )
                await producer.send(
                    topics.results, event.model_dump_json().encode(), key=task_id.encode()
                )
            await producer.flush()
            await asyncio.sleep(2)
        finally:
            await producer.stop()
        memory = _rss_mib(process.pid)
        for follower in followers:
            follower.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
    expected = int(events * seconds) * streams // tasks
    print(
        f"fan-out: {streams} SSE streams over {tasks} running tasks, "
        f"{events}/s progress events for {seconds:g} s"
    )
    print(
        f"  delivery p50 {_percentile(latencies, 50):7.2f} ms   "
        f"p99 {_percentile(latencies, 99):7.2f} ms   delivered {len(latencies)}/{expected}   "
        f"gateway RSS {memory:.0f} MiB"
    )


async def run(args: argparse.Namespace) -> None:
    topics = Topics(f"bench{uuid.uuid4().hex[:6]}.")
    await ensure_topics(args.bootstrap, topics)
    async with _gateway(args.bootstrap, args.redis_url, topics) as (url, process):
        await submits(url, args.rate, args.seconds)
        await fanout(
            url, process, args.bootstrap, topics, args.streams, args.tasks, args.events,
            args.seconds,
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="submits a second")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--streams", type=int, default=1000, help="SSE streams")
    parser.add_argument("--tasks", type=int, default=100, help="tasks they follow")
    parser.add_argument("--events", type=int, default=50, help="progress events a second")
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
