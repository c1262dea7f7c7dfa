"""``StepbusRouter``: a FastStream ``KafkaRouter`` that submits tasks and consumes results.

::

    broker = KafkaBroker("127.0.0.1:9092", enable_idempotence=True)
    stepbus = StepbusRouter(group_id="billing-results", tenant="acme", source="urn:billing")

    @stepbus.on_result(tenant="acme")
    async def record(event: TaskCompleted | TaskFailed | TaskCancelled) -> None: ...

    broker.include_router(stepbus)
    app = FastStream(broker)  # then, in any handler or hook: await stepbus.submit(...)

Delivery of results is at-least-once: a result's offset is committed only after the handler
returned. FastStream's default policy, ``AckPolicy.ACK_FIRST``, commits *before* the handler
runs, so a process that dies mid-handler has already committed a result it never recorded:
lost. ``AckPolicy.ACK`` commits after the handler but also when it raises: a failing handler
(a locked database, a full disk) loses the result too. So result subscriptions use
``AckPolicy.NACK_ON_ERROR``: commit when the handler returns; when it raises, seek back so the
record is delivered again. That policy redelivers a poison record forever when decoding fails
in FastStream, so here nothing of a record is decoded by FastStream: headers are parsed
tolerantly, and the subscription itself decodes the value, logging and committing (skipping)
anything that is not a valid event. Only a handler that raises on a valid event is retried,
with backoff, until it succeeds; to give up on an event, catch the error and return.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar, overload

from faststream.kafka import KafkaRouter
from faststream.middlewares import AckPolicy
from stepbus_contracts import (
    DEFAULT_PREFIX,
    DEFAULT_SOURCE,
    DEFAULT_TENANT,
    ApprovalDecided,
    TaskCancelRequested,
    TaskSubmitted,
    TaskSubmittedData,
    Topics,
)

from .errors import NotConnectedError
from .events import (
    CONTENT_TYPE,
    Result,
    Terminal,
    approval_decided,
    cancel_requested,
    encode,
    submitted,
)
from .subscription import ResultSubscription, raw_body, tolerant_parser

__all__ = ["StepbusRouter"]

_T = TypeVar("_T", bound=Callable[[Terminal], Awaitable[object]])
_R = TypeVar("_R", bound=Callable[[Result], Awaitable[object]])

Input = TaskSubmitted | TaskCancelRequested | ApprovalDecided


class StepbusRouter(KafkaRouter):
    """A ``KafkaRouter`` for the stepbus public topics; include it in your ``KafkaBroker``.

    Other handlers may be registered on it as on any ``KafkaRouter``; their topics get no
    prefix (``prefix`` here names the stepbus topics, it is not ``KafkaRouter``'s prefix).

    Args:
        prefix: The stepbus topic prefix: tasks go to ``<prefix>tasks``, results are read
            from ``<prefix>results``.
        group_id: Default consumer group of ``on_result`` subscriptions; the group's committed
            offsets are how a restarted consumer resumes.
        tenant: Default tenant of the events this router publishes.
        source: Default CloudEvents ``source`` of the events this router publishes, e.g.
            ``urn:example:billing``; part of every derived event id.
    """

    def __init__(
        self,
        prefix: str = DEFAULT_PREFIX,
        *,
        group_id: str | None = None,
        tenant: str = DEFAULT_TENANT,
        source: str = DEFAULT_SOURCE,
    ) -> None:
        super().__init__()
        self.topics = Topics(prefix)
        self.group_id = group_id
        self.tenant = tenant
        self.source = source
        self._groups: set[str] = set()
        self._tasks = self.publisher(
            self.topics.tasks,
            title=f"{self.topics.tasks}:publish",
            description="Task submissions, cancellations and approval decisions (CloudEvents "
            "1.0, structured JSON mode; key = task id).",
            schema=Input,
        )

    async def publish_event(self, event: Input) -> Input:
        """Publish an input event to ``tasks``, keyed by its task id; return it once the broker
        acknowledged it (with ``acks=all`` on an idempotent producer: ``KafkaBroker(...,
        enable_idempotence=True)``).

        Raises:
            NotConnectedError: The router is not in a connected broker.
            aiokafka.errors.KafkaError: The broker did not take the record: publishing the
                same event again is safe (its id is the same, so it stays one event).
        """
        if not self.config.producer:
            raise NotConnectedError(
                "StepbusRouter is not connected: broker.include_router(router), then start "
                "the broker (await broker.start(), async with broker, or FastStream(broker))"
            )
        await self._tasks.publish(
            encode(event), key=event.subject.encode(), headers={"content-type": CONTENT_TYPE}
        )
        return event

    async def submit(
        self,
        task_id: str,
        data: TaskSubmittedData | str,
        *,
        tenant: str | None = None,
        source: str | None = None,
        event_id: str | None = None,
    ) -> TaskSubmitted:
        """Submit a task; it ends with exactly one ``TaskCompleted``, ``TaskFailed`` or
        ``TaskCancelled`` on results.

        Args:
            task_id: The task id, chosen by the caller (unique per tenant).
            data: The task, or only its input text (every other field at its default).
            tenant: The task's tenant (default: the router's).
            source: The event's source (default: the router's).
            event_id: An explicit event id instead of the one derived from source, tenant and
                task id (which makes a retried submit a duplicate the planner drops).
        """
        task = TaskSubmittedData(input=data) if isinstance(data, str) else data
        event = submitted(
            task_id,
            task,
            tenant=tenant or self.tenant,
            source=source or self.source,
            event_id=event_id,
        )
        await self.publish_event(event)
        return event

    async def cancel(
        self, task_id: str, *, reason: str = "", tenant: str | None = None
    ) -> TaskCancelRequested:
        """Ask stepbus to stop a task; it ends with ``TaskCancelled`` (unless it ended first)."""
        event = cancel_requested(
            task_id, reason=reason, tenant=tenant or self.tenant, source=self.source
        )
        await self.publish_event(event)
        return event

    async def decide(
        self,
        task_id: str,
        approval_id: str,
        decision: Literal["approve", "deny"],
        *,
        by: str,
        reason: str = "",
        tenant: str | None = None,
    ) -> ApprovalDecided:
        """Decide an ``ApprovalRequested`` of a task; the first decision of an approval stands."""
        event = approval_decided(
            task_id,
            approval_id,
            decision,
            by=by,
            reason=reason,
            tenant=tenant or self.tenant,
            source=self.source,
        )
        await self.publish_event(event)
        return event

    @overload
    def on_result(
        self,
        *,
        terminal_only: Literal[True] = True,
        tenant: str | None = None,
        group_id: str | None = None,
        auto_offset_reset: Literal["earliest", "latest"] = "earliest",
    ) -> Callable[[_T], _T]: ...

    @overload
    def on_result(
        self,
        *,
        terminal_only: Literal[False],
        tenant: str | None = None,
        group_id: str | None = None,
        auto_offset_reset: Literal["earliest", "latest"] = "earliest",
    ) -> Callable[[_R], _R]: ...

    def on_result(
        self,
        *,
        terminal_only: bool = True,
        tenant: str | None = None,
        group_id: str | None = None,
        auto_offset_reset: Literal["earliest", "latest"] = "earliest",
    ) -> Callable[[Any], Any]:
        """Register a handler of the ``results`` topic: ``@router.on_result(...)``.

        The handler is called with one typed event and its record is committed after it
        returns; if it raises, the record is delivered again after a pause (0.2 s doubling to
        5 s), so a result is never lost to a crash or a failing handler (see the module
        docstring). Delivery is at-least-once: make the handler idempotent (e.g. record by
        task id). Records are handled one at a time, in order per task.

        Args:
            terminal_only: Only ``TaskCompleted | TaskFailed | TaskCancelled`` (the handler's
                parameter type); False adds ``TaskProgress``, ``ApprovalRequested`` and
                ``ApprovalResolved`` (``Result``).
            tenant: Only events of this tenant; None: every tenant on the topic.
            group_id: The consumer group (default: the router's). One per subscription:
                two subscriptions in one group would split the partitions between them.
            auto_offset_reset: Where a group without committed offsets starts: ``earliest``
                (default) also delivers results published before it first ran.

        Raises:
            ValueError: No group id, or one another subscription of this router uses.
        """
        group = group_id or self.group_id
        if group is None:
            raise ValueError("on_result needs a group_id (here or on the router): commits are "
                             "how a restarted consumer resumes")  # fmt: skip
        if group in self._groups:
            raise ValueError(f"group {group!r} already has a subscription: give each its own")
        self._groups.add(group)

        def register(handler: Callable[[Any], Awaitable[object]]) -> Any:
            subscription = ResultSubscription(
                handler,
                terminal_only=terminal_only,
                tenant=tenant,
                payloads_topic=self.topics.payloads,
                new_consumer=lambda: self.config.builder,
            )
            self.subscriber(
                self.topics.results,
                group_id=group,
                auto_offset_reset=auto_offset_reset,
                ack_policy=AckPolicy.NACK_ON_ERROR,
                parser=tolerant_parser,
                decoder=raw_body,
                no_reply=True,
                title=f"{self.topics.results}:{getattr(handler, '__name__', 'handler')}",
                description="stepbus results (CloudEvents 1.0, structured JSON mode).",
            )(subscription.consume)
            return handler

        return register
