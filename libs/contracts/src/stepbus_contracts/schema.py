"""Generate the public contract documents in ``schemas/`` from the pydantic models.

``python -m stepbus_contracts.schema DIR`` writes one JSON Schema per event type and an
AsyncAPI 3.0 document describing every topic. ``make schemas`` runs it; a test fails when the
committed files differ from what the models generate.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .approvals import (
    ApprovalDecided,
    ApprovalRequested,
    ApprovalResolved,
    InjectionFlagged,
    PolicyDecided,
)
from .critic import CritiqueCompleted, CritiqueFailed, CritiqueRequested
from .envelope import CloudEvent
from .limits import EXTENSION_NAME_PATTERN, MAX_ATTRIBUTES
from .memory import (
    MemoryDocumentAdded,
    MemoryForgetRequested,
    MemoryRecalled,
    MemoryRecallRequested,
    MemoryRememberRequested,
)
from .planning import LlmDecided, TaskAccepted
from .results import TaskCancelled, TaskCompleted, TaskFailed, TaskProgress
from .tasks import TaskCancelRequested, TaskSubmitted
from .tools import ToolCallCompleted, ToolCallFailed, ToolCallHeld, ToolCallRequested
from .topics import DEFAULT_PREFIX
from .wire import WIRE_ATTRIBUTES

__all__ = ["render", "write"]

# (topic suffix, public?, channel description, events) — public channels are the contract for
# upstream systems; internal ones are documented for operators and may change faster.
_CHANNELS: tuple[tuple[str, bool, str, tuple[type[CloudEvent], ...]], ...] = (
    (
        "tasks",
        True,
        "Upstream systems publish tasks, cancellations, approval decisions, documents to "
        "remember and requests to forget here.",
        (
            TaskSubmitted,
            TaskCancelRequested,
            ApprovalDecided,
            MemoryDocumentAdded,
            MemoryForgetRequested,
        ),
    ),
    (
        "results",
        True,
        "Progress, approvals asked for and how they ended, and exactly one terminal event per "
        "task.",
        (
            TaskProgress,
            ApprovalRequested,
            ApprovalResolved,
            TaskCompleted,
            TaskFailed,
            TaskCancelled,
        ),
    ),
    (
        "audit",
        True,
        "The audit trail: tool-policy decisions, resolved approvals, flagged tool outputs.",
        (PolicyDecided, ApprovalResolved, InjectionFlagged),
    ),
    (
        "planner.history",
        False,
        "Internal: each task's journal.",
        (
            TaskAccepted,
            MemoryRecalled,
            LlmDecided,
            CritiqueCompleted,
            CritiqueFailed,
            ToolCallCompleted,
            ToolCallFailed,
            ToolCallHeld,
            ApprovalResolved,
            TaskCompleted,
            TaskFailed,
            TaskCancelled,
        ),
    ),
    ("tool.calls", False, "Internal: commands to the tool-executor.", (ToolCallRequested,)),
    (
        "memory.requests",
        False,
        "Internal: commands to the memory service.",
        (MemoryRecallRequested, MemoryRememberRequested),
    ),
    ("critic.requests", False, "Internal: commands to the critic.", (CritiqueRequested,)),
)


def _type_name(model: type[CloudEvent]) -> str:
    return str(model.model_fields["type"].default)


def _event_schema(model: type[CloudEvent]) -> dict[str, Any]:
    schema = model.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://stepbus.dev/schemas/events/{_type_name(model)}.json"
    # What ``validate_wire`` enforces beyond the Python model, which gives writers defaults:
    # the attributes a wire event must carry, and few, well-named extension attributes (their
    # values are ``additionalProperties``, from the model's typed extras).
    schema["required"] = sorted({*schema.get("required", []), *WIRE_ATTRIBUTES})
    schema["maxProperties"] = MAX_ATTRIBUTES
    schema["propertyNames"] = {"pattern": EXTENSION_NAME_PATTERN}
    return schema


def _asyncapi() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for suffix, public, description, events in _CHANNELS:
        channel_id = suffix.replace(".", "_")
        refs = {}
        for model in events:
            name = _type_name(model)
            message_id = name.replace(".", "_")
            messages[message_id] = {
                "name": name,
                "title": name,
                "summary": (model.__doc__ or "").strip().splitlines()[0],
                "contentType": "application/cloudevents+json",
                "payload": {"$ref": f"events/{name}.json"},
            }
            refs[message_id] = {"$ref": f"#/components/messages/{message_id}"}
        channels[channel_id] = {
            "address": f"{DEFAULT_PREFIX}{suffix}",
            "description": f"{description} Record key: the task id.",
            "messages": refs,
            "x-stepbus-public": public,
        }
        action = "receive" if suffix == "tasks" else "send"
        operations[f"{action}_{channel_id}"] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel_id}"},
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "stepbus",
            "version": "1.0.0",
            "description": "Durable LLM agents on Kafka. Records are CloudEvents 1.0 in "
            "structured JSON mode; the record key is the task id; `tenant` is an extension "
            "attribute. The topic prefix (`stepbus.`) is configurable per deployment.",
        },
        "defaultContentType": "application/cloudevents+json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def render() -> dict[str, str]:
    """Every contract document as ``{relative path: JSON text}``."""
    files: dict[str, str] = {}
    seen: set[str] = set()
    for _, _, _, events in _CHANNELS:
        for model in events:
            name = _type_name(model)
            if name not in seen:
                seen.add(name)
                files[f"events/{name}.json"] = _dump(_event_schema(model))
    files["asyncapi.json"] = _dump(_asyncapi())
    return files


def write(directory: Path) -> list[Path]:
    """Write the documents under ``directory``, removing stale event schemas."""
    files = render()
    events_dir = directory / "events"
    events_dir.mkdir(parents=True, exist_ok=True)
    for stale in events_dir.glob("*.json"):
        if f"events/{stale.name}" not in files:
            stale.unlink()
    written = []
    for relative, text in files.items():
        path = directory / relative
        path.write_text(text)
        written.append(path)
    return written


def _dump(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "schemas")
    for path in write(target):
        print(path)
