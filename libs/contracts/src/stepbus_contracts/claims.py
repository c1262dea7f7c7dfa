"""The claim check's reference, part of the wire contract: an event too big for one record is
published as a claim (its attributes, no ``data``) whose ``claimcheck`` extension attribute is a
``PayloadRef``: where the full event's chunks lie in the payloads topic. Writers and readers of
claims (``stepbus_runtime.claimcheck``, ``stepbus_client``) share this model."""

from __future__ import annotations

import math
from itertools import pairwise

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["CHUNK_BYTES", "MAX_PAYLOAD_BYTES", "PayloadRef"]

CHUNK_BYTES = 512 * 1024
"""Largest chunk of a stored payload: well under Kafka's default 1 MiB record limit."""

MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
"""Largest payload a claim may reference: a reference claiming more is refused unread."""


class PayloadRef(BaseModel):
    """Where a stored payload lives: the value of a claim's ``claimcheck`` attribute."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str = Field(
        pattern=r"^[0-9a-f]{32}$", description="Payload id; the key of every chunk record."
    )
    topic: str = Field(min_length=1, max_length=249, description="The payloads topic.")
    partition: int = Field(ge=0, le=100_000, description="The partition holding every chunk.")
    offsets: list[int] = Field(
        min_length=1,
        max_length=MAX_PAYLOAD_BYTES // CHUNK_BYTES,
        description="Offsets of the chunks, in order.",
    )
    size: int = Field(ge=0, le=MAX_PAYLOAD_BYTES, description="Payload length in bytes.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the payload.")

    @model_validator(mode="after")
    def _consistent(self) -> PayloadRef:
        """As stepbus writes them: one chunk per 512 KiB, at increasing offsets from 0 up."""
        if len(self.offsets) != max(1, math.ceil(self.size / CHUNK_BYTES)):
            raise ValueError(f"{len(self.offsets)} chunk offsets do not fit {self.size} bytes")
        if any(b <= a for a, b in pairwise(self.offsets)):
            raise ValueError("chunk offsets must increase")
        if self.offsets[0] < 0:
            raise ValueError("chunk offsets must not be negative")
        return self
