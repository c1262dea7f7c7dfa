"""Claim checks on ``results``: events too big for one record, stored aside and referenced.

stepbus publishes an event whose encoding exceeds its claim-check threshold (256 KiB by
default) as a *claim*: the CloudEvents attributes without ``data``, plus the extension attribute
``claimcheck`` naming where the full event lies, in chunks of at most 512 KiB that share one
key (so one partition) in the ``payloads`` topic::

    {"specversion": "1.0", "type": "stepbus.task.completed", "id": "...", "subject": "task-42",
     "tenant": "acme", "claimcheck": {"id": "9f...", "topic": "stepbus.payloads",
     "partition": 3, "offsets": [120, 121], "size": 800000, "sha256": "..."}}

``claim_of`` recognises a claim; ``fetch_payload`` reads the chunks back with a consumer of
its own (no group: assign and seek) and checks size and SHA-256, so a result is never cut
short or swapped. Payloads are kept as long as ``results`` itself (7 days).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import OffsetOutOfRangeError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import from_json
from stepbus_contracts import CHUNK_BYTES, DEFAULT_TENANT, PayloadRef

from .errors import ClaimCheckError, NotConnectedError

__all__ = ["CHUNK_BYTES", "FETCH_TIMEOUT", "Claimed", "PayloadRef", "claim_of", "fetch_payload"]

FETCH_TIMEOUT = 10.0
"""Seconds reading one payload back may take."""


class Claimed(BaseModel):
    """A claim read from ``results``: the event's attributes and where its payload lies."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: str = Field(description="The claimed event's type, e.g. `stepbus.task.completed`.")
    id: str = Field(description="The claimed event's id.")
    source: str = Field(description="The claimed event's source.")
    subject: str = Field(description="The task id.")
    tenant: str = Field(default=DEFAULT_TENANT, description="The task's tenant.")
    claimcheck: PayloadRef = Field(description="Where the full event is stored.")

    @property
    def task_id(self) -> str:
        """The task the claimed event belongs to."""
        return self.subject


def claim_of(value: bytes | None) -> Claimed | None:
    """The claim ``value`` holds, or None for any other record value (events, poison).

    Raises:
        ClaimCheckError: ``value`` is a claim, but a malformed one.
    """
    if not value or b'"claimcheck"' not in value:  # cheap test before parsing
        return None
    try:  # pydantic's parser: a deeply nested value fails cleanly, no RecursionError
        claim = from_json(value)
    except ValueError:
        return None
    if not isinstance(claim, dict) or "claimcheck" not in claim or "data" in claim:
        return None
    try:
        return Claimed.model_validate(claim)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])[:64]}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)[:3]
        )
        raise ClaimCheckError(f"malformed claim: {problems}") from None


async def fetch_payload(new_consumer: Callable[..., Any], ref: PayloadRef) -> bytes:
    """Read a stored payload back and verify it against its reference.

    Args:
        new_consumer: Builds an ``aiokafka.AIOKafkaConsumer`` from keyword options, connected
            as the caller's broker is (the FastStream broker's consumer builder).
        ref: The claim's reference, already checked to name the expected payloads topic.

    Raises:
        ClaimCheckError: The payload expired, is missing, or does not match ``ref``.
        TimeoutError: The chunks did not arrive within ``FETCH_TIMEOUT`` seconds (the broker is
            in trouble): retry.
        NotConnectedError: ``new_consumer`` is the placeholder of an unconnected broker.
    """
    consumer = new_consumer(
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="none",  # an expired offset must fail, not skip to other data
        fetch_max_wait_ms=10,  # chunks precede their claim on the log: never long-poll
    )
    if consumer is None:  # FastStream's placeholder builder, before the broker connects
        raise NotConnectedError("connect the broker before reading claim-checked events")
    await consumer.start()
    try:
        chunks = await asyncio.wait_for(_read(consumer, ref), FETCH_TIMEOUT)
    finally:
        await consumer.stop()
    payload = b"".join(chunks[offset] for offset in ref.offsets)
    if len(payload) != ref.size or hashlib.sha256(payload).hexdigest() != ref.sha256:
        raise ClaimCheckError(
            f"payload {ref.id} is corrupt: {len(payload)} bytes read, sha256 does not match "
            f"the reference ({ref.size} bytes)"
        )
    return payload


async def _read(consumer: Any, ref: PayloadRef) -> dict[int, bytes]:
    tp = TopicPartition(ref.topic, ref.partition)
    consumer.assign([tp])  # also asks for the topic's metadata, with no public awaitable
    while (partitions := consumer.partitions_for_topic(ref.topic)) is None:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    # Checked before any offset request: one for a partition that does not exist would wait
    # for it until the timeout (ADR-17).
    if ref.partition not in partitions:
        raise ClaimCheckError(f"payload {ref.id} missing: no partition {ref.partition}")
    first, last = ref.offsets[0], ref.offsets[-1]
    start = (await consumer.beginning_offsets([tp]))[tp]
    end = (await consumer.end_offsets([tp]))[tp]
    if first < start or last >= end:
        raise ClaimCheckError(
            f"payload {ref.id} expired or missing: {ref.topic}[{ref.partition}] holds offsets "
            f"{start}..{end - 1}, the payload was at {first}..{last}"
        )
    consumer.seek(tp, first)
    wanted = set(ref.offsets)
    chunks: dict[int, bytes] = {}
    while await consumer.position(tp) <= last:
        try:
            batches = await consumer.getmany(tp, timeout_ms=500)
        except OffsetOutOfRangeError:
            raise ClaimCheckError(f"payload {ref.id} expired while being read") from None
        for record in batches.get(tp, []):
            if record.offset in wanted:
                if record.key != ref.id.encode():
                    raise ClaimCheckError(f"payload {ref.id}: offset {record.offset} is another's")
                chunks[record.offset] = record.value or b""
    if missing := wanted - set(chunks):
        raise ClaimCheckError(f"payload {ref.id} missing: no chunks at offsets {sorted(missing)}")
    return chunks
