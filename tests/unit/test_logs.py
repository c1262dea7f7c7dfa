"""Bounded log lines (hardening finding 11): values are clipped with their size noted."""

from __future__ import annotations

import logging
import sys

from stepbus_runtime import ClippingFilter, clip
from stepbus_runtime.logs import RepeatFilter
from stepbus_runtime.offsets import PartitionOffsets


def test_clip_keeps_short_values_and_notes_the_size_of_long_ones() -> None:
    assert clip("short") == "short"
    clipped = clip("x" * 1_000_000, 100)
    assert clipped.startswith("x" * 100) and len(clipped) < 160
    assert "1000000 chars" in clipped


def test_the_filter_bounds_any_message_and_traceback() -> None:
    try:
        raise ValueError("v" * 200_000)
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "decoding %s failed", ("r" * 500_000,), exc_info
    )
    assert ClippingFilter(2_000).filter(record)
    assert len(record.getMessage()) < 2_100
    assert record.exc_text is not None and len(record.exc_text) < 2_200
    assert record.exc_text.rstrip().endswith("vvv")  # the last line (what failed) is kept
    formatted = logging.Formatter().format(record)
    assert len(formatted) < 4_500


def test_the_oldest_unfinished_record_is_what_the_commit_waits_for() -> None:
    offsets = PartitionOffsets()
    offsets.track(0)
    offsets.track(1)
    started = offsets.oldest_since()
    assert started is not None
    offsets.finish(1)
    assert offsets.oldest_since() == started and offsets.committable() == 0
    offsets.finish(0)
    assert offsets.oldest_since() is None and offsets.committable() == 2


def test_a_library_repeating_itself_is_held_to_one_line_per_interval() -> None:
    repeat = RepeatFilter(interval=60.0)

    def record(name: str, message: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, message, args, None)

    first = record("aiokafka.conn", "Unable connect to node with id %s", 1)
    assert repeat.filter(first)
    repeats = [repeat.filter(record("aiokafka.conn", "Unable connect to node with id %s", i))
               for i in range(1000)]  # fmt: skip
    assert not any(repeats)
    assert repeat.filter(record("aiokafka.conn", "another message"))
    assert all(repeat.filter(record("stepbus.processor", "dead-lettered %s", i)) for i in range(5))
