"""The disruptions of a run: drawn up front (:func:`plan_disruptions`), then performed at
their moments by :class:`Disruptions` (service SIGKILL and restart, broker SIGKILL and
restart, Redis ``FLUSHALL``), each recorded as a :class:`ChaosAction`."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from stepbus_devtools import stack

from .config import ChaosConfig
from .processes import broker_port_open, kafka_sh, restart, wait_dead

__all__ = ["ChaosAction", "Disruption", "Disruptions", "plan_disruptions"]


@dataclass
class ChaosAction:
    """One disruption performed."""

    kind: str  # "kill", "broker", "flushall"
    target: str
    at: float  # wall clock (epoch seconds) of the kill / flush
    offset: float  # seconds since the run started
    in_flight: int  # tasks submitted and not ended at that moment
    pid: int | None = None
    restart_delay: float | None = None
    back_after: float | None = None  # seconds from the kill until ready again
    error: str | None = None

    def describe(self) -> str:
        """One report line: when, what, how long until it was back, tasks in flight."""
        when = datetime.fromtimestamp(self.at, UTC).strftime("%H:%M:%S.%f")[:-3]
        head = f"+{self.offset:6.1f}s {when}Z"
        if self.kind == "flushall":
            text = f"{head}  Redis FLUSHALL ({self.in_flight} tasks in flight)"
        else:
            what = "broker (kafka.sh kill9)" if self.kind == "broker" else self.target
            pid = f" pid {self.pid}" if self.pid else ""
            delay = f"{self.restart_delay:.2f}s" if self.restart_delay is not None else "?"
            back = f"{self.back_after:.1f}s" if self.back_after is not None else "never"
            text = (
                f"{head}  SIGKILL {what}{pid}; restart after {delay}, ready again after {back} "
                f"({self.in_flight} tasks in flight)"
            )
        return text + (f"  ERROR: {self.error}" if self.error else "")


class Disruption(NamedTuple):
    """One planned disruption."""

    offset: float  # seconds after the run start
    kind: str  # "kill", "broker", "flushall"
    target: str  # a service, "kafka" or "redis"
    restart_delay: float  # pause between the kill and the restart (drawn for a flush too)


def plan_disruptions(
    rng: random.Random, config: ChaosConfig, targets: Sequence[str]
) -> list[Disruption]:
    """Every disruption of the run, sorted by offset, all drawn up front from ``rng``."""
    must = [name for name in config.must_kill if name in targets][: config.kills]
    picks = must + [rng.choice(targets) for _ in range(config.kills - len(must))]
    rng.shuffle(picks)
    kinds = [("kill", name) for name in picks]
    if config.broker_kill:
        kinds.append(("broker", "kafka"))
    if config.flushall:
        kinds.append(("flushall", "redis"))
    rng.shuffle(kinds)
    window = config.window()
    moments = sorted(rng.uniform(0.05 * window, window) for _ in kinds)
    return [
        Disruption(moment, kind, target, rng.uniform(*config.restart_delay))
        for moment, (kind, target) in zip(moments, kinds, strict=True)
    ]


class Disruptions:
    """Performs a plan against the stack and records what happened in :attr:`actions`.

    Args:
        plan: From :func:`plan_disruptions`.
        bootstrap: The broker to kill (and the one ``kafka.sh`` restarts).
        redis_url: The Redis to flush.
        broker_home: ``STEPBUS_HOME`` under which ``kafka.sh`` manages the broker.
        elapsed: Seconds since the run started (the plan's offsets count from there).
        in_flight: Tasks submitted and not ended right now.
        log: Where progress lines go.
    """

    def __init__(
        self,
        plan: list[Disruption],
        *,
        bootstrap: str,
        redis_url: str,
        broker_home: Path,
        elapsed: Callable[[], float],
        in_flight: Callable[[], int],
        log: Callable[[str], None],
    ) -> None:
        self.plan = plan
        self.actions: list[ChaosAction] = []
        self._bootstrap = bootstrap
        self._redis_url = redis_url
        self._broker_home = broker_home
        self._elapsed = elapsed
        self._in_flight = in_flight
        self._log = log

    async def run(self) -> None:
        """Start each planned disruption at its moment; disruptions of different targets
        overlap (a kill does not wait for the previous restart), those of one target queue."""
        locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        incidents = []
        for planned in self.plan:
            delay = planned.offset - self._elapsed()
            if delay > 0:
                await asyncio.sleep(delay)
            incidents.append(asyncio.create_task(self._incident(planned, locks[planned.target])))
        await asyncio.gather(*incidents)

    async def _incident(self, planned: Disruption, lock: asyncio.Lock) -> None:
        kind = planned.kind
        async with lock:
            action = ChaosAction(
                kind,
                planned.target,
                time.time(),
                self._elapsed(),
                self._in_flight(),
                restart_delay=None if kind == "flushall" else planned.restart_delay,
            )
            self.actions.append(action)
            try:
                if kind == "flushall":
                    await self._flushall()
                elif kind == "broker":
                    await self._kill_broker(action)
                else:
                    await self._kill_service(action)
            except Exception as exc:
                action.error = f"{type(exc).__name__}: {exc}"
            self._log(f"  {action.describe()}")

    async def _flushall(self) -> None:
        from redis.asyncio import Redis

        redis = Redis.from_url(self._redis_url)
        try:
            await redis.flushall()
        finally:
            await redis.aclose()

    async def _kill_service(self, action: ChaosAction) -> None:
        name = action.target
        if not stack.is_running(name):  # a previous restart failed: bring it back first
            await asyncio.to_thread(restart, name, self._log)
        action.at = time.time()
        killed = time.monotonic()
        action.pid = stack.kill(name, signal.SIGKILL)
        await asyncio.to_thread(wait_dead, name, 10.0)
        await self._pause_until_restart(action, killed)
        await asyncio.to_thread(restart, name, self._log)
        action.back_after = time.monotonic() - killed

    async def _kill_broker(self, action: ChaosAction) -> None:
        bootstrap, home = self._bootstrap, self._broker_home
        status = await asyncio.to_thread(kafka_sh, "status", bootstrap, home, check=False)
        pid_file = home / "run" / "kafka.pid"
        if status.returncode != 0 or not pid_file.exists():
            raise stack.StackError(
                f"the broker at {bootstrap} is not managed by kafka.sh under "
                f"STEPBUS_HOME={home}; cannot kill it"
            )
        action.pid = int(pid_file.read_text().strip())
        action.at = time.time()
        killed = time.monotonic()
        await asyncio.to_thread(kafka_sh, "kill9", bootstrap, home)
        closed = time.monotonic() + 10  # the sockets close a moment after the pid is gone
        while broker_port_open(bootstrap):
            if time.monotonic() > closed:
                raise stack.StackError(f"{bootstrap} still answers after kafka.sh kill9")
            await asyncio.sleep(0.05)
        await self._pause_until_restart(action, killed)
        await asyncio.to_thread(kafka_sh, "start", bootstrap, home)
        action.back_after = time.monotonic() - killed

    @staticmethod
    async def _pause_until_restart(action: ChaosAction, killed: float) -> None:
        """Sleep out what remains of the action's restart delay since ``killed`` (monotonic)."""
        await asyncio.sleep(max(0.0, (action.restart_delay or 0.0) - (time.monotonic() - killed)))
