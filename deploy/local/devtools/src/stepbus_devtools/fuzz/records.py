"""The pieces of a corpus: :class:`FuzzRecord` (one record to send and what it must cause),
:class:`ValidTask` and :class:`Forge`, which builds the events the families start from."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from stepbus_contracts import (
    LlmDecided,
    LlmDecidedData,
    TaskProgress,
    TaskProgressData,
    TaskSubmitted,
    TaskSubmittedData,
    ToolCallRequested,
    ToolCallRequestedData,
    Topics,
)
from stepbus_runtime import PayloadRef

__all__ = [
    "CONSUMERS",
    "FUZZED",
    "Expect",
    "Forge",
    "FuzzRecord",
    "ValidTask",
    "Variant",
    "cycle",
    "dumps",
    "over_topics",
]

FUZZED = ("tasks", "planner.history", "tool.calls", "results")
"""Catalog suffixes of the topics the fuzz writes to."""

CONSUMERS = {
    "tasks": ("planner", "memory"),
    "planner.history": ("planner",),
    "tool.calls": ("tool-executor",),
    "results": ("gateway", "memory"),
}
"""The services that consume each fuzzed topic, hence each must dead-letter its bad records
(the first named is the one whose log a failure quotes)."""

Expect = Literal["dead_letter", "refused", "conflict"]
"""What a bad record must cause: ``dead_letter`` (a dead letter on ``dlq`` from the topic's
consumer, no effect), ``refused`` (no effect; a dead letter or a counted drop) or
``conflict`` (its tenant gets ``stepbus.task.failed`` with ``task_id_conflict``)."""

FIXED_TIME = "2026-01-01T00:00:00Z"
SOURCE = "urn:stepbus:fuzz"
_IDS = uuid.UUID("0f7a2c4e-9b1d-4e6f-8a3c-5d2e1f0b9c77")
INTRUDER = "fuzz-intruder"
"""The tenant that tries to take, cancel or end other tenants' tasks."""


def dumps(value: Any) -> bytes:
    """Compact JSON bytes (what upstream producers typically send)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class ValidTask:
    """One valid task of the run: it must complete exactly once, for its tenant, with
    ``expected`` as output."""

    task_id: str
    tenant: str
    input: str
    expected: str
    event_id: str
    value: bytes
    """The ``stepbus.task.submitted`` record value."""
    submitted_at: float | None = None
    partition: int | None = None
    offset: int | None = None


@dataclass
class FuzzRecord:
    """One bad record, what it must cause, and where it went once sent.

    Attributes:
        family: The corpus family (``docs/fuzz.md`` lists them).
        variant: Which variant of the family.
        finding: The finding of the issue it covers (``"1"``..``"9"``, ``"garbage"``).
        topic: Catalog suffix of the topic it goes to (one of :data:`FUZZED`).
        key: Record key (``None``: keyless).
        value: Record value (``None``: null).
        headers: Record headers.
        expect: What it must cause (:data:`Expect`).
        fresh: Task ids only this record names: no service may produce anything for them.
        target: The valid task it is aimed at, if any (then sent only once that task was
            accepted, or ended, as ``after`` says).
        after: ``"accepted"`` or ``"ended"`` for aimed records.
        tenant: The tenant it claims (for ``conflict``: the tenant that must get the failure).
        dlq_headers: Headers (name, value) its dead letter must carry besides the usual ones.
        partition: Where it must go (null records: a producer picks no partition for them);
            once sent, where it went.
        offset: Once sent, its offset.
        sent_at: Wall clock of the acknowledgement.
        late: An aimed record sent at the end because its trigger never came.
        send_error: Why the broker (or the producer) refused it; then it was not sent.
    """

    family: str
    variant: str
    finding: str
    topic: str
    key: bytes | None
    value: bytes | None
    expect: Expect
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    fresh: tuple[str, ...] = ()
    target: str | None = None
    after: Literal["accepted", "ended"] | None = None
    tenant: str | None = None
    dlq_headers: tuple[tuple[str, str], ...] = ()
    partition: int | None = None
    offset: int | None = None
    sent_at: float | None = None
    late: bool = False
    send_error: str | None = None

    @property
    def size(self) -> int:
        """Bytes of key, value and headers."""
        return (
            len(self.key or b"")
            + len(self.value or b"")
            + sum(len(n.encode()) + len(v or b"") for n, v in self.headers)
        )

    def where(self, topics: Topics) -> str:
        """``topic[partition]@offset`` (``?`` before it is sent)."""
        offset = "?" if self.offset is None else str(self.offset)
        return f"{topics.name(self.topic)}[{self.partition}]@{offset}"


Variant = Callable[[], "FuzzRecord | list[FuzzRecord]"]
"""Builds one record of a variant (or several at once)."""


def cycle(n: int, variants: Sequence[Variant]) -> list[FuzzRecord]:
    """``n`` records made by the variant builders in turn (each at least once when
    ``n >= len(variants)``); a builder may make several records at once."""
    out: list[FuzzRecord] = []
    index = 0
    while len(out) < n:
        made = variants[index % len(variants)]()
        out.extend(made if isinstance(made, list) else [made])
        index += 1
    return out[:n]


def over_topics(variants: list[Callable[[str], FuzzRecord]]) -> list[Variant]:
    """Every (variant, topic) pair as a builder, in an order where the first
    ``max(len(variants), len(FUZZED))`` cover every variant and every topic."""
    cover = max(len(variants), len(FUZZED))
    pairs = [(k % len(variants), k % len(FUZZED)) for k in range(cover)]
    pairs += [
        (v, t) for t in range(len(FUZZED)) for v in range(len(variants)) if (v, t) not in pairs
    ]
    return [_bound(variants[v], FUZZED[t]) for v, t in pairs]


def _bound(make: Callable[[str], FuzzRecord], topic: str) -> Variant:
    return lambda: make(topic)


class Forge:
    """Builds the events bad records are made from, deterministically from ``rng``.

    Args:
        rng: The run's random source.
        topics: The run's topics.
        run_id: Unique per run; in every task id it makes.
        partitions: Partition count of each fuzzed topic (by suffix).
        payloads: Real references into the payloads topic, by name: ``"json"`` holds a small
            JSON object, ``"garbage"`` bytes that are not JSON. Bad references are made from
            them.
        valid: The run's valid tasks (aimed records pick from them).
    """

    def __init__(
        self,
        rng: random.Random,
        topics: Topics,
        run_id: str,
        *,
        partitions: dict[str, int],
        payloads: dict[str, PayloadRef],
        valid: Sequence[ValidTask],
    ) -> None:
        self.rng = rng
        self.topics = topics
        self.run_id = run_id
        self.partitions = partitions
        self.payloads = payloads
        self.valid = list(valid)
        self._subjects = 0
        self._aimed = 0

    # -- identities --------------------------------------------------------------------

    def subject(self) -> str:
        """A task id nobody else uses (valid in the contract's pattern)."""
        self._subjects += 1
        return f"fz-{self.run_id}-b{self._subjects:05d}"

    def uuid(self) -> str:
        """An event id: drawn from the seed, and unique to the run (the planner remembers
        event ids across runs, and refuses one used again for another event)."""
        return str(uuid.uuid5(_IDS, f"{self.run_id}:{self.rng.getrandbits(64)}"))

    def hex(self, digits: int) -> str:
        return "".join(self.rng.choice("0123456789abcdef") for _ in range(digits))

    def aim(self) -> ValidTask:
        """The next valid task to aim at: each in turn, so aimed records spread over them."""
        task = self.valid[self._aimed % len(self.valid)]
        self._aimed += 1
        return task

    # -- events ------------------------------------------------------------------------

    def envelope(self, type_: str, subject: str, tenant: str = "fuzz") -> dict[str, Any]:
        """CloudEvents attributes of an event (fixed time, fresh id)."""
        return {
            "specversion": "1.0",
            "type": type_,
            "source": SOURCE,
            "id": self.uuid(),
            "subject": subject,
            "time": FIXED_TIME,
            "datacontenttype": "application/json",
            "tenant": tenant,
        }

    def event(self, topic: str, subject: str, tenant: str = "fuzz") -> dict[str, Any]:
        """A schema-valid event of ``topic`` (by suffix) as a dict: what mutations start from.

        On ``tasks`` it is a submission that would run: only ever sent broken, or keyed by
        something else than its subject.
        """
        common: dict[str, Any] = {
            "id": self.uuid(),
            "source": SOURCE,
            "subject": subject,
            "tenant": tenant,
            "time": datetime(2026, 1, 1, tzinfo=UTC),
        }
        if topic == "tasks":
            model: Any = TaskSubmitted(
                **common,
                data=TaskSubmittedData(input="Compute 3*4", tools=["calculator"], max_iterations=4),
            )
        elif topic == "planner.history":
            model = LlmDecided(
                **common, data=LlmDecidedData(step=0, content="the answer", model="fuzz")
            )
        elif topic == "tool.calls":
            model = ToolCallRequested(
                **common,
                data=ToolCallRequestedData(
                    step=0,
                    call_index=0,
                    name="calculator",
                    idempotency_key=f"{subject}:0:0",
                    arguments={"expression": "3*4"},
                ),
            )
        else:
            model = TaskProgress(
                **common, data=TaskProgressData(step=0, stage="accepted", message="accepted")
            )
        return dict(json.loads(model.model_dump_json()))

    def claim_type(self, topic: str) -> str:
        """An event type that may travel on ``topic`` (a claim says what it stands for)."""
        return {
            "tasks": "stepbus.task.submitted",
            "planner.history": "stepbus.llm.decided",
            "tool.calls": "stepbus.tool.call_requested",
            "results": "stepbus.task.progress",
        }[topic]

    def record(
        self,
        family: str,
        variant: str,
        finding: str,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | str | None = "",
        expect: Expect = "dead_letter",
        fresh: Sequence[str] = (),
        **extra: Any,
    ) -> FuzzRecord:
        """A :class:`FuzzRecord`; ``key=""`` (the default) keys it by its only fresh subject."""
        if key == "":
            key = fresh[0] if fresh else None
        raw_key = key.encode() if isinstance(key, str) else key
        return FuzzRecord(
            family, variant, finding, topic, raw_key, value, expect, fresh=tuple(fresh), **extra
        )
