"""Request bodies and path task ids as the gateway checks them, with a scripted ASGI receive."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError
from starlette.requests import Request
from stepbus_gateway.bodies import read_json_body
from stepbus_gateway.errors import ApiError, ClientGone
from stepbus_gateway.routes import SubmitTaskRequest, path_task_id

TASK_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:@-]+$")
"""The task id rule the contract is moving to (no '/'), at most 256 characters."""

LIMIT = 1024


def _request(headers: dict[str, str], chunks: list[bytes | None]) -> tuple[Request, list[int]]:
    """A request whose body arrives as ``chunks`` (``None``: the client disconnects)."""
    received: list[int] = []
    messages = list(chunks)

    async def receive() -> dict[str, Any]:
        received.append(1)
        chunk = messages.pop(0)
        if chunk is None:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunk, "more_body": bool(messages)}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/tasks",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope, receive), received


async def _read(headers: dict[str, str], chunks: list[bytes | None]) -> bytes:
    request, _ = _request(headers, chunks)
    return await read_json_body(request, limit=LIMIT, wait_seconds=5)


async def _status(headers: dict[str, str], chunks: list[bytes | None]) -> int:
    with pytest.raises(ApiError) as info:
        await _read(headers, chunks)
    return info.value.status


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", 'Application/JSON;charset="UTF-8"'],
)
async def test_json_bodies_are_read(content_type: str) -> None:
    body = await _read({"content-type": content_type, "content-length": "2"}, [b"{}"])

    assert body == b"{}"


@pytest.mark.parametrize(
    "headers",
    [
        {"content-type": "text/plain"},
        {"content-type": "application/json; charset=latin-1"},
        {"content-type": "application/json; boundary=x"},
        {"content-type": "application/jsonx"},
        {},  # a body without a Content-Type
        {**JSON, "content-encoding": "gzip"},
        {**JSON, "content-encoding": "identity, br"},
    ],
)
async def test_bodies_that_are_not_plain_json_are_refused_with_415(headers: dict[str, str]) -> None:
    status = await _status({**headers, "content-length": "2"}, [b"{}"])

    assert status == 415


async def test_a_declared_length_above_the_limit_is_refused_before_reading() -> None:
    request, received = _request({**JSON, "content-length": str(LIMIT + 1)}, [b"{}"])

    with pytest.raises(ApiError) as info:
        await read_json_body(request, limit=LIMIT, wait_seconds=5)

    assert info.value.status == 413 and received == []
    assert str(LIMIT) in info.value.message


@pytest.mark.parametrize(
    "headers",
    [
        {**JSON, "transfer-encoding": "chunked"},
        {**JSON, "content-length": "10"},  # a length that lies: the bytes are counted
    ],
)
async def test_a_body_that_grows_past_the_limit_is_cut_off_with_413(
    headers: dict[str, str],
) -> None:
    status = await _status(headers, [b"x" * 600, b"x" * 600, b"x" * 600])

    assert status == 413


async def test_a_client_leaving_mid_body_is_told_apart_from_a_bad_request() -> None:
    with pytest.raises(ClientGone) as info:
        await _read({**JSON, "content-length": "100"}, [b'{"input"', None])

    assert (info.value.received, info.value.declared) == (8, 100)


async def test_no_body_needs_no_content_type() -> None:
    assert await _read({}, [b""]) == b""
    assert await _read({"content-length": "0", "content-type": "text/plain"}, [b""]) == b""


@pytest.mark.parametrize("length", ["-1", "1e3", "\uff15", ""])
async def test_an_invalid_content_length_is_a_bad_request(length: str) -> None:
    assert await _status({**JSON, "content-length": length}, [b""]) == 400


@pytest.mark.parametrize(
    "task_id",
    ["task-42", "a.b_c:d@e-f", "0", "x" * 256, "events", "cancel", "a:events"],
)
def test_path_task_ids_of_the_pattern_are_accepted(task_id: str) -> None:
    assert TASK_ID_PATTERN.fullmatch(task_id)
    path = f"/v1/tasks/{task_id}"

    assert path_task_id({"path": path, "raw_path": path.encode()}, task_id) == task_id


@pytest.mark.parametrize(
    "task_id",
    ["a b", "a%b", "a{b}", "", "x" * 257, "é", "a\x00b", "a?b", "a#b"],
)
def test_path_task_ids_outside_the_pattern_are_a_bad_request(task_id: str) -> None:
    assert not (TASK_ID_PATTERN.fullmatch(task_id) and len(task_id) <= 256)
    path = f"/v1/tasks/{task_id}"

    with pytest.raises(ApiError) as info:
        path_task_id({"path": path, "raw_path": path.encode()}, task_id)

    assert info.value.status == 400
    assert "task id" in info.value.message


def test_an_encoded_slash_never_makes_a_task_id_into_another_route() -> None:
    # The router matched /v1/tasks/{task_id}/events on the decoded path, with task_id "pc-1".
    scope = {"path": "/v1/tasks/pc-1/events", "raw_path": b"/v1/tasks/pc-1%2Fevents"}

    with pytest.raises(ApiError) as info:
        path_task_id(scope, "pc-1")

    assert info.value.status == 400 and "%2F" in info.value.message


def test_submitted_task_ids_follow_the_same_rule() -> None:
    with pytest.raises(ValidationError) as info:
        SubmitTaskRequest.model_validate({"input": "hi", "task_id": "pc-1/events"})

    assert [err["loc"] for err in info.value.errors()] == [("task_id",)]
