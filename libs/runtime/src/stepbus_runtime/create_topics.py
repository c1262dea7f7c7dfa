"""Create or update every topic of the catalog: ``python -m stepbus_runtime.create_topics``.

Run once before the services start (the Helm chart's pre-install and pre-upgrade hook). It
reads the Kafka address, the topic prefix and the replication factor like a service does
(``ServiceSettings``), creates the missing topics (``admin.ensure_topics``), then brings every
existing topic to the catalog: partitions are raised to the catalog's count (or the count given
with ``--partitions SUFFIX=N``; Kafka cannot lower one, so a topic with more is left alone) and
each topic config the catalog names is set to the catalog's value. Other dynamic configs an
operator set on a topic are kept. Running it again changes nothing.

Raising a keyed topic's partitions moves keys: a task in flight may find its next records on
another partition. Raise them on a drained deployment (docs/operations.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from stepbus_contracts import Topics, TopicSpec

from .admin import ensure_topics
from .kafka_security import kafka_options
from .settings import ServiceSettings

__all__ = [
    "config_updates",
    "desired_specs",
    "dynamic_configs",
    "main",
    "partition_increases",
    "reconcile_topics",
]

log = logging.getLogger(__name__)

_DYNAMIC_TOPIC_CONFIG = 1  # DescribeConfigs v1+ config_source of a per-topic override

CO_PARTITIONED = (("tasks", "planner.history", "planner.snapshots"), ("tool.calls", "tool.ledger"))
"""Topics that must keep equal partition counts: partition p of each is owned by one replica
(the planner's range assignor; the ledger loaded beside its tool calls)."""


def desired_specs(topics: Topics, partitions: Mapping[str, int]) -> list[tuple[str, TopicSpec]]:
    """The catalog under ``topics.prefix``, with partition counts raised as ``partitions`` asks.

    Raises:
        ValueError: A suffix is not in the catalog, asks for fewer partitions than the
            catalog (the services expect at least the catalog's count), or co-partitioned
            topics would differ.
    """
    specs = topics.specs()
    known = {spec.suffix: spec for _, spec in specs}
    unknown = sorted(set(partitions) - set(known))
    if unknown:
        raise ValueError(f"not topics of the catalog: {', '.join(unknown)}")
    low = sorted(s for s, n in partitions.items() if n < known[s].partitions)
    if low:
        raise ValueError(
            "fewer partitions than the catalog's: "
            + ", ".join(f"{s} ({partitions[s]} < {known[s].partitions})" for s in low)
        )
    counts = {suffix: partitions.get(suffix, spec.partitions) for suffix, spec in known.items()}
    for group in CO_PARTITIONED:
        if len({counts[suffix] for suffix in group}) > 1:
            raise ValueError(
                "co-partitioned topics need equal partitions: "
                + ", ".join(f"{suffix}={counts[suffix]}" for suffix in group)
            )
    return [(name, replace(spec, partitions=counts[spec.suffix])) for name, spec in specs]


def partition_increases(
    desired: Sequence[tuple[str, TopicSpec]], current: Mapping[str, int]
) -> dict[str, int]:
    """Topic -> the partition count to raise it to; topics already at or above are left out."""
    return {
        name: spec.partitions
        for name, spec in desired
        if name in current and current[name] < spec.partitions
    }


def config_updates(
    desired: Sequence[tuple[str, TopicSpec]], current: Mapping[str, Mapping[str, str]]
) -> dict[str, dict[str, str]]:
    """Topic -> the full set of dynamic configs to write, for topics whose configs differ.

    ``current`` holds each topic's dynamic (per-topic) configs. AlterConfigs replaces a topic's
    whole set, so what is written is the current set with the catalog's values over it: configs
    an operator added stay, the catalog's win.
    """
    updates: dict[str, dict[str, str]] = {}
    for name, spec in desired:
        have = current.get(name)
        if have is None:
            continue
        if any(have.get(key) != value for key, value in spec.configs.items()):
            updates[name] = {**have, **spec.configs}
    return updates


def dynamic_configs(entries: Sequence[Sequence[Any]]) -> dict[str, str]:
    """The per-topic overrides among a DescribeConfigs response's config entries.

    An entry starts ``(name, value, read_only, is_default | config_source, is_sensitive)``:
    version 0 says ``is_default`` (a bool), later versions the config's source.
    """
    found: dict[str, str] = {}
    for entry in entries:
        name, value, marker = entry[0], entry[1], entry[3]
        override = not marker if isinstance(marker, bool) else marker == _DYNAMIC_TOPIC_CONFIG
        if override and value is not None:
            found[str(name)] = str(value)
    return found


async def reconcile_topics(
    bootstrap_servers: str,
    topics: Topics,
    *,
    replication_factor: int,
    partitions: Mapping[str, int] | None = None,
    wait_seconds: float = 60.0,
) -> None:
    """Create the missing topics, then raise partitions and set configs to the catalog's.

    Returns once every raised partition has a leader, waiting up to ``wait_seconds`` for the
    broker (and for new partitions to show in its metadata).
    """
    desired = desired_specs(topics, partitions or {})
    await ensure_topics(bootstrap_servers, topics, replication_factor=replication_factor)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **kafka_options())
    await admin.start()
    try:
        names = [name for name, _ in desired]
        described = await admin.describe_topics(names)
        counts = {t["topic"]: len(t["partitions"]) for t in described if t["error_code"] == 0}
        raise_to = partition_increases(desired, counts)
        if raise_to:
            await admin.create_partitions({n: NewPartitions(c) for n, c in raise_to.items()})
            await _wait_for_partitions(admin, raise_to, wait_seconds)
            log.info("raised partitions %s", raise_to)
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
        current: dict[str, dict[str, str]] = {}
        for response in responses:
            for code, message, _, name, entries, *_ in response.resources:
                if code:
                    raise RuntimeError(f"describing the configs of {name}: {code} {message}")
                current[name] = dynamic_configs(entries)
        updates = config_updates(desired, current)
        if updates:
            answers = await admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, n, c) for n, c in updates.items()]
            )
            refused = [
                f"{name}: {code} {message}"
                for answer in answers
                for code, message, _, name in answer.resources
                if code
            ]
            if refused:
                raise RuntimeError(f"the broker refused topic configs: {'; '.join(refused)}")
            log.info("updated the configs of %s", sorted(updates))
    finally:
        await admin.close()


async def _wait_for_partitions(
    admin: AIOKafkaAdminClient, counts: Mapping[str, int], wait_seconds: float
) -> None:
    """Until every topic of ``counts`` shows that many partitions, each with a leader."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while True:
        described = await admin.describe_topics(list(counts))
        led = {
            t["topic"]
            for t in described
            if len(t["partitions"]) >= counts[t["topic"]]
            and all(p["error_code"] == 0 and p["leader"] >= 0 for p in t["partitions"])
        }
        if led >= set(counts):
            return
        if loop.time() > deadline:
            raise TimeoutError(f"new partitions of {sorted(set(counts) - led)} have no leader")
        await asyncio.sleep(0.2)


def _partition_arg(text: str) -> tuple[str, int]:
    suffix, sep, count = text.partition("=")
    if not sep or not count.isdigit():
        raise argparse.ArgumentTypeError(f"expected SUFFIX=COUNT, got {text!r}")
    return suffix, int(count)


def main(argv: Sequence[str] | None = None) -> None:
    """Reconcile the catalog's topics with the broker named by the environment."""
    parser = argparse.ArgumentParser(prog="python -m stepbus_runtime.create_topics")
    parser.add_argument(
        "--partitions",
        type=_partition_arg,
        action="append",
        default=[],
        metavar="SUFFIX=COUNT",
        help="more partitions than the catalog's for one topic, e.g. tasks=24 (repeatable)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = ServiceSettings()
    asyncio.run(
        reconcile_topics(
            settings.kafka_bootstrap_servers,
            settings.topics,
            replication_factor=settings.topic_replication_factor,
            partitions=dict(args.partitions),
        )
    )


if __name__ == "__main__":
    main()
