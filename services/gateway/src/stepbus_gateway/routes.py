"""HTTP handlers: submit, inspect, stream and cancel tasks; health, readiness and metrics.

Task ids in paths are single segments (no ``path`` converter): a task id never contains '/',
and an encoded one (``%2F``) is refused, so ``/v1/tasks/<id>``, ``/v1/tasks/<id>/events`` and
``/v1/tasks/<id>/cancel`` can never be taken for one another.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, cast, get_args
from urllib.parse import quote
from uuid import uuid4

from aiokafka.errors import KafkaError
from opentelemetry import propagate, trace
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from stepbus_contracts import (
    ApprovalDecided,
    ApprovalDecidedData,
    CloudEvent,
    MemoryDocumentAdded,
    MemoryDocumentAddedData,
    MemoryForgetRequested,
    MemoryForgetRequestedData,
    TaskCancelRequested,
    TaskCancelRequestedData,
    TaskSubmitted,
    TaskSubmittedData,
    derive_id,
)
from stepbus_runtime import Emit, EventPublisher, clip
from stepbus_runtime.tracing import TASK_ID, TENANT, new_root

from .auth import KeyRing, Principal
from .bodies import read_json_body
from .errors import ApiError, ClientGone
from .fanout import Subscribers
from .feed import ResultsFeed
from .openapi import document
from .projection import TaskProjection, TaskStatus, TaskView
from .rebuild import ProjectionRebuilder
from .settings import GatewaySettings
from .sse import task_event_stream, tenant_event_stream
from .tenants import RateLimiter
from .ui import ui_routes

__all__ = ["EXCEPTION_HANDLERS", "OPEN_KEY_ID", "SOURCE", "Services", "TaskId", "routes"]

log = logging.getLogger(__name__)

SOURCE = "urn:stepbus:gateway"
RETRY_AFTER_SECONDS = 2
"""What a 503 asks the client to wait before retrying."""

_IDEMPOTENCY_KEY = re.compile(r"[!-~]{1,256}")
_tracer = trace.get_tracer("stepbus.gateway")
_MAX_DETAILS = 20


TaskId = Annotated[str, *CloudEvent.model_fields["subject"].metadata]
"""A task id as the contract defines one (the CloudEvents ``subject``): it never holds '/'."""

_TASK_ID = TypeAdapter(TaskId)
_TASK_ID_SCHEMA = _TASK_ID.json_schema()
TASK_ID_RULE = (
    f"a task id is {_TASK_ID_SCHEMA.get('minLength', 1)}-{_TASK_ID_SCHEMA.get('maxLength')} "
    f"characters matching {_TASK_ID_SCHEMA.get('pattern')}"
)

_M = TypeVar("_M", bound=BaseModel)


@dataclass(frozen=True)
class Services:
    """What the handlers use, built by the app's lifespan."""

    settings: GatewaySettings
    publisher: EventPublisher
    projection: TaskProjection
    subscribers: Subscribers
    feed: ResultsFeed
    rebuilder: ProjectionRebuilder
    keys: KeyRing
    limiter: RateLimiter


class SubmitTaskRequest(TaskSubmittedData):
    """Body of ``POST /v1/tasks``: the task, and optionally its id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_id: TaskId = Field(
        default_factory=lambda: str(uuid4()), description="Task id; a new UUID when omitted."
    )


class CancelTaskRequest(BaseModel):
    """Body of ``POST /v1/tasks/{id}/cancel`` (optional)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reason: str = Field(default="", max_length=2_000, description="Why, for the audit trail.")


def _services(request: Request) -> Services:
    services: Services = request.state.services
    return services


OPEN_KEY_ID = "open"
"""The key id of requests in open development mode (no API keys configured)."""


async def _principal(request: Request) -> Principal:
    """Who is asking: the principal of the request's API key (401 without a known one), or the
    open development mode's (tenant ``default``, no roles). Rate-limited per key (429)."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cast(Principal, cached)
    services = _services(request)
    keys = services.keys
    keys.reload_if_changed()
    if keys.open:
        principal = Principal(services.settings.default_tenant, frozenset(), OPEN_KEY_ID)
    else:
        header = request.headers.get("authorization")
        # A slow (scrypt) hash of a key not seen yet would block the event loop: off it.
        if keys.has_slow_hashes:
            found = await asyncio.to_thread(keys.authenticate, header)
        else:
            found = keys.authenticate(header)
        if found is None:
            given = "authorization" in request.headers
            raise ApiError(
                401,
                "unknown API key" if given else "missing API key: send Authorization: Bearer <key>",
                challenge=True,
            )
        principal = found
    wait = services.limiter.take(principal.key_id)
    if wait > 0:
        raise ApiError(
            429,
            f"rate limit of {services.settings.rate_limit_per_second:g} requests/s for this key "
            "exceeded; retry later",
            retry_after=max(1, math.ceil(wait)),
        )
    request.state.principal = principal
    return principal


async def _tenant(request: Request) -> str:
    return (await _principal(request)).tenant


def path_task_id(scope: Mapping[str, Any], task_id: str) -> str:
    """The task id of a request path, checked (400) against the task id rule.

    ``task_id`` is the decoded path segment the route matched; the raw path shows whether the
    client encoded a '/' into it (more '/' in the decoded path than in the raw one), which
    would otherwise make ``pc-1%2Fevents`` the events of task ``pc-1``.
    """
    raw_path = scope.get("raw_path")
    if raw_path is not None and raw_path.count(b"/") != scope["path"].count("/"):
        raise ApiError(400, f"the path holds an encoded '/' (%2F): {TASK_ID_RULE}")
    try:
        return _TASK_ID.validate_python(task_id)
    except ValidationError:
        raise ApiError(400, f"invalid task id {clip(task_id, 80)!r}: {TASK_ID_RULE}") from None


def _task_id(request: Request) -> str:
    return path_task_id(request.scope, request.path_params["task_id"])


async def _body(request: Request) -> bytes:
    settings = _services(request).settings
    return await read_json_body(
        request, limit=settings.max_body_bytes, wait_seconds=settings.body_timeout_seconds
    )


def _parse(model: type[_M], body: bytes) -> _M:
    try:
        return model.model_validate_json(body or b"{}", strict=True)  # as the contract: no coercion
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if any(err["type"] == "json_invalid" for err in errors):
            message = "request body is not valid JSON"
        else:
            message = f"request body is invalid ({len(errors)} problem(s); see details)"
        details = [
            {
                "field": ".".join(str(part) for part in err["loc"]) or None,
                "message": err["msg"],
                "type": err["type"],
            }
            for err in errors[:_MAX_DETAILS]
        ]
        raise ApiError(422, message, details) from None


async def _projection_whole(services: Services) -> bool:
    generation = await services.projection.generation()
    return generation is not None and generation.ready


def _rebuilding(what: str) -> ApiError:
    return ApiError(
        503,
        f"the task store is being rebuilt from Kafka; {what}: retry in a few seconds",
        retry_after=RETRY_AFTER_SECONDS,
    )


async def _view(services: Services, tenant: str, task_id: str) -> TaskView:
    """The task's view; 404 when the tenant has no such task, 503 while that is not known."""
    view = await services.projection.get(tenant, task_id)
    if view is not None:
        return view
    if not await _projection_whole(services):
        raise _rebuilding(f"task {task_id!r} may not be back yet")
    raise ApiError(404, f"no task {task_id!r}")


async def _publish(services: Services, event: CloudEvent) -> None:
    try:
        await asyncio.wait_for(
            services.publisher.publish([Emit(services.settings.topics.tasks, event)]),
            services.settings.publish_timeout_seconds,
        )
    except (KafkaError, TimeoutError) as exc:
        raise ApiError(
            503,
            f"Kafka did not acknowledge the request ({type(exc).__name__}); retry later",
            retry_after=RETRY_AFTER_SECONDS,
        ) from exc


def _urls(task_id: str) -> tuple[str, str]:
    path = f"/v1/tasks/{quote(task_id, safe='')}"
    return path, f"{path}/events"


async def submit_task(request: Request) -> Response:
    """Accept a task: record it as submitted, publish ``TaskSubmitted``, answer 202.

    The tenant and roles come from the API key. With an ``Idempotency-Key`` the task id is
    derived from it (unless the body names one), so a retried submit, to any replica and after
    any restart, answers with the same task instead of starting another. 503 while the
    projection is being rebuilt: it cannot tell yet whether the task id exists.
    """
    services = _services(request)
    principal = await _principal(request)
    tenant = principal.tenant
    raw = await _body(request)
    body = _parse(SubmitTaskRequest, raw)
    if "roles" in body.model_fields_set:
        raise ApiError(
            422,
            "request body is invalid (1 problem(s); see details)",
            [{"field": "roles", "message": "roles come from the API key", "type": "forbidden"}],
        )
    idempotency = _idempotency_key(request)
    task_id = body.task_id
    if idempotency is not None and "task_id" not in body.model_fields_set:
        task_id = derive_id(tenant, "idempotency", idempotency)
    if not await _projection_whole(services):
        raise _rebuilding("whether this task id is taken is not known yet")
    fingerprint = hashlib.sha256(raw).hexdigest()
    if not await services.projection.create(tenant, task_id, fingerprint=fingerprint):
        if idempotency is None:
            raise ApiError(409, f"task {task_id!r} already exists; submit with another task_id")
        known = await services.projection.fingerprint(tenant, task_id)
        if known is not None and known != fingerprint:
            raise ApiError(
                422, "this Idempotency-Key was used for a different request; use a new key"
            )
        view = await _view(services, tenant, task_id)
        return _accepted(task_id, view.status, replayed=True)
    data = body.model_dump(exclude={"task_id"})
    data["roles"] = sorted(principal.roles)
    event = TaskSubmitted(
        # Derived from the task, so a retried submit is a duplicate the planner drops.
        id=derive_id(f"{tenant}/{task_id}", "submitted"),
        source=SOURCE,
        subject=task_id,
        tenant=tenant,
        data=TaskSubmittedData.model_validate(data),
    )
    # The task's trace starts here: a root planned now (continuing the caller's trace, if it
    # sent one) and recorded by the planner when the task ends; this request's server span is
    # linked, not the parent, so the task's trace is one tree under ``invoke_agent``.
    server = trace.get_current_span()
    server.set_attributes({TASK_ID: task_id, TENANT: tenant})
    upstream = trace.get_current_span(propagate.extract(request.headers)).get_span_context()
    root = new_root(upstream if upstream.is_valid else None, sampled=server.is_recording())
    with _tracer.start_as_current_span(
        f"send {services.settings.topics.tasks}",
        context=trace.set_span_in_context(trace.NonRecordingSpan(root)),
        kind=trace.SpanKind.PRODUCER,
        links=[trace.Link(server.get_span_context())] if server.get_span_context().is_valid else [],
        attributes={
            TASK_ID: task_id,
            TENANT: tenant,
            "messaging.system": "kafka",
            "messaging.operation.type": "send",
            "messaging.destination.name": services.settings.topics.tasks,
            "messaging.message.id": event.id,
        },
    ):
        try:
            await _publish(services, event)
        except ApiError:
            await services.projection.discard(tenant, task_id)
            raise
    return _accepted(task_id, "submitted")


def _accepted(task_id: str, status: str, *, replayed: bool = False) -> JSONResponse:
    status_url, events_url = _urls(task_id)
    headers = {"Location": status_url}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(
        {
            "task_id": task_id,
            "status": status,
            "status_url": status_url,
            "events_url": events_url,
        },
        status_code=202,
        headers=headers,
    )


def _idempotency_key(request: Request) -> str | None:
    values = request.headers.getlist("idempotency-key")
    if not values:
        return None
    value = values[0].strip()
    if len(values) != 1 or not _IDEMPOTENCY_KEY.fullmatch(value):
        raise ApiError(400, "Idempotency-Key must be one value of 1-256 printable characters")
    return value


async def get_task(request: Request) -> Response:
    """The task's status and result."""
    services = _services(request)
    tenant, task_id = await _tenant(request), _task_id(request)
    view = await _view(services, tenant, task_id)
    return JSONResponse(view.to_json())


async def stream_task_events(request: Request) -> Response:
    """The task's events as SSE: stored ones, then live ones, closing after the terminal one.

    503 while the projection is being rebuilt: the replay would miss events not back yet.
    """
    services = _services(request)
    tenant, task_id = await _tenant(request), _task_id(request)
    if not await _projection_whole(services):
        raise _rebuilding(f"the events of task {task_id!r} may not all be back yet")
    await _view(services, tenant, task_id)
    stream = task_event_stream(
        request=request,
        projection=services.projection,
        subscribers=services.subscribers,
        tenant=tenant,
        task_id=task_id,
        last_event_id=request.headers.get("Last-Event-ID"),
        heartbeat_seconds=services.settings.sse_heartbeat_seconds,
    )
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def cancel_task(request: Request) -> Response:
    """Ask the planner to stop the task; it ends with ``stepbus.task.cancelled``."""
    services = _services(request)
    tenant, task_id = await _tenant(request), _task_id(request)
    body = _parse(CancelTaskRequest, await _body(request))
    view = await _view(services, tenant, task_id)
    if view.terminal:
        raise ApiError(409, f"task {task_id!r} has already ended ({view.status})")
    event = TaskCancelRequested(
        source=SOURCE,
        subject=task_id,
        tenant=tenant,
        data=TaskCancelRequestedData(reason=body.reason),
    )
    await _publish(services, event)
    status_url, _ = _urls(task_id)
    return JSONResponse(
        {"task_id": task_id, "status": view.status, "cancel_requested": True},
        status_code=202,
        headers={"Location": status_url},
    )


async def list_tasks(request: Request) -> Response:
    """The tenant's tasks, most recently updated first: ``?status=`` (repeatable) filters,
    ``?limit=`` (1-200, default 50) pages, ``?cursor=`` continues from ``next_cursor``."""
    services = _services(request)
    tenant = await _tenant(request)
    params = request.query_params
    statuses = set(params.getlist("status"))
    unknown = statuses - set(get_args(TaskStatus))
    if unknown:
        raise ApiError(
            400, f"unknown status {sorted(unknown)}; one of {list(get_args(TaskStatus))}"
        )
    limit = _int_param(params.get("limit"), "limit", 1, 200, default=50)
    before = None
    if (cursor := params.get("cursor")) is not None:
        try:
            before = float(base64.urlsafe_b64decode(cursor.encode()).decode())
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "cursor is not one this gateway gave; start without one") from None
    tasks: list[dict[str, Any]] = []
    next_cursor = None
    while len(tasks) < limit:
        page = await services.projection.recent(tenant, before=before, limit=limit)
        if not page:
            break
        for view, score in page:
            before = score
            if not statuses or view.status in statuses:
                tasks.append(view.to_json())
                if len(tasks) == limit:
                    break
        if len(page) < limit:
            break
    if len(tasks) == limit and before is not None:
        next_cursor = base64.urlsafe_b64encode(repr(before).encode()).decode()
    return JSONResponse({"tasks": tasks, "next_cursor": next_cursor})


def _int_param(value: str | None, name: str, low: int, high: int, *, default: int) -> int:
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
        raise ApiError(400, f"{name} must be an integer from {low} to {high}")
    return int(value)


class DecideApprovalRequest(BaseModel):
    """Body of ``POST /v1/tasks/{id}/approvals/{approval_id}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    decision: Literal["approve", "deny"] = Field(description="`approve` or `deny`.")
    reason: str = Field(default="", max_length=2_000, description="Why, for the audit trail.")


async def list_approvals(request: Request) -> Response:
    """The tenant's approvals still waiting for a decision, oldest first."""
    services = _services(request)
    tenant = await _tenant(request)
    waiting = await services.projection.waiting_approvals(tenant)
    return JSONResponse(
        {"approvals": [{"task_id": event["subject"], **event["data"]} for event in waiting]}
    )


async def decide_approval(request: Request) -> Response:
    """Approve or deny a waiting approval: publishes ``stepbus.approval.decided``. The key must
    carry a role the approval names (403), in open development mode anyone may decide."""
    services = _services(request)
    principal = await _principal(request)
    task_id = _task_id(request)
    approval_id = request.path_params["approval_id"]
    body = _parse(DecideApprovalRequest, await _body(request))
    waiting = {
        (e["subject"], e["data"]["approval_id"]): e["data"]
        for e in await services.projection.waiting_approvals(principal.tenant)
    }
    approval = waiting.get((task_id, approval_id))
    if approval is None:
        raise ApiError(404, f"no approval {clip(approval_id, 80)!r} waits for task {task_id!r}")
    approvers = set(approval.get("approvers") or ())
    if approvers and principal.key_id != OPEN_KEY_ID and not approvers & principal.roles:
        raise ApiError(
            403, f"this approval needs one of the roles {sorted(approvers)}; this key has none"
        )
    event = ApprovalDecided(
        id=derive_id(principal.tenant, task_id, approval_id, "decided", principal.key_id),
        source=SOURCE,
        subject=task_id,
        tenant=principal.tenant,
        data=ApprovalDecidedData(
            approval_id=approval_id, decision=body.decision, by=principal.key_id,
            reason=body.reason,
        ),
    )  # fmt: skip
    await _publish(services, event)
    status_url, _ = _urls(task_id)
    return JSONResponse(
        {"task_id": task_id, "approval_id": approval_id, "decision": body.decision},
        status_code=202,
        headers={"Location": status_url},
    )


async def forget_session(request: Request) -> Response:
    """Forget a session's memory (short- and long-term): publishes
    ``stepbus.memory.forget_requested``."""
    services = _services(request)
    tenant = await _tenant(request)
    session_id = request.path_params["session_id"]
    try:
        data = MemoryForgetRequestedData(scope="session", session_id=session_id)
    except ValidationError:
        raise ApiError(400, "a session id is 1-256 characters") from None
    event = MemoryForgetRequested(
        id=str(uuid4()), source=SOURCE, subject=f"forget-{uuid4()}", tenant=tenant, data=data
    )
    await _publish(services, event)
    return JSONResponse({"session_id": session_id, "forget_requested": True}, status_code=202)


class AddDocumentRequest(MemoryDocumentAddedData):
    """Body of ``POST /v1/memory/documents``: the document, and optionally its id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    document_id: TaskId = Field(
        default_factory=lambda: str(uuid4()),
        description="Document id (the same id again adds nothing); a new UUID when omitted.",
    )


async def add_document(request: Request) -> Response:
    """Add a document to the tenant's long-term memory: publishes
    ``stepbus.memory.document_added``."""
    services = _services(request)
    tenant = await _tenant(request)
    body = _parse(AddDocumentRequest, await _body(request))
    event = MemoryDocumentAdded(
        id=derive_id(tenant, "document", body.document_id),
        source=SOURCE,
        subject=body.document_id,
        tenant=tenant,
        data=MemoryDocumentAddedData.model_validate(body.model_dump(exclude={"document_id"})),
    )
    await _publish(services, event)
    return JSONResponse({"document_id": body.document_id, "added": True}, status_code=202)


async def stream_tenant_events(request: Request) -> Response:
    """Every event of the tenant's tasks as SSE, from ``Last-Event-ID`` on (a position the
    stream gave), or from now without one. Never ends by itself."""
    services = _services(request)
    tenant = await _tenant(request)
    last = request.headers.get("Last-Event-ID")
    if last is not None and not (last.isascii() and last.isdigit()):
        raise ApiError(400, "Last-Event-ID of the tenant stream is a position it gave")
    stream = tenant_event_stream(
        request=request,
        feed=services.projection.feed,
        subscribers=services.subscribers,
        tenant=tenant,
        after=int(last) if last is not None else None,
        heartbeat_seconds=services.settings.sse_heartbeat_seconds,
    )
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def healthz(request: Request) -> Response:
    """Liveness: the process serves HTTP."""
    return PlainTextResponse("ok\n")


async def readyz(request: Request) -> Response:
    """Readiness: Redis answers, the results feed runs and is not stuck, the projection whole.

    A 503 body has one line per reason.
    """
    services = _services(request)
    problems = [why for ok, why in (services.feed.health(), services.rebuilder.health()) if not ok]
    try:
        whole = await asyncio.wait_for(_projection_whole(services), 2.0)
    except (RedisError, OSError, TimeoutError):
        problems.insert(0, "redis: not answering")
    else:
        if not whole:
            problems.append(services.rebuilder.progress())
    if problems:
        return PlainTextResponse("".join(f"{line}\n" for line in problems), status_code=503)
    return PlainTextResponse("ready\n")


async def openapi(request: Request) -> Response:
    """The OpenAPI document (no key needed)."""
    return JSONResponse(document())


async def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def api_error(request: Request, exc: Exception) -> Response:
    """Render an ``ApiError``."""
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())


async def http_error(request: Request, exc: Exception) -> Response:
    """Render Starlette's own errors (unknown path, wrong method) like ours."""
    assert isinstance(exc, HTTPException)
    body = {"error": {"message": f"{exc.detail}: {request.method} {clip(request.url.path, 200)}"}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def client_gone(request: Request, exc: Exception) -> Response:
    """The client left mid-body: one line in the log, and a response nobody will read."""
    assert isinstance(exc, ClientGone)
    log.info("%s %s: %s", request.method, clip(request.url.path, 200), exc)
    return Response(status_code=400)


async def redis_error(request: Request, exc: Exception) -> Response:
    """Redis is down: the caller may retry later."""
    body: dict[str, Any] = {
        "error": {"message": f"the task store is unavailable ({type(exc).__name__}); retry later"}
    }
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def routes() -> list[BaseRoute]:
    """The gateway's routes (task ids are single path segments: see the module)."""
    return [
        Route("/v1/tasks", submit_task, methods=["POST"]),
        Route("/v1/tasks", list_tasks, methods=["GET"]),
        Route("/v1/events", stream_tenant_events, methods=["GET"]),
        Route("/v1/approvals", list_approvals, methods=["GET"]),
        Route("/v1/tasks/{task_id}/approvals/{approval_id}", decide_approval, methods=["POST"]),
        Route("/v1/sessions/{session_id}", forget_session, methods=["DELETE"]),
        Route("/v1/memory/documents", add_document, methods=["POST"]),
        Route("/v1/tasks/{task_id}/events", stream_task_events, methods=["GET"]),
        Route("/v1/tasks/{task_id}/cancel", cancel_task, methods=["POST"]),
        Route("/v1/tasks/{task_id}", get_task, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        *ui_routes(),
    ]


EXCEPTION_HANDLERS = {
    ApiError: api_error,
    ClientGone: client_gone,
    HTTPException: http_error,
    RedisError: redis_error,
}
