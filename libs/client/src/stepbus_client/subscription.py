"""One ``results`` subscription: records in, typed events out to the caller's handler.

What happens to each record, in order:

1. A claim (``claims``) is resolved to the full event, unless its tenant or type would skip it.
2. The value is decoded as the published schema does (``stepbus_contracts.validate_wire``).
3. Events of other tenants and, with ``terminal_only``, progress and approval events are
   skipped.
4. The handler runs. Its record is committed only when it returns; if it raises, the record is
   redelivered after a pause (see ``router.StepbusRouter.on_result``).

A record that cannot become an event (not JSON, schema-invalid, an unknown type, a claim that
cannot be read back) is *poison*: it is logged with its topic, partition and offset and
skipped. It is committed like a handled one, so it never stalls the records behind it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import ConsumerRecord
from faststream.kafka.annotations import KafkaMessage
from faststream.message import StreamMessage
from pydantic import ValidationError

from .claims import Claimed, claim_of, fetch_payload
from .errors import ClaimCheckError
from .events import Result, decode_result

__all__ = ["ResultSubscription", "raw_body", "tolerant_parser"]

log = logging.getLogger("stepbus_client")

_TERMINAL_TYPES = frozenset(
    {"stepbus.task.completed", "stepbus.task.failed", "stepbus.task.cancelled"}
)


class ResultSubscription:
    """Decodes ``results`` records and calls ``handler`` with the events it wants.

    Args:
        handler: Called with each wanted event; must be idempotent (delivery is
            at-least-once: key what it records by task id or event id).
        terminal_only: Pass only ``TaskCompleted``, ``TaskFailed`` and ``TaskCancelled``.
        tenant: Pass only events of this tenant (None: every tenant).
        payloads_topic: The only topic a claim may point to (``Topics.payloads``).
        new_consumer: Returns the broker's consumer builder once the broker is connected.
        retry_backoff: Seconds before a failed record is redelivered: first and most.
    """

    def __init__(
        self,
        handler: Callable[[Any], Awaitable[object]],
        *,
        terminal_only: bool,
        tenant: str | None,
        payloads_topic: str,
        new_consumer: Callable[[], Callable[..., Any]],
        retry_backoff: tuple[float, float] = (0.2, 5.0),
    ) -> None:
        self._handler = handler
        self._terminal_only = terminal_only
        self._tenant = tenant
        self._payloads_topic = payloads_topic
        self._new_consumer = new_consumer
        self._backoff = retry_backoff
        self._failures = 0

    async def consume(self, message: KafkaMessage) -> None:
        """The FastStream handler: one record of ``results``."""
        record = message.raw_message
        assert not isinstance(record, tuple), "a results subscription is not a batch one"
        try:
            event = await self.event(record)
            if event is not None:
                await self._handler(event)
        except Exception:
            # Raising makes FastStream's NACK_ON_ERROR seek back to this record instead of
            # committing it; the pause keeps a persistent failure from spinning.
            self._failures += 1
            first, most = self._backoff
            await asyncio.sleep(min(most, first * 2 ** (self._failures - 1)))
            raise
        self._failures = 0

    async def event(self, record: ConsumerRecord[Any, Any]) -> Result | None:
        """The event ``record`` holds if the handler wants it; None to skip the record.

        Raises:
            TimeoutError: A claimed payload could not be read in time: retry the record.
            NotConnectedError: The broker is not connected, so a claim cannot be read.
        """
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        value: bytes | None = record.value
        try:
            claim = claim_of(value)
        except ClaimCheckError as exc:
            _poison(where, str(exc))
            return None
        if claim is not None:
            if not self._wanted(claim.tenant, claim.type):
                return None
            value = await self._resolve(claim, where)
            if value is None:
                return None
        if not value:
            _poison(where, "empty record value")
            return None
        try:
            event = decode_result(value)
        except ValidationError as exc:
            _poison(where, _problems(exc))
            return None
        if claim is not None and (event.id, event.subject) != (claim.id, claim.subject):
            _poison(where, f"claim {claim.id} resolved to another event ({event.id})")
            return None
        return event if self._wanted(event.tenant, event.type) else None

    def _wanted(self, tenant: str, event_type: str) -> bool:
        if self._tenant is not None and tenant != self._tenant:
            return False
        return not self._terminal_only or event_type in _TERMINAL_TYPES

    async def _resolve(self, claim: Claimed, where: str) -> bytes | None:
        ref = claim.claimcheck
        if ref.topic != self._payloads_topic:
            _poison(where, f"claim points to {ref.topic!r}, not to {self._payloads_topic!r}")
            return None
        try:
            return await fetch_payload(self._new_consumer(), ref)
        except ClaimCheckError as exc:
            _poison(where, str(exc))
            return None


async def tolerant_parser(
    record: ConsumerRecord[Any, Any],
    original: Callable[[ConsumerRecord[Any, Any]], Awaitable[StreamMessage[Any]]],
) -> StreamMessage[Any]:
    """FastStream's parser, given headers it can decode.

    FastStream decodes every header value as UTF-8 before any handler runs; a record with a
    binary or null header would raise there, and under ``NACK_ON_ERROR`` be redelivered
    forever. Such values are replaced (U+FFFD) in the parsed copy; the record is unchanged.
    """
    headers = record.headers
    if not all(isinstance(v, bytes) and _utf8(v) for _, v in headers):
        clean = tuple((k, (v or b"").decode("utf-8", "replace").encode()) for k, v in headers)
        record = dataclasses.replace(record, headers=clean)
    return await original(record)


async def raw_body(message: StreamMessage[Any]) -> Any:
    """The record value as bytes: decoding (and reporting poison) is the subscription's job,
    not FastStream's JSON decoder, which would raise before the handler runs."""
    return message.body


def _utf8(value: bytes) -> bool:
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


def _poison(where: str, reason: str) -> None:
    log.error("stepbus: skipped record %s of results, not a valid event: %s", where, reason)


def _problems(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    if any(err["type"] == "union_tag_invalid" for err in errors):
        return "an event type this client does not know (from a newer stepbus?)"
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])[:64] or '<root>'}: {err['msg'][:200]}"
        for err in errors[:5]
    )
