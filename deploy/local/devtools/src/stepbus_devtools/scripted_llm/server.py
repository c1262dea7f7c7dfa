"""The HTTP layer: an OpenAI-compatible Chat Completions endpoint in front of the script.

Only what the ``openai`` client needs: ``GET /v1/models`` and ``POST /v1/chat/completions``
(plain and streamed). Every response carries ``x-stepbus-test-double: true`` so nobody mistakes
it for a real model. ``response_format`` (``text``, ``json_object``, ``json_schema``) is
checked and accepted; the judge's replies are JSON whatever it asks. A conversation whose task
says ``[judge=no-structured]`` plays an endpoint without structured output: a request carrying
``response_format`` gets HTTP 400 naming it.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stepbus_devtools.scripted_llm.script import (
    Turn,
    conversation_hash,
    next_turn,
    read_directives,
)

__all__ = ["MODEL_ID", "TEST_DOUBLE_HEADER", "create_app"]

MODEL_ID = "stepbus-scripted"
TEST_DOUBLE_HEADER = "x-stepbus-test-double"
CREATED = 1_735_689_600
"""Fixed ``created`` timestamp (2025-01-01T00:00:00Z): responses depend only on the request."""

_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
_ARGUMENT_PIECE = 8
_FAILURE_MEMORY = 10_000


class InvalidRequestError(ValueError):
    """The request body is not a Chat Completions request; answered with HTTP 400."""


@dataclass(frozen=True)
class ChatRequest:
    """The parts of a Chat Completions request the scripted model uses."""

    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    response_format: dict[str, Any] | None = None


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate a decoded JSON body.

    Raises:
        InvalidRequestError: With a message naming the offending field.
    """
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    model, messages, tools = body.get("model"), body.get("messages"), body.get("tools") or []
    stream, options = body.get("stream") or False, body.get("stream_options") or {}
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("'model' must be a non-empty string.")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("'messages' must be a non-empty array.")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise InvalidRequestError(f"'messages[{index}]' must be an object with a valid role.")
        if not isinstance(message.get("content"), str | list | None):
            raise InvalidRequestError(f"'messages[{index}].content' must be a string or array.")
        if not _functions_in(message.get("tool_calls") or []):
            raise InvalidRequestError(f"'messages[{index}].tool_calls' must be function calls.")
    if not _functions_in(tools):
        raise InvalidRequestError("'tools' must be an array of function tools.")
    if not isinstance(stream, bool) or not isinstance(options, dict):
        raise InvalidRequestError("'stream' must be a boolean and 'stream_options' an object.")
    response_format = body.get("response_format")
    if response_format is not None:
        _check_response_format(response_format)
    return ChatRequest(
        model, messages, tools, stream, bool(options.get("include_usage")), response_format
    )


def _check_response_format(value: Any) -> None:
    """``response_format`` as OpenAI accepts it: ``{"type": "text" | "json_object"}``, or
    ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}``."""
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise InvalidRequestError(
            "'response_format' must be an object whose 'type' is 'text', 'json_object' or "
            "'json_schema'."
        )
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InvalidRequestError("'response_format.json_schema' must name its schema.")
        if not isinstance(spec.get("schema", {}), dict):
            raise InvalidRequestError("'response_format.json_schema.schema' must be an object.")


def _functions_in(items: Any) -> bool:
    """Whether ``items`` is a list of objects each with a ``function`` object."""
    return isinstance(items, list) and all(
        isinstance(item, dict) and isinstance(item.get("function"), dict) for item in items
    )


def completion_body(completion_id: str, model: str, turn: Turn) -> dict[str, Any]:
    """Build a ``chat.completion`` object for a turn."""
    tool_calls = [
        {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        for call in turn.tool_calls
    ]
    message = {
        "role": "assistant",
        "content": turn.content,
        "refusal": None,
        "tool_calls": tool_calls or None,
    }
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": turn.finish_reason}
        ],
        "usage": _usage(turn),
    }


def completion_chunks(
    completion_id: str, model: str, turn: Turn, include_usage: bool
) -> Iterator[dict[str, Any]]:
    """Yield the ``chat.completion.chunk`` objects OpenAI would stream for a turn."""

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _chunk(completion_id, model, [choice], include_usage)

    yield chunk({"role": "assistant", "content": "" if turn.content is not None else None})
    for piece in _pieces(turn.content or "", by_word=True):
        yield chunk({"content": piece})
    for index, call in enumerate(turn.tool_calls):
        function = {"name": call.name, "arguments": ""}
        yield chunk(
            {
                "tool_calls": [
                    {"index": index, "id": call.id, "type": "function", "function": function}
                ]
            }
        )
        for piece in _pieces(call.arguments, by_word=False):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    yield chunk({}, turn.finish_reason)
    if include_usage:
        yield {**_chunk(completion_id, model, [], include_usage), "usage": _usage(turn)}


def create_app(latency_ms: tuple[int, int] = (0, 0)) -> Starlette:
    """Create the scripted model's ASGI app.

    Args:
        latency_ms: Range ``(lo, hi)`` of the latency added before every completion, in ms; a
            ``[latency=...]`` directive in a conversation adds its own range on top.
    """
    failed_once = _FirstSeen(_FAILURE_MEMORY)

    async def models(_: Request) -> Response:
        model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "stepbus-test-double"}
        return JSONResponse({"object": "list", "data": [model]})

    async def chat_completions(request: Request) -> Response:
        try:
            chat = parse_chat_request(await request.json())
        except ValueError as error:  # JSON decoding errors and InvalidRequestError alike
            message = str(error) if isinstance(error, InvalidRequestError) else "Invalid JSON body."
            return _error(400, message, "invalid_request_error")
        key = conversation_hash(chat.messages)
        directives = read_directives(chat.messages)
        await asyncio.sleep(_latency_seconds(key, latency_ms, directives.latency_ms))
        if directives.fail is not None and failed_once.add(key):
            return _scripted_failure(directives.fail)
        if chat.response_format is not None and "no-structured" in directives.judge:
            message = (
                "Invalid parameter: 'response_format' is not supported with this model "
                "(scripted [judge=no-structured])."
            )
            return _error(400, message, "invalid_request_error", param="response_format")

        turn = next_turn(chat.messages, chat.tools)
        completion_id = f"chatcmpl-{key[:24]}"
        if not chat.stream:
            return JSONResponse(completion_body(completion_id, chat.model, turn))
        chunks = completion_chunks(completion_id, chat.model, turn, chat.include_usage)
        return StreamingResponse(
            _server_sent_events(chunks),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        ],
        middleware=[Middleware(_TestDoubleHeader)],
    )


class _TestDoubleHeader:
    """ASGI middleware stamping every response (streams included) as a test double."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append(TEST_DOUBLE_HEADER, "true")
            await send(message)

        await self.app(scope, receive, send_stamped)


class _FirstSeen:
    """A bounded set that tells whether a key is new; forgets the oldest keys first."""

    def __init__(self, capacity: int) -> None:
        self._keys: dict[str, None] = {}
        self._capacity = capacity

    def add(self, key: str) -> bool:
        """Remember ``key``; return ``True`` if it was not already remembered."""
        if key in self._keys:
            return False
        if len(self._keys) >= self._capacity:
            del self._keys[next(iter(self._keys))]
        self._keys[key] = None
        return True


def _latency_seconds(
    key: str, server: tuple[int, int], conversation: tuple[int, int] | None
) -> float:
    # Seeded by the request, so an identical request waits identically.
    rng = random.Random(key)
    total_ms = rng.uniform(*server) + (rng.uniform(*conversation) if conversation else 0.0)
    return total_ms / 1000


def _scripted_failure(status: int) -> Response:
    if status == 429:
        kind, code = "requests", "rate_limit_exceeded"
    elif status >= 500:
        kind, code = "server_error", None
    else:
        kind, code = "invalid_request_error", None
    message = f"Scripted failure [fail={status}]: send the identical request again to succeed."
    # retry-after-ms lets the openai client retry at once instead of backing off ~0.5 s.
    headers = {"retry-after": "0", "retry-after-ms": "1"}
    return _error(status, message, kind, code, headers)


def _error(
    status: int,
    message: str,
    kind: str,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
    param: str | None = None,
) -> Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _chunk(
    completion_id: str, model: str, choices: list[dict[str, Any]], include_usage: bool
) -> dict[str, Any]:
    chunk = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
    }
    # OpenAI sends "usage": null on every chunk only when the caller asked for usage.
    return {**chunk, "usage": None} if include_usage else chunk


def _usage(turn: Turn) -> dict[str, int]:
    usage = turn.usage
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def _pieces(text: str, *, by_word: bool) -> list[str]:
    if by_word:
        return re.findall(r"\S+\s*|\s+", text)
    return [text[start : start + _ARGUMENT_PIECE] for start in range(0, len(text), _ARGUMENT_PIECE)]


async def _server_sent_events(chunks: Iterator[dict[str, Any]]) -> AsyncIterator[str]:
    for chunk in chunks:
        yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"
    yield "data: [DONE]\n\n"
