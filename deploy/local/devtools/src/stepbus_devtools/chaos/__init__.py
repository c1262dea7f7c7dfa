"""``make chaos``: run many tasks through the real stack while killing its parts at random.

Against the local stack of :mod:`stepbus_devtools.stack` (Kafka, Redis and the services as
processes), under a fresh topic prefix per run, this

1. submits ``--tasks`` arithmetic tasks (``Compute a*b, then c+d, then e-f [latency=50-300]``,
   so every expected output is known) as raw CloudEvents on ``<prefix>tasks``, spread over
   ``--duration`` seconds;
2. meanwhile, at random (seeded) moments of that period, SIGKILLs a random service (planner,
   tool-executor, gateway, scripted-llm) and restarts it 0-2 s later, SIGKILLs the broker once
   (``kafka.sh kill9``) and restarts it, and runs Redis ``FLUSHALL`` once. Disruptions of
   different targets overlap; those of one target queue behind its restart (~10 s: the
   consumer group waits out the dead member's session), so the chaos goes on after the last
   submission, which lands at roughly the first third of the run;
3. waits until every task has a terminal event on ``<prefix>results`` (or the timeout), reads
   both ``results`` and ``planner.history`` from the beginning and prints a report: tasks
   completed exactly once with the right output, wrong outputs, failures, lost tasks, duplicate
   terminal events, tool effects that ran twice, the chaos performed and the longest time a
   task went without progress across a kill.

It exits 1 when a task is lost, has two distinct terminal events or a wrong output, or a tool
effect ran twice (invariants 1, 3 and 4 of the design). Everything is read from the
environment like the stack itself (``KAFKA_BOOTSTRAP_SERVERS``, ``REDIS_URL``, ``STEPBUS_HOME``,
the service ports), so it runs against a stack on any ports. The stack is left running.

    python -m stepbus_devtools.chaos [--tasks 200] [--steps 3] [--kills 12] [--seed N]
                                     [--timeout 600] [--duration SECONDS]

The same run is importable (:func:`run_chaos` with a :class:`ChaosConfig`) for the e2e test;
:func:`stop_services` stops what it started.

Modules, by role: :mod:`.config` (the run's settings and the command line), :mod:`.workload`
(the tasks and their submission), :mod:`.disruptions` (the plan and the kills, restarts and
flush), :mod:`.processes` (the stack's processes under chaos), :mod:`.observe` (reading
Kafka and the execution log), :mod:`.analysis` and :mod:`.report` (what was found, as text),
:mod:`.runner` (the whole run) and :mod:`.__main__` (the command line).
"""

from .config import SERVICES, ChaosConfig
from .disruptions import ChaosAction
from .processes import stop_services
from .report import ChaosReport
from .runner import run_chaos

__all__ = [
    "SERVICES",
    "ChaosAction",
    "ChaosConfig",
    "ChaosReport",
    "run_chaos",
    "stop_services",
]
