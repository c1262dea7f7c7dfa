"""Gateway settings, request bodies and the projection's fold, without Kafka or Redis."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis
from stepbus_contracts import (
    TaskCancelled,
    TaskCancelledData,
    TaskCompleted,
    TaskCompletedData,
    TaskFailed,
    TaskFailedData,
    TaskProgress,
    TaskProgressData,
)
from stepbus_gateway import GatewaySettings
from stepbus_gateway.projection import TaskProjection, TaskView, status_fields
from stepbus_gateway.routes import SubmitTaskRequest

WHEN = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def test_settings_read_the_gateway_prefix_and_shared_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STEPBUS_GATEWAY_PORT", "9001")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/2")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("STEPBUS_TOPIC_PREFIX", "prod.")
    monkeypatch.setenv("STEPBUS_GATEWAY_MAX_BODY_BYTES", "65536")

    settings = GatewaySettings()

    assert settings.port == 9001
    assert settings.max_body_bytes == 65536
    assert settings.redis_url == "redis://cache:6379/2"
    assert settings.kafka_bootstrap_servers == "kafka:9092"
    assert settings.instance_id.endswith("-9001")
    assert settings.feed_group_id == f"prod.gateway-{settings.instance_id}"


def test_settings_take_keyword_overrides() -> None:
    settings = GatewaySettings(topic_prefix="t1.", redis_url="redis://x", instance_id="gw-0")

    assert settings.topics.results == "t1.results"
    assert settings.redis_url == "redis://x"
    assert settings.feed_group_id == "t1.gateway-gw-0"
    with pytest.raises(ValidationError):
        GatewaySettings(default_tenant="no spaces")


def test_submit_request_defaults_a_uuid_and_rejects_unknown_fields_and_bad_ids() -> None:
    request = SubmitTaskRequest.model_validate({"input": "hi"})
    assert uuid.UUID(request.task_id)
    assert request.max_iterations == 8

    with pytest.raises(ValidationError) as info:
        SubmitTaskRequest.model_validate({"input": "hi", "task_id": "a b", "max_iteration": 3})
    assert {err["loc"][0] for err in info.value.errors()} == {"task_id", "max_iteration"}


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            TaskProgress(subject="t", data=TaskProgressData(step=1, stage="action", message="m")),
            {"status": "running"},
        ),
        (
            TaskCompleted(subject="t", data=TaskCompletedData(output="391", steps=2)),
            {"status": "completed", "output": "391", "steps": "2"},
        ),
        (
            TaskFailed(subject="t", data=TaskFailedData(reason="deadline", message="late")),
            {"status": "failed", "error_reason": "deadline", "error_message": "late", "steps": "0"},
        ),
        (
            TaskCancelled(subject="t", data=TaskCancelledData(reason="stop", steps=1)),
            {
                "status": "cancelled",
                "error_reason": "cancelled",
                "error_message": "stop",
                "steps": "1",
            },
        ),
    ],
)
def test_each_results_event_sets_its_status_fields(event: object, expected: dict[str, str]) -> None:
    fields = status_fields(event.model_copy(update={"time": WHEN}))  # type: ignore[attr-defined]

    assert fields == {
        "task_id": "t",
        "tenant": "default",
        "updated_at": WHEN.isoformat(),
        **expected,
    }


def test_task_view_json_shows_the_error_only_when_there_is_one() -> None:
    failed = TaskView.from_hash(
        {
            "task_id": "t",
            "tenant": "acme",
            "status": "failed",
            "error_reason": "deadline",
            "error_message": "late",
            "steps": "3",
            "updated_at": "now",
        }
    )
    submitted = TaskView.from_hash(
        {"task_id": "t", "tenant": "acme", "status": "submitted", "updated_at": "now"}
    )

    assert failed.terminal and not submitted.terminal
    assert failed.to_json() == {
        "task_id": "t",
        "tenant": "acme",
        "status": "failed",
        "output": None,
        "error": {"reason": "deadline", "message": "late"},
        "steps": 3,
        "updated_at": "now",
    }
    assert submitted.to_json()["error"] is None and submitted.to_json()["steps"] is None


def test_keys_of_a_task_never_collide_with_another_tasks_or_projections() -> None:
    projection = TaskProjection(Redis(), namespace="p.results", ttl_seconds=60)
    hash_a, events_a, seen_a = projection.keys("acme", "a")
    hash_b, _, _ = projection.keys("acme", "a:events")
    other = TaskProjection(Redis(), namespace="q.results", ttl_seconds=60)

    assert hash_a == "stepbus:gw:p.results:acme:{a}"
    assert (events_a, seen_a) == (f"{hash_a}:events", f"{hash_a}:seen")
    assert hash_b not in {hash_a, events_a, seen_a}
    # One Redis may hold the projections of deployments with other topic prefixes.
    assert other.keys("acme", "a")[0] != hash_a
    assert projection.generation_key == "stepbus:gw:p.results:generation"
    assert other.generation_key != projection.generation_key


def test_a_submit_body_is_not_coerced() -> None:
    from stepbus_gateway.errors import ApiError
    from stepbus_gateway.routes import SubmitTaskRequest, _parse

    for body in (
        b'{"input": "q", "max_iterations": "8"}',
        b'{"input": "q", "max_iterations": true}',
    ):
        try:
            _parse(SubmitTaskRequest, body)
        except ApiError as exc:
            assert exc.status == 422
        else:
            raise AssertionError(f"{body!r} was coerced")
    assert (
        _parse(SubmitTaskRequest, b'{"input": "q", "deadline_seconds": 30}').deadline_seconds == 30
    )
