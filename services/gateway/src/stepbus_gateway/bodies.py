"""Request bodies: JSON only, uncompressed, bounded, read without trusting the headers.

A body is declared by ``Content-Length`` above zero or by ``Transfer-Encoding``. A declared
body must be ``application/json`` (optionally ``; charset=utf-8``) without a
``Content-Encoding`` other than ``identity`` (415 otherwise), and a declared length above the
limit is refused before anything is read (413). The bytes actually received are counted too,
so a chunked body or a length that lies is cut off at the limit (413). A client that goes
away before its body is complete raises ``ClientGone``: nobody is left to answer.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from stepbus_runtime import clip

from .errors import ApiError, ClientGone

__all__ = ["check_json_representation", "declared_length", "read_json_body"]

_CHARSETS = frozenset({"utf-8", "utf8"})


def declared_length(headers: Headers) -> int | None:
    """The ``Content-Length`` of the request, if it has one (400 when it is not a number)."""
    values = headers.getlist("content-length")
    if not values:
        return None
    value = values[0].strip()
    if len(set(values)) != 1 or not (value.isascii() and value.isdigit()):
        raise ApiError(400, "Content-Length must be one non-negative integer")
    return int(value)


def check_json_representation(headers: Headers) -> None:
    """Refuse (415) a body that is not uncompressed ``application/json`` in UTF-8."""
    for encoding in headers.getlist("content-encoding"):
        for coding in encoding.split(","):
            if coding.strip().lower() not in ("", "identity"):
                raise ApiError(
                    415,
                    f"Content-Encoding {clip(coding.strip(), 64)!r} is not supported: "
                    "send the body uncompressed",
                )
    types = headers.getlist("content-type")
    if len(types) != 1:
        raise ApiError(415, "a request body needs one Content-Type: application/json")
    media, *params = types[0].split(";")
    if media.strip().lower() != "application/json":
        raise ApiError(
            415,
            f"request bodies are JSON: send Content-Type: application/json, "
            f"not {clip(media.strip(), 64)!r}",
        )
    for param in params:
        name, _, value = param.partition("=")
        if not name.strip() and not value:
            continue  # a trailing ';'
        if name.strip().lower() != "charset" or value.strip().strip('"').lower() not in _CHARSETS:
            raise ApiError(
                415,
                f"Content-Type parameter {clip(param.strip(), 64)!r} is not supported: "
                "JSON bodies are UTF-8 (charset=utf-8 or nothing)",
            )


async def read_json_body(request: Request, *, limit: int, wait_seconds: float) -> bytes:
    """The request's body (``b""`` when it has none), checked as the module says.

    Raises:
        ApiError: 400, 408, 413 or 415, saying what to change.
        ClientGone: The client disconnected before its body was complete.
    """
    declared = declared_length(request.headers)
    has_body = bool(declared) or "transfer-encoding" in request.headers
    if has_body:
        check_json_representation(request.headers)
    if declared is not None and declared > limit:
        raise ApiError(413, _too_large(limit, f"declared {declared} bytes"))
    body = bytearray()
    try:
        async with asyncio.timeout(wait_seconds), contextlib.aclosing(request.stream()) as stream:
            async for chunk in stream:
                body += chunk
                if len(body) > limit:
                    raise ApiError(413, _too_large(limit, f"more than {limit} bytes sent"))
    except ClientDisconnect:
        raise ClientGone(len(body), declared) from None
    except TimeoutError:
        raise ApiError(
            408, f"request body not received within {wait_seconds:g}s; send it at once"
        ) from None
    if body and not has_body:  # a server that passed a body the headers did not declare
        check_json_representation(request.headers)
    return bytes(body)


def _too_large(limit: int, what: str) -> str:
    return f"request body too large ({what}); the gateway accepts at most {limit} bytes"
