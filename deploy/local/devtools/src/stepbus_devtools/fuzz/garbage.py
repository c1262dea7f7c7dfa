"""Generic garbage, on every fuzzed topic: bytes, broken JSON, wrong shapes, odd keys and
headers. Every record here is invalid for its topic beyond doubt (a lenient parser could
not read it as a valid event), so each must be dead-lettered by the topic's consumer.

Each family is a function ``(forge, n) -> n records``, like those of :mod:`.findings`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .records import Forge, FuzzRecord, cycle, dumps, over_topics

__all__ = [
    "big_value",
    "empty_value",
    "huge_headers",
    "huge_key",
    "non_object_json",
    "non_utf8_key",
    "random_bytes",
    "schema_invalid",
    "truncated_json",
    "unicode_oddities",
    "wrong_type",
]

_WRONG_TYPES = {
    "tasks": [
        "stepbus.llm.decided",
        "stepbus.task.progress",
        "stepbus.tool.call_requested",
        "stepbus.task.completed",
    ],
    "planner.history": [
        "stepbus.task.submitted",
        "stepbus.task.progress",
        "stepbus.tool.call_requested",
    ],
    "tool.calls": ["stepbus.task.submitted", "stepbus.tool.call_completed", "stepbus.llm.decided"],
    "results": [
        "stepbus.task.submitted",
        "stepbus.llm.decided",
        "stepbus.task.accepted",
        "stepbus.tool.call_requested",
    ],
}
"""Types that exist but do not belong on the topic (terminal types belong on two)."""

_NOT_TYPES = [
    "com.example.other",
    "STEPBUS.TASK.SUBMITTED",
    "stepbus.task.submitted ",
    "stepbus.task.\u0455ubmitted",
    "",
    "stepbus.tool.registered",
]
"""Types of no topic (case, a trailing space, a Cyrillic 's', empty, the catalog's type)."""

Mutation = Callable[[dict[str, Any]], None]


def _garbage(
    forge: Forge, family: str, topic: str, variant: str, value: bytes, **extra: Any
) -> FuzzRecord:
    fresh = extra.pop("fresh", None)
    if fresh is None:
        fresh = [forge.subject()]
    return forge.record(family, variant, "garbage", topic, value, fresh=fresh, **extra)


def random_bytes(forge: Forge, n: int) -> list[FuzzRecord]:
    """Random bytes, keyed or keyless, 1 byte to 4 KB."""

    def make(keyless: bool) -> Callable[[str], FuzzRecord]:
        def build(topic: str) -> FuzzRecord:
            value = forge.rng.randbytes(forge.rng.randint(1, 4096))
            if keyless:
                return forge.record("random_bytes", "keyless", "garbage", topic, value, key=None)
            return _garbage(forge, "random_bytes", topic, "keyed", value)

        return build

    return cycle(n, over_topics([make(False), make(True)]))


def truncated_json(forge: Forge, n: int) -> list[FuzzRecord]:
    """A valid event of the topic cut short (a strict prefix of an object is never JSON), or
    followed by more: garbage, or a second event."""

    def make(variant: str) -> Callable[[str], FuzzRecord]:
        def build(topic: str) -> FuzzRecord:
            subject = forge.subject()
            text = dumps(forge.event(topic, subject))
            if variant == "cut":
                value = text[: forge.rng.randint(1, len(text) - 1)]
            elif variant == "trailing_garbage":
                value = text + b"}]xyz"
            else:
                value = text + dumps(forge.event(topic, subject))
            return _garbage(forge, "truncated_json", topic, variant, value, fresh=[subject])

        return build

    variants = ["cut", "trailing_garbage", "two_events"]
    return cycle(n, over_topics([make(v) for v in variants]))


def wrong_type(forge: Forge, n: int) -> list[FuzzRecord]:
    """Well-formed events whose type belongs to another topic, or to none."""

    def make(foreign: bool) -> Callable[[str], FuzzRecord]:
        def build(topic: str) -> FuzzRecord:
            subject = forge.subject()
            event = forge.event(topic, subject)
            choices = _WRONG_TYPES[topic] if foreign else _NOT_TYPES
            event["type"] = forge.rng.choice(choices)
            variant = "other_topic_type" if foreign else "unknown_type"
            return _garbage(forge, "wrong_type", topic, variant, dumps(event), fresh=[subject])

        return build

    return cycle(n, over_topics([make(True), make(False)]))


def non_object_json(forge: Forge, n: int) -> list[FuzzRecord]:
    """Valid JSON that is not an object: arrays (of events too), strings, numbers, null."""

    def make(variant: str) -> Callable[[str], FuzzRecord]:
        def build(topic: str) -> FuzzRecord:
            subject = forge.subject()
            value = {
                "array_of_event": dumps([forge.event(topic, subject)]),
                "empty_array": b"[]",
                "string": json.dumps(json.dumps(forge.event(topic, subject))).encode(),
                "number": b"42",
                "huge_number": b"1e999",
                "null": b"null",
                "boolean": b"true",
            }[variant]
            return _garbage(forge, "non_object_json", topic, variant, value, fresh=[subject])

        return build

    variants = [
        "array_of_event",
        "empty_array",
        "string",
        "number",
        "huge_number",
        "null",
        "boolean",
    ]
    return cycle(n, over_topics([make(v) for v in variants]))


def _schema_mutations(forge: Forge) -> dict[str, Mutation]:
    return {
        "subject_with_spaces": lambda e: e.update(subject="not a task id"),
        "subject_too_long": lambda e: e.update(subject="s" * 300),
        "tenant_invalid": lambda e: e.update(tenant="a tenant/with spaces"),
        "tenant_empty": lambda e: e.update(tenant=""),
        "id_empty": lambda e: e.update(id=""),
        "id_too_long": lambda e: e.update(id="i" * 300),
        "specversion_2": lambda e: e.update(specversion="2.0"),
        "specversion_number": lambda e: e.update(specversion=1.0),
        "time_invalid": lambda e: e.update(time="yesterday"),
        "data_null": lambda e: e.update(data=None),
        "data_string": lambda e: e.update(data="data"),
        "data_missing": lambda e: e.pop("data"),
        "data_field_wrong_type": lambda e: e["data"].update(
            {next(iter(e["data"])): {"not": "this"}}
        ),
        "nan_for_int": lambda e: e["data"].update(step="@@NAN@@", max_iterations="@@NAN@@"),
        "negative_int": lambda e: e["data"].update(step=-5, max_iterations=-5),
    }


def schema_invalid(forge: Forge, n: int) -> list[FuzzRecord]:
    """A valid event of the topic with one thing broken (the key is its original subject)."""
    names = list(_schema_mutations(forge))

    def make(name: str) -> Callable[[str], FuzzRecord]:
        def build(topic: str) -> FuzzRecord:
            subject = forge.subject()
            event = forge.event(topic, subject)
            _schema_mutations(forge)[name](event)
            value = dumps(event).replace(b'"@@NAN@@"', b"NaN")
            return forge.record(
                "schema_invalid", name, "garbage", topic, value, key=subject, fresh=[subject]
            )

        return build

    return cycle(n, over_topics([make(name) for name in names]))


def empty_value(forge: Forge, n: int) -> list[FuzzRecord]:
    """Keyed records whose value is empty or whitespace."""

    def make(value: bytes, variant: str) -> Callable[[str], FuzzRecord]:
        def build(topic: str) -> FuzzRecord:
            return _garbage(forge, "empty_value", topic, variant, value)

        return build

    return cycle(
        n, over_topics([make(b"", "empty"), make(b"   ", "spaces"), make(b"\n\t", "newline")])
    )


def huge_headers(forge: Forge, n: int) -> list[FuzzRecord]:
    """Broken values with many, big, unicode, spoofed ``stepbus.*`` or broken trace headers:
    the dead letter keeps at most 16 KiB of them and its own ``stepbus.*`` headers."""

    def headers(variant: str) -> list[tuple[str, bytes]]:
        rng = forge.rng
        return {
            "many": [(f"h{i}", rng.randbytes(8)) for i in range(2000)],
            "one_big": [("big", b"b" * 64 * 1024)],
            "unicode_names": [
                ("ключ-🔑", "значение".encode()),
                ("\u200b", b"\xff\xfe"),
                ("名前", b""),
            ],
            "spoofed_stepbus": [
                ("stepbus.origin.topic", b"elsewhere"),
                ("stepbus.origin.offset", b"-1"),
                ("stepbus.service", b"nobody"),
                ("stepbus.error", b"fine"),
            ],
            "broken_traceparent": [
                ("traceparent", b"00-zz-zz-01"),
                ("tracestate", rng.randbytes(64)),
            ],
            "duplicate_names": [("x", b"1"), ("x", b"2"), ("x", b"3")],
        }[variant]

    def make(variant: str) -> Callable[[str], FuzzRecord]:
        def build(topic: str) -> FuzzRecord:
            subject = forge.subject()
            value = dumps(forge.event(topic, subject))[:-1]  # not JSON: the end is cut
            return _garbage(
                forge,
                "huge_headers",
                topic,
                variant,
                value,
                fresh=[subject],
                headers=headers(variant),
            )

        return build

    variants = [
        "many",
        "one_big",
        "unicode_names",
        "spoofed_stepbus",
        "broken_traceparent",
        "duplicate_names",
    ]
    return cycle(n, over_topics([make(v) for v in variants]))


def non_utf8_key(forge: Forge, n: int) -> list[FuzzRecord]:
    """Keys that are not UTF-8, with a valid event (whose subject they cannot be) or bytes."""

    def make(valid_value: bool) -> Callable[[str], FuzzRecord]:
        def build(topic: str) -> FuzzRecord:
            subject = forge.subject()
            key = b"\xff\xfe" + forge.rng.randbytes(14) + b"\xc0\xaf"
            if valid_value:
                value, variant = dumps(forge.event(topic, subject)), "valid_event"
            else:
                value, variant = forge.rng.randbytes(64), "random_value"
            return _garbage(forge, "non_utf8_key", topic, variant, value, key=key, fresh=[subject])

        return build

    return cycle(n, over_topics([make(True), make(False)]))


def huge_key(forge: Forge, n: int) -> list[FuzzRecord]:
    """A 100 KB key with a valid event: the dead letter keeps 1 KiB of it."""

    def build(topic: str) -> FuzzRecord:
        subject = forge.subject()
        key = (subject + "-" + "k" * 100_000).encode()
        return _garbage(
            forge,
            "huge_key",
            topic,
            "100kb",
            dumps(forge.event(topic, subject)),
            key=key,
            fresh=[subject],
            dlq_headers=(("stepbus.origin.key.size", str(len(key))),),
        )

    return cycle(n, over_topics([build]))


def unicode_oddities(forge: Forge, n: int) -> list[FuzzRecord]:
    """Unicode that must not be read as a valid event: emoji or zero-width characters in the
    subject, invalid UTF-8 in a string, UTF-16, a byte-order mark, NUL bytes, overlong
    encodings of attribute names."""

    def make(variant: str) -> Callable[[str], FuzzRecord]:
        def build(topic: str) -> FuzzRecord:
            subject = forge.subject()
            event = forge.event(topic, subject)
            text = dumps(event)
            if variant == "emoji_subject":
                value = dumps({**event, "subject": subject + "-🦄"})
            elif variant == "zero_width_subject":
                value = dumps({**event, "subject": subject + "\u200b"})
            elif variant == "invalid_utf8_string":
                value = text.replace(
                    b'"' + subject.encode() + b'"', b'"' + subject.encode() + b'\xff\xfe"'
                )
            elif variant == "utf16":
                value = text.decode().encode("utf-16")
            elif variant == "bom":
                value = b"\xef\xbb\xbf" + text
            elif variant == "nul_bytes":
                value = text[:10] + b"\x00" * 8 + text[10:]
            else:  # overlong "/" before the name of the type attribute
                value = text.replace(b'"type"', b'"\xc0\xaftype"', 1)
            return _garbage(forge, "unicode_oddities", topic, variant, value, fresh=[subject])

        return build

    variants = [
        "emoji_subject",
        "zero_width_subject",
        "invalid_utf8_string",
        "utf16",
        "bom",
        "nul_bytes",
        "overlong_name",
    ]
    return cycle(n, over_topics([make(v) for v in variants]))


def big_value(forge: Forge, n: int) -> list[FuzzRecord]:
    """Keyed values of 100 to 300 KB that are not events (a big array of numbers)."""

    def build(topic: str) -> FuzzRecord:
        size = forge.rng.randint(100_000, 300_000)
        value = b"[" + b"1," * (size // 2) + b"1]"
        return _garbage(forge, "big_value", topic, "number_array", value)

    return cycle(n, over_topics([build]))
