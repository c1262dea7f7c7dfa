"""An idempotent Kafka producer for events: every output is acknowledged before it counts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from stepbus_contracts import CloudEvent

from .claimcheck import PayloadStore, claim_value
from .codec import encode
from .kafka_security import kafka_options
from .tracing import Headers, inject_context

__all__ = ["Emit", "EventPublisher"]


@dataclass(frozen=True)
class Emit:
    """One event to publish: the record key is the event's subject (the task id)."""

    topic: str
    event: CloudEvent
    headers: tuple[tuple[str, bytes], ...] = field(default=())
    stage: int = 0
    """Outputs of one record go out in stages: none of stage n+1 is sent before every output
    of stage n is acknowledged. An LLM decision (stage 0) is on the journal before the tool
    calls it asks for (stage 1); a state snapshot (last stage) proves everything before it."""
    key: str | None = None
    """The record key when it is not the event's subject (a state record stored in parts)."""
    partition: int | None = None
    """An explicit partition, for records that must sit with their task whatever their key."""
    tombstone: bool = False
    """Publish no value under ``key`` (compacted topics then drop the key); ``event`` only
    says why, in logs."""
    on_acked: Callable[[], None] | None = field(default=None, compare=False)
    """Called once every output of the record is acknowledged: where work is counted, so a
    crash before the acknowledgement (and the redo after it) counts it once."""


class EventPublisher:
    """Publishes events with ``acks=all`` and the idempotent producer.

    Args:
        bootstrap_servers: Kafka bootstrap servers, ``host:port[,host:port]``.
        client_id: Shown in broker logs and metrics.
        max_request_size: Largest record the producer sends, in bytes.
        payloads_topic: The payloads topic (``Topics.payloads``); None disables claim checks.
        claim_check_threshold: Encoded events longer than this, in bytes, are stored in the
            payloads topic and published as a claim (see ``claimcheck``).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        client_id: str,
        max_request_size: int = 1_048_576,
        *,
        payloads_topic: str | None = None,
        claim_check_threshold: int = 256 * 1024,
    ) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=0,
            max_request_size=max_request_size,
            compression_type=None,
            **kafka_options(),
        )
        self._claim_check_threshold = claim_check_threshold
        self.max_request_size = max_request_size
        """The largest record the producer sends, in bytes (dead letters are cut to fit)."""
        self.payloads: PayloadStore | None = None
        """The claim-check store (None when disabled); hand it to the ``Processor``."""
        if payloads_topic is not None:
            self.payloads = PayloadStore(
                bootstrap_servers, payloads_topic, client_id=client_id, producer=self._producer
            )

    async def start(self) -> None:
        """Connect to the cluster."""
        await self._producer.start()

    async def stop(self) -> None:
        """Flush what is pending and disconnect."""
        if self.payloads is not None:
            await self.payloads.stop()
        await self._producer.stop()

    async def publish(self, emits: Sequence[Emit]) -> None:
        """Send every event and return once the broker has acknowledged all of them.

        Trace context of the current span is added to each record's headers. An event whose
        encoded form exceeds the claim-check threshold is stored in the payloads topic first
        and published as a claim.

        Raises:
            aiokafka.errors.KafkaError: An event was not acknowledged; some may have been.
        """
        if not emits:
            return
        futures = []
        for emit in emits:
            headers: Headers = list(emit.headers)
            if not any(name == "traceparent" for name, _ in headers):
                inject_context(headers)  # the current span, unless the emitter chose one
            value: bytes | None = None
            if not emit.tombstone:
                value = encode(emit.event)
                if self.payloads is not None and len(value) > self._claim_check_threshold:
                    value = claim_value(emit.event, await self.payloads.put(value))
            futures.append(
                await self._producer.send(
                    emit.topic,
                    value=value,
                    key=(emit.key or emit.event.subject).encode(),
                    partition=emit.partition,
                    headers=headers,
                )
            )
        await asyncio.gather(*futures)

    async def send_raw(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Headers,
        *,
        partition: int | None = None,
    ) -> None:
        """Send bytes as they are (dead letters, tombstones) and wait for the acknowledgement."""
        await self._producer.send_and_wait(
            topic, value=value, key=key, headers=headers, partition=partition
        )
