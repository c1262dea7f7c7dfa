"""The public contract: committed schemas match the models; examples keep validating."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from stepbus_contracts import (
    TaskSubmitted,
    derive_id,
    history_adapter,
    results_adapter,
    tasks_adapter,
)
from stepbus_contracts.schema import render
from stepbus_runtime.codec import decode

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"


def test_committed_schemas_are_up_to_date() -> None:
    expected = render()
    committed = {
        str(path.relative_to(REPO / "schemas")): path.read_text()
        for path in (REPO / "schemas").rglob("*.json")
    }
    stale = sorted(name for name in expected if committed.get(name) != expected[name])
    extra = sorted(set(committed) - set(expected))
    assert not stale and not extra, f"schemas/ is stale ({stale or extra}): run `make schemas`"


def test_asyncapi_names_every_public_channel() -> None:
    document = json.loads(render()["asyncapi.json"])
    assert document["asyncapi"].startswith("3.")
    assert document["channels"]["tasks"]["address"] == "stepbus.tasks"
    assert document["channels"]["tasks"]["x-stepbus-public"] is True
    assert set(document["channels"]["results"]["messages"]) == {
        "stepbus_task_progress",
        "stepbus_approval_requested",
        "stepbus_approval_resolved",
        "stepbus_task_completed",
        "stepbus_task_failed",
        "stepbus_task_cancelled",
    }


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.json")), ids=lambda p: p.name)
def test_golden_examples_keep_validating(path: Path) -> None:
    example = json.loads(path.read_text())
    adapter = {"tasks": tasks_adapter, "results": results_adapter, "history": history_adapter}[
        path.name.split("-")[0]
    ]
    event = decode(adapter, path.read_bytes())  # as strictly as a record is read
    assert event.type == example["type"]
    assert event.subject == example["subject"]


def test_golden_examples_exist_for_the_public_topics() -> None:
    names = {p.name.split("-")[0] for p in GOLDEN.glob("*.json")}
    assert {"tasks", "results"} <= names


def test_readers_ignore_unknown_fields() -> None:
    example = json.loads((GOLDEN / "tasks-submitted.json").read_text())
    example["newattribute"] = "from a newer writer"
    example["data"]["new_field"] = 1
    event = tasks_adapter.validate_python(example)
    assert isinstance(event, TaskSubmitted)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"subject": "has spaces"}, "subject"),
        ({"tenant": ""}, "tenant"),
        ({"specversion": "0.3"}, "specversion"),
        ({"type": "stepbus.task.unknown"}, "type"),
    ],
)
def test_invalid_envelopes_are_refused(change: dict[str, str], field: str) -> None:
    example = json.loads((GOLDEN / "tasks-submitted.json").read_text()) | change
    with pytest.raises(ValidationError):
        tasks_adapter.validate_python(example)


def test_bounds_of_a_task_are_enforced() -> None:
    example = json.loads((GOLDEN / "tasks-submitted.json").read_text())
    example["data"]["max_iterations"] = 0
    with pytest.raises(ValidationError, match="max_iterations"):
        tasks_adapter.validate_python(example)


def test_derived_ids_are_deterministic_and_distinct() -> None:
    assert derive_id("e1", "decided", 0) == derive_id("e1", "decided", 0)
    assert derive_id("e1", "decided", 0) != derive_id("e1", "decided", 1)
    assert derive_id("e1", "decided", 0) != derive_id("e2", "decided", 0)
