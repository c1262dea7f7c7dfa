"""Test harness: the real Kafka and Redis, services as processes, raw Kafka reads.

Kafka and Redis are the real servers of ``deploy/local`` (started here when nothing answers at
``KAFKA_BOOTSTRAP_SERVERS`` / ``REDIS_URL``). Each test gets topics under a unique prefix, so
tests never see each other's records and can share one broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from stepbus_runtime import EventPublisher, Processor, Route, topic_partitions

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "deploy" / "local"
LOGS = REPO / ".stepbus" / "logs" / "tests"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    """True when something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def unique_prefix() -> str:
    """A topic prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:10]}."


def scratch_prefix(kind: str) -> str:
    """A prefix for the scratch topics of one test module (``SCRATCH``; deleted at its end)."""
    return f"{kind}-{uuid.uuid4().hex[:8]}-"


async def create_topic(
    bootstrap: str, prefix: str, partitions: int = 1, *, with_dlq: bool = False
) -> str:
    """Create a topic named ``prefix`` plus a random part (and ``<name>.dlq``); its name."""
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    topics = [NewTopic(name, partitions, 1)]
    if with_dlq:
        topics.append(NewTopic(f"{name}.dlq", 1, 1))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(topics)
    finally:
        await admin.close()
    return name


async def delete_topics(bootstrap: str, prefix: str) -> None:
    """Delete a test's topics (every name starting with ``prefix``): a broker that keeps
    thousands of test partitions restarts slowly, and the chaos tests restart it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [name for name in await admin.list_topics() if name.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


def run_script(script: str, *args: str, env: dict[str, str] | None = None) -> None:
    """Run a ``deploy/local`` script, failing the test run with its output on error."""
    result = subprocess.run(
        ["bash", str(LOCAL / script), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")


async def wait_until(
    check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


@dataclass
class ServiceProcess:
    """One service run as a separate OS process, as in production."""

    name: str
    module: list[str]
    env: dict[str, str]
    ready_url: str
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"{self.name}-{uuid.uuid4().hex[:6]}.log"

    def start(self) -> None:
        """Spawn the process; its output goes to a log file under ``.stepbus/logs/tests``."""
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", *self.module],
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll the readiness URL; fail with the log tail if the process dies."""

        async def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            try:
                async with httpx.AsyncClient(timeout=1) as client:
                    return (await client.get(self.ready_url)).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_until(ready, timeout, f"{self.name} ready", interval=0.1)

    def stop(self, sig: int = 15) -> None:
        """Signal the process and wait for it to exit."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the process wrote."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class TopicReader:
    """Reads every record of a topic from the beginning (no consumer group), as JSON."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self._bootstrap = bootstrap
        self.records: list[Any] = []
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)

    async def __aenter__(self) -> TopicReader:
        await self._consumer.start()
        tps = await topic_partitions(self._bootstrap, self.topic)
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def poll(self) -> list[Any]:
        """Fetch what arrived since the last poll and return all records so far."""
        batches = await self._consumer.getmany(timeout_ms=100)
        for records in batches.values():
            self.records.extend(records)
        return self.records

    def events(self) -> list[dict[str, Any]]:
        """Record values decoded as JSON (undecodable ones skipped)."""
        out = []
        for record in self.records:
            try:
                out.append(json.loads(record.value))
            except (TypeError, ValueError, RecursionError):
                continue
        return out

    async def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], Any], timeout: float, what: str
    ) -> Any:
        """Poll until ``predicate(events)`` is truthy; returns its value."""

        async def check() -> Any:
            await self.poll()
            return predicate(self.events())

        return await wait_until(check, timeout, what, interval=0.01)


@contextlib.asynccontextmanager
async def running_processor(
    bootstrap: str,
    routes: dict[str, Route],
    dlq_topic: str,
    *,
    group_id: str | None = None,
    publisher: EventPublisher | None = None,
    **options: Any,
) -> AsyncIterator[Processor]:
    """A real ``Processor`` on the broker, ready (joined and polling) while the block runs.

    Retries back off in milliseconds unless ``retry_backoff`` is given; a publisher is made
    (and stopped) unless one is passed.
    """
    own = publisher is None
    publisher = publisher or EventPublisher(bootstrap, "test")
    if own:
        await publisher.start()
    options.setdefault("retry_backoff", (0.01, 0.05))
    processor = Processor(
        name="test",
        bootstrap_servers=bootstrap,
        group_id=group_id or f"g-{uuid.uuid4().hex[:8]}",
        routes=routes,
        publisher=publisher,
        dlq_topic=dlq_topic,
        **options,
    )
    runner = asyncio.create_task(processor.run())
    try:
        await wait_until(lambda: processor.ready, 30, "processor ready")
        yield processor
    finally:
        processor.stop()
        await asyncio.wait_for(runner, 30)
        if own:
            await publisher.stop()


async def produce(
    bootstrap: str,
    topic: str,
    records: list[tuple[bytes, bytes]],
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """Publish raw records with a bare idempotent producer (not the project's publisher)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key, headers=headers or [])
    finally:
        await producer.stop()


TEST_TENANTS = ("acme", "globex", "default", "other")
TEST_API_KEYS = ",".join(
    [f"test-key-{tenant}-0123456789:{tenant}" for tenant in TEST_TENANTS]
    + ["test-key-acme-ops-0123456789:acme:ops"]
)
"""``STEPBUS_API_KEYS`` of the test gateways: one key per test tenant (and one with a role)."""


def auth(tenant: str = "acme", role: str | None = None) -> dict[str, str]:
    """The ``Authorization`` header of the test key of ``tenant`` (with ``role``: ops only)."""
    key = f"test-key-{tenant}-{role}-0123456789" if role else f"test-key-{tenant}-0123456789"
    return {"Authorization": f"Bearer {key}"}
