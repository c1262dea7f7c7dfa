"""The corpus of a run: how many records of each family (:data:`FAMILIES`), the valid tasks,
and the order they are sent in. Everything is drawn from the run's seed."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from stepbus_contracts import TaskSubmitted, TaskSubmittedData

from stepbus_devtools.chaos.config import ChaosConfig
from stepbus_devtools.chaos.workload import make_tasks

from . import findings, forgeries, garbage
from .config import FuzzConfig
from .records import SOURCE, Forge, FuzzRecord, ValidTask

__all__ = [
    "FAMILIES",
    "TENANTS",
    "Family",
    "allocate",
    "build_corpus",
    "make_valid_tasks",
    "send_order",
]

TENANTS = ("fuzz-a", "fuzz-b", "fuzz-c")
"""Tenants of the valid tasks, in turn."""


@dataclass(frozen=True)
class Family:
    """One family of bad records.

    Attributes:
        name: As reported.
        finding: The finding it covers (``"garbage"`` for generic garbage).
        build: ``(forge, n) -> n records``.
        minimum: Records needed for every variant and every topic to appear once.
        share: Fraction of ``--records`` it gets (for generic garbage: its weight in what
            the findings leave).
        cap: Most records, as a function of ``--records`` (big records weigh on the broker).
        aimed: Aimed at valid tasks: the count follows ``--valid`` instead.
    """

    name: str
    finding: str
    build: Callable[[Forge, int], list[FuzzRecord]]
    minimum: int
    share: float = 0.0
    cap: Callable[[int], int] | None = None
    aimed: bool = False


def _big(records: int) -> int:
    """How many ~1 MB records of one kind a run sends."""
    return max(4, records // 1000)


FAMILIES: tuple[Family, ...] = (
    Family("null_record", "1", findings.null_record, 4, 0.005),
    Family("deep_nesting", "2", findings.deep_nesting, 6, 0.01),
    Family("near_limit_keyless", "3", findings.near_limit_keyless, 4, 0.001, cap=_big),
    Family("bad_claim_reference", "4", findings.bad_claim_reference, 12, 0.03),
    Family("results_poison", "5", findings.results_poison, 8, 0.02),
    Family("tenant_collision", "6", forgeries.tenant_collision, 2, aimed=True),
    Family("foreign_cancel", "6", forgeries.foreign_cancel, 2, aimed=True),
    Family("forged_terminal", "7", forgeries.forged_terminal, 4, aimed=True),
    Family("forged_accepted", "7", forgeries.forged_accepted, 3, 0.01),
    Family("unknown_task_events", "7", forgeries.unknown_task_events, 7, 0.03),
    Family("contract_looseness", "9", forgeries.contract_looseness, 11, 0.03),
    Family("duplicate_event_id", "9", forgeries.duplicate_event_id, 3, aimed=True),
    Family("random_bytes", "garbage", garbage.random_bytes, 4, 0.15),
    Family("truncated_json", "garbage", garbage.truncated_json, 4, 0.12),
    Family("wrong_type", "garbage", garbage.wrong_type, 4, 0.12),
    Family("non_object_json", "garbage", garbage.non_object_json, 7, 0.08),
    Family("schema_invalid", "garbage", garbage.schema_invalid, 15, 0.2),
    Family("empty_value", "garbage", garbage.empty_value, 4, 0.05),
    Family("huge_headers", "garbage", garbage.huge_headers, 6, 0.04),
    Family("non_utf8_key", "garbage", garbage.non_utf8_key, 4, 0.06),
    Family("huge_key", "garbage", garbage.huge_key, 4, 0.03, cap=lambda n: max(4, n // 200)),
    Family("unicode_oddities", "garbage", garbage.unicode_oddities, 7, 0.1),
    Family("big_value", "garbage", garbage.big_value, 4, 0.05, cap=lambda n: max(4, n // 200)),
)


def allocate(records: int, valid: int) -> dict[str, int]:
    """Records per family: the findings their share (at least their minimum, at most their
    cap), aimed families one per 8 valid tasks (none without valid tasks), and generic garbage
    what is left, by weight. More than ``records`` only when the minimums need it."""
    counts: dict[str, int] = {}
    for family in FAMILIES:
        if family.finding == "garbage":
            continue
        if family.aimed:
            counts[family.name] = max(family.minimum, valid // 8) if valid else 0
            continue
        count = max(family.minimum, round(family.share * records))
        if family.cap is not None:
            count = min(count, max(family.minimum, family.cap(records)))
        counts[family.name] = count
    rubbish = [f for f in FAMILIES if f.finding == "garbage"]
    left = records - sum(counts.values())
    weight = sum(f.share for f in rubbish)
    for family in rubbish:
        count = max(family.minimum, int(left * family.share / weight))
        if family.cap is not None:
            count = min(count, max(family.minimum, family.cap(records)))
        counts[family.name] = count
    # Rounding and caps leave a few: the first uncapped garbage family takes them.
    short = records - sum(counts.values())
    if short > 0:
        counts["random_bytes"] += short
    return counts


def make_valid_tasks(
    rng: random.Random, config: FuzzConfig, run_id: str, forge_uuid: Callable[[], str]
) -> list[ValidTask]:
    """The valid tasks: the chaos run's arithmetic tasks (known outputs), spread over
    :data:`TENANTS`, each with its ``stepbus.task.submitted`` record value."""
    chaos = ChaosConfig(tasks=config.valid, steps=config.steps, latency=config.latency)
    tasks = []
    for index, task in enumerate(sorted(make_tasks(rng, chaos, run_id), key=lambda t: t.task_id)):
        task_id = f"fz-{run_id}-v{index:04d}"
        tenant = TENANTS[index % len(TENANTS)]
        event = TaskSubmitted(
            id=forge_uuid(),
            source=SOURCE,
            subject=task_id,
            tenant=tenant,
            data=TaskSubmittedData(
                input=task.input,
                tools=["calculator"],
                max_iterations=config.steps + 3,
                deadline_seconds=min(86_400.0, max(300.0, 2 * config.timeout)),
                metadata={"fuzz_run": run_id},
            ),
        )
        value = event.model_dump_json().encode()
        tasks.append(ValidTask(task_id, tenant, task.input, task.expected, event.id, value))
    return tasks


def build_corpus(forge: Forge, config: FuzzConfig) -> list[FuzzRecord]:
    """Every bad record of the run, family by family (:func:`allocate`)."""
    counts = allocate(config.records, config.valid)
    corpus: list[FuzzRecord] = []
    for family in FAMILIES:
        count = counts[family.name]
        if count:
            made = family.build(forge, count)
            assert len(made) == count, (family.name, len(made), count)
            corpus.extend(made)
    return corpus


def send_order(
    rng: random.Random, corpus: Sequence[FuzzRecord], valid: Sequence[ValidTask]
) -> list[FuzzRecord | ValidTask]:
    """The records sent at once, shuffled: the valid submissions among the bad records not
    aimed at a task (aimed ones wait for their trigger)."""
    order: list[FuzzRecord | ValidTask] = [r for r in corpus if r.target is None]
    order.extend(valid)
    rng.shuffle(order)
    return order
