"""Claim records: what is (and is not) recognised as a claim check."""

from __future__ import annotations

import json

import pytest
from stepbus_contracts import ToolCallCompleted, ToolCallCompletedData
from stepbus_runtime import ClaimCheckError, PayloadRef, encode
from stepbus_runtime.claimcheck import claim_reference, claim_value

REF = PayloadRef(
    id="0" * 32, topic="stepbus.payloads", partition=2, offsets=[7], size=10, sha256="a" * 64
)


def event(output: str) -> ToolCallCompleted:
    data = ToolCallCompletedData(step=0, call_index=0, name="t", idempotency_key="k", output=output)
    return ToolCallCompleted(subject="task-1", tenant="acme", data=data)


def test_a_claim_keeps_the_attributes_drops_data_and_round_trips_its_reference() -> None:
    original = event("x")
    value = claim_value(original, REF)
    claim = json.loads(value)
    assert "data" not in claim
    assert claim["type"] == "stepbus.tool.call_completed"
    assert (claim["id"], claim["subject"], claim["tenant"]) == (original.id, "task-1", "acme")
    assert claim_reference(value) == REF


def test_an_event_that_mentions_claimcheck_in_its_data_is_not_a_claim() -> None:
    assert claim_reference(encode(event('{"claimcheck": {"id": "p1"}}'))) is None
    assert claim_reference(b'{not json "claimcheck"') is None
    assert claim_reference(None) is None


def test_a_malformed_reference_is_a_claim_check_error() -> None:
    with pytest.raises(ClaimCheckError, match="malformed claim check reference"):
        claim_reference(json.dumps({"type": "t", "claimcheck": {"id": "p1"}}).encode())
