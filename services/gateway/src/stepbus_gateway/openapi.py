"""``GET /openapi.json``: the gateway's OpenAPI 3.1 document, built from the request and
response models, with the auth scheme, every response code and example bodies."""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from .projection import TaskStatus

__all__ = ["document"]


class ErrorDetail(BaseModel):
    """One problem of a request body."""

    field: str | None = Field(description="The field, dotted (`critic.threshold`).")
    message: str = Field(description="What is wrong.")
    type: str = Field(description="The kind of problem.")


class ErrorInfo(BaseModel):
    """What went wrong."""

    message: str = Field(description="Phrased for a person: what to change.")
    details: list[ErrorDetail] | None = Field(default=None, description="Per field (422).")


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer."""

    error: ErrorInfo


class Accepted(BaseModel):
    """A task was accepted (or, with an `Idempotency-Key` already used, found)."""

    task_id: str
    status: TaskStatus
    status_url: str
    events_url: str


class TaskError(BaseModel):
    """Why a task failed or was cancelled."""

    reason: str
    message: str


class TaskView(BaseModel):
    """A task's status and result."""

    model_config = ConfigDict(title="Task")

    task_id: str
    tenant: str
    status: TaskStatus
    output: str | None
    error: TaskError | None
    steps: int | None
    updated_at: str = Field(description="RFC 3339.")


class TaskList(BaseModel):
    """A page of the tenant's tasks, most recently updated first."""

    tasks: list[TaskView]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class CancelAccepted(BaseModel):
    """A cancellation was published."""

    task_id: str
    status: TaskStatus
    cancel_requested: Literal[True]


class Approval(BaseModel):
    """A tool call waiting for a person's approval."""

    task_id: str
    approval_id: str
    step: int
    call_index: int
    tool: str
    arguments: dict[str, Any]
    approvers: list[str]
    rule: str
    reason: str
    expires_at: str


class ApprovalList(BaseModel):
    """The tenant's waiting approvals, oldest first."""

    approvals: list[Approval]


class DecisionAccepted(BaseModel):
    """A decision was published."""

    task_id: str
    approval_id: str
    decision: Literal["approve", "deny"]


class ForgetAccepted(BaseModel):
    """A forget request was published."""

    session_id: str
    forget_requested: Literal[True]


class DocumentAccepted(BaseModel):
    """A document was published for the memory service."""

    document_id: str
    added: Literal[True]


_ERRORS = {
    400: "A malformed request: a bad path segment, header or query parameter.",
    401: "No API key, or an unknown one (`WWW-Authenticate: Bearer`).",
    403: "The key lacks a role the approval names.",
    404: "No such task (or approval) for this tenant; another tenant's is never shown.",
    408: "The request body did not arrive in time.",
    409: "The task id is taken, or the task has ended.",
    413: "The request body is too large.",
    415: "The body is not `application/json` (UTF-8, uncompressed).",
    422: "The body is invalid: every problem with its field.",
    429: "The key's rate limit was exceeded: retry after `Retry-After` seconds.",
    503: "Kafka or Redis is unavailable, or the projection is being rebuilt: retry later.",
}

_EXAMPLE_TASK = {
    "input": "What is 17 * 23?",
    "session_id": "s-1",
    "tools": ["calculator"],
    "max_iterations": 8,
}


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(code): {
            "description": _ERRORS[code],
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/ErrorBody"},
                    "example": {"error": {"message": _ERRORS[code]}},
                }
            },
        }
        for code in codes
    }


def _json(status: int, model: str, description: str, example: Any = None) -> dict[str, Any]:
    content: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{model}"}}
    if example is not None:
        content["example"] = example
    return {str(status): {"description": description, "content": {"application/json": content}}}


def _body(model: str, example: Any) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": f"#/components/schemas/{model}"},
                "example": example,
            }
        },
    }


_TASK_ID = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:@-]+$", "maxLength": 256},
}
_COMMON = (400, 401, 429, 503)
_SSE = {
    "200": {
        "description": "Server-sent events: `id:` (resume with `Last-Event-ID`), `event:` the "
        "CloudEvents type, `data:` the event's JSON; `: keep-alive` comments every 15 s.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


@cache
def document() -> dict[str, Any]:
    """The OpenAPI document (built once)."""
    from .routes import (  # the request models live with their handlers
        AddDocumentRequest,
        CancelTaskRequest,
        DecideApprovalRequest,
        SubmitTaskRequest,
    )

    models = [
        SubmitTaskRequest,
        CancelTaskRequest,
        DecideApprovalRequest,
        AddDocumentRequest,
        ErrorBody,
        Accepted,
        TaskView,
        TaskList,
        CancelAccepted,
        ApprovalList,
        DecisionAccepted,
        ForgetAccepted,
        DocumentAccepted,
    ]
    _, schemas = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    accepted = {
        "task_id": "task-42",
        "status": "submitted",
        "status_url": "/v1/tasks/task-42",
        "events_url": "/v1/tasks/task-42/events",
    }
    paths: dict[str, Any] = {
        "/v1/tasks": {
            "post": {
                "summary": "Submit a task (202 at once; the tenant and roles come from the key)",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[!-~]{1,256}$"},
                        "description": "A retried submit with the same key returns the same "
                        "task (header `Idempotent-Replayed: true`).",
                    }
                ],
                "requestBody": _body("SubmitTaskRequest", _EXAMPLE_TASK),
                "responses": {
                    **_json(202, "Accepted", "Accepted; follow `events_url`.", accepted),
                    **_errors(*_COMMON, 408, 409, 413, 415, 422),
                },
            },
            "get": {
                "summary": "The tenant's recent tasks",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "array", "items": {"enum": list(TaskStatus.__args__)}},
                        "style": "form",
                        "explode": True,
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 200},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {**_json(200, "TaskList", "A page of tasks."), **_errors(*_COMMON)},
            },
        },
        "/v1/tasks/{task_id}": {
            "get": {
                "summary": "A task's status and result",
                "parameters": [_TASK_ID],
                "responses": {**_json(200, "TaskView", "The task."), **_errors(*_COMMON, 404)},
            }
        },
        "/v1/tasks/{task_id}/events": {
            "get": {
                "summary": "A task's events as SSE, from `Last-Event-ID` on; ends after the "
                "terminal event",
                "parameters": [_TASK_ID, _last_event_id()],
                "responses": {**_SSE, **_errors(*_COMMON, 404)},
            }
        },
        "/v1/tasks/{task_id}/cancel": {
            "post": {
                "summary": "Cancel a task",
                "parameters": [_TASK_ID],
                "requestBody": {
                    **_body("CancelTaskRequest", {"reason": "changed my mind"}),
                    "required": False,
                },
                "responses": {
                    **_json(202, "CancelAccepted", "The cancellation was published."),
                    **_errors(*_COMMON, 404, 408, 409, 413, 415, 422),
                },
            }
        },
        "/v1/tasks/{task_id}/approvals/{approval_id}": {
            "post": {
                "summary": "Approve or deny a waiting approval (needs a role it names)",
                "parameters": [
                    _TASK_ID,
                    {
                        "name": "approval_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "maxLength": 256, "pattern": "^[^/]+$"},
                    },
                ],
                "requestBody": _body(
                    "DecideApprovalRequest", {"decision": "approve", "reason": "checked"}
                ),
                "responses": {
                    **_json(202, "DecisionAccepted", "The decision was published."),
                    **_errors(*_COMMON, 403, 404, 408, 413, 415, 422),
                },
            }
        },
        "/v1/approvals": {
            "get": {
                "summary": "The tenant's waiting approvals",
                "responses": {
                    **_json(200, "ApprovalList", "Waiting approvals."),
                    **_errors(*_COMMON),
                },
            }
        },
        "/v1/events": {
            "get": {
                "summary": "Every event of the tenant's tasks as SSE (ids are feed positions)",
                "parameters": [_last_event_id()],
                "responses": {**_SSE, **_errors(*_COMMON)},
            }
        },
        "/v1/sessions/{session_id}": {
            "delete": {
                "summary": "Forget a session's memory",
                "parameters": [
                    {
                        "name": "session_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "maxLength": 256, "pattern": "^[^/]+$"},
                    },
                ],
                "responses": {
                    **_json(202, "ForgetAccepted", "The forget request was published."),
                    **_errors(*_COMMON, 404),
                },
            }
        },
        "/v1/memory/documents": {
            "post": {
                "summary": "Add a document to the tenant's long-term memory",
                "requestBody": _body(
                    "AddDocumentRequest",
                    {"text": "Our office is closed on Fridays.", "title": "Office hours"},
                ),
                "responses": {
                    **_json(202, "DocumentAccepted", "The document was published."),
                    **_errors(*_COMMON, 408, 413, 415, 422),
                },
            }
        },
    }
    text = {"text/plain": {"schema": {"type": "string"}}}
    for probe, what in (("/healthz", "alive"), ("/readyz", "ready"), ("/metrics", "metrics")):
        responses: dict[str, Any] = {"200": {"description": what, "content": text}}
        if probe == "/readyz":
            responses["503"] = {"description": "not ready: what is missing", "content": text}
        paths[probe] = {
            "get": {"summary": f"{what} (no key needed)", "security": [], "responses": responses}
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "stepbus gateway",
            "version": "1",
            "description": "Submit agent tasks, follow them over SSE, decide approvals. "
            "Authenticate with `Authorization: Bearer <API key>`; the key names the tenant and "
            "roles.",
        },
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key."}
            },
            "schemas": schemas["$defs"],
        },
        "paths": paths,
    }


def _last_event_id() -> dict[str, Any]:
    return {
        "name": "Last-Event-ID",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "maxLength": 1024},
        "description": "Resume after this event id.",
    }
