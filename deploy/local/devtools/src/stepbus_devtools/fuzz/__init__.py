"""``make fuzz``: bad records on every topic stepbus consumes, interleaved with valid tasks.

Against the running stack of :mod:`stepbus_devtools.stack` (the services' topic prefix, ports
and consumer groups are read from their own environment), this

1. generates ``--records`` bad records from a seed, in named families: one per finding of the
   robustness issue (null records, 20 KB of nesting, keyless records at the size limit, claim
   checks pointing nowhere, poison on ``results``, tenant collisions, forged journal events,
   contract looseness) plus generic garbage (bytes, broken JSON, wrong types, non-objects,
   odd keys, big headers, unicode), on ``tasks``, ``planner.history``, ``tool.calls`` and
   ``results``;
2. sends them with ``--valid`` valid arithmetic tasks (known outputs) shuffled among them;
   records aimed at a valid task (another tenant taking its id or cancelling it, a forged
   terminal event, its event id reused) go once the task was accepted, or once it ended;
3. waits for every valid task to end and every consumer group to commit the end of what it
   consumes, watching the services' pids and memory meanwhile;
4. reads back the DLQ, ``results``, the journal, ``tool.calls``, the snapshots and the ledger
   written during the run, and the services' counters and logs, and prints a report: records
   sent (per topic and family), dead-lettered (per service and origin topic), dropped with
   reason, restarts, valid tasks completed exactly once, lag, peak RSS, log written, and one
   PASS/FAIL line per check with the evidence of what broke it (``docs/fuzz.md``).

It exits 1 when a check fails, 2 when the stack is unusable. The stack is left running.

    python -m stepbus_devtools.fuzz [--records 10000] [--valid 200] [--seed N] [--fresh]

The same run is importable (:func:`run_fuzz` with a :class:`FuzzConfig`) for the e2e test.

Modules, by role: :mod:`.config` (the run's settings and the command line), :mod:`.records`
(a record and what it must cause), :mod:`.findings`, :mod:`.forgeries` and :mod:`.garbage`
(the families), :mod:`.corpus` (how many of each, the valid tasks, the send order),
:mod:`.send` (the producer), :mod:`.observe` (reading Kafka back), :mod:`.services` (pids,
memory, counters, logs, lag), :mod:`.analysis` (dead letters matched to their records, counter
deltas), :mod:`.checks` (what must hold, with evidence), :mod:`.report` (the text),
:mod:`.runner` (the whole run) and :mod:`.__main__` (the command line).
"""

from .config import FuzzConfig
from .corpus import FAMILIES, Family
from .records import FuzzRecord
from .report import Check, FuzzReport
from .runner import run_fuzz

__all__ = ["FAMILIES", "Check", "Family", "FuzzConfig", "FuzzRecord", "FuzzReport", "run_fuzz"]
