"""Re-drive dead letters: put DLQ records back on their origin topic once the cause is fixed.

Usage::

    python -m stepbus_runtime.redrive [--bootstrap HOST:PORT] [--prefix stepbus.]
        [--origin-topic TOPIC] [--error-contains TEXT] [--key KEY] [--dry-run | --list]

Each selected dead letter is published again to the topic in its ``stepbus.origin.topic``
header with its original key, value and non-``stepbus.`` headers (so ``traceparent`` continues
the task's trace), plus ``stepbus.redriven-from: <dlq topic>:<partition>:<offset>``. The
idempotent producer sends it and the command waits for the acknowledgement.

Design: which dead letters were already re-driven is recorded per dead letter, not as a
consumer-group offset. A group offset only says "everything before here is done", but filters
leave dead letters behind that a later run with another filter must still find. So after a
re-published record is acknowledged, the command writes a marker to the compacted topic
``{prefix}dlq.redriven`` (key ``<partition>:<offset>`` of the dead letter), and every run first
reads the markers and skips marked dead letters. Each run reads the DLQ from its beginning to
the end offsets taken at start (no consumer group), then stops, so records that fail again
during the run become new dead letters for a later run.

A dead letter that was cut to fit the DLQ (``stepbus.truncated`` or ``stepbus.origin.key.size``)
is re-driven from its origin: the full record is read back at the partition and offset its
headers name (while the origin topic still holds it; otherwise the command fails for it and
says so), never the truncated copy.

Several consumer groups may dead-letter the same record (the planner and the memory service
both read ``tasks``); each copy is listed, but the record is re-driven once: the markers are
also keyed by the origin record.

A crash between the re-publish and its marker re-drives that record again on the next run;
consumers drop the duplicate by event id (at-least-once, exactly-once effects). Run one
re-drive at a time per deployment.

``--dry-run`` lists what would be re-driven; ``--list`` lists every dead letter that matches the
filters, already re-driven or not, with its status. Neither sends anything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError
from stepbus_contracts import DEFAULT_PREFIX, Topics, utcnow

from .admin import ensure_topics, topic_partitions
from .kafka_security import kafka_options
from .publisher import EventPublisher
from .replay import iter_to_end

__all__ = ["DeadLetter", "RedriveFilter", "RedriveReport", "main", "redrive"]

Mode = Literal["redrive", "dry-run", "list"]


@dataclass(frozen=True)
class DeadLetter:
    """One DLQ record, as the processor wrote it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> str:
        """A ``stepbus.*`` header as text ("" when absent)."""
        return next((v.decode(errors="replace") for k, v in self.headers if k == name), "")

    @property
    def origin_topic(self) -> str:
        """The topic the record was consumed from."""
        return self.header("stepbus.origin.topic")

    @property
    def truncated(self) -> bool:
        """True when the DLQ holds a cut copy: the original must be read from its origin."""
        return self.header("stepbus.truncated") == "true" or bool(
            self.header("stepbus.origin.key.size")
        )

    @property
    def marker_key(self) -> bytes:
        """Key of this dead letter's marker in ``dlq.redriven``."""
        return f"{self.partition}:{self.offset}".encode()

    @property
    def origin_key(self) -> bytes:
        """Key of the marker of the record it came from: consumers of one topic in several
        groups (the planner and the memory service read ``tasks``) each dead-letter the same
        record, and re-driving it once reaches all of them again."""
        return (
            f"origin:{self.origin_topic}:{self.header('stepbus.origin.partition')}:"
            f"{self.header('stepbus.origin.offset')}"
        ).encode()

    def describe(self) -> str:
        """One line for the operator: where it is, where it came from, why it failed."""
        key = self.key.decode(errors="replace") if self.key is not None else "-"
        error = " ".join(self.header("stepbus.error").split())
        origin = (
            f"{self.origin_topic}[{self.header('stepbus.origin.partition')}]"
            f"@{self.header('stepbus.origin.offset')}"
        )
        return (
            f"{self.partition}:{self.offset} origin={origin} key={key} "
            f"attempts={self.header('stepbus.attempts')} error={error}"
        )


@dataclass(frozen=True)
class RedriveFilter:
    """Which dead letters to re-drive; every given criterion must match."""

    origin_topic: str | None = None
    error_contains: str | None = None
    key: str | None = None

    def matches(self, letter: DeadLetter) -> bool:
        """True when ``letter`` is selected."""
        if not letter.origin_topic:
            return False  # not written by the processor: nowhere to send it
        if self.origin_topic is not None and letter.origin_topic != self.origin_topic:
            return False
        if self.error_contains is not None:
            if self.error_contains not in letter.header("stepbus.error"):
                return False
        return self.key is None or letter.key == self.key.encode()


@dataclass
class RedriveReport:
    """What one run saw and did."""

    mode: Mode
    total: int = 0
    selected: list[DeadLetter] = field(default_factory=list)
    already_redriven: int = 0
    filtered_out: int = 0

    def summary(self) -> str:
        """The last line the command prints."""
        counts = (
            f"{len(self.selected)} of {self.total} dead letters "
            f"({self.already_redriven} skipped: already re-driven, "
            f"{self.filtered_out} filtered out)"
        )
        if self.mode == "redrive":
            return f"re-drove {counts}"
        if self.mode == "dry-run":
            return f"would re-drive {counts}"
        return (
            f"{self.total} dead letters: {len(self.selected)} pending, "
            f"{self.already_redriven} already re-driven, {self.filtered_out} filtered out"
        )


async def redrive(
    bootstrap_servers: str,
    topics: Topics,
    select: RedriveFilter | None = None,
    *,
    mode: Mode = "redrive",
    out: Callable[[str], None] = print,
) -> RedriveReport:
    """Re-drive (or list) the dead letters of ``topics.dlq`` that ``select`` matches.

    Args:
        bootstrap_servers: Kafka bootstrap servers.
        topics: The deployment's topic catalog (its DLQ and marker topic).
        select: Filters; None selects every dead letter.
        mode: ``redrive`` sends; ``dry-run`` and ``list`` only print.
        out: Receives one line per listed dead letter.
    """
    select = select or RedriveFilter()
    report = RedriveReport(mode)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        client_id="stepbus-redrive",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **kafka_options(),
    )
    publisher = EventPublisher(bootstrap_servers, "stepbus-redrive")
    await consumer.start()
    try:
        markers = {
            record.key
            async for record in _read_topic(consumer, bootstrap_servers, topics.dlq_redriven)
        }
        if mode == "redrive":
            await publisher.start()
        try:
            async for record in _read_topic(consumer, bootstrap_servers, topics.dlq):
                letter = DeadLetter(
                    record.topic,
                    record.partition,
                    record.offset,
                    record.key,
                    record.value,
                    tuple(record.headers or ()),
                )
                report.total += 1
                if not select.matches(letter):
                    report.filtered_out += 1
                    continue
                if letter.marker_key in markers or letter.origin_key in markers:
                    report.already_redriven += 1
                    if mode == "list":
                        out(f"{letter.describe()} [re-driven]")
                    continue
                report.selected.append(letter)
                if mode != "list":  # its copies from other groups: not again
                    markers.add(letter.origin_key)
                if mode == "redrive":
                    if letter.truncated:
                        letter = await _original(bootstrap_servers, letter)
                    await _redrive_one(publisher, topics, letter)
                out(letter.describe() if mode != "list" else f"{letter.describe()} [pending]")
        finally:
            if mode == "redrive":
                await publisher.stop()
    finally:
        await consumer.stop()
    return report


async def _original(bootstrap_servers: str, letter: DeadLetter) -> DeadLetter:
    """``letter`` with the key and value of the record it was cut from, read at its origin.

    Raises:
        LookupError: The origin no longer holds the record (retention).
    """
    origin = TopicPartition(letter.origin_topic, int(letter.header("stepbus.origin.partition")))
    offset = int(letter.header("stepbus.origin.offset"))
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="none",
        max_partition_fetch_bytes=64 * 1024 * 1024,
        **kafka_options(),
    )
    await consumer.start()
    try:
        consumer.assign([origin])
        consumer.seek(origin, offset)
        try:
            record = await asyncio.wait_for(consumer.getone(origin), 30)
        except (OffsetOutOfRangeError, TimeoutError):
            raise LookupError(
                f"{letter.describe()}: the original is no longer in {origin.topic}"
                f"[{origin.partition}]@{offset} (retention); it cannot be re-driven"
            ) from None
    finally:
        await consumer.stop()
    if record.offset != offset:
        raise LookupError(f"{letter.describe()}: the original at offset {offset} is gone")
    return DeadLetter(
        letter.topic, letter.partition, letter.offset, record.key, record.value, letter.headers
    )


async def _redrive_one(publisher: EventPublisher, topics: Topics, letter: DeadLetter) -> None:
    headers = [(k, v) for k, v in letter.headers if not k.startswith("stepbus.")]
    source = f"{letter.topic}:{letter.partition}:{letter.offset}"
    headers.append(("stepbus.redriven-from", source.encode()))
    await publisher.send_raw(letter.origin_topic, letter.value, letter.key, headers)
    marker = {"redriven_to": letter.origin_topic, "at": utcnow().isoformat()}
    for key in (letter.marker_key, letter.origin_key):
        await publisher.send_raw(topics.dlq_redriven, json.dumps(marker).encode(), key, [])


async def _read_topic(
    consumer: AIOKafkaConsumer, bootstrap_servers: str, topic: str
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` from its beginning up to the end offsets taken now."""
    partitions = await topic_partitions(bootstrap_servers, topic)
    if not partitions:
        raise RuntimeError(f"topic {topic!r} does not exist")
    async for record in iter_to_end(consumer, partitions):
        yield record


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stepbus_runtime.redrive",
        description="Re-publish dead letters to their origin topic after the cause is fixed.",
    )
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    parser.add_argument(
        "--prefix",
        default=os.environ.get("STEPBUS_TOPIC_PREFIX", DEFAULT_PREFIX),
        help=f"topic prefix; the DLQ is <prefix>dlq (default: $STEPBUS_TOPIC_PREFIX or "
        f"{DEFAULT_PREFIX})",
    )
    parser.add_argument("--origin-topic", help="only dead letters consumed from this topic")
    parser.add_argument("--error-contains", help="only dead letters whose error contains this")
    parser.add_argument("--key", help="only dead letters with this record key (task id)")
    listing = parser.add_mutually_exclusive_group()
    listing.add_argument("--dry-run", action="store_true", help="list what would be re-driven")
    listing.add_argument(
        "--list", action="store_true", help="list matching dead letters and their status"
    )
    return parser


async def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code."""
    args = _parser().parse_args(argv)
    topics = Topics(args.prefix)
    # Creates the marker topic on deployments older than it (existing topics are kept).
    replication = int(os.environ.get("STEPBUS_TOPIC_REPLICATION_FACTOR", "1"))
    await ensure_topics(args.bootstrap, topics, replication_factor=replication, wait_seconds=10)
    mode: Mode = "dry-run" if args.dry_run else "list" if args.list else "redrive"
    select = RedriveFilter(args.origin_topic, args.error_contains, args.key)
    report = await redrive(args.bootstrap, topics, select, mode=mode)
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
