"""The gateway against the real Kafka broker and Redis, served by uvicorn in-process.

Results events are produced to the results topic with a raw producer, as the planner would;
what the gateway publishes is read back from the tasks topic with a raw consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from stepbus_contracts import (
    CloudEvent,
    TaskCancelled,
    TaskCancelledData,
    TaskCompleted,
    TaskCompletedData,
    TaskProgress,
    TaskProgressData,
    Topics,
)
from stepbus_gateway import GatewaySettings, create_app
from stepbus_gateway.projection import TaskProjection
from stepbus_runtime import encode

from ..harness import TEST_API_KEYS, TopicReader, auth, wait_until

pytestmark = pytest.mark.integration


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # leave Ctrl-C to pytest


@dataclass
class Gateway:
    """A running gateway and an HTTP client for it."""

    client: httpx.AsyncClient
    settings: GatewaySettings
    topics: Topics
    bootstrap: str
    port: int

    async def produce_results(self, *events: CloudEvent | bytes, key: str = "x") -> None:
        """Produce to the results topic as the planner does (raw bytes for poison records)."""
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            for event in events:
                if isinstance(event, bytes):
                    await producer.send_and_wait(self.topics.results, event, key=key.encode())
                else:
                    value, subject = encode(event), event.subject.encode()
                    await producer.send_and_wait(self.topics.results, value, key=subject)
        finally:
            await producer.stop()

    async def submit(self, tenant: str = "acme", **body: Any) -> str:
        """Submit a task and return its id."""
        body.setdefault("input", "What is 17 * 23?")
        response = await self.client.post("/v1/tasks", json=body, headers=auth(tenant))
        assert response.status_code == 202, response.text
        task_id: str = response.json()["task_id"]
        return task_id

    async def status(self, task_id: str, tenant: str = "acme") -> dict[str, Any]:
        response = await self.client.get(f"/v1/tasks/{task_id}", headers=auth(tenant))
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def open_streams(self) -> float:
        """The gauge of open SSE streams, read from /metrics."""
        text = (await self.client.get("/metrics")).text
        for family in text_string_to_metric_families(text):
            if family.name == "stepbus_gateway_sse_streams":
                return float(family.samples[0].value)
        raise AssertionError("stepbus_gateway_sse_streams missing from /metrics")


@contextlib.asynccontextmanager
async def running_gateway(
    settings: GatewaySettings, topics: Topics, bootstrap: str
) -> AsyncIterator[Gateway]:
    """The gateway served by uvicorn in-process on a free port, once ``/readyz`` answers 200."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _Server(uvicorn.Config(create_app(settings), lifespan="on", log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await wait_until(lambda: server.started or serving.done(), 60, "gateway started")
        assert not serving.done(), "gateway failed to start"
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=15, headers=auth("acme")
        ) as client:

            async def ready() -> bool:
                return (await client.get("/readyz")).status_code == 200

            await wait_until(ready, 30, "gateway ready", interval=0.05)
            yield Gateway(client, settings, topics, bootstrap, port)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 30)
        sock.close()


def gateway_settings(kafka_bootstrap: str, redis_url: str, topics: Topics) -> GatewaySettings:
    """Settings of a test gateway: the test's topics, a replica of its own."""
    return GatewaySettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=topics.prefix,
        redis_url=redis_url,
        sse_heartbeat_seconds=0.2,
        projection_ttl_seconds=600,
        instance_id=f"test-{uuid.uuid4().hex[:8]}",
        api_keys=TEST_API_KEYS,
        rate_limit_per_second=1000.0,
        rate_limit_burst=1000,
    )


@pytest.fixture
async def gateway(kafka_bootstrap: str, redis_url: str, topics: Topics) -> AsyncIterator[Gateway]:
    settings = gateway_settings(kafka_bootstrap, redis_url, topics)
    async with running_gateway(settings, topics, kafka_bootstrap) as gateway:
        yield gateway


def _task_id() -> str:
    return f"task-{uuid.uuid4().hex[:12]}"


async def _sse(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    """SSE messages as dicts; a comment line yields ``{"comment": text}``."""
    message: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield {"comment": line[1:].strip()}
        elif line == "":
            if message:
                yield message
            message = {}
        else:
            name, _, value = line.partition(":")
            message[name] = value.removeprefix(" ")


async def _read_stream(
    gateway: Gateway, task_id: str, *, tenant: str = "acme", last_event_id: str | None = None
) -> list[dict[str, str]]:
    """Every message of a stream that must end by itself."""
    headers = auth(tenant)
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    async with (
        asyncio.timeout(20),
        gateway.client.stream("GET", f"/v1/tasks/{task_id}/events", headers=headers) as resp,
    ):
        assert resp.status_code == 200
        return [message async for message in _sse(resp) if "comment" not in message]


def _progress(task_id: str, tenant: str = "acme", step: int = 0) -> TaskProgress:
    return TaskProgress(
        subject=task_id,
        tenant=tenant,
        data=TaskProgressData(step=step, stage="thought", message="multiplying"),
    )


def _completed(task_id: str, tenant: str = "acme", output: str = "391") -> TaskCompleted:
    return TaskCompleted(
        subject=task_id, tenant=tenant, data=TaskCompletedData(output=output, steps=2)
    )


async def test_submit_publishes_task_submitted(gateway: Gateway) -> None:
    task_id = _task_id()
    body = {"input": "What is 17 * 23?", "tools": ["calculator"], "max_iterations": 4}
    trace_id = uuid.uuid4().hex
    response = await gateway.client.post(
        "/v1/tasks",
        json={**body, "task_id": task_id, "metadata": {"k": "v"}},
        headers={**auth("acme"), "traceparent": f"00-{trace_id}-b7ad6b7169203331-01"},
    )

    assert response.status_code == 202, response.text
    assert response.json() == {
        "task_id": task_id,
        "status": "submitted",
        "status_url": f"/v1/tasks/{task_id}",
        "events_url": f"/v1/tasks/{task_id}/events",
    }
    assert response.headers["location"] == f"/v1/tasks/{task_id}"
    async with TopicReader(gateway.bootstrap, gateway.topics.tasks) as reader:
        events = await reader.wait_for(lambda evs: evs, 10, "TaskSubmitted on tasks")
        record = reader.records[0]
    assert len(events) == 1
    event = events[0]
    assert event["type"] == "stepbus.task.submitted"
    assert (event["subject"], event["tenant"], event["source"]) == (
        task_id,
        "acme",
        "urn:stepbus:gateway",
    )
    assert event["data"]["input"] == body["input"]
    assert event["data"]["tools"] == ["calculator"]
    assert event["data"]["max_iterations"] == 4
    assert event["data"]["metadata"] == {"k": "v"}
    assert record.key == task_id.encode()
    # The trace the HTTP client started continues on the record.
    assert dict(record.headers)["traceparent"].decode().split("-")[1] == trace_id

    status = await gateway.status(task_id)
    assert status["status"] == "submitted"
    assert (status["tenant"], status["output"], status["error"]) == ("acme", None, None)


async def test_submit_generates_a_task_id(gateway: Gateway) -> None:
    response = await gateway.client.post("/v1/tasks", json={"input": "hi"})

    assert response.status_code == 202
    task_id = response.json()["task_id"]
    assert uuid.UUID(task_id)
    assert (await gateway.status(task_id))["tenant"] == "acme"  # the key's tenant


async def test_duplicate_task_id_is_a_conflict(gateway: Gateway) -> None:
    task_id = await gateway.submit(task_id=_task_id())

    again = await gateway.client.post(
        "/v1/tasks", json={"input": "again", "task_id": task_id}, headers=auth("acme")
    )
    assert again.status_code == 409
    assert task_id in again.json()["error"]["message"]
    # Task ids are scoped to the tenant.
    assert await gateway.submit(tenant="globex", task_id=task_id) == task_id


async def test_invalid_requests_are_rejected_and_nothing_is_published(gateway: Gateway) -> None:
    post = gateway.client.post
    not_json = await post(
        "/v1/tasks", content=b"{nope", headers={"content-type": "application/json"}
    )
    invalid = await post(
        "/v1/tasks", json={"input": "", "max_iterations": 0, "task_id": "bad id", "extra": 1}
    )
    missing = await post("/v1/tasks", json={"tools": ["calculator"]})
    not_object = await post("/v1/tasks", json=["What is 17 * 23?"])
    unknown_key = await post("/v1/tasks", json={"input": "hi"}, headers=auth("nobody"))
    async with httpx.AsyncClient(base_url=gateway.client.base_url) as anonymous:
        no_key = await anonymous.post("/v1/tasks", json={"input": "hi"})
    roles = await post("/v1/tasks", json={"input": "hi", "roles": ["admin"]})

    assert not_json.status_code == 422
    assert not_json.json()["error"]["message"] == "request body is not valid JSON"
    assert invalid.status_code == 422
    fields = {detail["field"] for detail in invalid.json()["error"]["details"]}
    assert fields == {"input", "max_iterations", "task_id", "extra"}
    assert missing.status_code == 422
    assert missing.json()["error"]["details"][0]["field"] == "input"
    assert not_object.status_code == 422
    assert (unknown_key.status_code, no_key.status_code) == (401, 401)
    assert no_key.headers["www-authenticate"].startswith("Bearer")
    assert "missing API key" in no_key.json()["error"]["message"]
    assert roles.status_code == 422  # roles come from the key, never from the body
    assert roles.json()["error"]["details"][0]["field"] == "roles"

    # A valid submission after them is the only record on the tasks topic.
    task_id = await gateway.submit(task_id=_task_id())
    async with TopicReader(gateway.bootstrap, gateway.topics.tasks) as reader:
        await reader.wait_for(lambda evs: evs, 10, "the valid submission")
        await reader.poll()
        assert [event["subject"] for event in reader.events()] == [task_id]


async def test_results_fold_into_status_and_stream_then_the_stream_ends(gateway: Gateway) -> None:
    task_id = await gateway.submit(task_id=_task_id())
    progress, completed = _progress(task_id), _completed(task_id)

    headers = auth("acme")
    async with (
        asyncio.timeout(20),
        gateway.client.stream("GET", f"/v1/tasks/{task_id}/events", headers=headers) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        messages = _sse(resp)
        # A heartbeat proves the stream is subscribed before anything is produced.
        assert await anext(messages) == {"comment": "keep-alive"}
        # Redelivered progress must reach the client once.
        await gateway.produce_results(progress, progress, completed)
        received = [message async for message in messages if "comment" not in message]

    assert [(m["id"], m["event"]) for m in received] == [
        (progress.id, "stepbus.task.progress"),
        (completed.id, "stepbus.task.completed"),
    ]
    assert json.loads(received[1]["data"])["data"]["output"] == "391"

    status = await gateway.status(task_id)
    assert status["status"] == "completed"
    assert (status["output"], status["steps"], status["error"]) == ("391", 2, None)

    # A terminal task replays its events and closes; Last-Event-ID resumes after an event.
    replay = await _read_stream(gateway, task_id)
    assert [m["id"] for m in replay] == [progress.id, completed.id]
    resumed = await _read_stream(gateway, task_id, last_event_id=progress.id)
    assert [m["id"] for m in resumed] == [completed.id]
    await wait_until(lambda: _no_streams(gateway), 10, "streams closed")


async def _no_streams(gateway: Gateway) -> bool:
    return await gateway.open_streams() == 0


async def test_progress_marks_running_and_a_poison_record_is_skipped(gateway: Gateway) -> None:
    task_id = await gateway.submit(task_id=_task_id())

    await gateway.produce_results(b"\xffnot json", b'{"type": "stepbus.task.unknown"}')
    await gateway.produce_results(_progress(task_id))

    async def running() -> bool:
        return (await gateway.status(task_id))["status"] == "running"

    await wait_until(running, 15, "task running")
    await gateway.produce_results(_completed(task_id, output="done"))

    async def completed() -> bool:
        return (await gateway.status(task_id))["output"] == "done"

    await wait_until(completed, 15, "task completed")


async def test_other_tenants_see_nothing(gateway: Gateway) -> None:
    task_id = await gateway.submit(task_id=_task_id())

    for method, path in [
        ("GET", f"/v1/tasks/{task_id}"),
        ("GET", f"/v1/tasks/{task_id}/events"),
        ("POST", f"/v1/tasks/{task_id}/cancel"),
    ]:
        response = await gateway.client.request(method, path, headers=auth("globex"))
        assert response.status_code == 404, (method, path)
    unknown = await gateway.client.get(f"/v1/tasks/{_task_id()}", headers=auth("acme"))
    assert unknown.status_code == 404

    # A result of another tenant's task with the same id never touches this tenant's task.
    await gateway.produce_results(_completed(task_id, tenant="globex", output="secret"))
    await gateway.produce_results(_progress(task_id))

    async def running() -> bool:
        return (await gateway.status(task_id))["status"] == "running"

    await wait_until(running, 15, "acme task running")
    assert (await gateway.status(task_id))["output"] is None
    assert (await gateway.status(task_id, tenant="globex"))["output"] == "secret"


async def test_cancel_publishes_cancel_requested(gateway: Gateway) -> None:
    task_id = await gateway.submit(task_id=_task_id())

    response = await gateway.client.post(
        f"/v1/tasks/{task_id}/cancel", json={"reason": "changed my mind"}, headers=auth("acme")
    )

    assert response.status_code == 202, response.text
    assert response.json()["cancel_requested"] is True
    async with TopicReader(gateway.bootstrap, gateway.topics.tasks) as reader:
        events = await reader.wait_for(
            lambda evs: [e for e in evs if e["type"] == "stepbus.task.cancel_requested"],
            10,
            "TaskCancelRequested on tasks",
        )
    assert (events[0]["subject"], events[0]["tenant"]) == (task_id, "acme")
    assert events[0]["data"]["reason"] == "changed my mind"

    cancelled = TaskCancelled(
        subject=task_id, tenant="acme", data=TaskCancelledData(reason="changed my mind", steps=1)
    )
    await gateway.produce_results(cancelled)

    async def is_cancelled() -> bool:
        return (await gateway.status(task_id))["status"] == "cancelled"

    await wait_until(is_cancelled, 15, "task cancelled")
    status = await gateway.status(task_id)
    assert status["error"] == {"reason": "cancelled", "message": "changed my mind"}
    again = await gateway.client.post(f"/v1/tasks/{task_id}/cancel", headers=auth("acme"))
    assert again.status_code == 409
    stream = await _read_stream(gateway, task_id)
    assert [m["event"] for m in stream] == ["stepbus.task.cancelled"]


async def test_a_disconnected_stream_releases_its_subscriber(gateway: Gateway) -> None:
    task_id = await gateway.submit(task_id=_task_id())
    await wait_until(lambda: _no_streams(gateway), 10, "no streams open before")

    async with gateway.client.stream(
        "GET", f"/v1/tasks/{task_id}/events", headers=auth("acme")
    ) as resp:
        assert await anext(_sse(resp)) == {"comment": "keep-alive"}
        assert await gateway.open_streams() == 1

    await wait_until(lambda: _no_streams(gateway), 10, "stream released after disconnect")


async def test_health_readiness_and_metrics(gateway: Gateway) -> None:
    assert (await gateway.client.get("/healthz")).status_code == 200
    assert (await gateway.client.get("/readyz")).status_code == 200
    metrics = await gateway.client.get("/metrics")
    assert metrics.status_code == 200
    assert "stepbus_gateway_sse_streams" in metrics.text


async def test_projection_applies_each_event_once_and_keeps_the_first_terminal(
    redis_url: str,
) -> None:
    redis = Redis.from_url(redis_url, decode_responses=True)
    projection = TaskProjection(redis, namespace="t.results", ttl_seconds=60, max_events=3)
    tenant, task_id = f"t-{uuid.uuid4().hex[:8]}", "a:events"
    try:
        assert await projection.create(tenant, task_id)
        assert not await projection.create(tenant, task_id)
        completed = _completed(task_id, tenant=tenant)
        assert await projection.apply(completed, 1)
        assert not await projection.apply(completed, 1)
        assert await projection.apply(_progress(task_id, tenant=tenant, step=5), 2)
        assert await projection.apply(_completed(task_id, tenant=tenant, output="late"), 3)

        view, events = await projection.snapshot(tenant, task_id)
        assert view is not None
        assert (view.status, view.output) == ("completed", "391")
        assert len(events) == 3
        assert await redis.ttl(projection.keys(tenant, task_id)[1]) > 0
        # A task id ending in ":events" has its own keys, distinct from task "a".
        assert await projection.get(tenant, "a") is None

        await projection.discard(tenant, task_id)  # not discarded: events happened
        assert await projection.get(tenant, task_id) is not None
        fresh = _task_id()
        await projection.create(tenant, fresh)
        await projection.discard(tenant, fresh)
        assert await projection.get(tenant, fresh) is None
    finally:
        await redis.delete(*projection.keys(tenant, task_id))
        await redis.aclose()
