"""Reading events from the wire: exactly what the published JSON Schemas accept.

Python code builds events with defaults (a fresh ``id``, ``source`` and ``time``);
``validate_wire`` holds a record read from Kafka to the contract instead: no coercion
(``"8"`` and ``true`` are not integers), the CloudEvents attributes of ``WIRE_ATTRIBUTES``
present, and extension attributes few and well named. Every reader of the wire uses it
(``stepbus_runtime.codec.decode`` does); upstream systems may too.
"""

from __future__ import annotations

import re
from typing import TypeVar

from pydantic import TypeAdapter, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError, from_json

from .envelope import CloudEvent
from .limits import EXTENSION_NAME_PATTERN, MAX_ATTRIBUTES

__all__ = ["WIRE_ATTRIBUTES", "validate_wire"]

WIRE_ATTRIBUTES = frozenset({"specversion", "id", "source", "type", "subject", "data"})
"""Attributes every event on the wire carries (``time``, ``datacontenttype`` and ``tenant``
may be absent)."""

_EXTENSION_NAME = re.compile(EXTENSION_NAME_PATTERN[1:-1])  # fullmatch: see limits
_E = TypeVar("_E")


def validate_wire(adapter: TypeAdapter[_E], value: bytes) -> _E:
    """The event ``value`` holds, validated as the published JSON Schema of its topic does.

    Args:
        adapter: The topic's adapter (``tasks_adapter``, ``results_adapter``, ...).
        value: A record value: one CloudEvent in structured JSON mode.

    Raises:
        ValidationError: ``value`` is not JSON, or not an event the topic's schema accepts.
    """
    if b"NaN" in value or b"Infinity" in value:  # cheap test first: rare outside strings
        try:  # pydantic's parser takes these literals, which JSON does not have
            from_json(value, allow_inf_nan=False)
        except ValueError as exc:
            raise _error("json_invalid", (), value, {"error": str(exc)}) from None
    event = adapter.validate_json(value, strict=True)
    if isinstance(event, CloudEvent):
        _check_attributes(event)
    return event


def _check_attributes(event: CloudEvent) -> None:
    given = event.model_fields_set
    missing = WIRE_ATTRIBUTES - given
    if missing:
        names = ", ".join(sorted(missing))
        raise _error(
            PydanticCustomError(
                "missing_attribute",
                "missing CloudEvents attribute(s) {names}: an event on the wire carries "
                "specversion, id, source, type, subject and data",
                {"names": names},
            ),
            (min(missing),),
        )
    extensions = event.__pydantic_extra__
    if not extensions:
        return
    if len(given) > MAX_ATTRIBUTES:  # pydantic counts extensions among the fields set
        raise _error(
            PydanticCustomError(
                "too_many_attributes",
                "{count} attributes: an event has at most {limit}; drop extension attributes",
                {"count": len(given), "limit": MAX_ATTRIBUTES},
            ),
            (),
        )
    for name in extensions:
        if _EXTENSION_NAME.fullmatch(name) is None:
            raise _error(
                PydanticCustomError(
                    "extension_name",
                    "extension attribute names are 1-64 lower-case ASCII letters and digits "
                    "(CloudEvents 1.0)",
                ),
                (name[:64],),
            )


def _error(
    kind: str | PydanticCustomError,
    loc: tuple[str, ...],
    value: object = None,
    ctx: dict[str, object] | None = None,
) -> ValidationError:
    detail = InitErrorDetails(type=kind, loc=loc, input=value)
    if ctx is not None:
        detail["ctx"] = ctx
    return ValidationError.from_exception_data("CloudEvent", [detail])
