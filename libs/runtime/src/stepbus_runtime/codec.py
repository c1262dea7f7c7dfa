"""Records to events and back: CloudEvents structured JSON, validated per topic.

Decoding accepts exactly what the published JSON Schemas accept
(``stepbus_contracts.validate_wire``): no coercion, and the CloudEvents attributes a wire event
must carry present, where Python code building an event gets defaults.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter, ValidationError
from stepbus_contracts import CloudEvent, validate_wire

from .errors import DecodeError
from .logs import clip

__all__ = ["decode", "encode"]


def encode(event: CloudEvent) -> bytes:
    """Serialize an event to its wire form (CloudEvents 1.0, structured JSON mode)."""
    return event.model_dump_json().encode()


def decode(adapter: TypeAdapter[Any], value: bytes | None) -> Any:
    """Parse and validate a record value with the topic's adapter, as wire input.

    Raises:
        DecodeError: The value is empty, not JSON, or not a valid event for the topic.
    """
    if not value:
        raise DecodeError("empty record value")
    try:
        return validate_wire(adapter, value)
    except ValidationError as exc:
        problems = "; ".join(  # a location may be a crafted 1 MB key: clipped
            f"{'.'.join(clip(p, 64) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)[:5]
        )
        raise DecodeError(f"invalid event: {problems}") from None
