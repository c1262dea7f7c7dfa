"""The gateway for production (real Kafka and Redis): API keys and tenant isolation on every
route, idempotent submits across a restart, the rate limit, the task list, approvals and memory
over HTTP, the tenant-wide stream with exact resume, the open mode's refusal to serve a public
address, and the OpenAPI document."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from stepbus_contracts import (
    ApprovalRequested,
    ApprovalRequestedData,
    ApprovalResolved,
    ApprovalResolvedData,
    Topics,
    utcnow,
)
from stepbus_gateway.app import create_app
from stepbus_gateway.errors import GatewayError
from stepbus_runtime import read_to_end, topic_partitions

from ..harness import TopicReader, auth, wait_until
from .test_gateway import (
    Gateway,
    _completed,
    _progress,
    _sse,
    _task_id,
    gateway_settings,
    running_gateway,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def gateway(kafka_bootstrap: str, redis_url: str, topics: Topics) -> Any:
    async with running_gateway(
        gateway_settings(kafka_bootstrap, redis_url, topics), topics, kafka_bootstrap
    ) as running:
        yield running


def _approval(task_id: str, approval_id: str, tenant: str = "acme") -> ApprovalRequested:
    return ApprovalRequested(
        subject=task_id,
        tenant=tenant,
        data=ApprovalRequestedData(
            step=1,
            call_index=0,
            tool="files__write",
            approval_id=approval_id,
            arguments={"path": "/notes/a"},
            approvers=["ops"],
            rule="writes-need-approval",
            expires_at=utcnow() + timedelta(minutes=10),
        ),
    )


async def _until(check: Any, timeout: float = 15.0) -> Any:
    return await wait_until(check, timeout, "the projection", interval=0.05)


async def test_every_route_needs_a_key_and_shows_nothing_of_another_tenant(
    gateway: Gateway,
) -> None:
    task_id = await gateway.submit(task_id=_task_id())
    approval = f"ap-{uuid.uuid4().hex[:8]}"
    await gateway.produce_results(_progress(task_id), _approval(task_id, approval))
    await _until(lambda: _waiting(gateway, "acme"))
    routes = [
        ("GET", f"/v1/tasks/{task_id}", None),
        ("GET", f"/v1/tasks/{task_id}/events", None),
        ("POST", f"/v1/tasks/{task_id}/cancel", {}),
        ("POST", f"/v1/tasks/{task_id}/approvals/{approval}", {"decision": "approve"}),
        ("GET", "/v1/tasks", None),
        ("GET", "/v1/approvals", None),
        ("POST", "/v1/tasks", {"input": "hi"}),
        ("DELETE", "/v1/sessions/s-1", None),
        ("POST", "/v1/memory/documents", {"text": "a fact"}),
    ]
    async with httpx.AsyncClient(base_url=gateway.client.base_url, timeout=10) as anonymous:
        for method, path, body in routes:
            missing = await anonymous.request(method, path, json=body)
            wrong = await anonymous.request(
                method, path, json=body, headers={"Authorization": "Bearer not-a-key-0123456789"}
            )
            assert (missing.status_code, wrong.status_code) == (401, 401), (method, path)
            assert missing.headers["www-authenticate"].startswith("Bearer")
    # The other tenant: 404 for the task's routes, and its lists hold nothing of acme's.
    for method, path, body in routes[:4]:
        response = await gateway.client.request(method, path, json=body, headers=auth("globex"))
        assert response.status_code == 404, (method, path, response.text)
        assert list(response.json()) == ["error"]  # an error, no byte of the task's data
        assert "files__write" not in response.text and "running" not in response.text
    listed = await gateway.client.get("/v1/tasks", headers=auth("globex"))
    approvals = await gateway.client.get("/v1/approvals", headers=auth("globex"))
    assert listed.json() == {"tasks": [], "next_cursor": None}
    assert approvals.json() == {"approvals": []}
    async with (
        asyncio.timeout(5),
        gateway.client.stream("GET", "/v1/events", headers=auth("globex")) as stream,
    ):
        await gateway.produce_results(_progress(task_id, step=2))
        lines = []
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2):
                async for line in stream.aiter_lines():
                    lines.append(line)
        assert not any(task_id in line for line in lines)


async def _waiting(gateway: Gateway, tenant: str) -> list[dict[str, Any]]:
    response = await gateway.client.get("/v1/approvals", headers=auth(tenant))
    approvals: list[dict[str, Any]] = response.json()["approvals"]
    return approvals


async def test_a_retried_submit_with_an_idempotency_key_returns_the_same_task_after_a_restart(
    kafka_bootstrap: str, redis_url: str, topics: Topics
) -> None:
    settings = gateway_settings(kafka_bootstrap, redis_url, topics)
    body = {"input": "What is 17 * 23?"}
    key = {"Idempotency-Key": f"order-{uuid.uuid4().hex}"}
    async with running_gateway(settings, topics, kafka_bootstrap) as first:
        created = await first.client.post("/v1/tasks", json=body, headers=key)
        again = await first.client.post("/v1/tasks", json=body, headers=key)
    async with running_gateway(settings, topics, kafka_bootstrap) as second:
        after_restart = await second.client.post("/v1/tasks", json=body, headers=key)
        changed = await second.client.post("/v1/tasks", json={"input": "other"}, headers=key)
        other_tenant = await second.client.post(
            "/v1/tasks", json=body, headers={**key, **auth("globex")}
        )
    assert created.status_code == again.status_code == after_restart.status_code == 202
    task_id = created.json()["task_id"]
    assert again.json()["task_id"] == after_restart.json()["task_id"] == task_id
    assert after_restart.headers["idempotent-replayed"] == "true"
    assert changed.status_code == 422  # the same key for a different request
    assert other_tenant.status_code == 202 and other_tenant.json()["task_id"] != task_id
    # Every submit was acknowledged by the broker before it answered: read the topic to its end.
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await topic_partitions(kafka_bootstrap, topics.tasks)
        records = await read_to_end(consumer, tps, {tp: 0 for tp in tps})
    finally:
        await consumer.stop()
    submitted = [json.loads(r.value) for r in records if r.key == task_id.encode()]
    assert submitted and len({e["id"] for e in submitted}) == 1  # one task however retried


async def test_a_key_over_its_rate_limit_gets_429_with_retry_after(
    kafka_bootstrap: str, redis_url: str, topics: Topics
) -> None:
    settings = gateway_settings(kafka_bootstrap, redis_url, topics).model_copy(
        update={"rate_limit_per_second": 0.5, "rate_limit_burst": 3}
    )
    async with running_gateway(settings, topics, kafka_bootstrap) as gateway:
        codes = [(await gateway.client.get("/v1/tasks")).status_code for _ in range(5)]
        limited = await gateway.client.get("/v1/tasks")
        other_key = await gateway.client.get("/v1/tasks", headers=auth("globex"))
    assert codes[:3] == [200, 200, 200] and set(codes[3:]) == {429}
    assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 2
    assert other_key.status_code == 200  # per key


async def test_the_task_list_filters_by_status_and_pages_with_a_cursor(gateway: Gateway) -> None:
    ids = [await gateway.submit(task_id=f"list-{i}-{_task_id()}") for i in range(5)]
    await gateway.produce_results(_completed(ids[1]), _completed(ids[3]))
    await _until(lambda: _status_is(gateway, ids[3], "completed"))

    first = (await gateway.client.get("/v1/tasks?limit=2")).json()
    second = (await gateway.client.get(f"/v1/tasks?limit=2&cursor={first['next_cursor']}")).json()
    rest = (await gateway.client.get(f"/v1/tasks?limit=2&cursor={second['next_cursor']}")).json()
    paged = [t["task_id"] for page in (first, second, rest) for t in page["tasks"]]
    assert sorted(paged) == sorted(ids) and len(paged) == 5
    assert rest["next_cursor"] is None
    done = (await gateway.client.get("/v1/tasks?status=completed")).json()["tasks"]
    assert {t["task_id"] for t in done} == {ids[1], ids[3]}
    bad = await gateway.client.get("/v1/tasks?status=sleeping")
    assert bad.status_code == 400


async def _status_is(gateway: Gateway, task_id: str, status: str) -> bool:
    return (await gateway.status(task_id))["status"] == status


async def test_approvals_are_listed_and_decided_by_a_key_with_the_named_role(
    gateway: Gateway,
) -> None:
    task_id = await gateway.submit(task_id=_task_id())
    approval = f"ap-{uuid.uuid4().hex[:8]}"
    await gateway.produce_results(_progress(task_id), _approval(task_id, approval))
    [waiting] = await _until(lambda: _waiting(gateway, "acme"))
    assert (waiting["task_id"], waiting["approval_id"], waiting["tool"]) == (
        task_id, approval, "files__write",
    )  # fmt: skip
    assert (await gateway.status(task_id))["status"] == "waiting"

    path = f"/v1/tasks/{task_id}/approvals/{approval}"
    no_role = await gateway.client.post(path, json={"decision": "approve"})
    bad = await gateway.client.post(path, json={"decision": "maybe"}, headers=auth("acme", "ops"))
    unknown = await gateway.client.post(
        f"/v1/tasks/{task_id}/approvals/nope",
        json={"decision": "deny"},
        headers=auth("acme", "ops"),
    )
    async with TopicReader(gateway.bootstrap, gateway.topics.tasks) as tasks:
        ok = await gateway.client.post(
            path, json={"decision": "approve", "reason": "checked"}, headers=auth("acme", "ops")
        )
        [decided] = await tasks.wait_for(
            lambda ev: [e for e in ev if e["type"] == "stepbus.approval.decided"], 10, "decision"
        )
    assert (no_role.status_code, bad.status_code, unknown.status_code) == (403, 422, 404)
    assert ok.status_code == 202
    assert (decided["subject"], decided["tenant"]) == (task_id, "acme")
    assert decided["data"]["approval_id"] == approval and decided["data"]["decision"] == "approve"
    assert decided["data"]["by"].startswith("key-")  # the key's id, never the key
    # Once the planner resolved it, it no longer waits.
    resolved = ApprovalResolved(
        subject=task_id,
        tenant="acme",
        data=ApprovalResolvedData(
            step=1, call_index=0, tool="files__write", approval_id=approval, outcome="approved"
        ),
    )
    await gateway.produce_results(resolved)
    await _until(lambda: _no_approvals(gateway))


async def _no_approvals(gateway: Gateway) -> bool:
    return await _waiting(gateway, "acme") == []


async def test_memory_routes_publish_their_events(gateway: Gateway) -> None:
    async with TopicReader(gateway.bootstrap, gateway.topics.tasks) as tasks:
        forget = await gateway.client.delete("/v1/sessions/s-42")
        added = await gateway.client.post(
            "/v1/memory/documents", json={"text": "We close on Fridays.", "title": "Hours"}
        )
        events = await tasks.wait_for(lambda ev: ev if len(ev) >= 2 else None, 10, "events")
    assert (forget.status_code, added.status_code) == (202, 202)
    by_type = {e["type"]: e for e in events}
    assert by_type["stepbus.memory.forget_requested"]["data"]["session_id"] == "s-42"
    document = by_type["stepbus.memory.document_added"]
    assert document["subject"] == added.json()["document_id"] and document["tenant"] == "acme"
    assert document["data"]["text"] == "We close on Fridays."


async def test_the_tenant_stream_resumes_after_its_last_event_exactly_once(
    kafka_bootstrap: str, redis_url: str, topics: Topics
) -> None:
    settings = gateway_settings(kafka_bootstrap, redis_url, topics)
    async with running_gateway(settings, topics, kafka_bootstrap) as gateway:
        a, b = await gateway.submit(task_id=_task_id()), await gateway.submit(task_id=_task_id())
        seen: list[dict[str, str]] = []
        async with gateway.client.stream("GET", "/v1/events") as stream:
            await gateway.produce_results(_progress(a, step=1), _progress(b, step=1))
            async with asyncio.timeout(15):
                async for message in _sse(stream):
                    if "comment" not in message:
                        seen.append(message)
                    if len(seen) == 2:
                        break
        last = seen[-1]["id"]
        await gateway.produce_results(_progress(a, step=2), _completed(b), _completed(a))
        await _until(lambda: _status_is(gateway, a, "completed"))
    # Another gateway life (a restart) resumes after the last event read.
    async with running_gateway(settings, topics, kafka_bootstrap) as gateway:
        resumed: list[dict[str, str]] = []
        headers = {"Last-Event-ID": last}
        extra: list[dict[str, str]] = []
        async with gateway.client.stream("GET", "/v1/events", headers=headers) as stream:
            messages = _sse(stream)
            async with asyncio.timeout(15):
                while len(resumed) < 3:
                    if "comment" not in (message := await anext(messages)):
                        resumed.append(message)
            with contextlib.suppress(TimeoutError):  # and nothing more comes
                async with asyncio.timeout(1.5):
                    while True:
                        if "comment" not in (message := await anext(messages)):
                            extra.append(message)
    assert extra == []
    ids = [int(m["id"]) for m in seen + resumed]
    assert ids == sorted(ids) and len(set(ids)) == 5
    kinds = [(json.loads(m["data"])["subject"], m["event"]) for m in resumed]
    assert sorted(kinds) == sorted(
        [(a, "stepbus.task.progress"), (b, "stepbus.task.completed"), (a, "stepbus.task.completed")]
    )


def test_open_mode_refuses_a_public_address_unless_allowed(
    kafka_bootstrap: str, redis_url: str, topics: Topics
) -> None:
    settings = gateway_settings(kafka_bootstrap, redis_url, topics)
    open_public = settings.model_copy(update={"api_keys": None, "host": "0.0.0.0"})
    with pytest.raises(GatewayError, match="STEPBUS_GATEWAY_ALLOW_OPEN"):
        create_app(open_public)
    create_app(open_public.model_copy(update={"allow_open": True}))  # explicitly allowed
    create_app(settings.model_copy(update={"api_keys": None}))  # loopback: development
    create_app(settings.model_copy(update={"host": "0.0.0.0"}))  # keys: fine anywhere


async def test_open_mode_serves_tenant_default_without_a_key(
    kafka_bootstrap: str, redis_url: str, topics: Topics
) -> None:
    settings = gateway_settings(kafka_bootstrap, redis_url, topics).model_copy(
        update={"api_keys": None}
    )
    async with running_gateway(settings, topics, kafka_bootstrap) as gateway:
        async with httpx.AsyncClient(base_url=gateway.client.base_url) as anonymous:
            response = await anonymous.post("/v1/tasks", json={"input": "hi"})
            task_id = response.json()["task_id"]
            status = (await anonymous.get(f"/v1/tasks/{task_id}")).json()
    assert response.status_code == 202 and status["tenant"] == "default"


async def test_the_openapi_document_names_the_auth_scheme_and_every_route(
    gateway: Gateway,
) -> None:
    async with httpx.AsyncClient(base_url=gateway.client.base_url) as anonymous:
        document = (await anonymous.get("/openapi.json")).json()
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    submit = document["paths"]["/v1/tasks"]["post"]
    assert {"202", "401", "409", "413", "422", "429", "503"} <= set(submit["responses"])
    assert submit["requestBody"]["content"]["application/json"]["example"]["input"]
    assert {"/v1/events", "/v1/approvals", "/v1/memory/documents"} <= set(document["paths"])


async def test_cors_answers_a_preflight_for_a_configured_origin_only(
    kafka_bootstrap: str, redis_url: str, topics: Topics
) -> None:
    settings = gateway_settings(kafka_bootstrap, redis_url, topics).model_copy(
        update={"cors_origins": "https://ui.example"}
    )
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,idempotency-key",
    }
    async with running_gateway(settings, topics, kafka_bootstrap) as gateway:
        allowed = await gateway.client.options(
            "/v1/tasks", headers={**preflight, "Origin": "https://ui.example"}
        )
        other = await gateway.client.options(
            "/v1/tasks", headers={**preflight, "Origin": "https://evil.example"}
        )
        simple = await gateway.client.get("/v1/tasks", headers={"Origin": "https://ui.example"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://ui.example"
    assert "idempotency-key" in allowed.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in other.headers
    assert simple.headers["access-control-allow-origin"] == "https://ui.example"
