"""What one fuzz run does: :class:`FuzzConfig`, and the one the command line asks for."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["FuzzConfig", "parse_args"]


@dataclass
class FuzzConfig:
    """One fuzz run.

    Attributes:
        records: Bad records generated (every family of the corpus at least once per variant;
            generic garbage fills the rest).
        valid: Valid tasks interleaved with them; each must complete exactly once.
        steps: Tool steps per valid task (each makes ``steps + 1`` LLM calls).
        latency: Scripted model latency per call (``[latency=...]`` in every valid input), so
            tasks run long enough for the records aimed at running tasks to find them running.
        seed: Seed of the corpus and of the send order.
        rate: Records sent per second at most (0: as fast as the broker takes them).
        timeout: Longest wait, from the first record sent, for every valid task to end.
        lag_timeout: Longest wait, once the tasks ended, for every consumer group to commit
            the end of what it consumes.
        settle: Seconds to keep reading after the tasks ended (late duplicates show up).
        prefix: Topic prefix. ``None``: the one the running services use (read from their
            environment), without restarting them.
        bootstrap: Kafka bootstrap servers; ``KAFKA_BOOTSTRAP_SERVERS`` by default.
        prepare: Restart the services so that they use ``prefix`` (stop the running ones,
            then ``stack.up``), as the chaos runner does.
        start_infra: With ``prepare``, also start Kafka and Redis when they are not running
            (``False`` when someone else owns them, as in the test harness).
    """

    records: int = 10_000
    valid: int = 200
    steps: int = 2
    latency: str = "100-300"
    seed: int | None = None
    rate: float = 1000.0
    timeout: float = 600.0
    lag_timeout: float = 120.0
    settle: float = 3.0
    prefix: str | None = None
    bootstrap: str | None = None
    prepare: bool = False
    start_infra: bool = True


def parse_args(argv: Sequence[str] | None = None) -> FuzzConfig:
    """The run ``python -m stepbus_devtools.fuzz`` asks for (``--help`` lists the flags)."""
    defaults = FuzzConfig()
    parser = argparse.ArgumentParser(
        prog="python -m stepbus_devtools.fuzz",
        description="Send generated bad records to the topics stepbus consumes, interleaved "
        "with valid tasks; check that nothing stops, nothing valid is lost or run twice, and "
        "every bad record is dead-lettered or refused.",
    )
    parser.add_argument("--records", type=int, default=defaults.records, help="bad records")
    parser.add_argument("--valid", type=int, default=defaults.valid, help="valid tasks")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="tool steps per task")
    parser.add_argument(
        "--latency", default=defaults.latency, help="scripted model latency per call, ms"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--rate", type=float, default=defaults.rate, help="records per second (0: unpaced)"
    )
    parser.add_argument(
        "--timeout", type=float, default=defaults.timeout, help="seconds to wait for tasks"
    )
    parser.add_argument(
        "--lag-timeout",
        type=float,
        default=defaults.lag_timeout,
        help="seconds to wait for the committed offsets to reach the end",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="restart the services under a new fuzz-<id>. topic prefix first (like make chaos)",
    )
    args = parser.parse_args(argv)
    if args.records < 0 or args.valid < 0:
        parser.error("--records and --valid must not be negative")
    return FuzzConfig(
        records=args.records,
        valid=args.valid,
        steps=args.steps,
        latency=args.latency,
        seed=args.seed,
        rate=args.rate,
        timeout=args.timeout,
        lag_timeout=args.lag_timeout,
        prepare=args.fresh,
    )
