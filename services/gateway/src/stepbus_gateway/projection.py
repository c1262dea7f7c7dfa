"""The task projection in Redis: each task's status and its stored results events.

A cache, not the truth: it is a fold of the ``results`` topic and is rebuilt from it. Keys, per
tenant and task::

    stepbus:gw:{tenant}:{<task id>}          hash: status, output, error, steps, updated_at
    stepbus:gw:{tenant}:{<task id>}:events   list: event JSON in arrival order (capped)
    stepbus:gw:{tenant}:{<task id>}:seen     set: ids of events already applied

The task id sits in braces: braces cannot occur in a task id, so ``a:events`` cannot collide
with the list of task ``a``, and the braces make it the Redis Cluster hash tag, so the three
keys share a slot as the scripts below require. Writes are Lua scripts, atomic in Redis, so
gateway replicas sharing one Redis apply an event once and never regress a terminal status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError
from stepbus_contracts import TaskCancelled, TaskCompleted, TaskFailed, TaskProgress, utcnow

__all__ = [
    "TERMINAL_STATUSES",
    "TERMINAL_TYPES",
    "ResultEvent",
    "TaskProjection",
    "TaskStatus",
    "TaskView",
    "event_id_and_type",
    "status_fields",
]

TaskStatus = Literal["submitted", "running", "completed", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
TERMINAL_TYPES: frozenset[str] = frozenset(
    {"stepbus.task.completed", "stepbus.task.failed", "stepbus.task.cancelled"}
)

ResultEvent: TypeAlias = TaskProgress | TaskCompleted | TaskFailed | TaskCancelled
"""What the results topic carries (the union ``results_adapter`` decodes)."""

# KEYS: hash; ARGV: ttl, then field/value pairs. Creates the task unless it exists.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS: hash, events, seen; ARGV: event id, event JSON, ttl, max events, field/value pairs.
# Drops an event already seen; stores it otherwise; a terminal status is never overwritten.
_APPLY = """
if redis.call('SADD', KEYS[3], ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'completed' and status ~= 'failed' and status ~= 'cancelled' then
  redis.call('HSET', KEYS[1], unpack(ARGV, 5))
end
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
return 1
"""

# KEYS: hash, events, seen. Forgets a task nothing has happened to yet (its submit failed).
_DISCARD = """
if redis.call('HGET', KEYS[1], 'status') == 'submitted' and redis.call('EXISTS', KEYS[2]) == 0
then return redis.call('DEL', KEYS[1], KEYS[3]) end
return 0
"""


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
        ttl_seconds: Every key of a task expires this long after the task's last write.
        max_events: Most events kept per task; older ones are trimmed.
    """

    def __init__(self, redis: Redis, *, ttl_seconds: int, max_events: int = 2000) -> None:
        self._redis = redis
        self._ttl = ttl_seconds
        self._max_events = max_events
        self._create = redis.register_script(_CREATE)
        self._apply = redis.register_script(_APPLY)
        self._discard = redis.register_script(_DISCARD)

    @staticmethod
    def keys(tenant: str, task_id: str) -> tuple[str, str, str]:
        """The hash, events and seen keys of a task."""
        base = f"stepbus:gw:{tenant}:{{{task_id}}}"
        return base, f"{base}:events", f"{base}:seen"

    async def create(self, tenant: str, task_id: str) -> bool:
        """Record a newly submitted task; ``False`` when the tenant already has this task id."""
        now = utcnow().isoformat()
        fields = {"task_id": task_id, "tenant": tenant, "status": "submitted", "updated_at": now}
        hash_key = self.keys(tenant, task_id)[0]
        created = await self._create(keys=[hash_key], args=[self._ttl, *_flatten(fields)])
        return bool(created)

    async def discard(self, tenant: str, task_id: str) -> None:
        """Forget a task whose submission was not published, so the client may retry it."""
        await self._discard(keys=list(self.keys(tenant, task_id)))

    async def apply(self, event: ResultEvent) -> bool:
        """Fold a results event into its task; ``False`` when the event was applied before."""
        args = [event.id, event.model_dump_json(), self._ttl, self._max_events]
        args += _flatten(status_fields(event))
        applied = await self._apply(keys=list(self.keys(event.tenant, event.subject)), args=args)
        return bool(applied)

    async def get(self, tenant: str, task_id: str) -> TaskView | None:
        """The task's status, or ``None`` when this tenant has no such task."""
        fields = cast(dict[str, str], await self._redis.hgetall(self.keys(tenant, task_id)[0]))
        return TaskView.from_hash(fields) if fields else None

    async def snapshot(self, tenant: str, task_id: str) -> tuple[TaskView | None, list[str]]:
        """The task's status and stored events (JSON, oldest first), read atomically."""
        hash_key, events_key, _ = self.keys(tenant, task_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(hash_key)
            pipe.lrange(events_key, 0, -1)
            fields, events = await pipe.execute()
        return (TaskView.from_hash(fields) if fields else None), list(events)

    async def ping(self) -> bool:
        """Whether Redis answers."""
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False


def event_id_and_type(event_json: str) -> tuple[str, str]:
    """The ``id`` and ``type`` of a stored event."""
    event = json.loads(event_json)
    return str(event["id"]), str(event["type"])
