"""Records to events and back: CloudEvents structured JSON, validated per topic.

Decoding is as strict as the published JSON Schemas: no coercion (``"8"`` is not an integer,
``true`` is not one either), and the attributes a wire event must carry
(``stepbus_contracts.WIRE_ATTRIBUTES``) must be there, where Python code building an event
gets defaults.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter, ValidationError
from stepbus_contracts import WIRE_CONTEXT, CloudEvent

from .errors import DecodeError

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
        return adapter.validate_json(value, strict=True, context=WIRE_CONTEXT)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        raise DecodeError(f"invalid event: {problems}") from None
