"""Correlated log lines: JSON with trace ids and bound task fields, text for humans."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from stepbus_runtime.logfmt import (
    JsonFormatter,
    TextFormatter,
    bind,
    bound_fields,
    configure_logging,
    log_context,
    reset,
)
from stepbus_runtime.logs import ClippingFilter, RepeatFilter

RFC3339_MS_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
NOISY = ("aiokafka", "httpx", "httpcore")


class Lines:
    """A logger whose lines, formatted by one formatter, are kept in memory."""

    def __init__(self, formatter: logging.Formatter) -> None:
        self.buffer = io.StringIO()
        handler = logging.StreamHandler(self.buffer)
        handler.setFormatter(formatter)
        # Not from getLogger: pytest attaches its capture handlers to every registered logger,
        # and they would raise on the bad format string a test logs on purpose.
        self.logger = logging.Logger("stepbus.test.logfmt", logging.DEBUG)
        self.logger.addHandler(handler)

    def text(self) -> str:
        return self.buffer.getvalue()

    def json(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.text().splitlines()]


@pytest.fixture
def lines() -> Lines:
    return Lines(JsonFormatter("planner"))


@pytest.fixture
def text_lines() -> Lines:
    return Lines(TextFormatter("planner"))


@pytest.fixture
def root_restored() -> Iterator[logging.Logger]:
    """The root logger, with its handlers and the levels ``configure_logging`` sets put back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    noisy = {name: logging.getLogger(name).level for name in NOISY}
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, noisy_level in noisy.items():
        logging.getLogger(name).setLevel(noisy_level)


def test_a_json_line_parses_and_has_the_fields(lines: Lines) -> None:
    lines.logger.info("planned %d steps for %s", 3, "t-1")
    (entry,) = lines.json()
    assert entry["message"] == "planned 3 steps for t-1"
    assert entry["level"] == "INFO" and entry["service"] == "planner"
    assert entry["logger"] == lines.logger.name
    assert RFC3339_MS_UTC.match(str(entry["ts"]))
    assert "trace_id" not in entry and "span_id" not in entry and "exc" not in entry


def test_trace_ids_appear_inside_a_span(lines: Lines) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("outer") as span:
        lines.logger.info("inside")
    with trace.use_span(tracer.start_span("used"), end_on_exit=True) as used:
        lines.logger.info("used")
    lines.logger.info("outside")
    inside, in_used, outside = lines.json()
    context = span.get_span_context()
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert in_used["span_id"] == format(used.get_span_context().span_id, "016x")
    assert "trace_id" not in outside and "span_id" not in outside


def test_bound_fields_appear_inside_log_context_and_not_outside(lines: Lines) -> None:
    with log_context(task_id="t-1", tenant="acme", step=2):
        lines.logger.info("first")
        with log_context(step=3):
            lines.logger.info("nested")
        with log_context(tenant=None):
            lines.logger.info("unbound")
        lines.logger.info("restored")
    lines.logger.info("outside")
    first, nested, unbound, restored, outside = lines.json()
    assert (first["task_id"], first["tenant"], first["step"]) == ("t-1", "acme", 2)
    assert (nested["task_id"], nested["step"]) == ("t-1", 3)
    assert "tenant" not in unbound and unbound["task_id"] == "t-1"
    assert restored["step"] == 2 and restored["tenant"] == "acme"
    assert not {"task_id", "tenant", "step"} & outside.keys()
    assert dict(bound_fields()) == {}


def test_bind_returns_a_token_that_reset_restores(lines: Lines) -> None:
    token = bind(task_id="t-9")
    lines.logger.info("bound")
    reset(token)
    lines.logger.info("reset")
    bound, after = lines.json()
    assert bound["task_id"] == "t-9" and "task_id" not in after


def test_the_line_s_own_keys_cannot_be_bound() -> None:
    with pytest.raises(ValueError, match="reserved"), log_context(message="x"):
        pass


async def test_asyncio_tasks_do_not_leak_fields_into_each_other(lines: Lines) -> None:
    turn = [asyncio.Event() for _ in range(4)]

    async def work(task_id: str, wait: asyncio.Event, then: asyncio.Event) -> None:
        await wait.wait()
        with log_context(task_id=task_id, step=task_id[-1]):
            then.set()  # the other task binds and logs while this one is bound
            await asyncio.sleep(0)
            lines.logger.info("in %s", task_id)

    turn[0].set()
    await asyncio.gather(work("t-a", turn[0], turn[1]), work("t-b", turn[1], turn[2]))
    lines.logger.info("parent")
    *children, parent = lines.json()
    assert sorted((e["message"], e["task_id"]) for e in children) == [
        ("in t-a", "t-a"),
        ("in t-b", "t-b"),
    ]
    assert "task_id" not in parent


def test_an_exception_line_is_valid_json_with_the_traceback(lines: Lines) -> None:
    try:
        raise ValueError('bad "value"\nsecond line')
    except ValueError:
        lines.logger.exception("decoding failed")
    (entry,) = lines.text().splitlines()  # one physical line, the traceback escaped inside
    parsed = json.loads(entry)
    assert parsed["level"] == "ERROR" and parsed["message"] == "decoding failed"
    assert "Traceback" in str(parsed["exc"]) and 'ValueError: bad "value"' in str(parsed["exc"])


def test_allowed_extras_are_kept_and_unserialisable_values_fall_back_to_repr(
    lines: Lines,
) -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    lines.logger.info(
        "consumed",
        extra={
            "topic": "stepbus.tasks",
            "partition": 3,
            "offset": Opaque(),
            "unlisted": "dropped",
            "extra": {"ratio": float("nan"), "ids": [1, 2], "obj": Opaque()},
        },
    )
    (entry,) = lines.json()
    assert entry["topic"] == "stepbus.tasks" and entry["partition"] == 3
    assert entry["offset"] == "<opaque>"
    assert "unlisted" not in entry
    assert entry["extra"] == {"ratio": "nan", "ids": [1, 2], "obj": "<opaque>"}


def test_a_hostile_repr_a_cycle_or_a_bad_format_string_does_not_break_the_line(
    lines: Lines,
) -> None:
    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    cycle: dict[str, object] = {}
    cycle["self"] = cycle
    lines.logger.info("value %d", "not a number", extra={"key": Hostile(), "extra": cycle})
    lines.logger.info("huge", extra={"tool": "t" * 100_000})
    entry, huge = lines.json()
    assert "value %d" in str(entry["message"])
    assert str(entry["key"]).startswith("<unrepresentable Hostile")
    assert entry["extra"] == {"self": "{'self': {...}}"}
    assert 100_000 > len(str(huge["tool"])) > 100  # clipped, its size noted


def test_the_text_format_is_readable(text_lines: Lines) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("s") as span, log_context(task_id="t-1", step=4):
        text_lines.logger.warning("tool %s slow", "calc")
    text_lines.logger.info("plain")
    correlated, plain = text_lines.text().splitlines()
    trace_prefix = format(span.get_span_context().trace_id, "032x")[:8]
    assert re.fullmatch(
        rf"\d\d:\d\d:\d\d\.\d{{3}} planner WARNING {re.escape(text_lines.logger.name)}: "
        rf"tool calc slow \[task=t-1 step=4 trace={trace_prefix}\]",
        correlated,
    )
    assert plain.endswith(": plain")


def test_configure_logging_writes_json_to_stderr_and_silences_noisy_clients(
    root_restored: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("gateway", level="debug")
    logging.getLogger("stepbus.test").debug("hello")
    entry = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert entry["service"] == "gateway" and entry["message"] == "hello"
    assert root_restored.level == logging.DEBUG
    assert all(logging.getLogger(name).level == logging.WARNING for name in NOISY)


def test_stepbus_log_format_text_is_honoured(
    root_restored: logging.Logger,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STEPBUS_LOG_FORMAT", "text")
    monkeypatch.setenv("STEPBUS_LOG_LEVEL", "WARNING")
    configure_logging("critic")
    logging.getLogger("stepbus.test").info("dropped below the level")
    logging.getLogger("stepbus.test").warning("shown")
    (line,) = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} critic WARNING stepbus\.test: shown", line)


def test_an_unknown_format_falls_back_to_json_with_one_warning(
    root_restored: logging.Logger,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STEPBUS_LOG_FORMAT", "yaml")
    configure_logging("memory")
    logging.getLogger("stepbus.test").info("after")
    warning, after = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert warning["level"] == "WARNING" and "yaml" in str(warning["message"])
    assert after["message"] == "after"


def test_configuring_again_replaces_only_its_own_handler(
    root_restored: logging.Logger,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("planner", fmt="json")
    configure_logging("planner", fmt="text")
    ours = [
        h for h in root_restored.handlers if isinstance(h.formatter, JsonFormatter | TextFormatter)
    ]
    assert len(ours) == 1 and isinstance(ours[0].formatter, TextFormatter)
    assert caplog.handler in root_restored.handlers
    logging.getLogger("stepbus.test").info("once")
    assert capsys.readouterr().err.count("once") == 1
    assert [r.getMessage() for r in caplog.records] == ["once"]


def test_clipping_still_applies_and_the_clipped_line_is_valid_json(
    root_restored: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("tool-executor", fmt="json")
    (ours,) = [h for h in root_restored.handlers if isinstance(h.formatter, JsonFormatter)]
    assert {ClippingFilter, RepeatFilter} <= {type(f) for f in ours.filters}
    hostile = '"\\\n{' * 250_000  # quotes, backslashes and newlines: all escaped in JSON
    try:
        raise ValueError(hostile)
    except ValueError:
        logging.getLogger("stepbus.test").exception("record %s", hostile)
    (line,) = capsys.readouterr().err.splitlines()
    entry = json.loads(line)
    assert len(line) < 20_000
    assert "chars" in str(entry["message"]) and "cut" in str(entry["exc"])
