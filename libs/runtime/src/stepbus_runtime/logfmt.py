"""Log lines a machine can join: one JSON object per line, correlated with the task and trace.

``configure_logging`` installs one stderr handler on the root logger whose formatter adds, to
every line, the OpenTelemetry ``trace_id``/``span_id`` current when the line is logged and the
fields bound with ``log_context`` (``task_id``, ``tenant``, ``step``). The bindings live in a
``ContextVar``: each asyncio task starts with a copy of its creator's context, so what one task
binds never shows up in the lines of another. ``STEPBUS_LOG_FORMAT=text`` swaps the JSON for a
short human format. The ``ClippingFilter``/``RepeatFilter`` of :mod:`stepbus_runtime.logs`
still bound every line: filters run before the formatter.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import TextIO

from opentelemetry import trace

from .logs import MAX_LOG_LINE, clip, install_clipping

__all__ = [
    "EXTRA_FIELDS",
    "JsonFormatter",
    "TextFormatter",
    "bind",
    "bound_fields",
    "configure_logging",
    "log_context",
    "reset",
]

EXTRA_FIELDS = (
    "task_id",
    "tenant",
    "step",
    "event_id",
    "event_type",
    "topic",
    "partition",
    "offset",
    "key",
    "attempt",
    "duration_ms",
    "tool",
    "call_id",
)
"""Names of ``extra=`` record attributes copied to the JSON line; anything else goes under
``extra={"extra": {...}}``, which is written as the line's ``extra`` object."""

_RESERVED = frozenset(
    {"ts", "level", "service", "logger", "message", "trace_id", "span_id", "exc", "stack", "extra"}
)
_CORE = _RESERVED - {"extra"}  # values the formatter builds itself: always strings
_NOISY_LOGGERS = ("aiokafka", "httpx", "httpx2", "httpcore", "httpcore2")
_MAX_JSON_LINE = 3 * MAX_LOG_LINE  # message and traceback are clipped; extras must fit in the rest

# Each bind sets a new dict and none is ever mutated, so the shared default cannot change.
_CONTEXT: ContextVar[dict[str, object]] = ContextVar("stepbus_log_context", default={})  # noqa: B039

log = logging.getLogger(__name__)


def bind(**fields: object) -> Token[dict[str, object]]:
    """Add ``fields`` to the lines logged in the current context until ``reset(token)``.

    A field bound to ``None`` is removed. The names of the line's own keys (``ts``, ``level``,
    ``message``, ``trace_id``, ...) cannot be bound.

    Raises:
        ValueError: a field name is one of the line's own keys; rename the field.
    """
    clash = _RESERVED.intersection(fields)
    if clash:
        raise ValueError(f"log fields {sorted(clash)} are reserved; bind them under another name")
    merged = {**_CONTEXT.get(), **fields}
    return _CONTEXT.set({name: value for name, value in merged.items() if value is not None})


def reset(token: Token[dict[str, object]]) -> None:
    """Restore the bindings that were current before the ``bind`` that returned ``token``."""
    _CONTEXT.reset(token)


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Bind ``fields`` (see ``bind``) for the lines logged inside the ``with`` block."""
    token = bind(**fields)
    try:
        yield
    finally:
        reset(token)


def bound_fields() -> Mapping[str, object]:
    """The fields bound in the current context (typed read-only: no copy is made, per span or
    line, so it must not be mutated)."""
    return _CONTEXT.get()


def _trace_ids() -> tuple[str, str] | None:
    """Hex trace and span ids of the current span, or ``None`` outside a valid one."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def _message(record: logging.LogRecord) -> str:
    """The record's message; a bad format string gives its raw parts, bounded."""
    try:
        return record.getMessage()
    except Exception:
        return clip(f"{record.msg!r} % {record.args!r}", MAX_LOG_LINE)


def _safe_repr(value: object) -> str:
    """``repr(value)`` clipped; a hostile ``__repr__`` gives a placeholder."""
    try:
        return clip(repr(value))
    except Exception as exc:
        return f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"


# Built once: ``json.dumps`` with options would build an encoder per line.
_STRICT = json.JSONEncoder(ensure_ascii=False, allow_nan=False, default=_safe_repr)
_CHECK = json.JSONEncoder(ensure_ascii=False, allow_nan=False)  # raises on what is not JSON


def _json_safe(value: object) -> object:
    """``value`` when it serialises to strict JSON within bounds, else its clipped ``repr``."""
    try:
        text = _CHECK.encode(value)
    except (TypeError, ValueError, RecursionError):
        return _safe_repr(value)
    return value if len(text) <= MAX_LOG_LINE else clip(text)


def _json_safe_field(value: object) -> object:
    """``_json_safe`` of a line field; an ``extra`` dict value by value (one level), so one bad
    value spoils only itself."""
    if isinstance(value, dict):
        return {
            key if isinstance(key, str) else _safe_repr(key): _json_safe(item)
            for key, item in value.items()
        }
    return _json_safe(value)


class _Timestamps:
    """RFC 3339 UTC stamps with milliseconds; the seconds part is formatted once per second."""

    def __init__(self) -> None:
        self._last: tuple[int, str] = (-1, "")  # one attribute: threads swap it atomically

    def rfc3339(self, created: float, msecs: float) -> str:
        second, prefix = self._last
        if int(created) != second:
            second = int(created)
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._last = (second, prefix)
        return f"{prefix}.{int(msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line.

    Keys: ``ts`` (RFC 3339 UTC, ms), ``level``, ``service``, ``logger``, ``message``;
    ``trace_id``/``span_id`` inside a valid span; the fields bound with ``log_context``; the
    ``extra=`` attributes named in ``EXTRA_FIELDS`` (they win over bound ones); ``extra``
    (the ``extra={"extra": {...}}`` dict); ``exc`` and ``stack`` when the record has them. A value
    that is not strict JSON (an object, NaN, a cycle) is written as its clipped ``repr``: a line
    is always valid JSON.
    """

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service
        self._stamps = _Timestamps()

    def format(self, record: logging.LogRecord) -> str:
        """One JSON line for ``record``."""
        entry = self._entry(record)
        try:
            line = _STRICT.encode(entry)
        except (TypeError, ValueError, RecursionError):  # NaN, a cycle, a non-str dict key
            line = None
        if line is None or len(line) > _MAX_JSON_LINE:
            safe = {
                key: value if key in _CORE else _json_safe_field(value)
                for key, value in entry.items()
            }
            line = _STRICT.encode(safe)
        return line

    def _entry(self, record: logging.LogRecord) -> dict[str, object]:
        entry: dict[str, object] = {
            "ts": self._stamps.rfc3339(record.created, record.msecs),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "message": _message(record),
        }
        ids = _trace_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        bound = _CONTEXT.get()
        if bound:
            entry.update(bound)
        attributes = record.__dict__
        for name in EXTRA_FIELDS:
            if name in attributes:
                entry[name] = attributes[name]
        extra = attributes.get("extra")
        if extra is not None:
            entry["extra"] = extra
        exc = _exception_text(self, record)
        if exc:
            entry["exc"] = exc
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return entry


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    """The record's formatted traceback, cached on it as the standard ``Formatter`` does."""
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    return record.exc_text or None


class TextFormatter(logging.Formatter):
    """A line for a human at a terminal, in local time, e.g.
    ``12:03:04.567 planner INFO stepbus.planner: step done [task=t-1 step=3 trace=4bf92f35]``.
    """

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        """The record on one line, then its traceback, if any."""
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = (
            f"{clock}.{int(record.msecs):03d} {self._service} {record.levelname} "
            f"{record.name}: {_message(record)}{_text_suffix(record)}"
        )
        exc = _exception_text(self, record)
        if exc:
            line = f"{line}\n{exc}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


def _text_suffix(record: logging.LogRecord) -> str:
    """`` [task=… step=… trace=…]`` for what is known; empty when nothing is."""
    bound = _CONTEXT.get()
    attributes = record.__dict__
    parts = [
        f"{label}={clip(attributes.get(name, bound.get(name)), 80)}"
        for label, name in (("task", "task_id"), ("step", "step"))
        if name in attributes or name in bound
    ]
    ids = _trace_ids()
    if ids is not None:
        parts.append(f"trace={ids[0][:8]}")
    return f" [{' '.join(parts)}]" if parts else ""


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time of the line (so a test's capture, or a
    reassigned stream, receives it); its type marks the handler ``configure_logging`` owns."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # the stream is always the current sys.stderr
        pass


_FORMATTERS: dict[str, type[JsonFormatter] | type[TextFormatter]] = {
    "json": JsonFormatter,
    "text": TextFormatter,
}


def _parse_level(name: str) -> int | None:
    """The numeric level for a level name (any case) or number, ``None`` if unknown."""
    if name.isdigit():
        return int(name)
    return logging.getLevelNamesMapping().get(name.strip().upper())


def configure_logging(service: str, *, level: str | None = None, fmt: str | None = None) -> None:
    """Send the root logger's lines to stderr as JSON (or text) correlated with traces.

    ``level`` defaults to ``STEPBUS_LOG_LEVEL`` (else ``INFO``), ``fmt`` to
    ``STEPBUS_LOG_FORMAT`` (``json``, the default, or ``text``); an unknown value falls back to
    the default with one warning line. Calling it again replaces the handler it installed before
    and leaves every other handler (a test's capture, for one) in place. The clipping and repeat
    filters are installed on the root handlers, and the per-request INFO lines of the Kafka and
    HTTP clients are silenced.
    """
    level_name = level or os.environ.get("STEPBUS_LOG_LEVEL") or "INFO"
    raw_format = fmt or os.environ.get("STEPBUS_LOG_FORMAT") or "json"
    format_name = raw_format.strip().lower()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(_FORMATTERS.get(format_name, JsonFormatter)(service))
    root.addHandler(handler)
    numeric = _parse_level(level_name)
    root.setLevel(logging.INFO if numeric is None else numeric)
    install_clipping()  # no log line grows with what a crafted record holds
    # Per-request INFO lines of the clients: one per LLM call or fetch is noise, and CPU.
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if format_name not in _FORMATTERS:
        log.warning("log format %r is not 'json' or 'text'; logging JSON", clip(raw_format))
    if numeric is None:
        log.warning("log level %r is not a level name; logging at INFO", clip(level_name))
