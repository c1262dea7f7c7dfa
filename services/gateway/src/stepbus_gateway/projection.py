"""The task projection in Redis: each task's status and its stored results events.

A cache, not the truth: it is a fold of the ``results`` topic and is rebuilt from it
(``rebuild``). Keys live under the results topic's name (``ns``), so deployments with
different topic prefixes can share a Redis; per tenant and task::

    stepbus:gw:{ns}:{tenant}:{<task id>}          hash: status, output, error, steps, updated_at,
                                                  offset (of the event that set the status)
    stepbus:gw:{ns}:{tenant}:{<task id>}:events   sorted set: event JSON scored by its offset
    stepbus:gw:{ns}:{tenant}:{<task id>}:seen     set: ids of events already applied
    stepbus:gw:{ns}:generation                    hash: epoch, state (rebuilding | ready), since
    stepbus:gw:{ns}:{tenant}:tasks                sorted set: task ids by last update (epoch s)
    stepbus:gw:{ns}:{tenant}:approvals            hash: approval id -> the waiting approval's
                                                  event JSON (removed when it is resolved)

The two tenant indexes are written beside the task's script, not in it (they live in other
Redis Cluster slots); they are rebuilt with the rest, and a reader checks each entry against
the task's own hash, which is the truth of the projection.

The task id sits in braces: braces cannot occur in a task id, so ``a:events`` cannot collide
with the events of task ``a``, and the braces make it the Redis Cluster hash tag, so the three
keys of a task share a slot as the scripts below require (each script touches one slot).

Writes are Lua scripts, atomic in Redis, so gateway replicas sharing one Redis apply an event
once and never regress a terminal status. Events are ordered by their offset in ``results``
(all of a task's events are in one partition), not by when they were applied: replicas, and a
rebuild running beside the live feed, may apply a task's events in any interleaving and the
stored order is still the topic's order; the status is set only by a later offset than the one
that set it last.

The ``generation`` hash says whether the projection is whole. Redis losing it (``FLUSHALL``, a
restart without persistence, eviction) loses the generation too, which is how a replica notices
that the projection must be rebuilt from the topic.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, cast

from redis.asyncio import Redis
from redis.exceptions import (
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from stepbus_contracts import (
    ApprovalRequested,
    ApprovalResolved,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskProgress,
    utcnow,
)

from .tenants import TenantFeed

__all__ = [
    "TERMINAL_STATUSES",
    "TERMINAL_TYPES",
    "Generation",
    "ResultEvent",
    "TaskProjection",
    "TaskStatus",
    "TaskView",
    "event_id_and_type",
    "is_outage",
    "status_fields",
]

TaskStatus = Literal["submitted", "running", "waiting", "completed", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
TERMINAL_TYPES: frozenset[str] = frozenset(
    {"stepbus.task.completed", "stepbus.task.failed", "stepbus.task.cancelled"}
)

ResultEvent: TypeAlias = (
    TaskProgress | ApprovalRequested | ApprovalResolved | TaskCompleted | TaskFailed | TaskCancelled
)
"""What the results topic carries (the union ``results_adapter`` decodes)."""

_OUTAGES = (
    RedisConnectionError,  # also refused auth and a server still loading its data
    RedisTimeoutError,
    OutOfMemoryError,
    ReadOnlyError,  # a replica being promoted
    TryAgainError,
    ClusterDownError,
    OSError,
)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means Redis is unavailable (wait for it), not that a write is wrong."""
    return isinstance(exc, _OUTAGES)


# KEYS: hash; ARGV: ttl, then field/value pairs. Creates the task unless it exists.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS: hash, events, seen; ARGV: event id, event JSON, offset, ttl, max events, field/value
# pairs. Drops an event already seen; stores it at its offset otherwise; the status is set by
# a later offset than the last one only, and a terminal status is never overwritten.
_APPLY = """
if redis.call('SADD', KEYS[3], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[5]) - 1)
local status = redis.call('HGET', KEYS[1], 'status')
local last = tonumber(redis.call('HGET', KEYS[1], 'offset') or '-1')
if status ~= 'completed' and status ~= 'failed' and status ~= 'cancelled'
   and tonumber(ARGV[3]) > last then
  redis.call('HSET', KEYS[1], 'offset', ARGV[3], unpack(ARGV, 6))
end
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
return 1
"""

# KEYS: hash, events, seen. Forgets a task nothing has happened to yet (its submit failed).
_DISCARD = """
if redis.call('HGET', KEYS[1], 'status') == 'submitted' and redis.call('EXISTS', KEYS[2]) == 0
then return redis.call('DEL', KEYS[1], KEYS[3]) end
return 0
"""

# KEYS: generation; ARGV: a new epoch, now. Starts a generation (rebuilding) unless one exists.
_BEGIN = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'state', 'rebuilding', 'since', ARGV[2])
end
return redis.call('HMGET', KEYS[1], 'epoch', 'state')
"""

# KEYS: generation; ARGV: epoch. Marks the generation rebuilt, unless another one began since.
_REBUILT = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'ready')
return 1
"""


@dataclass(frozen=True)
class Generation:
    """One life of the projection: it begins when a replica finds the projection lost."""

    epoch: str
    ready: bool
    """False while the projection is being rebuilt from the topic."""


@dataclass(frozen=True)
class TaskView:
    """What ``GET /v1/tasks/{id}`` shows of a task."""

    task_id: str
    tenant: str
    status: TaskStatus
    output: str | None
    error_reason: str | None
    error_message: str | None
    steps: int | None
    updated_at: str

    @property
    def terminal(self) -> bool:
        """Whether the task has ended."""
        return self.status in TERMINAL_STATUSES

    def to_json(self) -> dict[str, Any]:
        """The public JSON representation."""
        error = None
        if self.error_reason is not None:
            error = {"reason": self.error_reason, "message": self.error_message or ""}
        return {
            "task_id": self.task_id,
            "tenant": self.tenant,
            "status": self.status,
            "output": self.output,
            "error": error,
            "steps": self.steps,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_hash(cls, fields: dict[str, str]) -> TaskView:
        """Read the Redis hash of a task."""
        steps = fields.get("steps")
        return cls(
            task_id=fields["task_id"],
            tenant=fields["tenant"],
            status=fields["status"],  # type: ignore[arg-type]
            output=fields.get("output"),
            error_reason=fields.get("error_reason"),
            error_message=fields.get("error_message"),
            steps=int(steps) if steps is not None else None,
            updated_at=fields.get("updated_at", ""),
        )


def status_fields(event: ResultEvent) -> dict[str, str]:
    """The hash fields an event sets (unless the task already ended)."""
    fields = {
        "task_id": event.subject,
        "tenant": event.tenant,
        "updated_at": event.time.isoformat(),
    }
    match event:
        case TaskProgress():
            fields["status"] = "running"
        case ApprovalRequested():
            fields["status"] = "waiting"  # for an approval
        case ApprovalResolved():
            fields["status"] = "running"
        case TaskCompleted(data=data):
            fields.update(status="completed", output=data.output, steps=str(data.steps))
        case TaskFailed(data=data):
            fields.update(
                status="failed",
                error_reason=data.reason,
                error_message=data.message,
                steps=str(data.steps),
            )
        case TaskCancelled(data=data):
            fields.update(
                status="cancelled",
                error_reason="cancelled",
                error_message=data.reason,
                steps=str(data.steps),
            )
    return fields


def _flatten(fields: dict[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]


class TaskProjection:
    """Task status and events per tenant in Redis (a client with ``decode_responses=True``).

    Args:
        redis: The client.
        namespace: Names the projection in Redis: the results topic it folds.
        ttl_seconds: Every key of a task expires this long after the task's last write.
        max_events: Most events kept per task; the oldest (by offset) are trimmed.
        feed_events: Most events kept in each tenant's feed (``GET /v1/events``).
    """

    def __init__(
        self,
        redis: Redis,
        *,
        namespace: str,
        ttl_seconds: int,
        max_events: int = 2000,
        feed_events: int = 10_000,
    ) -> None:
        self.feed = TenantFeed(
            redis, namespace=namespace, max_events=feed_events, ttl_seconds=ttl_seconds
        )
        self._redis = redis
        self._ns = namespace
        self._ttl = ttl_seconds
        self._max_events = max_events
        self._create = redis.register_script(_CREATE)
        self._apply = redis.register_script(_APPLY)
        self._discard = redis.register_script(_DISCARD)
        self._begin = redis.register_script(_BEGIN)
        self._rebuilt = redis.register_script(_REBUILT)
        self.generation_key = f"stepbus:gw:{namespace}:generation"

    def keys(self, tenant: str, task_id: str) -> tuple[str, str, str]:
        """The hash, events and seen keys of a task."""
        base = f"stepbus:gw:{self._ns}:{tenant}:{{{task_id}}}"
        return base, f"{base}:events", f"{base}:seen"

    def tenant_keys(self, tenant: str) -> tuple[str, str]:
        """The task index and the waiting approvals of a tenant."""
        base = f"stepbus:gw:{self._ns}:{tenant}"
        return f"{base}:tasks", f"{base}:approvals"

    async def create(self, tenant: str, task_id: str, *, fingerprint: str = "") -> bool:
        """Record a newly submitted task; ``False`` when the tenant already has this task id.

        ``fingerprint`` identifies the request (an idempotent retry must repeat it exactly)."""
        now = utcnow()
        fields = {
            "task_id": task_id,
            "tenant": tenant,
            "status": "submitted",
            "updated_at": now.isoformat(),
            "request": fingerprint,
        }
        hash_key = self.keys(tenant, task_id)[0]
        created = await self._create(keys=[hash_key], args=[self._ttl, *_flatten(fields)])
        if created:
            index = self.tenant_keys(tenant)[0]
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zadd(index, {task_id: now.timestamp()})
                pipe.expire(index, self._ttl)
                await pipe.execute()
        return bool(created)

    async def _index(self, pipe: Any, event: ResultEvent) -> None:
        """Queue the tenant-index writes of an applied event on ``pipe``: its task's place in
        the tenant's list, the tenant's waiting approvals, and the tenant's feed."""
        await self.feed.append(event.tenant, event.model_dump_json(), client=pipe)
        tasks, approvals = self.tenant_keys(event.tenant)
        pipe.zadd(tasks, {event.subject: event.time.timestamp()}, gt=True)
        pipe.expire(tasks, self._ttl)
        if isinstance(event, ApprovalRequested):
            pipe.hset(approvals, event.data.approval_id, event.model_dump_json())
            pipe.expire(approvals, self._ttl)
        elif isinstance(event, ApprovalResolved):
            pipe.hdel(approvals, event.data.approval_id)

    async def recent(
        self, tenant: str, *, before: float | None = None, limit: int = 50
    ) -> list[tuple[TaskView, float]]:
        """The tenant's tasks, most recently updated first (before ``before``, a score of an
        earlier page), with their scores (the next page's cursor)."""
        index = self.tenant_keys(tenant)[0]
        top = f"({before}" if before is not None else "+inf"
        entries = await self._redis.zrevrangebyscore(
            index, top, "-inf", start=0, num=limit, withscores=True
        )
        if not entries:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for task_id, _ in entries:
                pipe.hgetall(self.keys(tenant, task_id)[0])
            hashes = await pipe.execute()
        return [
            (TaskView.from_hash(fields), score)
            for (_, score), fields in zip(entries, hashes, strict=True)
            if fields
        ]

    async def waiting_approvals(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's approvals still waiting (``stepbus.approval.requested`` events as
        JSON), of tasks that have not ended, oldest first."""
        approvals = self.tenant_keys(tenant)[1]
        raw = cast(dict[str, str], await self._redis.hgetall(approvals))
        events = sorted((json.loads(value) for value in raw.values()), key=lambda e: e["time"])
        waiting = []
        for event in events:
            view = await self.get(tenant, event["subject"])
            if view is not None and not view.terminal:
                waiting.append(event)
        return waiting

    async def discard(self, tenant: str, task_id: str) -> None:
        """Forget a task whose submission was not published, so the client may retry it."""
        await self._discard(keys=list(self.keys(tenant, task_id)))

    def _apply_args(self, event: ResultEvent, offset: int) -> tuple[list[str], list[Any]]:
        args: list[Any] = [event.id, event.model_dump_json(), offset, self._ttl, self._max_events]
        args += _flatten(status_fields(event))
        return list(self.keys(event.tenant, event.subject)), args

    async def apply(self, event: ResultEvent, offset: int) -> bool:
        """Fold a results event, read at ``offset`` of its partition, into its task.

        Returns ``False`` when the event was applied before (by id).
        """
        keys, args = self._apply_args(event, offset)
        applied = bool(await self._apply(keys=keys, args=args))
        if applied:
            async with self._redis.pipeline(transaction=False) as pipe:
                await self._index(pipe, event)
                await pipe.execute()
        return applied

    async def apply_many(self, events: Sequence[tuple[ResultEvent, int]]) -> int:
        """``apply`` each (event, offset) in one round trip; how many were new."""
        if not events:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for event, offset in events:
                keys, args = self._apply_args(event, offset)
                await self._apply(keys=keys, args=args, client=pipe)
            applied = await pipe.execute()
        async with self._redis.pipeline(transaction=False) as pipe:
            for (event, _), new in zip(events, applied, strict=True):
                if new:
                    await self._index(pipe, event)
            await pipe.execute()
        return sum(1 for new in applied if new)

    async def fingerprint(self, tenant: str, task_id: str) -> str | None:
        """The fingerprint of the request that created the task here (None when unknown, e.g.
        after a rebuild from the topic)."""
        value = await self._redis.hget(self.keys(tenant, task_id)[0], "request")
        return str(value) if value else None

    async def get(self, tenant: str, task_id: str) -> TaskView | None:
        """The task's status, or ``None`` when this tenant has no such task."""
        fields = cast(dict[str, str], await self._redis.hgetall(self.keys(tenant, task_id)[0]))
        return TaskView.from_hash(fields) if fields else None

    async def snapshot(self, tenant: str, task_id: str) -> tuple[TaskView | None, list[str]]:
        """The task's status and stored events (JSON, in topic order), read atomically."""
        hash_key, events_key, _ = self.keys(tenant, task_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(hash_key)
            pipe.zrange(events_key, 0, -1)
            fields, events = await pipe.execute()
        return (TaskView.from_hash(fields) if fields else None), list(events)

    async def generation(self) -> Generation | None:
        """The current generation; ``None`` when Redis lost it (the projection with it)."""
        epoch, state = await self._redis.hmget(self.generation_key, ["epoch", "state"])
        return None if epoch is None else Generation(str(epoch), state == "ready")

    async def begin_generation(self) -> Generation:
        """The current generation, or a new one (being rebuilt) when Redis has none."""
        epoch, state = await self._begin(
            keys=[self.generation_key], args=[uuid.uuid4().hex, utcnow().isoformat()]
        )
        return Generation(epoch, state == "ready")

    async def mark_rebuilt(self, epoch: str) -> bool:
        """Declare generation ``epoch`` whole; ``False`` when another generation began since."""
        return bool(await self._rebuilt(keys=[self.generation_key], args=[epoch]))


def event_id_and_type(event_json: str) -> tuple[str, str]:
    """The ``id`` and ``type`` of a stored event."""
    event = json.loads(event_json)
    return str(event["id"]), str(event["type"])
