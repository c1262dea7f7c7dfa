"""Fuzz, small: bad records on every consumed topic stop nothing, and valid tasks still end.

The same runner as ``make fuzz`` (:mod:`stepbus_devtools.fuzz`), at a size that fits in
``make test``: 1,000 bad records of every family (each finding of the robustness issue, plus
generic garbage) on ``tasks``, ``planner.history``, ``tool.calls`` and ``results``, among 20
valid tasks, under a unique topic prefix. The services run as stack processes
(:mod:`stepbus_devtools.stack`) on free ports under their own ``STEPBUS_HOME`` (pid files and
logs under ``.stepbus/logs/tests/fuzz-<id>/``); Kafka and Redis are the harness's. On failure
the assertion message is the run's report, whose failed checks carry the evidence.

``STEPBUS_FUZZ_SEED`` replays a given corpus (the seed is printed in the report).
"""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from stepbus_devtools.chaos import SERVICES, stop_services
from stepbus_devtools.fuzz import FuzzConfig, run_fuzz

from ..harness import LOGS, delete_topics, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

RECORDS = 1000
VALID = 20


async def test_bad_records_are_dead_lettered_or_refused_and_valid_tasks_end_once(
    kafka_bootstrap: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = uuid.uuid4().hex[:8]
    prefix = f"fuzz-{run_id}."
    env = {
        "STEPBUS_HOME": str(LOGS / f"fuzz-{run_id}"),
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "REDIS_URL": redis_url,
        "STEPBUS_SCRIPTED_LLM_PORT": str(free_port()),
        "STEPBUS_TOOL_EXECUTOR_METRICS_PORT": str(free_port()),
        "STEPBUS_MEMORY_METRICS_PORT": str(free_port()),
        "STEPBUS_PLANNER_METRICS_PORT": str(free_port()),
        "STEPBUS_GATEWAY_PORT": str(free_port()),
        # Set here so that monkeypatch restores it: the runner sets it for the services.
        "STEPBUS_TOPIC_PREFIX": prefix,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "STEPBUS_MODEL"):
        monkeypatch.delenv(name, raising=False)  # the scripted model, always

    config = FuzzConfig(
        records=RECORDS,
        valid=VALID,
        seed=int(os.environ.get("STEPBUS_FUZZ_SEED", "1")),
        timeout=90.0,
        lag_timeout=30.0,
        prefix=prefix,
        bootstrap=kafka_bootstrap,
        prepare=True,
        start_infra=False,  # Kafka and Redis belong to the harness
    )
    try:
        report = await run_fuzz(config)
    finally:
        await asyncio.to_thread(stop_services, SERVICES)
        await delete_topics(kafka_bootstrap, prefix)

    text = report.text()
    print(text)
    assert report.records >= RECORDS and report.valid == VALID, text
    assert {f.finding for f in report.families.values()} >= {"1", "2", "3", "4", "5", "6", "7", "9"}
    for name in (
        "the whole corpus reached the broker",
        "no service restarted",
        "valid tasks completed exactly once",
        "committed-offset lag is 0",
        "bad records dead-lettered",
        "dead letters carry origin, service and reason",
        "bad records had no effect",
        "tenant collisions answered with task_id_conflict",
        "refused records dead-lettered or counted as dropped",
        "nothing valid dead-lettered",
        "service logs stay bounded",
    ):
        check = report.check(name)
        assert check.ok, f"{name}: {check.summary}\n{text}"
    assert report.completed_ok == VALID, text
    assert report.ok, text
