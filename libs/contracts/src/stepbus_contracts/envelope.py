"""The CloudEvents 1.0 envelope every stepbus record travels in.

Records are CloudEvents in structured JSON mode: the whole event, attributes and ``data``,
is the record value, and the record key is the task id (``subject``). ``tenant`` is a
CloudEvents extension attribute. Readers ignore attributes and fields they do not know, so
the contract evolves by adding fields with defaults; a breaking change gets a new ``type``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DEFAULT_SOURCE", "DEFAULT_TENANT", "CloudEvent", "EventData", "derive_id", "utcnow"]

DEFAULT_TENANT = "default"
DEFAULT_SOURCE = "urn:stepbus"

_ID_NAMESPACE = uuid.UUID("5b0c3f4e-2a59-4c1e-9a51-0d6f8e1b7c11")


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


class EventData(BaseModel):
    """Base of every ``data`` payload: frozen, and tolerant of fields added by newer writers."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class CloudEvent(BaseModel):
    """CloudEvents 1.0 attributes shared by every stepbus event.

    Subclasses fix ``type`` to a literal wire name and give ``data`` its model.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    specversion: str = Field(
        default="1.0", pattern=r"^1\.0$", description="CloudEvents spec version; always 1.0."
    )
    type: str = Field(description="The event type, e.g. `stepbus.task.submitted`.")
    source: str = Field(
        default=DEFAULT_SOURCE,
        min_length=1,
        description="URI-reference of the system that produced the event.",
    )
    id: str = Field(
        default_factory=lambda: str(uuid.uuid4()),
        min_length=1,
        max_length=256,
        description="Unique per source; consumers drop events whose id they have seen.",
    )
    subject: str = Field(
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z0-9._:@/-]+$",
        description="The task id. Also the Kafka record key, so a task's events stay in order.",
    )
    time: datetime = Field(default_factory=utcnow, description="When the event was produced.")
    datacontenttype: str = Field(
        default="application/json", description="Always `application/json`."
    )
    tenant: str = Field(
        default=DEFAULT_TENANT,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="CloudEvents extension: the tenant that owns the task.",
    )

    @property
    def task_id(self) -> str:
        """The task this event belongs to (the CloudEvents ``subject``)."""
        return self.subject
