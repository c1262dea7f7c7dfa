"""The topic job's pure decisions: what to create with, what to raise, which configs to write."""

from __future__ import annotations

import pytest
from stepbus_contracts import Topics
from stepbus_runtime.create_topics import (
    config_updates,
    desired_specs,
    dynamic_configs,
    partition_increases,
)

TOPICS = Topics("t.")


def test_the_catalog_is_desired_as_is_without_overrides() -> None:
    assert desired_specs(TOPICS, {}) == TOPICS.specs()


def test_an_override_raises_one_topics_partitions() -> None:
    desired = dict(desired_specs(TOPICS, {"memory.requests": 24}))
    assert desired["t.memory.requests"].partitions == 24
    assert desired["t.results"].partitions == dict(TOPICS.specs())["t.results"].partitions


def test_unknown_topics_and_fewer_partitions_than_the_catalog_are_refused() -> None:
    with pytest.raises(ValueError, match="not topics of the catalog: taks"):
        desired_specs(TOPICS, {"taks": 12})
    with pytest.raises(ValueError, match=r"dlq \(0 < 1\)"):
        desired_specs(TOPICS, {"dlq": 0})


def test_co_partitioned_topics_are_raised_together_or_not_at_all() -> None:
    with pytest.raises(ValueError, match=r"tasks=12, planner\.history=6, planner\.snapshots=6"):
        desired_specs(TOPICS, {"tasks": 12})
    together = {"tasks": 12, "planner.history": 12, "planner.snapshots": 12}
    assert dict(desired_specs(TOPICS, together))["t.planner.snapshots"].partitions == 12


def test_partitions_are_only_ever_raised() -> None:
    desired = desired_specs(TOPICS, {"tool.calls": 12, "tool.ledger": 12})
    current = {"t.tool.calls": 6, "t.tool.ledger": 12, "t.results": 9, "t.dlq": 1}
    assert partition_increases(desired, current) == {"t.tool.calls": 12}
    assert partition_increases(desired, {"t.tool.calls": 12}) == {}


def test_configs_are_written_only_when_they_differ_keeping_an_operators_own() -> None:
    desired = desired_specs(TOPICS, {})
    audit = dict(desired)["t.audit"].configs
    current = {
        "t.audit": {"retention.ms": "1", "max.message.bytes": "2000000"},
        "t.tasks": dict(dict(desired)["t.tasks"].configs),
    }
    assert config_updates(desired, current) == {
        "t.audit": {**audit, "max.message.bytes": "2000000"}
    }
    assert config_updates(desired, {"t.audit": dict(audit)}) == {}


def test_only_per_topic_overrides_count_as_the_topics_configs() -> None:
    v0 = [("retention.ms", "5", False, False, False), ("segment.ms", "9", False, True, False)]
    v1 = [
        ("retention.ms", "5", False, 1, False, []),
        ("segment.ms", "9", False, 5, False, []),
        ("cleanup.policy", "delete", False, 4, False, []),
    ]
    assert dynamic_configs(v0) == {"retention.ms": "5"}
    assert dynamic_configs(v1) == {"retention.ms": "5"}
