"""Properties of the wire contract, over generated events.

Every event our models can build encodes to a record that ``decode`` and the published schemas
both accept, and that decodes to an equal event; and any mutation of such a record (an attribute
dropped, a value replaced by another JSON value, a string oversized, an attribute added) is
accepted by ``decode`` exactly when the schemas accept it.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, get_args

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stepbus_contracts import (
    MAX_DEADLINE_SECONDS,
    MAX_DURATION_MS,
    MAX_ITERATIONS,
    MAX_TOKEN_BUDGET,
    ApprovalDecided,
    ApprovalDecidedData,
    ApprovalRequested,
    ApprovalRequestedData,
    ApprovalResolved,
    ApprovalResolvedData,
    Clearance,
    CloudEvent,
    CriticPolicy,
    CriticRound,
    CriticSummary,
    CritiqueCompleted,
    CritiqueCompletedData,
    CritiqueFailed,
    CritiqueFailedData,
    CritiqueFailure,
    CritiqueRequested,
    CritiqueRequestedData,
    FailureReason,
    InjectionFlagged,
    InjectionFlaggedData,
    LlmDecided,
    LlmDecidedData,
    MemoryDocumentAdded,
    MemoryDocumentAddedData,
    MemoryForgetRequested,
    MemoryForgetRequestedData,
    MemoryHit,
    MemoryKind,
    MemoryRecalled,
    MemoryRecalledData,
    MemoryRecallRequested,
    MemoryRecallRequestedData,
    MemoryRememberRequested,
    MemoryRememberRequestedData,
    MemoryTurn,
    PlannedToolCall,
    PolicyDecided,
    PolicyDecidedData,
    RecallStatus,
    TaskAccepted,
    TaskAcceptedData,
    TaskCancelled,
    TaskCancelledData,
    TaskCancelRequested,
    TaskCancelRequestedData,
    TaskCompleted,
    TaskCompletedData,
    TaskFailed,
    TaskFailedData,
    TaskProgress,
    TaskProgressData,
    TaskSubmitted,
    TaskSubmittedData,
    TokenUsage,
    ToolCallCompleted,
    ToolCallCompletedData,
    ToolCallFailed,
    ToolCallFailedData,
    ToolCallHeld,
    ToolCallHeldData,
    ToolCallRequested,
    ToolCallRequestedData,
)
from stepbus_runtime.codec import decode, encode
from stepbus_runtime.errors import DecodeError

from .test_contract_strict import CHANNEL_ADAPTERS, CHANNEL_TYPES, schema_errors

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- valid events -----------------------------------------------------------------------

task_ids = st.from_regex(r"[A-Za-z0-9._:@-]{1,40}", fullmatch=True)
tool_names = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
short_text = st.text(max_size=30)
counts = st.integers(min_value=0, max_value=10**6)
times = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
    ),
)
metadata = st.dictionaries(st.text(min_size=1, max_size=20), short_text, max_size=4)
usage = st.builds(TokenUsage, prompt_tokens=counts, completion_tokens=counts)
token_budgets = st.none() | st.integers(min_value=1, max_value=MAX_TOKEN_BUDGET)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | short_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(short_text, inner, max_size=3),
    max_leaves=8,
)
arguments = st.dictionaries(short_text, json_values, max_size=3)
durations = st.floats(min_value=0, max_value=MAX_DURATION_MS)
extension_names = st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True).filter(
    lambda name: name not in CloudEvent.model_fields
)
extension_values = (
    st.text(max_size=40) | st.integers(min_value=-(2**31), max_value=2**31 - 1) | st.booleans()
)
optional_ids = st.none() | st.text(min_size=1, max_size=20)
"""A session or user id where one may be given (never empty)."""
memory_turns = st.builds(
    MemoryTurn,
    role=st.sampled_from(["user", "assistant", "tool"]),
    content=short_text,
    task_id=task_ids,
    at=times,
)
memory_hits = st.builds(
    MemoryHit,
    id=st.text(max_size=40),
    text=short_text,
    score=st.floats(min_value=-1, max_value=1),
    kind=st.sampled_from(get_args(MemoryKind)),
    source=short_text,
    title=st.none() | short_text,
    at=times,
)
scores = st.floats(min_value=0, max_value=1)
critic_policies = st.none() | st.builds(
    CriticPolicy,
    enabled=st.booleans(),
    threshold=scores,
    max_revisions=st.integers(min_value=0, max_value=10),
)
critique_refs = {
    "kind": st.sampled_from(["answer", "tool_call"]),
    "step": counts,
    "call_index": st.none() | st.integers(min_value=0, max_value=50),
    "model": st.none() | short_text,
    "usage": usage,
    "attempts": st.integers(min_value=0, max_value=10),
    "duration_ms": durations,
}

tool_call_refs = {
    "step": counts,
    "call_index": st.integers(min_value=0, max_value=50),
    "name": short_text,
    "idempotency_key": short_text,
}

roles = st.lists(st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True), max_size=3)
call_refs = {
    "step": counts,
    "call_index": st.integers(min_value=0, max_value=50),
    "tool": short_text,
}
approval_refs = {**call_refs, "approval_id": st.text(min_size=1, max_size=20)}

DATA = {
    TaskSubmitted: st.builds(
        TaskSubmittedData,
        input=st.text(min_size=1, max_size=50),
        session_id=optional_ids,
        user_id=optional_ids,
        tools=st.none() | st.lists(tool_names, max_size=4),
        max_iterations=st.integers(min_value=1, max_value=MAX_ITERATIONS),
        deadline_seconds=st.floats(min_value=0, max_value=MAX_DEADLINE_SECONDS, exclude_min=True),
        token_budget=token_budgets,
        critic=critic_policies,
        roles=roles,
        metadata=metadata,
    ),
    TaskCancelRequested: st.builds(TaskCancelRequestedData, reason=short_text),
    TaskProgress: st.builds(
        TaskProgressData,
        step=counts,
        stage=st.sampled_from(
            ["accepted", "memory", "thought", "action", "observation", "critique", "approval"]
        ),
        message=short_text,
        tool=st.none() | short_text,
    ),
    TaskCompleted: st.builds(
        TaskCompletedData,
        output=short_text,
        steps=counts,
        usage=usage,
        metadata=metadata,
        input=st.none() | st.text(max_size=50),
        session_id=optional_ids,
        user_id=optional_ids,
        observations=st.lists(short_text, max_size=4),
        critic=st.none()
        | st.builds(
            CriticSummary,
            judged=st.booleans(),
            score=st.none() | scores,
            revisions=st.integers(min_value=0, max_value=10),
            rounds=st.lists(
                st.builds(CriticRound, step=counts, score=st.none() | scores, feedback=short_text),
                max_size=3,
            ),
        ),
    ),
    TaskFailed: st.builds(
        TaskFailedData,
        reason=st.sampled_from(get_args(FailureReason)),
        message=short_text,
        steps=counts,
        usage=usage,
        metadata=metadata,
    ),
    TaskCancelled: st.builds(TaskCancelledData, reason=short_text, steps=counts),
    TaskAccepted: st.builds(
        TaskAcceptedData,
        input=st.text(min_size=1, max_size=50),
        session_id=optional_ids,
        user_id=optional_ids,
        memory=st.booleans(),
        critic=critic_policies,
        roles=roles,
        tools=st.lists(tool_names, max_size=4),
        max_iterations=st.integers(min_value=1, max_value=MAX_ITERATIONS),
        deadline_at=times,
        token_budget=token_budgets,
        metadata=metadata,
        submitted_id=st.text(min_size=1, max_size=40),
        model=st.text(min_size=1, max_size=30),
    ),
    LlmDecided: st.builds(
        LlmDecidedData,
        step=counts,
        content=st.none() | short_text,
        tool_calls=st.lists(
            st.builds(
                PlannedToolCall,
                call_index=st.integers(min_value=0, max_value=50),
                name=short_text,
                arguments=arguments,
                arguments_error=st.none() | short_text,
                llm_call_id=short_text,
                review=st.booleans(),
            ),
            max_size=3,
        ),
        usage=usage,
        model=short_text,
        finish_reason=st.none() | short_text,
        duration_ms=durations,
    ),
    ToolCallRequested: st.builds(
        ToolCallRequestedData,
        **tool_call_refs,
        arguments=arguments,
        timeout_seconds=st.floats(min_value=0, max_value=MAX_DEADLINE_SECONDS, exclude_min=True),
        roles=roles,
        offered=st.none() | st.lists(tool_names, max_size=4),
        metadata=metadata,
        flagged=st.booleans(),
        clearance=st.none()
        | st.builds(
            Clearance,
            gate=st.sampled_from(["approval", "review"]),
            approval_id=st.none() | st.text(min_size=1, max_size=20),
            by=short_text,
            reason=short_text,
        ),
    ),
    ToolCallHeld: st.builds(
        ToolCallHeldData,
        **tool_call_refs,
        gate=st.sampled_from(["approval", "review"]),
        rule=short_text,
        reason=short_text,
        approval_id=st.none() | st.text(min_size=1, max_size=20),
        approvers=st.lists(short_text, max_size=3),
        expires_at=st.none() | times,
    ),
    ToolCallCompleted: st.builds(
        ToolCallCompletedData,
        **tool_call_refs,
        output=short_text,
        duration_ms=durations,
        replayed=st.booleans(),
        source=short_text,
        flags=st.lists(short_text, max_size=3),
        truncated=st.booleans(),
    ),
    ToolCallFailed: st.builds(
        ToolCallFailedData,
        **tool_call_refs,
        error=short_text,
        error_type=short_text,
        attempts=st.integers(min_value=1, max_value=10),
    ),
    CritiqueRequested: st.builds(
        CritiqueRequestedData,
        kind=st.sampled_from(["answer", "tool_call"]),
        step=counts,
        call_index=st.none() | st.integers(min_value=0, max_value=50),
        round=st.integers(min_value=0, max_value=10),
        input=st.text(min_size=1, max_size=50),
        draft=st.none() | short_text,
        observations=st.lists(short_text, max_size=3),
        tool=st.none() | short_text,
        tool_description=st.none() | short_text,
        arguments=st.none() | arguments,
        answer_by=st.none() | times,
    ),
    CritiqueCompleted: st.builds(
        CritiqueCompletedData,
        **critique_refs,
        score=st.none() | scores,
        relevance=st.none() | scores,
        completeness=st.none() | scores,
        groundedness=st.none() | scores,
        approved=st.none() | st.booleans(),
        feedback=short_text,
    ),
    CritiqueFailed: st.builds(
        CritiqueFailedData,
        **critique_refs,
        reason=st.sampled_from(get_args(CritiqueFailure)),
        message=short_text,
    ),
    MemoryRecallRequested: st.builds(
        MemoryRecallRequestedData,
        query=st.text(min_size=1, max_size=50),
        session_id=st.none() | st.text(min_size=1, max_size=20),
        user_id=optional_ids,
        limit=st.integers(min_value=0, max_value=50),
    ),
    MemoryRecalled: st.builds(
        MemoryRecalledData,
        status=st.sampled_from(get_args(RecallStatus)),
        turns=st.lists(memory_turns, max_size=3),
        hits=st.lists(memory_hits, max_size=3),
        embedding_model=st.none() | short_text,
        message=short_text,
        recalled_at=st.none() | times,
        duration_ms=st.floats(min_value=0, max_value=86_400_000),
    ),
    MemoryRememberRequested: st.builds(
        MemoryRememberRequestedData,
        fact=st.text(min_size=1, max_size=50),
        session_id=st.none() | st.text(min_size=1, max_size=20),
        user_id=optional_ids,
        idempotency_key=short_text,
    ),
    MemoryDocumentAdded: st.builds(
        MemoryDocumentAddedData,
        text=st.text(min_size=1, max_size=50),
        title=st.none() | short_text,
        source=st.none() | short_text,
        user_id=optional_ids,
    ),
    # Each scope with the id it needs (and the other, or none, or an empty one: allowed).
    MemoryForgetRequested: st.builds(
        MemoryForgetRequestedData,
        scope=st.just("session"),
        session_id=st.text(min_size=1, max_size=20),
        user_id=optional_ids,
    )
    | st.builds(
        MemoryForgetRequestedData,
        scope=st.just("user"),
        session_id=st.none() | st.text(min_size=1, max_size=20),
        user_id=st.text(min_size=1, max_size=20),
    )
    | st.builds(
        MemoryForgetRequestedData,
        scope=st.just("tenant"),
        session_id=st.none() | st.text(min_size=1, max_size=20),
        user_id=optional_ids,
    ),
}
DATA |= {
    ApprovalRequested: st.builds(
        ApprovalRequestedData,
        **approval_refs,
        arguments=arguments,
        approvers=st.lists(short_text, max_size=3),
        rule=short_text,
        reason=short_text,
        expires_at=times,
    ),
    ApprovalDecided: st.builds(
        ApprovalDecidedData,
        approval_id=st.text(min_size=1, max_size=20),
        decision=st.sampled_from(["approve", "deny"]),
        by=st.text(min_size=1, max_size=20),
        reason=short_text,
    ),
    ApprovalResolved: st.builds(
        ApprovalResolvedData,
        **approval_refs,
        outcome=st.sampled_from(["approved", "denied", "expired"]),
        by=short_text,
        reason=short_text,
        decided_id=st.none() | st.text(min_size=1, max_size=20),
    ),
    PolicyDecided: st.builds(
        PolicyDecidedData,
        **call_refs,
        decision=st.sampled_from(["allow", "deny", "approval_required", "review_required"]),
        rule=short_text,
        reason=short_text,
        task_id=short_text,
        tenant=short_text,
        roles=st.lists(short_text, max_size=3),
        server=st.none() | short_text,
        idempotency_key=short_text,
        flagged=st.booleans(),
        approval_id=st.none() | short_text,
    ),
    InjectionFlagged: st.builds(
        InjectionFlaggedData,
        **call_refs,
        source=short_text,
        findings=st.lists(short_text, max_size=3),
        idempotency_key=short_text,
    ),
}
"""A strategy for the ``data`` of every event type the channels carry."""

CHANNELS_OF = {
    model: [
        channel
        for channel, names in CHANNEL_TYPES.items()
        if model.model_fields["type"].default in names
    ]
    for model in DATA
}


@st.composite
def events(draw: st.DrawFn) -> tuple[str, CloudEvent]:
    """A channel and a valid event of it, with a few extension attributes now and then."""
    model = draw(st.sampled_from(sorted(DATA, key=lambda m: m.__name__)))
    extensions = draw(st.dictionaries(extension_names, extension_values, max_size=3))
    event = model(
        subject=draw(task_ids),
        source=draw(st.from_regex(r"[!-~]{1,60}", fullmatch=True)),
        id=draw(st.text(min_size=1, max_size=40)),
        tenant=draw(st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True)),
        time=draw(times),
        data=draw(DATA[model]),
        **extensions,
    )
    return draw(st.sampled_from(CHANNELS_OF[model])), event


def test_every_event_type_of_the_channels_is_generated() -> None:
    generated = {(c, m.model_fields["type"].default) for m, cs in CHANNELS_OF.items() for c in cs}
    assert generated == {(c, name) for c, names in CHANNEL_TYPES.items() for name in names}


@SETTINGS
@given(events())
def test_generated_events_round_trip(case: tuple[str, CloudEvent]) -> None:
    channel, event = case
    value = encode(event)
    assert schema_errors(channel, value) == []
    assert decode(CHANNEL_ADAPTERS[channel], value) == event


# -- mutations ----------------------------------------------------------------------------

Path = tuple[str | int, ...]

# Lengths either side of every string bound of the contract.
LENGTHS = [
    *(0, 1, 63, 64, 65, 127, 128, 129, 256, 257, 600, 601, 1024, 1025, 2000, 2001, 2048, 2049),
    *(4000, 4001, 20_000, 20_001, 100_000, 100_001),
]
# Any JSON value but an integral float: JSON Schema calls 8.0 an integer, decode does not
# (the one known difference; see test_contract_strict.KNOWN_DIFFERENCES).
other_values = st.one_of(
    json_values.filter(lambda v: not (isinstance(v, float) and v.is_integer())),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.sampled_from(["1.0", "8", "300", "true", "2026-11-25T12:00:00Z", "1700000000", "a/b"]),
)
ALL_TYPES = sorted({name for names in CHANNEL_TYPES.values() for name in names})


def _paths(node: Any, path: Path = ()) -> list[Path]:
    """Every place a value sits in ``node``, depth first."""
    children: list[tuple[str | int, Any]] = []
    if isinstance(node, dict):
        children = list(node.items())
    elif isinstance(node, list):
        children = list(enumerate(node))
    found = []
    for key, child in children:
        found.append((*path, key))
        found.extend(_paths(child, (*path, key)))
    return found


def _objects(node: Any, path: Path = ()) -> list[Path]:
    """Every JSON object in ``node`` (the root included)."""
    found = [path] if isinstance(node, dict) else []
    children = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, child in children:
        found.extend(_objects(child, (*path, key)))
    return found


def _at(document: Any, path: Path) -> Any:
    for key in path:
        document = document[key]
    return document


@st.composite
def mutated(draw: st.DrawFn, document: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """One mutation of ``document``, and what it was (for the failure message)."""
    document = copy.deepcopy(document)
    kind = draw(st.sampled_from(["drop", "replace", "oversize", "add", "add_many", "retag"]))
    if kind == "drop":
        path = draw(st.sampled_from(_paths(document)))
        del _at(document, path[:-1])[path[-1]]
    elif kind == "replace":
        path = draw(st.sampled_from(_paths(document)))
        _at(document, path[:-1])[path[-1]] = draw(other_values)
    elif kind == "oversize":
        path = draw(st.sampled_from(_paths(document)))
        stem = draw(st.text(alphabet="aZ9._:@-/ é😀\n", max_size=2))
        fill = draw(st.sampled_from("aZ9-_/ é😀"))
        _at(document, path[:-1])[path[-1]] = stem + fill * draw(st.sampled_from(LENGTHS))
    elif kind == "add":
        path = draw(st.sampled_from(_objects(document)))
        name = draw(st.from_regex(r"[a-z0-9]{1,70}", fullmatch=True) | st.text(max_size=8))
        value = draw(other_values | st.text(alphabet="x", min_size=1020, max_size=1030))
        _at(document, path)[name] = value
    elif kind == "add_many":
        path = draw(st.sampled_from(_objects(document)))
        count = draw(st.integers(min_value=1, max_value=40))
        _at(document, path).update({f"x{i}": i for i in range(count)})
    else:
        document["type"] = draw(st.sampled_from(ALL_TYPES))
    return kind, document


@SETTINGS
@given(events(), st.data())
def test_decode_accepts_a_mutation_exactly_when_the_schemas_do(
    case: tuple[str, CloudEvent], data: st.DataObject
) -> None:
    channel, event = case
    kind, document = data.draw(mutated(json.loads(encode(event))))
    value = json.dumps(document).encode()
    errors = schema_errors(channel, value)
    try:
        decode(CHANNEL_ADAPTERS[channel], value)
    except DecodeError as exc:
        assert errors, f"{kind}: decode refused what the schemas accept: {exc}"
    else:
        assert not errors, f"{kind}: decode accepted what the schemas refuse: {errors}"
