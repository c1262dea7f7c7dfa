"""What one chaos run does: :class:`ChaosConfig`, and the one the command line asks for."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stepbus_devtools import stack

__all__ = ["KILL_TARGETS", "SERVICES", "ChaosConfig", "parse_args"]

SERVICES = ("scripted-llm", "tool-executor", "memory", "critic", "planner", "gateway")
"""The service processes of the stack, in start order."""

KILL_TARGETS = ("planner", "tool-executor", "gateway", "scripted-llm", "memory", "critic")
"""The services a kill may hit, in the order the seeded draws pick from."""


@dataclass
class ChaosConfig:
    """One chaos run.

    Attributes:
        tasks: Tasks submitted.
        steps: Tool steps per task (each task makes ``steps + 1`` LLM calls).
        kills: Service SIGKILLs (each followed by a restart).
        seed: Seed of every random choice (task numbers, moments, targets, delays).
        timeout: Longest wait, from the first submission, for every task to end.
        duration: Seconds over which the tasks are submitted and the disruptions start (at
            random moments). A restart takes ~10 s and the kills of one service queue behind
            its restart, so the chaos goes on well after the last submission and the
            submissions cover roughly the first third of the run. ``None``: from the number
            of disruptions.
        latency: Scripted model latency range per call (``[latency=...]`` in every input).
        targets: Services a kill may hit.
        must_kill: Services killed at least once (when ``kills`` allows).
        broker_kill: SIGKILL and restart the broker once.
        flushall: Run Redis ``FLUSHALL`` once.
        restart_delay: Range of the pause between a kill and the restart, seconds.
        settle: Seconds to keep reading after every task ended (late duplicates show up).
        prefix: Topic prefix; a fresh ``chaos-<id>.`` by default.
        bootstrap: Kafka bootstrap servers; ``KAFKA_BOOTSTRAP_SERVERS`` by default.
        redis_url: Redis; ``REDIS_URL`` by default.
        broker_home: ``STEPBUS_HOME`` under which ``kafka.sh`` manages the broker to kill; the
            stack's home by default (the test passes the harness's).
        execution_log: Where the tool-executor logs real tool runs; under the stack's logs
            by default.
        prepare: Restart the services so they use the prefix and the execution log (stop the
            running ones, then ``stack.up``).
        start_infra: With ``prepare``, also start Kafka and Redis when they are not running
            (``False`` when someone else owns them, as in the test harness).
    """

    tasks: int = 200
    steps: int = 3
    kills: int = 12
    seed: int | None = None
    timeout: float = 600.0
    duration: float | None = None
    latency: str = "50-300"
    targets: tuple[str, ...] = KILL_TARGETS
    must_kill: tuple[str, ...] = ("planner", "tool-executor")
    broker_kill: bool = True
    flushall: bool = True
    restart_delay: tuple[float, float] = (0.0, 2.0)
    settle: float = 5.0
    prefix: str | None = None
    bootstrap: str | None = None
    redis_url: str | None = None
    broker_home: Path | None = None
    execution_log: Path | None = None
    prepare: bool = True
    start_infra: bool = True

    def window(self) -> float:
        """Seconds over which tasks are submitted and disruptions start."""
        if self.duration is not None:
            return self.duration
        actions = self.kills + int(self.broker_kill) + int(self.flushall)
        return float(max(10, 1.5 * actions))


def parse_args(argv: Sequence[str] | None = None) -> ChaosConfig:
    """The run ``python -m stepbus_devtools.chaos`` asks for (``--help`` lists the flags).

    With ``OPENAI_BASE_URL`` set the services use a real endpoint and the scripted model is
    not running, so it is no kill target.
    """
    defaults = ChaosConfig()
    parser = argparse.ArgumentParser(
        prog="python -m stepbus_devtools.chaos",
        description="Kill stepbus services, the broker and Redis at random while tasks run; "
        "check that every task still ends exactly once with the right output.",
    )
    parser.add_argument("--tasks", type=int, default=defaults.tasks)
    parser.add_argument("--steps", type=int, default=defaults.steps, help="tool steps per task")
    parser.add_argument("--kills", type=int, default=defaults.kills, help="service SIGKILLs")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--timeout", type=float, default=defaults.timeout, help="seconds to wait for tasks"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=defaults.duration,
        help="seconds over which tasks are submitted and disruptions start "
        "(default: 1.5 s per disruption, at least 10)",
    )
    parser.add_argument(
        "--latency", default=defaults.latency, help="scripted model latency per call, ms"
    )
    parser.add_argument("--no-broker-kill", action="store_true")
    parser.add_argument("--no-flushall", action="store_true")
    args = parser.parse_args(argv)
    targets = defaults.targets
    if os.environ.get("OPENAI_BASE_URL"):
        targets = tuple(t for t in targets if t != stack.SCRIPTED_LLM)
    return ChaosConfig(
        tasks=args.tasks,
        steps=args.steps,
        kills=args.kills,
        seed=args.seed,
        timeout=args.timeout,
        duration=args.duration,
        latency=args.latency,
        targets=targets,
        broker_kill=not args.no_broker_kill,
        flushall=not args.no_flushall,
    )
