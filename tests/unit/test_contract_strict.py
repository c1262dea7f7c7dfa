"""The published JSON Schemas and ``decode`` agree on every event of the golden corpus.

``tests/golden/contract/valid/*.json`` and ``invalid/*.json`` hold raw record values, named
``<channel>-<event>[-<why>].json`` after the AsyncAPI channel they are published on. Each is
checked two ways that must agree: the channel's messages in ``schemas/`` (JSON Schema 2020-12,
with ``date-time`` format checking and ECMA-262 patterns, as the standard defines them) and
``decode`` with the topic's adapter.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import regress
from jsonschema import Draft202012Validator, ValidationError, validators
from pydantic import TypeAdapter
from stepbus_contracts import (
    audit_adapter,
    critic_requests_adapter,
    history_adapter,
    memory_requests_adapter,
    results_adapter,
    tasks_adapter,
    tool_calls_adapter,
)
from stepbus_runtime.codec import decode, encode
from stepbus_runtime.errors import DecodeError

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"
CORPUS = REPO / "tests" / "golden" / "contract"

# -- the oracle: the published documents, read by a standard validator ------------------

CHANNEL_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    "tasks": tasks_adapter,
    "results": results_adapter,
    "planner_history": history_adapter,
    "tool_calls": tool_calls_adapter,
    "memory_requests": memory_requests_adapter,
    "critic_requests": critic_requests_adapter,
    "audit": audit_adapter,
}
"""The adapter ``decode`` uses for each AsyncAPI channel."""


def _load_channels() -> dict[str, dict[str, dict[str, Any]]]:
    asyncapi = json.loads((SCHEMAS / "asyncapi.json").read_text())
    messages = asyncapi["components"]["messages"]
    channels = {}
    for channel_id, channel in asyncapi["channels"].items():
        events = {}
        for ref in channel["messages"].values():
            message = messages[ref["$ref"].rsplit("/", 1)[1]]
            events[message["name"]] = json.loads((SCHEMAS / message["payload"]["$ref"]).read_text())
        channels[channel_id] = events
    return channels


CHANNEL_SCHEMAS = _load_channels()
CHANNEL_TYPES = {channel: sorted(events) for channel, events in CHANNEL_SCHEMAS.items()}
"""Event types per channel, as ``schemas/asyncapi.json`` lists them."""


@functools.cache
def _ecma_regex(pattern: str) -> regress.Regex:
    return regress.Regex(pattern, "u")


def _ecma_pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    """``pattern`` as JSON Schema defines it (ECMA-262): jsonschema's Python ``re`` lets
    ``$`` match before a final newline, so ``"task-42\\n"`` would pass there."""
    if validator.is_type(instance, "string") and _ecma_regex(pattern).find(instance) is None:
        yield ValidationError(f"{instance[:80]!r} does not match {pattern!r}")


_Validator = validators.extend(Draft202012Validator, {"pattern": _ecma_pattern})
_EVENT_VALIDATORS = {
    (channel, name): _Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    for channel, events in CHANNEL_SCHEMAS.items()
    for name, schema in events.items()
}


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _load_json(value: bytes) -> Any:
    """Strict JSON (RFC 8259, no NaN or Infinity) in UTF-8, without lone surrogates."""
    document = json.loads(value.decode("utf-8"), parse_constant=_reject_constant)
    json.dumps(document, ensure_ascii=False).encode("utf-8")  # a lone surrogate raises
    return document


def schema_errors(channel: str, value: bytes) -> list[str]:
    """Why the channel's published schemas refuse ``value``; empty when one accepts it."""
    try:
        document = _load_json(value)
    except ValueError as exc:
        return [f"not JSON: {exc}"]
    # A channel's messages are the anyOf of its event schemas (tested one by one: an anyOf of
    # schemas carrying their own $schema would be read by the stock validator class).
    if any(_EVENT_VALIDATORS[channel, name].is_valid(document) for name in CHANNEL_TYPES[channel]):
        return []
    kind = document.get("type") if isinstance(document, dict) else None
    validator = _EVENT_VALIDATORS.get((channel, kind)) if isinstance(kind, str) else None
    if validator is None:
        return [f"$.type: not an event of {channel}"]
    return sorted(
        f"{error.json_path}: {error.validator} {error.validator_value}"
        if error.validator == "format"
        else f"{error.json_path}: {error.validator}"
        for error in validator.iter_errors(document)
    )


# -- the corpus ---------------------------------------------------------------------------
VALID = sorted((CORPUS / "valid").glob("*.json"))
INVALID = sorted((CORPUS / "invalid").glob("*.json"))

KNOWN_DIFFERENCES = {
    "tasks-submitted-max_iterations_integral_float.json": "JSON Schema calls 8.0 an integer "
    "(a number with no fraction); decode takes integers written as integers only",
}
"""Cases where the schema accepts what ``decode`` refuses, each with the reason."""


def _channel(path: Path) -> str:
    return path.name.split("-", 1)[0]


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_events_pass_both(path: Path) -> None:
    value = path.read_bytes()
    assert schema_errors(_channel(path), value) == []
    event = decode(CHANNEL_ADAPTERS[_channel(path)], value)
    assert event.type == json.loads(value)["type"]
    again = encode(event)
    assert schema_errors(_channel(path), again) == []
    assert decode(CHANNEL_ADAPTERS[_channel(path)], again) == event


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_events_fail_both(path: Path) -> None:
    value = path.read_bytes()
    with pytest.raises(DecodeError):
        decode(CHANNEL_ADAPTERS[_channel(path)], value)
    if path.name in KNOWN_DIFFERENCES:
        assert schema_errors(_channel(path), value) == [], "the difference is gone: drop it"
    else:
        assert schema_errors(_channel(path), value) != []


def test_every_channel_has_an_adapter() -> None:
    assert set(CHANNEL_ADAPTERS) == set(CHANNEL_SCHEMAS)


def test_the_corpus_covers_every_event_of_every_channel() -> None:
    def types(paths: list[Path]) -> set[tuple[str, Any]]:
        found = set()
        for path in paths:
            try:
                found.add((_channel(path), json.loads(path.read_bytes()).get("type")))
            except (ValueError, AttributeError):
                continue  # not JSON, or not an object: covered by name only
        return found

    expected = {(channel, name) for channel, names in CHANNEL_TYPES.items() for name in names}
    assert expected - types(VALID) == set()
    assert expected - types(INVALID) == set()


@pytest.mark.parametrize(
    "why",
    [
        "missing_id",
        "missing_source",
        "missing_specversion",
        "max_iterations_string",
        "max_iterations_true",
        "deadline_seconds_string",
        "source_1mb",
        "extension_1mb",
        "extension_object",
        "subject_with_slash",
        "metadata_33_entries",
    ],
)
def test_the_reviewed_attacks_are_in_the_corpus(why: str) -> None:
    assert (CORPUS / "invalid" / f"tasks-submitted-{why}.json").exists()
    assert (CORPUS / "invalid" / "planner_history-accepted-max_iterations_10e9.json").exists()


def test_decode_names_what_is_missing() -> None:
    value = json.loads((CORPUS / "valid" / "tasks-submitted.json").read_bytes())
    del value["source"]
    with pytest.raises(DecodeError, match=r"missing CloudEvents attribute.*source"):
        decode(CHANNEL_ADAPTERS["tasks"], json.dumps(value).encode())


def test_the_oracle_checks_date_time_formats() -> None:
    """February 30 matches the pattern; only the ``date-time`` format refuses it."""
    assert schema_errors(
        "tasks", (CORPUS / "invalid" / "tasks-submitted-time_february_30.json").read_bytes()
    ) == ["$.time: format date-time"]


@pytest.mark.parametrize(
    "path", sorted((REPO / "tests" / "golden").glob("*.json")), ids=lambda p: p.name
)
def test_the_public_examples_pass_the_schemas(path: Path) -> None:
    assert schema_errors(path.name.split("-", 1)[0], path.read_bytes()) == []
