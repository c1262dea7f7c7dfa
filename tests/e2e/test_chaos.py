"""Chaos, small: tasks keep ending exactly once, right, while the stack is being killed.

The same runner as ``make chaos`` (:mod:`stepbus_devtools.chaos`), at a size that fits in
``make test``: 30 tasks of 3 tool steps under a unique topic prefix, 4 service SIGKILLs (the
planner and the tool-executor among them) each followed by a restart, one SIGKILL and restart
of the harness's broker, and one Redis ``FLUSHALL``. The services run as stack processes
(:mod:`stepbus_devtools.stack`) on free ports under their own ``STEPBUS_HOME`` (pid files and
logs under ``.stepbus/logs/tests/chaos-<id>/``); Kafka and Redis are the harness's, and the
broker is killed and restarted by ``deploy/local/kafka.sh`` under the harness's
``STEPBUS_HOME``. On failure the assertion message is the run's report.

``STEPBUS_CHAOS_SEED`` replays a given plan (the seed is printed in the report).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest
from stepbus_devtools.chaos import SERVICES, ChaosConfig, run_chaos, stop_services

from ..harness import LOGS, REPO, delete_topics, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

# The home the harness's kafka.sh uses (read before any test changes the environment).
HARNESS_HOME = Path(os.environ.get("STEPBUS_HOME") or REPO / ".stepbus")

TASKS = 30


async def test_tasks_end_exactly_once_through_kills_broker_restart_and_flushall(
    kafka_bootstrap: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = uuid.uuid4().hex[:8]
    home = LOGS / f"chaos-{run_id}"
    env = {
        "STEPBUS_HOME": str(home),
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "REDIS_URL": redis_url,
        "STEPBUS_SCRIPTED_LLM_PORT": str(free_port()),
        "STEPBUS_TOOL_EXECUTOR_METRICS_PORT": str(free_port()),
        "STEPBUS_MEMORY_METRICS_PORT": str(free_port()),
        "STEPBUS_PLANNER_METRICS_PORT": str(free_port()),
        "STEPBUS_GATEWAY_PORT": str(free_port()),
        # Set here so that monkeypatch restores them: the runner sets both for the services.
        "STEPBUS_TOPIC_PREFIX": f"chaos-{run_id}.",
        "STEPBUS_TOOL_EXECUTOR_EXECUTION_LOG": str(home / "logs" / "executions.jsonl"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "STEPBUS_MODEL"):
        monkeypatch.delenv(name, raising=False)  # the scripted model, always

    config = ChaosConfig(
        tasks=TASKS,
        steps=3,
        kills=4,
        must_kill=("planner", "tool-executor"),
        # Seed 2 kills the tool-executor while the broker is down and the planner with 20
        # tasks in flight; any other seed replays another plan.
        seed=int(os.environ.get("STEPBUS_CHAOS_SEED", "2")),
        timeout=100.0,
        bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        broker_home=HARNESS_HOME,
        execution_log=Path(env["STEPBUS_TOOL_EXECUTOR_EXECUTION_LOG"]),
        prefix=env["STEPBUS_TOPIC_PREFIX"],
        prepare=True,
        start_infra=False,  # Kafka and Redis belong to the harness
    )
    try:
        report = await run_chaos(config)
    finally:
        await asyncio.to_thread(stop_services, SERVICES)
        await delete_topics(kafka_bootstrap, env["STEPBUS_TOPIC_PREFIX"])

    text = report.text()
    print(text)
    kinds = [(a.kind, a.target) for a in report.actions]
    assert ("kill", "planner") in kinds and ("kill", "tool-executor") in kinds, text
    assert kinds.count(("broker", "kafka")) == 1 and kinds.count(("flushall", "redis")) == 1, text
    assert report.submitted == TASKS, text
    assert not report.lost, f"tasks lost\n{text}"
    assert not report.duplicate_terminals, f"distinct terminal events duplicated\n{text}"
    assert not report.wrong_output and not report.failed and not report.cancelled, text
    assert report.completed_ok == TASKS, text
    assert not report.doubled_history, f"tool calls executed twice (history)\n{text}"
    assert not report.doubled_log, f"tool calls executed twice (execution log)\n{text}"
    assert report.ok, text
