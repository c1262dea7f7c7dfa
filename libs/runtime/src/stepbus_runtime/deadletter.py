"""Dead letters: a record that cannot be processed goes to the DLQ, whatever its shape.

Every record must end somewhere within a bounded number of attempts, or the partition's
committed offset stops behind it for good. So the dead letter is built to be publishable:

- a record with neither key nor value (which the producer refuses to send) gets an empty
  value and ``stepbus.origin.null=true``;
- a record whose copy would exceed the producer's request limit (its value near the broker's
  limit plus our headers, or a huge key or headers) is dead-lettered as a *truncated copy*
  with ``stepbus.truncated=true`` and its original sizes; the full record stays in its origin
  topic at the partition and offset the headers name;
- a send the broker keeps refusing for a reason retrying cannot fix falls back to a minimal
  copy, then to a logged drop, counted in ``stepbus_records_dropped_total``.

Only transient broker errors (unreachable, leader moving) are retried without limit: then no
output of the service can be published either, and nothing is lost by waiting.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka.errors import KafkaError

from .logs import clip
from .metrics import DLQ_RECORDS, DROPPED_RECORDS
from .publisher import EventPublisher

__all__ = ["HEADER_BUDGET", "KEY_LIMIT", "dead_letter", "dead_letter_headers"]

log = logging.getLogger(__name__)

HEADER_BUDGET = 16 * 1024
"""Bytes of the original record's headers copied into its dead letter at most."""

KEY_LIMIT = 1024
"""Bytes of the original key kept in a dead letter."""

_OVERHEAD = 64 * 1024
"""Room left under the producer's request limit for our headers and the batch framing."""

_MINIMAL_VALUE = 1024
"""Value bytes kept by the last-resort copy."""


def dead_letter_headers(
    record: Any, error: BaseException | str, *, attempts: int, service: str
) -> list[tuple[str, bytes]]:
    """The ``stepbus.*`` headers saying why and from where, plus the record's own (bounded)."""
    headers = [
        ("stepbus.error", clip(error, 4000).encode()),
        (
            "stepbus.error.type",
            (type(error).__name__ if isinstance(error, BaseException) else "Error").encode(),
        ),
        ("stepbus.origin.topic", str(record.topic).encode()),
        ("stepbus.origin.partition", str(record.partition).encode()),
        ("stepbus.origin.offset", str(record.offset).encode()),
        ("stepbus.attempts", str(attempts).encode()),
        ("stepbus.service", service.encode()),
    ]
    budget = HEADER_BUDGET
    for name, value in record.headers or ():
        if name.startswith("stepbus."):
            continue
        size = len(name) + len(value or b"")
        if size > budget:
            headers.append(("stepbus.origin.headers.truncated", b"true"))
            break
        budget -= size
        headers.append((name, value))
    return headers


async def dead_letter(
    publisher: EventPublisher,
    dlq_topic: str,
    record: Any,
    error: BaseException | str,
    *,
    attempts: int,
    service: str,
    retry_backoff: tuple[float, float] = (0.2, 10.0),
) -> bool:
    """Publish ``record``'s dead letter; ``False`` when it had to be dropped (logged, counted).

    Args:
        publisher: A started publisher.
        dlq_topic: The dead-letter topic.
        record: The aiokafka ``ConsumerRecord`` that failed.
        error: Why.
        attempts: Handler attempts made.
        service: The service dead-lettering it (``stepbus.service``).
        retry_backoff: Base and cap of the backoff between sends after a transient error.
    """
    origin = f"{record.topic}[{record.partition}]@{record.offset}"
    log.error("%s: %s dead-lettered: %s", service, origin, clip(error))
    headers = dead_letter_headers(record, error, attempts=attempts, service=service)
    key: bytes | None = record.key
    value: bytes | None = record.value
    if key is not None and len(key) > KEY_LIMIT:
        headers.append(("stepbus.origin.key.size", str(len(key)).encode()))
        key = key[:KEY_LIMIT]
    if value is None and key is None:  # the producer refuses a record with neither
        headers.append(("stepbus.origin.null", b"true"))
        value = b""
    limit = max(_MINIMAL_VALUE, publisher.max_request_size - _OVERHEAD - _size(headers))
    copies = [_copy(value, headers, limit)]
    if limit > _MINIMAL_VALUE:
        copies.append(_copy(value, headers, _MINIMAL_VALUE))
    delay = retry_backoff[0]
    for attempt_value, attempt_headers in copies:
        while True:
            try:
                await publisher.send_raw(dlq_topic, attempt_value, key, attempt_headers)
                DLQ_RECORDS.labels(service, record.topic).inc()
                return True
            except KafkaError as exc:
                if not getattr(exc, "retriable", False):
                    log.warning("%s: DLQ refused %s (%s); trying a smaller copy", service,
                                origin, clip(repr(exc)))  # fmt: skip
                    break
                log.warning("%s: DLQ publish of %s failed (%s); retrying in %.2fs",
                            service, origin, clip(repr(exc)), delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(retry_backoff[1], delay * 2)
            except Exception as exc:  # the producer refused the record itself: not retryable
                log.warning("%s: DLQ refused %s (%s); trying a smaller copy", service, origin,
                            clip(repr(exc)))  # fmt: skip
                break
    log.error("%s: %s could not be dead-lettered and is dropped (still in its topic)",
              service, origin)  # fmt: skip
    DROPPED_RECORDS.labels(service, record.topic, "dlq_refused").inc()
    return False


def _copy(
    value: bytes | None, headers: list[tuple[str, bytes]], limit: int
) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    if value is None or len(value) <= limit:
        return value, headers
    return value[:limit], [
        *headers,
        ("stepbus.truncated", b"true"),
        ("stepbus.origin.size", str(len(value)).encode()),
    ]


def _size(headers: list[tuple[str, bytes]]) -> int:
    return sum(len(name) + len(value) for name, value in headers)
