"""The bounds of the public contract, in one place.

The models enforce them, the JSON Schemas in ``schemas/`` publish them, and services import
them to re-check what they derive (the planner's ``deadline_at``, the tools a ``null`` list
resolves to). Raising a bound is a compatible change; lowering one is a breaking change.
Patterns are written so that ECMA-262 (JSON Schema's dialect), Rust's regex (pydantic's) and
Python's ``re.fullmatch`` read them alike.
"""

from __future__ import annotations

__all__ = [
    "EXTENSION_NAME_PATTERN",
    "MAX_ATTRIBUTES",
    "MAX_DEADLINE_SECONDS",
    "MAX_DURATION_MS",
    "MAX_EVENT_ID_LENGTH",
    "MAX_EXTENSION_LENGTH",
    "MAX_INPUT_LENGTH",
    "MAX_ITERATIONS",
    "MAX_METADATA_ENTRIES",
    "MAX_METADATA_KEY_LENGTH",
    "MAX_METADATA_VALUE_LENGTH",
    "MAX_MODEL_NAME_LENGTH",
    "MAX_ROLES",
    "MAX_SESSION_ID_LENGTH",
    "MAX_SOURCE_LENGTH",
    "MAX_TASK_ID_LENGTH",
    "MAX_TENANT_LENGTH",
    "MAX_TOKEN_BUDGET",
    "MAX_TOOLS",
    "RFC3339_PATTERN",
    "ROLE_PATTERN",
    "SOURCE_PATTERN",
    "TASK_ID_PATTERN",
    "TENANT_PATTERN",
    "TOOL_NAME_PATTERN",
]

# -- CloudEvents attributes --------------------------------------------------------------

TASK_ID_PATTERN = r"^[A-Za-z0-9._:@-]+$"
"""A task id (the ``subject``, and the record key): letters, digits and ``. _ : @ -``.

No ``/``, so an id is one path segment of the gateway's ``/v1/tasks/{id}/events``."""

MAX_TASK_ID_LENGTH = 256
"""Longest task id."""

MAX_EVENT_ID_LENGTH = 256
"""Longest event ``id``."""

SOURCE_PATTERN = r"^[!-~]+$"
"""A ``source``: printable ASCII without spaces, as a URI-reference is written."""

MAX_SOURCE_LENGTH = 2048
"""Longest ``source``."""

TENANT_PATTERN = r"^[A-Za-z0-9._-]+$"
"""A tenant name: letters, digits and ``. _ -``."""

MAX_TENANT_LENGTH = 128
"""Longest tenant name."""

EXTENSION_NAME_PATTERN = r"^[a-z0-9]{1,64}$"
"""Any top-level attribute name: lower-case ASCII letters and digits (CloudEvents 1.0)."""

MAX_EXTENSION_LENGTH = 1024
"""Longest string value of an extension attribute (such as ``traceparent``)."""

MAX_ATTRIBUTES = 32
"""Most top-level attributes of one event, ``data`` and extensions included."""

RFC3339_PATTERN = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
"""An RFC 3339 timestamp as written on the wire: upper-case ``T`` and ``Z``, seconds and an
offset required, e.g. ``2026-11-25T12:00:00Z``. (Calendar checks such as February 30 are
the ``date-time`` format's.)"""

# -- what a task may ask for -------------------------------------------------------------

MAX_INPUT_LENGTH = 100_000
"""Longest task input, in characters."""

MAX_SESSION_ID_LENGTH = 256
"""Longest session id."""

MAX_TOOLS = 64
"""Most tools one task may be offered."""

TOOL_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
"""A tool name as OpenAI function names allow it; MCP tools are named ``<server>__<tool>``."""

MAX_ITERATIONS = 100
"""Most LLM steps one task may ask for."""

MAX_DEADLINE_SECONDS = 86_400
"""Longest wall-clock budget of a task: one day."""

MAX_TOKEN_BUDGET = 100_000_000
"""Largest token budget of a task."""

MAX_METADATA_ENTRIES = 32
"""Most metadata labels of a task."""

MAX_METADATA_KEY_LENGTH = 128
"""Longest metadata label name (at least one character)."""

MAX_METADATA_VALUE_LENGTH = 1024
"""Longest metadata label value."""

ROLE_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
"""A role a task carries (the policy's subject): letters, digits and ``. _ : -``."""

MAX_ROLES = 32
"""Most roles one task may carry."""

# -- what services record ----------------------------------------------------------------

MAX_MODEL_NAME_LENGTH = 256
"""Longest LLM model name."""

MAX_DURATION_MS = 7 * MAX_DEADLINE_SECONDS * 1000.0
"""Largest recorded duration (a week, in ms): no call outlives its task's deadline."""
