"""Regression tests of the gateway's hardening, against the real broker, Redis and uvicorn.

Poison records on ``results`` (finding 5), a Redis outage, a flushed projection with two
replicas (finding 10), task ids in paths, and request bodies over raw HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlparse, urlunparse

import pytest
from redis.asyncio import Redis
from stepbus_contracts import Topics
from stepbus_gateway import GatewaySettings
from stepbus_runtime import Emit, service_publisher

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

FLUSH_DB = 13
"""The Redis DB the flush test owns (never DB 0, which other tests and services share)."""

BODY_LIMIT = 4096


def _redis_db(redis_url: str, db: int) -> str:
    return urlunparse(urlparse(redis_url)._replace(path=f"/{db}"))


def _settings(kafka_bootstrap: str, redis_url: str, topics: Topics, **options: Any) -> Any:
    base = gateway_settings(kafka_bootstrap, redis_url, topics)
    return base.model_copy(update={"projection_check_seconds": 0.2, **options})


async def _ready(gateway: Gateway) -> bool:
    return (await gateway.client.get("/readyz")).status_code == 200


@pytest.fixture
async def gateway(kafka_bootstrap: str, redis_url: str, topics: Topics) -> AsyncIterator[Gateway]:
    settings = _settings(kafka_bootstrap, redis_url, topics)
    async with running_gateway(settings, topics, kafka_bootstrap) as gateway:
        yield gateway


# -- finding 5: no record stops the results feed ----------------------------------------------


async def test_poison_records_are_dead_lettered_and_their_partition_moves_on(
    gateway: Gateway,
) -> None:
    task_id = await gateway.submit(task_id=_task_id())
    head = (
        '{"specversion":"1.0","type":"stepbus.task.progress","source":"urn:x",'
        f'"subject":"{task_id}","tenant":"acme",'
    )
    poisons = [
        # The finding's record: a claim whose reference is malformed (ClaimCheckError).
        f'{head}"id":"p1","claimcheck":{{"id":""}}}}'.encode(),
        # A well-formed claim to a partition the payloads topic does not have.
        (
            f'{head}"id":"p2","claimcheck":{{"id":"{"0" * 32}","topic":"{gateway.topics.payloads}",'
            f'"partition":999,"offsets":[0],"size":1,"sha256":"{"0" * 64}"}}}}'
        ).encode(),
        # Nesting deep enough to exhaust a recursive parser.
        f'{head}"id":"p3","data":{"[" * 100_000}{"]" * 100_000}}}'.encode(),
    ]
    # Keyed by the task, so they sit on its partition ahead of its real events.
    await gateway.produce_results(*poisons, key=task_id)
    await gateway.produce_results(_progress(task_id), _completed(task_id, output="done"))

    async def completed() -> bool:
        return (await gateway.status(task_id))["output"] == "done"

    await wait_until(completed, 20, "the task's events after the poison applied")
    async with TopicReader(gateway.bootstrap, gateway.topics.dlq) as dlq:
        await wait_until(lambda: _count(dlq, 3), 20, "three dead letters")
    letters = [dict(record.headers) for record in dlq.records]
    assert {h["stepbus.service"] for h in letters} == {b"gateway"}
    assert {h["stepbus.origin.topic"] for h in letters} == {gateway.topics.results.encode()}
    assert [h["stepbus.error.type"] for h in letters[:2]] == [b"ClaimCheckError"] * 2
    assert [record.value for record in dlq.records] == poisons
    assert await _ready(gateway)


async def _count(reader: TopicReader, n: int) -> bool:
    return len(await reader.poll()) >= n


class RedisProxy:
    """A TCP proxy in front of Redis that can cut every connection and refuse new ones."""

    def __init__(self, redis_url: str) -> None:
        parsed = urlparse(redis_url)
        self._target = (parsed.hostname or "127.0.0.1", parsed.port or 6379)
        self._db = parsed.path
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.down = False

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}{self._db}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()

    def cut(self) -> None:
        self.down = True
        for writer in self._writers:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


async def test_a_redis_outage_makes_the_gateway_unready_and_loses_no_event(
    kafka_bootstrap: str, redis_url: str, topics: Topics
) -> None:
    proxy = RedisProxy(redis_url)
    await proxy.start()
    settings = _settings(
        kafka_bootstrap, proxy.url, topics, stuck_after_seconds=1.0, redis_timeout_seconds=1.0
    )
    try:
        async with running_gateway(settings, topics, kafka_bootstrap) as gateway:
            task_id = await gateway.submit(task_id=_task_id())
            proxy.cut()
            await gateway.produce_results(_progress(task_id))

            async def says_stuck() -> str | None:
                response = await gateway.client.get("/readyz")
                text = response.text
                return text if response.status_code == 503 and "in flight" in text else None

            why = await wait_until(says_stuck, 20, "readiness to report the stuck record")
            assert "redis: not answering" in why
            assert f"{topics.results}[" in why

            proxy.down = False  # Redis is back: the waiting record is applied, not skipped
            await wait_until(lambda: _ready(gateway), 20, "ready again")
            assert (await gateway.status(task_id))["status"] == "running"
    finally:
        await proxy.stop()


# -- finding 10: the projection is rebuilt after a flush, with several replicas -----------------


async def test_a_flushed_projection_is_rebuilt_from_kafka_with_two_replicas(
    kafka_bootstrap: str, redis_url: str, topics: Topics
) -> None:
    url = _redis_db(redis_url, FLUSH_DB)
    redis = Redis.from_url(url)
    await redis.flushdb()
    publisher = service_publisher(GatewaySettings(topic_prefix=topics.prefix), "test-planner")
    await publisher.start()
    try:
        async with (
            running_gateway(
                _settings(kafka_bootstrap, url, topics), topics, kafka_bootstrap
            ) as one,
            running_gateway(
                _settings(kafka_bootstrap, url, topics), topics, kafka_bootstrap
            ) as two,
        ):
            done, running = (
                await one.submit(task_id=_task_id()),
                await one.submit(task_id=_task_id()),
            )
            big_output = "x" * (300 * 1024)  # above the claim check threshold: a claim on results
            before = [_progress(running, step=0), _progress(running, step=1)]
            await one.produce_results(_progress(done), *before)
            await publisher.publish([Emit(topics.results, _completed(done, output=big_output))])

            async def projected() -> bool:
                return (await one.status(done))["status"] == "completed" and (
                    await two.status(running)
                )["status"] == "running"

            await wait_until(projected, 20, "both tasks projected")

            await redis.flushdb()
            # Readiness reads the projection's state in Redis: the flush shows at once.
            early = await two.client.get("/readyz")
            assert early.status_code == 503 and "rebuilding" in early.text, early.text
            # Straight after the flush, nothing may give the ended task a second life.
            again = await two.client.post(
                "/v1/tasks", json={"input": "again", "task_id": done}, headers=auth("acme")
            )
            assert again.status_code in (409, 503), again.text
            if again.status_code == 503:
                assert int(again.headers["retry-after"]) > 0
            # Applied live while the rebuild may not have reached the earlier events.
            during = _progress(running, step=2)
            await one.produce_results(during)

            async def both_ready() -> bool:
                return await _ready(one) and await _ready(two)

            await wait_until(both_ready, 30, "both replicas ready after the rebuild")
            for gateway in (one, two):
                ended = await gateway.status(done)
                assert (ended["status"], ended["output"]) == ("completed", big_output)
                assert (await gateway.status(running))["status"] == "running"
                resubmit = await gateway.client.post(
                    "/v1/tasks", json={"input": "again", "task_id": done}, headers=auth("acme")
                )
                assert resubmit.status_code == 409, resubmit.text
                other = await gateway.client.get(f"/v1/tasks/{done}", headers=auth("globex"))
                assert other.status_code == 404 and big_output not in other.text

            # The running task's stream replays its events in the topic's order, then goes live.
            headers = auth("acme")
            end = _completed(running)
            async with (
                asyncio.timeout(20),
                two.client.stream("GET", f"/v1/tasks/{running}/events", headers=headers) as resp,
            ):
                assert resp.status_code == 200
                messages = _sse(resp)
                seen = [await anext(messages) for _ in range(3)]
                await one.produce_results(end)
                seen += [message async for message in messages if "comment" not in message]
            assert [m["id"] for m in seen] == [*(e.id for e in before), during.id, end.id]
    finally:
        await publisher.stop()
        await redis.flushdb()
        await redis.aclose()


# -- finding 10: task ids in paths ------------------------------------------------------------


async def test_an_encoded_slash_in_a_task_id_is_refused_not_routed_elsewhere(
    gateway: Gateway,
) -> None:
    task_id = await gateway.submit(task_id=f"pc-{uuid.uuid4().hex[:8]}")
    headers = auth("acme")

    for method, path in [
        ("GET", f"/v1/tasks/{task_id}%2Fevents"),
        ("GET", f"/v1/tasks/{task_id}%2fevents"),
        ("POST", f"/v1/tasks/{task_id}%2Fcancel"),
    ]:
        # Streamed, so a request taken for the events of the task cannot hang the test.
        async with gateway.client.stream(method, path, headers=headers) as response:
            assert response.status_code == 400, (path, response.headers["content-type"])
            assert "task id" in json.loads(await response.aread())["error"]["message"]
    for path in [f"/v1/tasks/{task_id}/events/more", f"/v1/tasks/{task_id}/status"]:
        unknown = await gateway.client.get(path, headers=headers)
        assert unknown.status_code == 404 and "error" in unknown.json()
    wrong_method = await gateway.client.get(f"/v1/tasks/{task_id}/cancel", headers=headers)
    assert wrong_method.status_code == 405
    # The same task is still readable by its plain id.
    assert (await gateway.status(task_id))["task_id"] == task_id


async def test_every_character_of_the_task_id_rule_works_in_every_route(gateway: Gateway) -> None:
    task_id = f"a.b_c:d@e-{uuid.uuid4().hex[:6]}"
    await gateway.submit(task_id=task_id)
    headers = auth("acme")

    assert (await gateway.status(task_id))["task_id"] == task_id
    cancel = await gateway.client.post(f"/v1/tasks/{task_id}/cancel", headers=headers)
    assert cancel.status_code == 202, cancel.text
    await gateway.produce_results(_completed(task_id))
    async with (
        asyncio.timeout(20),
        gateway.client.stream("GET", f"/v1/tasks/{task_id}/events", headers=headers) as resp,
    ):
        events = [m async for m in _sse(resp) if "comment" not in m]
    assert [json.loads(m["data"])["subject"] for m in events] == [task_id]
    too_long = await gateway.client.get(f"/v1/tasks/{'x' * 257}", headers=headers)
    assert too_long.status_code == 400


# -- finding 10: request bodies ---------------------------------------------------------------


@pytest.fixture
async def small_gateway(
    kafka_bootstrap: str, redis_url: str, topics: Topics
) -> AsyncIterator[Gateway]:
    """A gateway accepting bodies of at most ``BODY_LIMIT`` bytes."""
    settings = _settings(kafka_bootstrap, redis_url, topics, max_body_bytes=BODY_LIMIT)
    async with running_gateway(settings, topics, kafka_bootstrap) as gateway:
        yield gateway


async def _raw(port: int, request: bytes, *, close_after: bool = False) -> bytes:
    """Send raw bytes; the response (``b""`` when the request is abandoned: ``close_after``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        if close_after:
            return b""
        async with asyncio.timeout(10):
            return await reader.read(65536)
    finally:
        writer.close()


def _head(path: str, *lines: str) -> bytes:
    auth = "Authorization: Bearer test-key-acme-0123456789"
    return "\r\n".join([f"POST {path} HTTP/1.1", "Host: gw", auth, *lines, "", ""]).encode()


async def test_bodies_must_be_plain_json(small_gateway: Gateway) -> None:
    post = small_gateway.client.post
    task_id = await small_gateway.submit(task_id=_task_id())
    body = json.dumps({"input": "What is 17 * 23?"}).encode()

    text = await post("/v1/tasks", content=body, headers={"content-type": "text/plain"})
    gzip = await post(
        "/v1/tasks",
        content=body,
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    utf8 = await post(
        "/v1/tasks", content=body, headers={"content-type": "application/json; charset=utf-8"}
    )
    cancel_text = await post(
        f"/v1/tasks/{task_id}/cancel",
        content=b'{"reason": "x"}',
        headers={**auth("acme"), "content-type": "text/plain"},
    )

    assert text.status_code == 415 and "application/json" in text.json()["error"]["message"]
    assert gzip.status_code == 415 and "gzip" in gzip.json()["error"]["message"]
    assert utf8.status_code == 202, utf8.text
    assert cancel_text.status_code == 415
    # A cancel without a body needs no Content-Type, with or without a Content-Length.
    empty = await post(f"/v1/tasks/{task_id}/cancel", headers=auth("acme"))
    assert empty.status_code == 202, empty.text
    bare = await _raw(small_gateway.port, _head(f"/v1/tasks/{task_id}/cancel"))
    assert bare.startswith(b"HTTP/1.1 202"), bare


async def test_bodies_above_the_limit_are_refused_with_413(small_gateway: Gateway) -> None:
    # Declared too big: refused before anything is sent after the headers.
    declared = await _raw(
        small_gateway.port,
        _head("/v1/tasks", "Content-Type: application/json", "Content-Length: 100000000"),
    )
    assert declared.startswith(b"HTTP/1.1 413"), declared
    # Chunked, so undeclared: cut off once past the limit.
    chunk = b"x" * 3000
    chunked = _head("/v1/tasks", "Content-Type: application/json", "Transfer-Encoding: chunked")
    chunked += b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
    response = await _raw(small_gateway.port, chunked)
    assert response.startswith(b"HTTP/1.1 413"), response
    assert str(BODY_LIMIT).encode() in response
    # A task just under the limit is accepted.
    fits = await small_gateway.client.post("/v1/tasks", json={"input": "x" * (BODY_LIMIT - 100)})
    assert fits.status_code == 202, fits.text


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_a_body_shorter_than_its_length_logs_one_line_and_no_traceback(
    small_gateway: Gateway,
) -> None:
    collect = Collect()
    loggers = [logging.getLogger(), logging.getLogger("uvicorn")]
    gateway_logger = logging.getLogger("stepbus_gateway")
    level = gateway_logger.level
    gateway_logger.setLevel(logging.INFO)
    for logger in loggers:
        logger.addHandler(collect)
    try:
        head = _head("/v1/tasks", "Content-Type: application/json", "Content-Length: 1000")
        await _raw(small_gateway.port, head + b'{"input": "cut', close_after=True)

        def about_it() -> list[logging.LogRecord]:
            return [
                r
                for r in collect.records
                if "disconnect" in r.getMessage() or "ASGI" in r.getMessage() or r.exc_info
            ]

        await wait_until(about_it, 10, "the gateway to notice the client left")
        # Nothing else is on its way: the next request on a new connection is served.
        assert await _ready(small_gateway)
    finally:
        for logger in loggers:
            logger.removeHandler(collect)
        gateway_logger.setLevel(level)
    [line] = about_it()
    assert line.exc_info is None and len(line.getMessage()) < 500, line.getMessage()
