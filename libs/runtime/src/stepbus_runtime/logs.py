"""Bounded log lines: a record crafted to be huge must not make the logs huge.

Values quoted in a log line (an exception, a decode error, a record) go through ``clip``; and
``ClippingFilter``, installed on the root handlers by ``setup_telemetry``, bounds every line
whatever its origin, tracebacks included, so a few 1 MB records cannot write 16 MB of log.
``RepeatFilter`` bounds the other source of log volume: a client library that logs every
reconnect attempt (aiokafka writes two ERROR lines per attempt while a broker is down, some
25 MB in seven minutes) keeps one line per message per interval and says how many it held back.
"""

from __future__ import annotations

import logging
import time

__all__ = [
    "MAX_LOG_LINE",
    "MAX_LOG_VALUE",
    "ClippingFilter",
    "RepeatFilter",
    "clip",
    "install_clipping",
]

MAX_LOG_VALUE = 300
"""Characters of one quoted value kept in a log line."""

MAX_LOG_LINE = 4_000
"""Characters of a whole log message (its traceback included) kept."""


def clip(value: object, limit: int = MAX_LOG_VALUE) -> str:
    """``str(value)``, cut to ``limit`` characters with the size of what was cut noted."""
    text = value if isinstance(value, str) else _safe_str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text)} chars, {len(text) - limit} cut]"


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception as exc:  # a hostile __str__ must not break the log line
        return f"<unprintable {type(value).__name__}: {type(exc).__name__}>"


class ClippingFilter(logging.Filter):
    """Bounds a record's message and traceback to ``limit`` characters each."""

    def __init__(self, limit: int = MAX_LOG_LINE) -> None:
        super().__init__()
        self._limit = limit

    def filter(self, record: logging.LogRecord) -> bool:
        """Clip in place; never drops a record."""
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the raw parts, bounded
            message = f"{record.msg!r} % {record.args!r}"
        if len(message) > self._limit:
            record.msg, record.args = clip(message, self._limit), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and len(record.exc_text) > self._limit:
            # Keep both ends: the first frames say where, the last line says what.
            half = self._limit // 2
            cut = len(record.exc_text) - self._limit
            record.exc_text = (
                f"{record.exc_text[:half]}\n… [{cut} chars of traceback cut] …\n"
                f"{record.exc_text[-half:]}"
            )
        return True


class RepeatFilter(logging.Filter):
    """Lets one record per (logger, message template) through every ``interval`` seconds for
    loggers under ``prefixes``; the next one let through says how many were held back."""

    def __init__(self, prefixes: tuple[str, ...] = ("aiokafka",), interval: float = 30.0) -> None:
        super().__init__()
        self._prefixes = prefixes
        self._interval = interval
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # -> (last let through, held)

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a repeat within the interval."""
        if not record.name.startswith(self._prefixes):
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        last, held = self._seen.get(key, (-self._interval, 0))
        if now - last < self._interval:
            self._seen[key] = (last, held + 1)
            return False
        if len(self._seen) > 10_000:  # templates, not values: this stays small; bound it anyway
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:
            record.msg = (
                f"{record.msg} [{held} similar lines in the last {now - last:.0f}s held back]"
            )
        return True


def install_clipping(limit: int = MAX_LOG_LINE) -> None:
    """Add a ``ClippingFilter`` and a ``RepeatFilter`` to every handler of the root logger
    (once)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RepeatFilter) for f in handler.filters):
            handler.addFilter(RepeatFilter())
        if not any(isinstance(f, ClippingFilter) for f in handler.filters):
            handler.addFilter(ClippingFilter(limit))
