"""Claim check: events too big for one Kafka record are stored aside and referenced.

Kafka refuses records above ``max.message.bytes`` (about 1 MiB by default), and invariant 8
forbids truncating. So the publisher stores the full encoded event of a big event in the
``payloads`` topic, split into chunks of at most 512 KiB that share one key (hence one
partition), and publishes a small *claim* in its place: the same CloudEvents attributes, no
``data``, and the extension attribute ``claimcheck`` holding the reference::

    {"specversion": "1.0", "type": "stepbus.tool.call_completed", "source": "urn:stepbus",
     "id": "...", "subject": "task-42", "time": "...", "tenant": "acme",
     "claimcheck": {"id": "9f...", "topic": "stepbus.payloads", "partition": 3,
                    "offsets": [120, 121, 122, 123, 124, 125], "size": 3145728,
                    "sha256": "..."}}

The processor resolves claims before decoding, so handlers never see them; other readers call
``PayloadStore.resolve``. Payloads are kept as long as the topics that reference them (7 days):
a claim read after that fails with ``ClaimCheckError`` and is dead-lettered, never truncated.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError
from pydantic import ValidationError
from pydantic_core import from_json
from stepbus_contracts import CHUNK_BYTES, MAX_PAYLOAD_BYTES, CloudEvent, PayloadRef

from .admin import topic_partitions
from .errors import PermanentError, RetryableError
from .kafka_security import kafka_options

__all__ = [
    "CHUNK_BYTES",
    "MAX_PAYLOAD_BYTES",
    "ClaimCheckError",
    "PayloadReaders",
    "PayloadRef",
    "PayloadStore",
    "claim_reference",
    "claim_value",
]

_CLAIM_ATTRIBUTES = {"specversion", "type", "source", "id", "subject", "time", "tenant"}


class ClaimCheckError(PermanentError):
    """A claimed payload cannot be read back (expired, missing or corrupt): dead-letter it."""


def claim_value(event: CloudEvent, ref: PayloadRef) -> bytes:
    """The record value published instead of ``event``: its attributes and the reference."""
    attributes = event.model_dump(mode="json", include=_CLAIM_ATTRIBUTES)
    return json.dumps({**attributes, "claimcheck": ref.model_dump(mode="json")}).encode()


def claim_reference(value: bytes | None) -> PayloadRef | None:
    """The reference of a claim record, or None for any other record value.

    Raises:
        ClaimCheckError: The value is a claim but its reference is malformed.
    """
    if not value or b'"claimcheck"' not in value:  # cheap test before parsing
        return None
    try:  # pydantic's parser: bounded recursion, so a deeply nested value fails cleanly
        claim = from_json(value)
    except ValueError:
        return None  # not JSON: decoding reports it
    if not isinstance(claim, dict) or "claimcheck" not in claim or "data" in claim:
        return None
    try:
        return PayloadRef.model_validate(claim["claimcheck"])
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors(include_input=False)[:3]
        )
        raise ClaimCheckError(f"malformed claim check reference: {problems}") from None


class PayloadStore:
    """Stores payloads as chunk records in the ``payloads`` topic and reads them back.

    Reads use a consumer of its own, without a group (assign and seek), started on the first
    fetch and shared by fetches one at a time.

    Args:
        bootstrap_servers: Kafka bootstrap servers.
        topic: The payloads topic (``Topics.payloads``).
        client_id: Shown in broker logs.
        producer: An idempotent ``acks=all`` producer to reuse (the publisher's); when None
            the store creates, starts and stops its own.
        fetch_timeout: Seconds a fetch may take before it fails as retryable. References are
            checked against the topic (partition, offsets) before anything is fetched, so only a
            broker in trouble can make a valid-looking fetch slow.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        client_id: str = "stepbus-payloads",
        producer: AIOKafkaProducer | None = None,
        fetch_timeout: float = 10.0,
    ) -> None:
        self.topic = topic
        self._bootstrap = bootstrap_servers
        self._owns_producer = producer is None
        self._producer = producer or AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=0,
            **kafka_options(),
        )
        self._client_id = client_id
        self._reader: AIOKafkaConsumer | None = None  # made on the first fetch
        self._reading = asyncio.Lock()
        self._fetch_timeout = fetch_timeout
        self._partitions: tuple[float, int] | None = None  # (when read, partition count)

    async def start(self) -> None:
        """Start the store's own producer, if it has one."""
        if self._owns_producer:
            await self._producer.start()

    async def stop(self) -> None:
        """Stop what the store started."""
        if self._reader is not None:
            await self._reader.stop()
            self._reader = None
        if self._owns_producer:
            await self._producer.stop()

    async def put(self, payload: bytes) -> PayloadRef:
        """Store ``payload`` and return its reference once every chunk is acknowledged."""
        payload_id = uuid.uuid4().hex
        chunks = [payload[i : i + CHUNK_BYTES] for i in range(0, len(payload), CHUNK_BYTES)]
        chunks = chunks or [b""]
        futures = []
        for index, chunk in enumerate(chunks):
            futures.append(
                await self._producer.send(
                    self.topic,
                    value=chunk,
                    key=payload_id.encode(),
                    headers=[("stepbus.payload.chunk", f"{index}/{len(chunks)}".encode())],
                )
            )
        written = await asyncio.gather(*futures)
        if len({meta.partition for meta in written}) != 1:  # partitions added mid-put
            raise RetryableError(f"chunks of payload {payload_id} landed on several partitions")
        return PayloadRef(
            id=payload_id,
            topic=self.topic,
            partition=written[0].partition,
            offsets=[meta.offset for meta in written],
            size=len(payload),
            sha256=hashlib.sha256(payload).hexdigest(),
        )

    async def fetch(self, ref: PayloadRef) -> bytes:
        """Read a stored payload back and verify it.

        Raises:
            ClaimCheckError: The payload expired, is missing, or does not match its reference.
            RetryableError: The chunks did not arrive within ``fetch_timeout``.
        """
        if ref.topic != self.topic:
            raise ClaimCheckError(
                f"claim check points to topic {ref.topic!r}, not the payloads topic {self.topic!r}"
            )
        async with self._reading:
            try:
                chunks = await asyncio.wait_for(self._checked_read(ref), self._fetch_timeout)
            except TimeoutError:
                raise RetryableError(
                    f"payload {ref.id} not read within {self._fetch_timeout}s"
                ) from None
        payload = b"".join(chunks[offset] for offset in ref.offsets)
        if len(payload) != ref.size or hashlib.sha256(payload).hexdigest() != ref.sha256:
            raise ClaimCheckError(
                f"payload {ref.id} is corrupt: {len(payload)} bytes read, sha256 does not "
                f"match the reference ({ref.size} bytes)"
            )
        return payload

    async def resolve(self, value: bytes | None) -> bytes | None:
        """``value`` itself, or the stored payload when ``value`` is a claim."""
        ref = claim_reference(value)
        return value if ref is None else await self.fetch(ref)

    async def _partition_count(self, partition: int) -> int:
        """Partitions of the payloads topic: cached, read again (at most once a second) when
        ``partition`` is beyond the cached count, in case partitions were added."""
        now = time.monotonic()
        cached = self._partitions
        if cached is None or (partition >= cached[1] and now - cached[0] > 1.0):
            count = len(await topic_partitions(self._bootstrap, self.topic))
            cached = self._partitions = (now, count)
        return cached[1]

    async def _checked_read(self, ref: PayloadRef) -> dict[int, bytes]:
        if self._reader is None:
            reader = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap,
                client_id=f"{self._client_id}-reader",
                enable_auto_commit=False,
                auto_offset_reset="none",  # an expired offset must fail, not skip to other data
                # Chunks are on the log before their claim: a fetch never needs to wait for new
                # data, and a long-polling fetch left in flight after a read would hold up the
                # next fetch's offset requests on the connection by up to half a second.
                fetch_max_wait_ms=10,
                **kafka_options(),
            )
            await reader.start()
            self._reader = reader
        if ref.partition >= await self._partition_count(ref.partition):
            raise ClaimCheckError(
                f"payload {ref.id} missing: {ref.topic} has no partition {ref.partition}"
            )
        return await self._read(ref)

    async def _read(self, ref: PayloadRef) -> dict[int, bytes]:
        assert self._reader is not None
        consumer = self._reader
        tp = TopicPartition(ref.topic, ref.partition)
        consumer.assign([tp])
        first, last = min(ref.offsets), max(ref.offsets)
        start = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        if first < start:
            raise ClaimCheckError(
                f"payload {ref.id} expired: {tp.topic}[{tp.partition}] now starts at offset "
                f"{start}, the payload was at {first} (retention of the payloads topic)"
            )
        if last >= end:
            raise ClaimCheckError(
                f"payload {ref.id} missing: {tp.topic}[{tp.partition}] ends before offset {last}"
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
                if record.offset not in wanted:
                    continue
                if record.key != ref.id.encode():
                    raise ClaimCheckError(
                        f"payload {ref.id} missing: offset {record.offset} holds another payload"
                    )
                chunks[record.offset] = record.value or b""
        if missing := wanted - set(chunks):
            raise ClaimCheckError(f"payload {ref.id} missing: no chunks at offsets {missing}")
        return chunks


class PayloadReaders:
    """Resolves claims that point to any of several payloads topics, each through its store:
    a shadow planner reads the live input's claims and its own namespace's."""

    def __init__(self, *stores: PayloadStore) -> None:
        self._stores = {store.topic: store for store in stores}

    async def fetch(self, ref: PayloadRef) -> bytes:
        """The payload ``ref`` points to.

        Raises:
            ClaimCheckError: No store reads the topic it names, or the payload is gone.
        """
        store = self._stores.get(ref.topic)
        if store is None:
            raise ClaimCheckError(f"claim check points to topic {ref.topic!r}: no store reads it")
        return await store.fetch(ref)
