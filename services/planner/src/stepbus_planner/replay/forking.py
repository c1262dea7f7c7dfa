"""``stepbus fork``: start a live task from a recorded task's history up to a step.

The command checks the original (it exists for the tenant, the step is within its steps),
publishes a submission with ``fork`` set to the public ``tasks`` topic, and waits for the
fork's terminal event on ``results``. The copy itself is the planner's (``stepbus_planner.
fork``): it reads the original from its own journal, so what a fork continues from is what
was recorded.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError
from stepbus_contracts import (
    ForkOrigin,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskSubmitted,
    results_adapter,
)
from stepbus_runtime import Emit, EventPublisher, service_publisher, topic_partitions
from stepbus_runtime.claimcheck import ClaimCheckError
from stepbus_runtime.kafka_security import kafka_options

from ..settings import PlannerSettings
from .recording import Recording, RecordingError, key_partition

__all__ = ["FORK_SOURCE_CLI", "ForkOutcome", "fork_submission", "run_fork"]

FORK_SOURCE_CLI = "urn:stepbus:cli:fork"

Terminal = TaskCompleted | TaskFailed | TaskCancelled


@dataclass(frozen=True)
class ForkOutcome:
    """How a fork ended (``terminal`` is None when it did not end in time)."""

    task_id: str
    terminal: Terminal | None


def fork_submission(
    original: Recording,
    step: int,
    *,
    task_id: str | None = None,
    input_text: str | None = None,
    deadline_seconds: float | None = None,
) -> TaskSubmitted:
    """The submission of a fork of ``original`` at ``step``.

    Raises:
        RecordingError: The step is outside the original's steps.
    """
    decided = sorted(original.decisions())
    if not decided or step > decided[-1]:
        steps = f"steps 0-{decided[-1]}" if decided else "no steps"
        raise RecordingError(f"task {original.task_id!r} has {steps}: cannot fork at step {step}")
    new_id = task_id or f"{original.task_id[:200]}.fork-{uuid.uuid4().hex[:8]}"
    metadata = {**original.accepted.data.metadata, "forked_from": original.task_id[:512]}
    return TaskSubmitted(
        source=FORK_SOURCE_CLI,
        subject=new_id,
        tenant=original.tenant,
        data=original.submitted(
            metadata=metadata,
            fork=ForkOrigin(task_id=original.task_id, step=step, input=input_text),
            **({"deadline_seconds": deadline_seconds} if deadline_seconds else {}),
        ),
    )


async def run_fork(
    settings: PlannerSettings, submission: TaskSubmitted, *, wait_seconds: float | None
) -> ForkOutcome:
    """Publish the fork and, unless ``wait_seconds`` is None, wait that long for its end."""
    bootstrap, topics = settings.kafka_bootstrap_servers, settings.topics
    publisher = service_publisher(settings, "stepbus-fork")
    consumer: AIOKafkaConsumer | None = None
    key = submission.subject.encode()
    try:
        await publisher.start()
        if wait_seconds is not None:
            partitions = await topic_partitions(bootstrap, topics.results)
            if not partitions:
                raise RecordingError(f"topic {topics.results} not found")
            tp = TopicPartition(topics.results, key_partition(key, len(partitions)))
            consumer = AIOKafkaConsumer(
                bootstrap_servers=bootstrap,
                enable_auto_commit=False,
                client_id="stepbus-fork",
                **kafka_options(),
            )
            await consumer.start()
            consumer.assign([tp])
            await consumer.seek_to_end(tp)
            await consumer.position(tp)  # fixed before publishing: the end cannot be missed
        await publisher.publish([Emit(topics.tasks, submission)])
        if consumer is None or wait_seconds is None:
            return ForkOutcome(submission.subject, None)
        terminal = await asyncio.wait_for(
            _terminal(consumer, publisher, submission), timeout=wait_seconds
        )
        return ForkOutcome(submission.subject, terminal)
    except TimeoutError:
        return ForkOutcome(submission.subject, None)
    finally:
        if consumer is not None:
            await consumer.stop()
        await publisher.stop()


async def _terminal(
    consumer: AIOKafkaConsumer, publisher: EventPublisher, submission: TaskSubmitted
) -> Terminal:
    payloads = publisher.payloads
    key = submission.subject.encode()
    while True:
        batches = await consumer.getmany(timeout_ms=500)
        for records in batches.values():
            for record in records:
                if record.key != key or record.value is None:
                    continue
                try:
                    value = await payloads.resolve(record.value) if payloads else record.value
                    event = results_adapter.validate_json(value or b"")
                except (ClaimCheckError, ValidationError, ValueError):
                    continue
                if isinstance(event, Terminal) and event.tenant == submission.tenant:
                    return event
