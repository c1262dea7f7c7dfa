"""One chaos run end to end (:func:`run_chaos`): prepare the stack, submit the tasks while the
disruptions go on, wait for every task to end, read everything back and analyse it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import uuid
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from stepbus_contracts import Topics
from stepbus_runtime import ensure_topics

from stepbus_devtools import stack

from .analysis import analyse
from .config import SERVICES, ChaosConfig
from .disruptions import Disruptions, plan_disruptions
from .observe import ResultsMonitor, read_all
from .processes import stop_services
from .report import ChaosReport
from .workload import make_tasks, submit_all

__all__ = ["run_chaos", "say"]

EXECUTION_LOG_ENV = "STEPBUS_TOOL_EXECUTOR_EXECUTION_LOG"


def say(message: str) -> None:
    """Print a progress line at once (the default ``log`` of :func:`run_chaos`)."""
    print(message, flush=True)


async def run_chaos(config: ChaosConfig, log: Callable[[str], None] = say) -> ChaosReport:
    """Run one chaos experiment and return its report (nothing is asserted here).

    Sets ``STEPBUS_TOPIC_PREFIX`` and ``STEPBUS_TOOL_EXECUTOR_EXECUTION_LOG`` in this process's
    environment so that the services (re)started through :mod:`stack` use them.
    """
    return await _Runner(config, log).run()


class _Runner:
    def __init__(self, config: ChaosConfig, log: Callable[[str], None]) -> None:
        self.config = config
        self.log = log
        self.seed = config.seed if config.seed is not None else random.randrange(2**31)
        self.rng = random.Random(self.seed)
        self.run_id = uuid.uuid4().hex[:8]
        self.prefix = config.prefix or f"chaos-{self.run_id}."
        self.topics = Topics(self.prefix)
        self.bootstrap = config.bootstrap or os.environ.get(
            "KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"
        )
        self.redis_url = config.redis_url or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        self.broker_home = config.broker_home or stack.stepbus_home()
        self.execution_log = config.execution_log or (
            stack.stepbus_home() / "logs" / f"chaos-{self.run_id}-executions.jsonl"
        )
        # The tasks are drawn before the plan: a seed replays both.
        self.tasks = make_tasks(self.rng, config, self.run_id)
        self.started = 0.0  # monotonic
        self.monitor = ResultsMonitor(self.bootstrap, self.topics.results)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def in_flight(self) -> int:
        return sum(
            1
            for t in self.tasks
            if t.submitted_at is not None and t.task_id not in self.monitor.ended
        )

    def prepare(self) -> None:
        os.environ["STEPBUS_TOPIC_PREFIX"] = self.prefix
        os.environ[EXECUTION_LOG_ENV] = str(self.execution_log)
        self.execution_log.parent.mkdir(parents=True, exist_ok=True)
        if not self.config.prepare:
            return
        self.log(f"restarting the services with STEPBUS_TOPIC_PREFIX={self.prefix}")
        stop_services()
        stack.up(None if self.config.start_infra else list(SERVICES))

    def disruptions(self) -> Disruptions:
        """The plan against the services that run now (made once they run)."""
        config = self.config
        running = tuple(t for t in config.targets if stack.is_running(t))
        if running != config.targets:
            self.log(f"  not running, so not killed: {sorted(set(config.targets) - set(running))}")
        if config.kills and not running:
            raise stack.StackError("none of the services to kill runs")
        return Disruptions(
            plan_disruptions(self.rng, config, running),
            bootstrap=self.bootstrap,
            redis_url=self.redis_url,
            broker_home=self.broker_home,
            elapsed=self.elapsed,
            in_flight=self.in_flight,
            log=self.log,
        )

    async def run(self) -> ChaosReport:
        config = self.config
        self.log(
            f"stepbus chaos {self.run_id}: {config.tasks} tasks x {config.steps} tool steps, "
            f"{config.kills} kills + {'1 broker kill' if config.broker_kill else 'no broker kill'}"
            f" + {'1 FLUSHALL' if config.flushall else 'no FLUSHALL'} over "
            f"{config.window():.0f}s, seed {self.seed}, broker {self.bootstrap}, "
            f"prefix {self.prefix!r}"
        )
        await asyncio.to_thread(self.prepare)
        disruptions = self.disruptions()
        await ensure_topics(self.bootstrap, self.topics)
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, enable_idempotence=True, acks="all"
        )
        await producer.start()
        self.monitor.start()
        self.started = time.monotonic()
        submitter = asyncio.create_task(
            submit_all(
                producer,
                self.topics.tasks,
                self.tasks,
                config=config,
                run_id=self.run_id,
                elapsed=self.elapsed,
                log=self.log,
            )
        )
        chaos = asyncio.create_task(disruptions.run())
        try:
            await self._wait(submitter, chaos, disruptions)
            if not chaos.done():  # never leave a service half-restarted
                self.log("  waiting for the chaos in progress to finish")
                await chaos
            submitter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await submitter
            await asyncio.sleep(config.settle)
            end_wall = time.time()
        finally:
            await self.monitor.stop()
            await producer.stop()
        records = await read_all(
            self.bootstrap, [self.topics.results, self.topics.planner_history, self.topics.dlq]
        )
        report = ChaosReport(self.run_id, self.prefix, self.seed, self.bootstrap)
        report.logs = (
            f"{stack.stepbus_home() / 'logs'} (<service>.log; executions: {self.execution_log})"
        )
        analyse(
            report,
            records,
            tasks=self.tasks,
            actions=disruptions.actions,
            topics=self.topics,
            execution_log=self.execution_log,
            end_wall=end_wall,
        )
        report.run_seconds = time.monotonic() - self.started
        return report

    async def _wait(
        self, submitter: asyncio.Task[None], chaos: asyncio.Task[None], disruptions: Disruptions
    ) -> None:
        """Until every task ended with submissions and chaos done, or the timeout; says how
        far the run got every 10 s (every 60 s while nothing new ends)."""
        config = self.config
        last_note, last_ended = 0.0, -1
        while True:
            await asyncio.sleep(0.5)
            if submitter.done() and submitter.exception():
                raise submitter.exception()  # type: ignore[misc]
            ended = sum(1 for t in self.tasks if t.task_id in self.monitor.ended)
            if submitter.done() and chaos.done() and ended == len(self.tasks):
                return
            if self.elapsed() > config.timeout:
                self.log(
                    f"  timeout after {config.timeout:.0f}s: {ended} of "
                    f"{len(self.tasks)} tasks ended"
                )
                return
            quiet = ended == last_ended  # nothing new: say so less often
            if self.elapsed() - last_note >= (60 if quiet else 10):
                last_note, last_ended = self.elapsed(), ended
                self.log(
                    f"  +{self.elapsed():6.1f}s {ended}/{len(self.tasks)} tasks ended, "
                    f"{sum(t.submitted_at is not None for t in self.tasks)} submitted, "
                    f"{len(disruptions.actions)}/{len(disruptions.plan)} chaos actions"
                )
