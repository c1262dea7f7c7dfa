"""Partition assignment: every replica of a service gets the same partition numbers of each of
its input topics, so a task's commands and its journal (or a call and its ledger entry) meet in
one replica, whatever the number of replicas."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata
from stepbus_contracts import Topics, history_adapter, tasks_adapter
from stepbus_runtime import EventPublisher, Processor, Route

TOPICS = Topics("t.")


class Cluster:
    """The metadata an assignor reads: partitions per topic."""

    def __init__(self, partitions: dict[str, int]) -> None:
        self._partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        count = self._partitions.get(topic)
        return set(range(count)) if count is not None else None


async def noop(event: Any, context: Any) -> list[Any]:
    return []


@pytest.mark.parametrize("members", [1, 2, 3, 4, 5, 6])
async def test_the_planners_two_inputs_are_assigned_alike_to_every_replica(members: int) -> None:
    processor = Processor(
        name="planner",
        bootstrap_servers="127.0.0.1:1",
        group_id="t.stepbus-planner",
        routes={
            TOPICS.tasks: Route(tasks_adapter, noop),
            TOPICS.planner_history: Route(history_adapter, noop),
        },
        publisher=EventPublisher("127.0.0.1:1", "test"),
        dlq_topic=TOPICS.dlq,
    )
    (assignor,) = processor._consumer._partition_assignment_strategy
    topics = [TOPICS.tasks, TOPICS.planner_history]
    subscriptions = {
        f"planner-{i}": ConsumerProtocolMemberMetadata(0, topics, b"") for i in range(members)
    }
    assignment = assignor.assign(Cluster(dict.fromkeys(topics, 6)), subscriptions)
    owned: list[int] = []
    for member in assignment.values():
        by_topic = {topic: sorted(partitions) for topic, partitions in member.assignment}
        assert by_topic.get(TOPICS.tasks, []) == by_topic.get(TOPICS.planner_history, [])
        owned += by_topic.get(TOPICS.tasks, [])
    assert sorted(owned) == list(range(6))  # every partition, once
