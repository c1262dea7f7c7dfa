"""The Kafka processor: concurrent across tasks, ordered within a task, at-least-once.

One processor consumes a set of topics in one consumer group. Each record runs in its own
asyncio task; records with the same key (the task id) run one after another, in offset order,
while records of other tasks run concurrently, so a 30-second LLM call stalls nobody else. A
record is finished once its outputs are acknowledged by the broker; the committed offset of a
partition is the lowest record not yet finished. In-flight records are bounded: above the bound
every assigned partition is paused, and the poll loop keeps running so the consumer never
trips ``max.poll.interval.ms``.

Records that cannot be decoded, or whose handler keeps failing, go to the DLQ with the reason and
their origin in headers; the processor moves on. No record escapes: whatever fails while
decoding, resolving a claim check, handling or publishing is caught per record and ends, after
a bounded number of attempts, in a dead letter (``deadletter``) or a logged, counted drop, and
the record is finished, so a partition's commit never stops behind it. A record must be keyed
by its event's ``subject`` (the task id): anything else is dead-lettered. Claim checks (big
events stored aside, see ``claimcheck``) are resolved before decoding, so handlers always see
the full event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanContext
from pydantic import TypeAdapter

from .claimcheck import ClaimCheckError, PayloadReaders, PayloadRef, PayloadStore, claim_reference
from .codec import decode
from .deadletter import dead_letter
from .errors import DecodeError, PermanentError
from .kafka_security import kafka_options
from .logfmt import bind, reset
from .logs import clip
from .metrics import CONSUMER_LAG, DLQ_RECORDS, IN_FLIGHT, RECORD_SECONDS, RECORDS
from .offsets import PartitionOffsets
from .publisher import Emit, EventPublisher
from .tracing import extract_context, is_own_span

__all__ = ["Handler", "PartitionListener", "Processor", "RecordContext", "Route"]

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("stepbus.processor")


@dataclass(frozen=True)
class RecordContext:
    """Where a record came from, for handlers that need it."""

    topic: str
    partition: int
    offset: int
    key: str | None
    attempt: int
    max_attempts: int
    trace_parent: SpanContext | None = None
    """The span context the record carries in ``traceparent`` (None: none, or invalid)."""

    @property
    def last_attempt(self) -> bool:
        """True when failing now sends the record to the DLQ: report the failure instead."""
        return self.attempt >= self.max_attempts


Handler = Callable[[Any, RecordContext], Awaitable[Sequence[Emit]]]
"""Typed event in, events to publish out. Raise ``PermanentError`` to dead-letter the record."""


@dataclass(frozen=True)
class Route:
    """How records of one topic are decoded and handled.

    ``on_arrival`` sees each decoded event as soon as it is fetched, before it waits for the
    earlier records of its task: the place for signals that must overtake queued work, such as
    a cancellation interrupting a running LLM call. It must be quick and must not fail.
    """

    adapter: TypeAdapter[Any]
    handler: Handler
    on_arrival: Callable[[Any], None] | None = None
    traced: bool = True
    """Record a ``process`` span per record. False for records that end their journey here
    (the gateway's results feed): their context still flows, no span is recorded."""


class PartitionListener(Protocol):
    """Lets a service load and drop per-partition state as partitions move."""

    async def assigned(self, committed: dict[TopicPartition, int | None]) -> None:
        """Partitions now owned, with their committed offsets (None: nothing committed)."""

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        """Partitions no longer owned; their records are finished or abandoned."""


class Processor:
    """Consumes ``routes`` in ``group_id`` and publishes what handlers return.

    Args:
        name: Service name, for logs, metrics and the client id.
        bootstrap_servers: Kafka bootstrap servers.
        group_id: Consumer group.
        routes: Topic name to its route.
        publisher: Started publisher used for outputs and dead letters.
        dlq_topic: Where undecodable and failing records go.
        max_in_flight: Records in flight above which partitions are paused.
        max_attempts: Handler attempts before a record is dead-lettered.
        retry_backoff: Base and cap of the exponential backoff between attempts, seconds.
        group_instance_id: Static membership id (stable pod name in Kubernetes).
        commit_interval: Seconds between offset commits.
        revoke_grace: Seconds a revoked partition's in-flight records get to finish.
        listener: Told of partitions assigned (before their records are fetched) and revoked
            (after their in-flight records finished or were cancelled).
        payloads: Resolves claim checks (``EventPublisher.payloads``); without it, claims are
            dead-lettered.
        stuck_after: Seconds after which a partition whose oldest unfinished record has not
            finished, or a poll loop that has not turned, makes ``health()`` report stuck.
    """

    def __init__(
        self,
        *,
        name: str,
        bootstrap_servers: str,
        group_id: str,
        routes: dict[str, Route],
        publisher: EventPublisher,
        dlq_topic: str,
        max_in_flight: int = 512,
        max_attempts: int = 5,
        retry_backoff: tuple[float, float] = (0.2, 10.0),
        group_instance_id: str | None = None,
        commit_interval: float = 0.5,
        revoke_grace: float = 5.0,
        listener: PartitionListener | None = None,
        payloads: PayloadStore | PayloadReaders | None = None,
        stuck_after: float = 900.0,
    ) -> None:
        self.name = name
        self._stuck_after = stuck_after
        self._routes = routes
        self._publisher = publisher
        self._dlq_topic = dlq_topic
        self._max_in_flight = max_in_flight
        self._max_attempts = max_attempts
        self._backoff = retry_backoff
        self._commit_interval = commit_interval
        self._revoke_grace = revoke_grace
        self._listener = listener
        self._payloads = payloads
        for topic in routes:  # series exist from the start: an alert on increase() sees the 1st
            DLQ_RECORDS.labels(name, topic)
        self._consumer = AIOKafkaConsumer(
            *routes,
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            client_id=f"stepbus-{name}",
            group_instance_id=group_instance_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=500,
            # Partition p of every input topic to the same member: a task's commands and its
            # journal (or a call and its ledger) are handled by one replica. aiokafka's default,
            # round robin, splits them with 4 or 5 members over 6 partitions.
            partition_assignment_strategy=(RangePartitionAssignor,),
            **kafka_options(),
        )
        self._offsets: dict[TopicPartition, PartitionOffsets] = {}
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._tails: dict[object, asyncio.Task[None]] = {}
        self._in_flight = 0
        self._paused = False
        self._restoring: set[TopicPartition] = set()
        self.failed = False
        self._stopping = asyncio.Event()
        self._ready = asyncio.Event()
        self._last_commit = 0.0
        self._last_poll = time.monotonic()

    @property
    def ready(self) -> bool:
        """True once the consumer joined its group and polls, and is not stuck."""
        return self.health()[0]

    def health(self) -> tuple[bool, str]:
        """Whether the processor is ready, and a line saying why (for ``/readyz``).

        Not ready before the consumer joined its group, when the poll loop has not turned for
        ``stuck_after`` seconds, or when a partition's oldest unfinished record has been in
        flight that long (its commit cannot advance).
        """
        if not self._ready.is_set():
            return False, "starting: not yet polling"
        now = time.monotonic()
        if now - self._last_poll > self._stuck_after:
            return False, f"stuck: the poll loop has not turned for {now - self._last_poll:.0f}s"
        for tp, tracker in self._offsets.items():
            since = tracker.oldest_since()
            if since is not None and now - since > self._stuck_after:
                return False, (
                    f"stuck: {tp.topic}[{tp.partition}] has had a record in flight for "
                    f"{now - since:.0f}s"
                )
        return True, "ready"

    @property
    def in_flight(self) -> int:
        """Records started and not yet finished."""
        return self._in_flight

    def committed_offsets(self) -> dict[TopicPartition, int]:
        """The last offset committed for each assigned partition (-1: none yet)."""
        return {tp: tracker.committed for tp, tracker in self._offsets.items()}

    async def run(self) -> None:
        """Consume until ``stop()``; then commit finished work and leave the group."""
        self._consumer.subscribe(list(self._routes), listener=_Rebalance(self))
        await self._consumer.start()
        try:
            while not self._stopping.is_set():
                batches = await self._consumer.getmany(timeout_ms=100, max_records=500)
                self._last_poll = time.monotonic()
                self._ready.set()
                for tp, records in batches.items():
                    offsets = self._offsets.get(tp)
                    if offsets is None:  # revoked while the batch was in flight
                        continue
                    if tp in self._restoring:  # fetched before the pause took effect
                        self._consumer.seek(tp, records[0].offset)
                        continue
                    for record in records:
                        offsets.track(record.offset)
                        self._start(tp, record)
                self._apply_backpressure()
                await self._maybe_commit()
        finally:
            await self._drain(set(self._tasks), self._revoke_grace)
            await self._commit()
            await self._consumer.stop()

    def stop(self) -> None:
        """Ask ``run()`` to finish (SIGTERM path): in-flight records get a grace period."""
        self._stopping.set()

    # -- one record ---------------------------------------------------------------------

    def _start(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        route = self._routes[record.topic]
        decoded = self._decode_on_arrival(route, record)
        if route.on_arrival is not None and not isinstance(decoded, PayloadRef | Exception):
            try:
                route.on_arrival(decoded)
            except Exception as exc:  # a signal only: the record is still handled in its turn
                log.warning("%s: on_arrival failed for %s@%d: %s",
                            self.name, record.topic, record.offset, clip(repr(exc)))  # fmt: skip
        # Keyless records are dead-lettered: they need no order, so none waits for another.
        queue: object = record.key if record.key is not None else (tp, record.offset)
        task = self._enqueue(queue, tp, self._run_record(tp, record, route, decoded))
        self._tasks.setdefault(tp, set()).add(task)

    def _decode_on_arrival(self, route: Route, record: ConsumerRecord[bytes, bytes]) -> Any:
        """The event, the claim to fetch in the record's turn, or the error to dead-letter."""
        try:
            # A claim is fetched and decoded later, in its turn (``_handle``): fetching is async.
            ref = claim_reference(record.value)
            if ref is not None:
                return ref
            return _keyed(record, decode(route.adapter, record.value))
        except PermanentError as exc:
            return exc
        except Exception as exc:  # whatever a crafted value makes a parser raise
            return DecodeError(f"undecodable record: {clip(repr(exc))}")

    def submit(self, key: str, work: Callable[[], Awaitable[Sequence[Emit]]]) -> None:
        """Run ``work`` in the queue of ``key`` and publish what it returns.

        For work without a record, such as a timer that ends a task past its deadline: it
        waits for the key's earlier records and delays its later ones, like a record would.
        """

        async def run(previous: asyncio.Task[None] | None) -> None:
            if previous is not None:
                await asyncio.wait([previous])
            if self._stopping.is_set():
                return  # timers' work: derived from state, made again after the restart
            try:
                await self._publish(await work())
            except Exception as exc:
                if self._stopping.is_set():  # the publisher closed under it: same as above
                    log.info("%s: work for %s dropped at shutdown: %r", self.name, clip(key), exc)
                    return
                log.exception("%s: work for %s failed", self.name, clip(key))

        self._enqueue(key.encode(), None, run)

    def _enqueue(
        self,
        key: object,
        tp: TopicPartition | None,
        run: Callable[[asyncio.Task[None] | None], Awaitable[None]],
    ) -> asyncio.Task[None]:
        previous = self._tails.get(key)
        task: asyncio.Task[None] = asyncio.create_task(run(previous))  # type: ignore[arg-type]
        self._tails[key] = task
        self._in_flight += 1
        IN_FLIGHT.labels(self.name).set(self._in_flight)

        def _done(done: asyncio.Task[None]) -> None:
            self._in_flight -= 1
            IN_FLIGHT.labels(self.name).set(self._in_flight)
            if tp is not None:
                self._tasks.get(tp, set()).discard(done)
            if self._tails.get(key) is done:
                del self._tails[key]

        task.add_done_callback(_done)
        return task

    def _run_record(
        self,
        tp: TopicPartition,
        record: ConsumerRecord[bytes, bytes],
        route: Route,
        decoded: Any,
    ) -> Callable[[asyncio.Task[None] | None], Awaitable[None]]:
        async def run(previous: asyncio.Task[None] | None) -> None:
            if previous is not None:
                await asyncio.wait([previous])  # same task id: keep offset order
            await self._process(tp, record, route, decoded)

        return run

    async def _process(
        self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes], route: Route, decoded: Any
    ) -> None:
        """Handle one record to its end: outputs published, or dead-lettered, or dropped.

        Only a cancellation (shutdown, revoked partition) leaves it unfinished, for the next
        owner to handle again.
        """
        started = time.perf_counter()
        outcome = "ok"
        ctx = extract_context(record.headers)
        token = bind(task_id=_key(record), tenant=getattr(decoded, "tenant", None))
        parent = _span_context(ctx)
        # A record this process published itself, read back (a decision on the planner's
        # journal), is not new work: its context flows, no span is recorded for it.
        if route.traced and not (parent is not None and is_own_span(parent.span_id)):
            started_span = _tracer.start_span(
                f"process {record.topic}", context=ctx, kind=trace.SpanKind.CONSUMER
            )
        else:
            started_span = trace.NonRecordingSpan(trace.get_current_span(ctx).get_span_context())
        with trace.use_span(started_span, end_on_exit=True) as span:
            if span.is_recording():
                span.set_attributes(self._process_attributes(record, decoded))
            try:
                if isinstance(decoded, Exception):
                    raise decoded
                outputs = await self._handle(route, decoded, record, parent)
                await self._publish(outputs)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not isinstance(exc, PermanentError):  # a bug, or outputs the broker refused
                    log.exception("%s: %s@%d failed unexpectedly",
                                  self.name, record.topic, record.offset)  # fmt: skip
                attempts = getattr(exc, "attempts", 1)
                sent = await dead_letter(
                    self._publisher, self._dlq_topic, record, exc,
                    attempts=attempts, service=self.name, retry_backoff=self._backoff,
                )  # fmt: skip
                outcome = "dead_lettered" if sent else "dropped"
                span.set_status(trace.StatusCode.ERROR, clip(str(exc), 200))
        reset(token)
        offsets = self._offsets.get(tp)
        if offsets is not None:
            offsets.finish(record.offset)
        RECORDS.labels(self.name, record.topic, _event_type(decoded), outcome).inc()
        RECORD_SECONDS.labels(self.name, record.topic).observe(time.perf_counter() - started)

    def _process_attributes(
        self, record: ConsumerRecord[bytes, bytes], decoded: Any
    ) -> dict[str, str | int]:
        """Messaging semantic-convention attributes of a record's ``process`` span."""
        attributes: dict[str, str | int] = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": record.topic,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset,
        }
        event_id = getattr(decoded, "id", None)
        if isinstance(event_id, str):
            attributes["messaging.message.id"] = event_id
            attributes["cloudevents.event_type"] = str(getattr(decoded, "type", ""))
        return attributes

    async def _handle(
        self,
        route: Route,
        event: Any,
        record: ConsumerRecord[bytes, bytes],
        parent: SpanContext | None,
    ) -> Sequence[Emit]:
        key = record.key.decode(errors="replace") if record.key else None
        for attempt in range(1, self._max_attempts + 1):
            context = RecordContext(
                record.topic,
                record.partition,
                record.offset,
                key,
                attempt,
                self._max_attempts,
                parent,
            )
            try:
                if isinstance(event, PayloadRef):  # fetch failures are retried like handlers
                    event = _keyed(record, decode(route.adapter, await self._fetch_payload(event)))
                return await route.handler(event, context)
            except PermanentError:
                raise
            except Exception as exc:
                if attempt == self._max_attempts:
                    error = PermanentError(f"failed after {attempt} attempts: {clip(repr(exc))}")
                    error.attempts = attempt  # type: ignore[attr-defined]
                    raise error from exc
                delay = min(self._backoff[1], self._backoff[0] * 2 ** (attempt - 1))
                log.warning(
                    "%s: %s@%d attempt %d failed (%s); retrying in %.2fs",
                    self.name, record.topic, record.offset, attempt, clip(repr(exc)), delay,
                )  # fmt: skip
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    async def _fetch_payload(self, ref: PayloadRef) -> bytes:
        if self._payloads is None:
            raise ClaimCheckError(f"claim check {ref.id} received but {self.name} has no store")
        return await self._payloads.fetch(ref)

    async def _publish(self, outputs: Sequence[Emit]) -> None:
        """Publish until acknowledged: a record is not finished before its outputs are.

        Stage by stage (``Emit.stage``): each stage is acknowledged before the next goes out.
        """
        # Published inside the record's ``process`` span, whose context the outputs carry: a
        # ``send`` span per stage doubled the spans of a task and tracing's cost (measured).
        for stage in sorted({emit.stage for emit in outputs}):
            await self._publish_all([emit for emit in outputs if emit.stage == stage])
        for emit in outputs:  # counted once acknowledged: a crash before counts nothing
            if emit.on_acked is not None:
                try:
                    emit.on_acked()
                except Exception:  # a metric callback must not fail the record
                    log.exception("%s: on_acked callback failed", self.name)

    async def _publish_all(self, outputs: Sequence[Emit]) -> None:
        """Retry while the broker is unavailable; an error retrying cannot fix is raised (the
        record is then dead-lettered)."""
        delay = self._backoff[0]
        while True:
            try:
                await self._publisher.publish(outputs)
                return
            except KafkaError as exc:
                if not getattr(exc, "retriable", False):
                    raise
                log.warning("%s: publish failed (%s); retrying in %.2fs",
                            self.name, clip(repr(exc)), delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(self._backoff[1], delay * 2)

    # -- flow control and commits -------------------------------------------------------

    def _apply_backpressure(self) -> None:
        assigned = self._consumer.assignment()
        if not self._paused and self._in_flight >= self._max_in_flight:
            self._consumer.pause(*assigned)
            self._paused = True
        elif self._paused and self._in_flight < self._max_in_flight // 2:
            self._consumer.resume(*(assigned - self._restoring))
            self._paused = False

    async def _maybe_commit(self) -> None:
        if time.monotonic() - self._last_commit >= self._commit_interval:
            await self._commit()

    async def _commit(self, partitions: set[TopicPartition] | None = None) -> None:
        self._last_commit = time.monotonic()
        offsets = {}
        for tp, tracker in self._offsets.items():
            if partitions is not None and tp not in partitions:
                continue
            position = tracker.committable()
            if position is not None and position > tracker.committed:
                offsets[tp] = position
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:  # rebalancing: the next owner re-reads from the last commit
            log.warning("%s: commit failed (%s)", self.name, clip(repr(exc)))
            return
        for tp, position in offsets.items():
            owned = self._offsets.get(tp)
            if owned is not None:  # revoked while the commit was in flight: not ours now
                owned.committed = position
        self._measure_lag()

    def _measure_lag(self) -> None:
        """``stepbus_consumer_lag_records``: the log end offset last fetched minus the
        committed position, per owned partition (no request to the broker)."""
        for tp, tracker in self._offsets.items():
            end = self._consumer.highwater(tp)
            if end is not None:
                lag = max(0, end - max(tracker.committed, 0))
                CONSUMER_LAG.labels(self.name, tp.topic, str(tp.partition)).set(lag)

    async def _drain(self, partitions: set[TopicPartition], grace: float) -> None:
        """Give in-flight records of ``partitions`` ``grace`` seconds, then cancel the rest."""
        tasks = {task for tp in partitions for task in self._tasks.get(tp, ())}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    async def _partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._restoring -= revoked
        await self._drain(revoked, self._revoke_grace)
        await self._commit(revoked)
        for tp in revoked:
            self._offsets.pop(tp, None)
            self._tasks.pop(tp, None)
            with contextlib.suppress(KeyError):  # not ours to report any more
                CONSUMER_LAG.remove(self.name, tp.topic, str(tp.partition))
        if self._listener is not None:
            await self._listener.revoked(revoked)

    async def _partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Restore the service's state for ``assigned`` before any of their records is handled.

        The poll loop keeps running while the listener restores (aiokafka runs this callback
        in its coordinator task), so the partitions stay paused until the restore is done.
        """
        for tp in assigned:
            self._offsets.setdefault(tp, PartitionOffsets())
        if self._listener is None:
            if self._paused:
                self._consumer.pause(*assigned)
            return
        self._restoring |= assigned
        self._consumer.pause(*assigned)
        for attempt in range(1, 11):
            try:
                committed = {tp: await self._consumer.committed(tp) for tp in assigned}
                await self._listener.assigned(committed)
                break
            except Exception:
                log.exception("%s: restoring %s failed (attempt %d)", self.name, assigned, attempt)
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
        else:  # never handle records without their state: stop and let the supervisor restart
            log.critical("%s: cannot restore state; stopping", self.name)
            self.failed = True
            self.stop()
            return
        self._restoring -= assigned
        if not self._paused:
            self._consumer.resume(*(assigned & self._consumer.assignment()))


def _span_context(ctx: otel_context.Context) -> SpanContext | None:
    found = trace.get_current_span(ctx).get_span_context()
    return found if found.is_valid else None


def _key(record: ConsumerRecord[bytes, bytes]) -> str | None:
    """The record's key (the task id), for logs and spans; None when it has none."""
    return clip(record.key.decode(errors="replace"), 200) if record.key is not None else None


def _event_type(decoded: Any) -> str:
    """The metric label of a record's kind: its event type, or why it has none (bounded: the
    types are the route's, the rest two words)."""
    kind = getattr(decoded, "type", None)
    if isinstance(kind, str):
        return kind
    return "claim_check" if isinstance(decoded, PayloadRef) else "undecodable"


def _keyed(record: ConsumerRecord[bytes, bytes], event: Any) -> Any:
    """``event``, checked to be keyed by its subject: a task's events must share its key, or
    they would not stay in order in one partition (and one replica's state)."""
    subject = getattr(event, "subject", None)
    if subject is not None and record.key != subject.encode():
        key = "none" if record.key is None else repr(clip(record.key.decode(errors="replace"), 80))
        raise DecodeError(f"record key {key} is not the event's subject {clip(subject, 80)!r}")
    return event


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, processor: Processor) -> None:
        self._processor = processor

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        with contextlib.suppress(Exception):
            await self._processor._partitions_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._processor._partitions_assigned(set(assigned))
