"""The CloudEvents 1.0 envelope every stepbus record travels in.

Records are CloudEvents in structured JSON mode: the whole event, attributes and ``data``,
is the record value, and the record key is the task id (``subject``). ``tenant`` is a
CloudEvents extension attribute. Readers ignore attributes and fields they do not know, so
the contract evolves by adding fields with defaults; a breaking change gets a new ``type``.

Python code builds events with defaults (a fresh ``id``, ``source``, ``time``); an event read
from the wire is held to more by ``wire.validate_wire``: no coercion, the attributes named,
extensions few and well named.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)

from .limits import (
    MAX_EVENT_ID_LENGTH,
    MAX_EXTENSION_LENGTH,
    MAX_SOURCE_LENGTH,
    MAX_TASK_ID_LENGTH,
    MAX_TENANT_LENGTH,
    RFC3339_PATTERN,
    SOURCE_PATTERN,
    TASK_ID_PATTERN,
    TENANT_PATTERN,
)

__all__ = [
    "DEFAULT_SOURCE",
    "DEFAULT_TENANT",
    "CloudEvent",
    "EventData",
    "ExtensionValue",
    "Timestamp",
    "derive_id",
    "utcnow",
]

DEFAULT_TENANT = "default"
DEFAULT_SOURCE = "urn:stepbus"

_ID_NAMESPACE = uuid.UUID("5b0c3f4e-2a59-4c1e-9a51-0d6f8e1b7c11")
# fullmatch with the anchors stripped: Python's ``$`` would also match before a final newline.
_RFC3339 = re.compile(RFC3339_PATTERN[1:-1])


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def derive_id(cause_id: str, *parts: object) -> str:
    """A deterministic event id derived from the id of the event that caused it.

    Processing the same cause twice yields the same ids, so consumers can drop the
    duplicates that at-least-once delivery produces.

    Args:
        cause_id: The id of the causing event (or another stable identity).
        *parts: What distinguishes this output among the outputs of the same cause.
    """
    name = ":".join([cause_id, *(str(part) for part in parts)])
    return str(uuid.uuid5(_ID_NAMESPACE, name))


def _timestamp(value: object) -> object:
    """An RFC 3339 string parsed (pydantic's own parser also takes ``"1700000000"``, ``t``,
    a space or no seconds); a datetime checked to be timezone-aware, so it encodes to one."""
    if isinstance(value, str):
        if _RFC3339.fullmatch(value) is None:
            raise ValueError(
                "not an RFC 3339 timestamp: write it like 2026-11-25T12:00:00Z "
                "(upper-case T, seconds and a Z or ±hh:mm offset)"
            )
        return datetime.fromisoformat(value)  # refuses February 30 and year 0
    if isinstance(value, datetime) and value.utcoffset() is None:
        raise ValueError("a naive datetime has no offset: use a timezone-aware one (utcnow())")
    return value


Timestamp = Annotated[
    datetime,
    BeforeValidator(_timestamp),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": RFC3339_PATTERN}),
]
"""A timezone-aware instant, written as an RFC 3339 string (``RFC3339_PATTERN``)."""

ExtensionValue = (
    Annotated[StrictStr, Field(max_length=MAX_EXTENSION_LENGTH)]
    | Annotated[StrictInt, Field(ge=-(2**31), le=2**31 - 1)]
    | StrictBool
)
"""A CloudEvents extension attribute value: a bounded string, a 32-bit integer or a boolean."""


class EventData(BaseModel):
    """Base of every ``data`` payload: frozen, and tolerant of fields added by newer writers."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)


class CloudEvent(BaseModel):
    """CloudEvents 1.0 attributes shared by every stepbus event.

    Subclasses fix ``type`` to a literal wire name and give ``data`` its model. Attributes
    this model does not name are CloudEvents extensions (``traceparent``, ...): no reader acts
    on them, and they stay on the event (``model_extra``), so re-encoding it keeps them. Each
    must be an ``ExtensionValue``; ``wire.validate_wire`` also checks their names and number.
    """

    model_config = ConfigDict(frozen=True, extra="allow", allow_inf_nan=False)

    __pydantic_extra__: dict[str, ExtensionValue] = Field(init=False)

    specversion: Literal["1.0"] = Field(
        default="1.0", description="CloudEvents spec version; always 1.0."
    )
    type: str = Field(description="The event type, e.g. `stepbus.task.submitted`.")
    source: str = Field(
        default=DEFAULT_SOURCE,
        min_length=1,
        max_length=MAX_SOURCE_LENGTH,
        pattern=SOURCE_PATTERN,
        description="URI-reference of the system that produced the event (printable ASCII, "
        f"no spaces, at most {MAX_SOURCE_LENGTH} characters).",
    )
    id: str = Field(
        default_factory=lambda: str(uuid.uuid4()),
        min_length=1,
        max_length=MAX_EVENT_ID_LENGTH,
        description="Unique per source; consumers drop events whose id they have seen.",
    )
    subject: str = Field(
        min_length=1,
        max_length=MAX_TASK_ID_LENGTH,
        pattern=TASK_ID_PATTERN,
        description="The task id: letters, digits and `. _ : @ -` (no `/`), at most "
        f"{MAX_TASK_ID_LENGTH} characters. Also the Kafka record key, so a task's events "
        "stay in order.",
    )
    time: Timestamp = Field(
        default_factory=utcnow,
        description="When the event was produced (RFC 3339, e.g. `2026-11-25T12:00:00Z`).",
    )
    datacontenttype: Literal["application/json"] = Field(
        default="application/json", description="Always `application/json`."
    )
    tenant: str = Field(
        default=DEFAULT_TENANT,
        min_length=1,
        max_length=MAX_TENANT_LENGTH,
        pattern=TENANT_PATTERN,
        description="CloudEvents extension: the tenant that owns the task.",
    )

    @property
    def task_id(self) -> str:
        """The task this event belongs to (the CloudEvents ``subject``)."""
        return self.subject
