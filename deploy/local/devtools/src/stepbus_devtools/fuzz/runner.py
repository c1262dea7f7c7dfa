"""One fuzz run end to end (:func:`run_fuzz`): find (or restart) the services, build the
corpus, send it with the valid tasks, wait for the tasks and the consumer groups, read
everything back and analyse it."""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import Callable

from stepbus_contracts import Topics
from stepbus_runtime import ensure_topics

from stepbus_devtools import stack
from stepbus_devtools.chaos import stop_services
from stepbus_devtools.chaos.config import SERVICES as STACK_SERVICES

from .analysis import Observed, analyse
from .config import FuzzConfig
from .corpus import build_corpus, make_valid_tasks, send_order
from .observe import Letter, Monitor, end_marks, read_since
from .records import Forge, FuzzRecord, ValidTask
from .report import FuzzReport
from .send import Sender, send_one, send_paced
from .services import LogGrowth, Service, Watch, discover, group_lag, scrape

__all__ = ["run_fuzz", "say"]


def say(message: str) -> None:
    """Print a progress line at once (the default ``log`` of :func:`run_fuzz`)."""
    print(message, flush=True)


async def run_fuzz(config: FuzzConfig, log: Callable[[str], None] = say) -> FuzzReport:
    """Run one fuzz and return its report (nothing is asserted here).

    With ``config.prepare`` the services are restarted under ``config.prefix`` (a fresh one
    by default) and ``STEPBUS_TOPIC_PREFIX`` is set in this process's environment, as the
    chaos runner does; otherwise the running services are fuzzed as they are.

    Raises:
        stack.StackError: The services are not running (or not ready after a restart).
    """
    return await _Runner(config, log).run()


class _Runner:
    def __init__(self, config: FuzzConfig, log: Callable[[str], None]) -> None:
        self.config = config
        self.log = log
        self.seed = config.seed if config.seed is not None else random.randrange(2**31)
        self.run_id = uuid.uuid4().hex[:8]
        self.bootstrap = config.bootstrap or os.environ.get(
            "KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"
        )
        self.started = 0.0
        self.sender: Sender

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def services(self) -> dict[str, Service]:
        """The services to fuzz: restarted under the run's prefix first with ``prepare``."""
        if self.config.prepare:
            prefix = self.config.prefix or f"fuzz-{self.run_id}."
            os.environ["STEPBUS_TOPIC_PREFIX"] = prefix
            self.log(f"restarting the services with STEPBUS_TOPIC_PREFIX={prefix}")
            stop_services()
            stack.up(None if self.config.start_infra else list(STACK_SERVICES))
        found = discover()
        prefix = next(iter(found.values())).prefix
        if self.config.prefix and prefix != self.config.prefix:
            raise stack.StackError(
                f"the services use prefix {prefix!r}, not {self.config.prefix!r}; pass --fresh"
            )
        return found

    async def run(self) -> FuzzReport:
        config = self.config
        rng = random.Random(self.seed)
        services = await asyncio.to_thread(self.services)
        topics = Topics(next(iter(services.values())).prefix)
        self.log(
            f"stepbus fuzz {self.run_id}: {config.records} bad records and {config.valid} valid "
            f"tasks on {topics.prefix}{{tasks,planner.history,tool.calls,results}}, seed "
            f"{self.seed}, broker {self.bootstrap}"
        )
        await ensure_topics(self.bootstrap, topics)
        self.sender = sender = Sender(self.bootstrap, topics)
        await sender.start()
        try:
            return await self._run(rng, topics, services, sender)
        finally:
            await sender.stop()

    async def _run(
        self, rng: random.Random, topics: Topics, services: dict[str, Service], sender: Sender
    ) -> FuzzReport:
        config = self.config
        forge = Forge(
            rng,
            topics,
            self.run_id,
            partitions=await sender.partitions(),
            payloads=await sender.payload_fixtures(rng.randbytes(512)),
            valid=[],
        )
        forge.valid = make_valid_tasks(rng, config, self.run_id, forge.uuid)
        corpus = build_corpus(forge, config)
        order = send_order(rng, corpus, forge.valid)
        aimed = [r for r in corpus if r.target is not None]
        self.log(
            f"  corpus: {len(corpus)} records in {len({r.family for r in corpus})} families "
            f"({sum(r.size for r in corpus) / 1e6:.1f} MB), {len(aimed)} of them aimed at "
            "running or ended valid tasks"
        )
        read_topics = [
            topics.results,
            topics.planner_history,
            topics.tool_calls,
            topics.tasks,
            topics.planner_snapshots,
            topics.tool_ledger,
            topics.dlq,
        ]
        marks = await end_marks(self.bootstrap, read_topics)
        logs = {name: LogGrowth.begin(s.log_path) for name, s in services.items()}
        metrics_before = await scrape(services)
        watch = Watch(services, self.bootstrap)
        watch.start()
        monitor = Monitor(self.bootstrap, marks, topics.results, topics.planner_history)
        monitor.start()
        self.started = time.monotonic()
        try:
            trigger = asyncio.create_task(self._aimed(sender, aimed, forge.valid, monitor))
            await send_paced(sender, order, rate=config.rate, progress=self._sent_progress)
            send_seconds = self.elapsed()
            self.log(f"  +{self.elapsed():6.1f}s {len(order)} records sent; waiting for the tasks")
            await self._wait_tasks(forge.valid, aimed, monitor, trigger)
            await asyncio.sleep(config.settle)
            lag = await self._wait_lag(services)
        finally:
            await monitor.stop()
            await watch.stop()
        metrics_after = await scrape(services)
        for growth in logs.values():
            growth.finish()
        self.log(f"  +{self.elapsed():6.1f}s reading back what the services wrote")
        outputs = await read_since(self.bootstrap, marks, read_topics[:3] + read_topics[4:6])
        dlq = await read_since(self.bootstrap, marks, [topics.dlq], decode=False)
        report = FuzzReport(self.run_id, topics.prefix, self.seed, self.bootstrap)
        report.records, report.valid = len(corpus), len(forge.valid)
        report.logs_dir = str(stack.stepbus_home() / "logs")
        analyse(
            report,
            Observed(
                topics=topics,
                corpus=corpus,
                valid=forge.valid,
                outputs=outputs,
                letters=[Letter.of(s) for s in dlq],
                marks=marks,
                services=services,
                metrics_before=metrics_before,
                metrics_after=metrics_after,
                restarts=watch.restarts,
                broker_outages=watch.broker_outages(),
                peak_kb=watch.peak_kb,
                peak_reset=watch.peak_reset,
                rss_kb=watch.rss_kb,
                logs=logs,
                ended_at=monitor.ended_at,
                lag=lag,
            ),
        )
        report.send_seconds = send_seconds
        report.run_seconds = self.elapsed()
        return report

    async def _sent_progress(self, count: int) -> None:
        if count % 2000 == 0:
            self.log(f"  +{self.elapsed():6.1f}s {count} records sent")

    async def _aimed(
        self,
        sender: Sender,
        aimed: list[FuzzRecord],
        valid: list[ValidTask],
        monitor: Monitor,
    ) -> None:
        """Send each aimed record once its task was accepted (or ended), until none is left."""
        tenants = {t.task_id: t.tenant for t in valid}
        pending = list(aimed)
        while pending:
            ready = [
                r
                for r in pending
                if (r.after == "accepted" and r.target in monitor.accepted)
                or (r.after == "ended" and (tenants[r.target or ""], r.target) in monitor.ended)
            ]
            for record in ready:
                pending.remove(record)
                await send_one(sender, record)
            await asyncio.sleep(0.05)

    async def _wait_tasks(
        self,
        valid: list[ValidTask],
        aimed: list[FuzzRecord],
        monitor: Monitor,
        trigger: asyncio.Task[None],
    ) -> None:
        """Until every valid task ended, every aimed record went and every collision was
        answered, or the timeout; aimed records still waiting then go at once (``late``)."""
        config = self.config
        collisions = [r for r in aimed if r.expect == "conflict"]
        last_note = 0.0
        while True:
            ended = sum(1 for t in valid if (t.tenant, t.task_id) in monitor.ended)
            answered = sum(1 for r in collisions if (r.tenant, r.target) in monitor.ended)
            if ended == len(valid) and trigger.done() and answered == len(collisions):
                break
            if trigger.done() and trigger.exception() is not None:
                raise trigger.exception()  # type: ignore[misc]
            if self.elapsed() > config.timeout:
                self.log(
                    f"  timeout after {config.timeout:.0f}s: {ended} of {len(valid)} tasks ended"
                )
                break
            if self.elapsed() - last_note >= 10:
                last_note = self.elapsed()
                sent = sum(1 for r in aimed if r.offset is not None or r.send_error)
                self.log(
                    f"  +{self.elapsed():6.1f}s {ended}/{len(valid)} valid tasks ended, "
                    f"{sent}/{len(aimed)} aimed records sent, {answered}/{len(collisions)} "
                    "collisions answered"
                )
            await asyncio.sleep(0.2)
        trigger.cancel()
        late = [r for r in aimed if r.offset is None and r.send_error is None]
        if late:
            self.log(f"  {len(late)} aimed records never triggered; sending them now")
        for record in late:
            record.late = True
            await send_one(self.sender, record)

    async def _wait_lag(
        self, services: dict[str, Service]
    ) -> dict[str, dict[object, tuple[int, int]] | str]:
        """Poll every group's committed offsets until none lags, or ``lag_timeout``."""
        deadline = time.monotonic() + self.config.lag_timeout
        while True:
            lag: dict[str, dict[object, tuple[int, int]] | str] = {}
            for name, service in services.items():
                try:
                    lag[name] = dict(await group_lag(self.bootstrap, service.group))
                except Exception as exc:  # the group unknown, the broker away: say so
                    lag[name] = f"{type(exc).__name__}: {exc}"
            behind = sum(
                n for value in lag.values() if isinstance(value, dict) for _, n in value.values()
            )
            if not behind and all(isinstance(v, dict) for v in lag.values()):
                self.log(f"  +{self.elapsed():6.1f}s every consumer group committed the end")
                return lag
            if time.monotonic() > deadline:
                self.log(f"  lag still {behind} after {self.config.lag_timeout:.0f}s")
                return lag
            await asyncio.sleep(1.0)
