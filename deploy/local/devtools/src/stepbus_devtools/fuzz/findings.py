"""Families of bad records named after the findings of the robustness issue that are about a
record's shape (1 to 5): null records, deep nesting, keyless records at the size limit, claim
checks that cannot be resolved, poison on ``results``.

Each family is a function ``(forge, n) -> n records`` that cycles through its variants and
over the topics they apply to, so every variant appears once ``n`` reaches their number.
The findings about what a well-formed record may claim are in :mod:`.forgeries`; 8
(snapshots) and 10 (gateway HTTP) are not records and have no family; 11 (bounded logs) is
measured on the whole run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from stepbus_runtime import PayloadRef

from .records import Forge, FuzzRecord, Variant, cycle, dumps, over_topics

__all__ = [
    "NEAR_LIMIT_BYTES",
    "bad_claim_reference",
    "deep_nesting",
    "near_limit_keyless",
    "null_record",
    "results_poison",
]

NEAR_LIMIT_BYTES = 1_048_400
"""Value size of the near-limit records: the broker (1 MiB + 12 bytes per batch) takes it."""

NESTING = 10_000

# -- finding 1: neither key nor value ---------------------------------------------------------


def null_record(forge: Forge, n: int) -> list[FuzzRecord]:
    """Null key and null value (bare, or with headers), on every topic: the dead letter says
    ``stepbus.origin.null``; and its sibling, a keyed null value (a tombstone)."""

    def make(variant: str) -> Callable[[str], FuzzRecord]:
        def build(topic: str) -> FuzzRecord:
            partition = forge.rng.randrange(forge.partitions[topic])
            if variant == "keyed_null_value":
                subject = forge.subject()
                return forge.record(
                    "null_record", variant, "1", topic, None, fresh=[subject], partition=partition
                )
            headers = [("fuzz", b"null")] if variant == "null_with_headers" else []
            return forge.record(
                "null_record",
                variant,
                "1",
                topic,
                None,
                key=None,
                headers=headers,
                partition=partition,
                dlq_headers=(("stepbus.origin.null", "true"),),
            )

        return build

    variants = ["null_key_null_value", "null_with_headers", "keyed_null_value"]
    return cycle(n, over_topics([make(v) for v in variants]))


# -- finding 2: deeply nested JSON ------------------------------------------------------------


def _nested(kind: str) -> str:
    if kind == "arrays":
        return "[" * NESTING + "]" * NESTING
    return '{"a":' * (NESTING // 2) + "null" + "}" * (NESTING // 2)


def deep_nesting(forge: Forge, n: int) -> list[FuzzRecord]:
    """~20 KB of nesting, keyed: under ``claimcheck`` (the finding), bare, inside ``data`` or
    an extension attribute of an otherwise valid event."""

    def claim_arrays(topic: str) -> FuzzRecord:
        subject = forge.subject()
        value = ('{"claimcheck": ' + _nested("arrays") + "}").encode()
        return forge.record("deep_nesting", "claimcheck_arrays", "2", topic, value, fresh=[subject])

    def claim_objects(topic: str) -> FuzzRecord:
        subject = forge.subject()
        event = forge.envelope(forge.claim_type(topic), subject)
        text = json.dumps({**event, "claimcheck": "@@"}).replace('"@@"', _nested("objects"))
        return forge.record(
            "deep_nesting", "claimcheck_objects", "2", topic, text.encode(), fresh=[subject]
        )

    def bare(kind: str) -> Callable[[str], FuzzRecord]:
        def make(topic: str) -> FuzzRecord:
            subject = forge.subject()
            return forge.record(
                "deep_nesting", f"bare_{kind}", "2", topic, _nested(kind).encode(), fresh=[subject]
            )

        return make

    def inside(where: str) -> Callable[[str], FuzzRecord]:
        def make(topic: str) -> FuzzRecord:
            subject = forge.subject()
            event = forge.event(topic, subject)
            if where == "data":
                event["data"]["metadata"] = "@@"
            else:
                event["nested"] = "@@"
            text = json.dumps(event).replace('"@@"', _nested("arrays"))
            return forge.record(
                "deep_nesting", f"in_{where}", "2", topic, text.encode(), fresh=[subject]
            )

        return make

    return cycle(
        n,
        over_topics(
            [
                claim_arrays,
                claim_objects,
                bare("arrays"),
                bare("objects"),
                inside("data"),
                inside("extension"),
            ]
        ),
    )


# -- finding 3: keyless, near the size limit --------------------------------------------------


def near_limit_keyless(forge: Forge, n: int) -> list[FuzzRecord]:
    """Keyless values of exactly :data:`NEAR_LIMIT_BYTES`: their dead letters must be cut to
    fit (``stepbus.truncated=true``, ``stepbus.origin.size``)."""
    expected = (("stepbus.truncated", "true"), ("stepbus.origin.size", str(NEAR_LIMIT_BYTES)))

    def padded_json(topic: str) -> FuzzRecord:
        head, tail = b'{"pad":"', b'"}'
        value = head + b"a" * (NEAR_LIMIT_BYTES - len(head) - len(tail)) + tail
        return forge.record(
            "near_limit_keyless", "json_padding", "3", topic, value, key=None, dlq_headers=expected
        )

    def random_bytes(topic: str) -> FuzzRecord:
        value = forge.rng.randbytes(NEAR_LIMIT_BYTES)
        return forge.record(
            "near_limit_keyless", "random_bytes", "3", topic, value, key=None, dlq_headers=expected
        )

    def padded_event(topic: str) -> FuzzRecord:
        subject = forge.subject()
        event = forge.event(topic, subject)
        event["padding"] = ""
        size = len(dumps(event))
        event["padding"] = "p" * (NEAR_LIMIT_BYTES - size)
        value = dumps(event)
        assert len(value) == NEAR_LIMIT_BYTES
        return forge.record(
            "near_limit_keyless",
            "padded_event",
            "3",
            topic,
            value,
            key=None,
            fresh=[subject],
            dlq_headers=expected,
        )

    return cycle(n, over_topics([padded_json, random_bytes, padded_event]))


# -- finding 4: claim-check references that cannot be resolved --------------------------------


def _ref(ref: PayloadRef, **changes: Any) -> dict[str, Any]:
    return {**ref.model_dump(mode="json"), **changes}


def bad_claim_reference(forge: Forge, n: int) -> list[FuzzRecord]:
    """Claims whose reference is malformed, points nowhere, or to the wrong bytes."""
    payloads = forge.topics.payloads
    real, garbage = forge.payloads["json"], forge.payloads["garbage"]

    def references(topic: str) -> dict[str, dict[str, Any] | Any]:
        return {
            "partition_999": {
                "id": forge.hex(32),
                "topic": payloads,
                "partition": 999,
                "offsets": [0],
                "size": 10,
                "sha256": forge.hex(64),
            },
            "empty_id": {"id": ""},
            "offsets_beyond_end": _ref(real, offsets=[10**12]),
            "wrong_topic": _ref(real, topic=forge.topics.name(topic)),
            "foreign_topic": _ref(real, topic="not-stepbus.payloads"),
            "sha_mismatch": _ref(real, sha256=forge.hex(64)),
            "size_mismatch": _ref(real, size=real.size + 1),
            "other_payload_id": _ref(real, id=forge.hex(32)),
            "not_json_payload": _ref(garbage),
            "negative_offset": _ref(real, offsets=[-1]),
            "chunks_do_not_fit_size": _ref(real, size=10**7),
            "not_an_object": [real.partition, *real.offsets],
        }

    def variant(name: str) -> Callable[[str], FuzzRecord]:
        def make(topic: str) -> FuzzRecord:
            subject = forge.subject()
            claim = {**forge.envelope(forge.claim_type(topic), subject, tenant="t")}
            claim["source"] = "urn:x"
            claim["claimcheck"] = references(topic)[name]
            return forge.record(
                "bad_claim_reference", name, "4", topic, dumps(claim), fresh=[subject]
            )

        return make

    names = list(references("tasks"))
    return cycle(n, over_topics([variant(name) for name in names]))


# -- finding 5: bad records on results --------------------------------------------------------


def results_poison(forge: Forge, n: int) -> list[FuzzRecord]:
    """What the gateway's results feed must dead-letter instead of skipping: the finding's
    malformed claim, invalid JSON, schema-invalid progress and terminal events."""
    first = [True]

    def malformed_claim() -> FuzzRecord:
        if first[0]:  # the finding's record as reported, once
            first[0] = False
            value = (
                b'{"specversion":"1.0","type":"stepbus.task.progress","source":"urn:x",'
                b'"id":"p1","subject":"poison-1","tenant":"t","claimcheck":{"id":""}}'
            )
            return forge.record(
                "results_poison",
                "malformed_claim",
                "5",
                "results",
                value,
                key=b"poison-1",
                fresh=["poison-1"],
            )
        subject = forge.subject()
        claim = {**forge.envelope("stepbus.task.progress", subject, "t"), "claimcheck": {"id": ""}}
        return forge.record(
            "results_poison", "malformed_claim", "5", "results", dumps(claim), fresh=[subject]
        )

    def invalid_json() -> FuzzRecord:
        subject = forge.subject()
        text = dumps(forge.event("results", subject))
        return forge.record(
            "results_poison",
            "invalid_json",
            "5",
            "results",
            text[: len(text) // 2],
            fresh=[subject],
        )

    def mutated(name: str, change: Callable[[dict[str, Any]], None]) -> Variant:
        def make() -> FuzzRecord:
            subject = forge.subject()
            event = forge.event("results", subject)
            change(event)
            return forge.record(
                "results_poison", name, "5", "results", dumps(event), fresh=[subject]
            )

        return make

    def terminal(name: str, type_: str, data: dict[str, Any]) -> Variant:
        def make() -> FuzzRecord:
            subject = forge.subject()
            event = {**forge.envelope(type_, subject), "data": data}
            return forge.record(
                "results_poison", name, "5", "results", dumps(event), fresh=[subject]
            )

        return make

    return cycle(
        n,
        [
            malformed_claim,
            invalid_json,
            mutated("progress_bad_stage", lambda e: e["data"].update(stage="bogus")),
            mutated("progress_negative_step", lambda e: e["data"].update(step=-1)),
            mutated("progress_without_data", lambda e: e.pop("data")),
            terminal("completed_without_output", "stepbus.task.completed", {"steps": 1}),
            terminal(
                "failed_unknown_reason", "stepbus.task.failed", {"reason": "nope", "message": "x"}
            ),
            terminal("not_a_result_type", "stepbus.llm.decided", {"step": 0, "model": "m"}),
        ],
    )
