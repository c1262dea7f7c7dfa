"""An upstream FastStream service on stepbus: submit tasks, record each task's result once.

    python app.py --bootstrap 127.0.0.1:9092 --db results.sqlite submit "What is 17 * 23?"
    python app.py --bootstrap 127.0.0.1:9092 --db results.sqlite run      # consume results
    python app.py --db results.sqlite show

``run`` records the terminal event of every task of its tenant into SQLite, keyed by
(tenant, task id). Results are committed to Kafka only after the row is written
(``StepbusRouter.on_result``, ``AckPolicy.NACK_ON_ERROR``), so a crash between receiving a
result and recording it redelivers the result instead of losing it; the insert is idempotent,
so a redelivery after a crash between recording and committing counts as a delivery but
leaves one row.

For the crash tests, ``STEPBUS_EXAMPLE_CRASH=before-record`` (or ``after-record``) makes the
handler SIGKILL its own process at that point, on the first result it handles.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

from faststream import FastStream
from faststream.kafka import KafkaBroker
from stepbus_client import (
    DEFAULT_PREFIX,
    StepbusRouter,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
)

SOURCE = "urn:example:upstream-faststream"
CRASH_ENV = "STEPBUS_EXAMPLE_CRASH"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    tenant      TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    type        TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    output      TEXT,
    reason      TEXT,
    deliveries  INTEGER NOT NULL DEFAULT 1,
    recorded_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (tenant, task_id)
)
"""


class Ledger:
    """The results of this service's tasks in SQLite: one row per task, whatever the
    deliveries (``deliveries`` counts them, to show redeliveries happen and change nothing)."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)  # autocommit: one statement
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def record(self, event: TaskCompleted | TaskFailed | TaskCancelled) -> None:
        """Record the task's terminal event; a redelivered one only bumps ``deliveries``."""
        if isinstance(event, TaskCompleted):
            output, reason = event.data.output, None
        elif isinstance(event, TaskFailed):
            output, reason = None, f"{event.data.reason}: {event.data.message}"
        else:
            output, reason = None, f"cancelled: {event.data.reason}"
        self._db.execute(
            "INSERT INTO results (tenant, task_id, type, event_id, output, reason) "
            "VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (tenant, task_id) DO UPDATE SET deliveries = deliveries + 1",
            (event.tenant, event.subject, event.type, event.id, output, reason),
        )

    def rows(self) -> list[tuple[str, str, str, str | None, str | None, int]]:
        """Every recorded result: tenant, task id, type, output, reason, deliveries."""
        return self._db.execute(
            "SELECT tenant, task_id, type, output, reason, deliveries FROM results "
            "ORDER BY recorded_at, task_id"
        ).fetchall()

    def close(self) -> None:
        self._db.close()


async def crash_if(point: str) -> None:
    """SIGKILL this process at ``point`` when ``STEPBUS_EXAMPLE_CRASH`` names it (tests).

    ``STEPBUS_EXAMPLE_CRASH_DELAY`` seconds pass first: a slow handler. That is what makes the
    crash test tell ack policies apart: under FastStream's default ``ACK_FIRST``, aiokafka
    auto-commits every 5 s, so a kill 6 s into the handler comes after the offset was
    committed, and the result is lost.
    """
    if os.environ.get(CRASH_ENV) == point:
        delay = float(os.environ.get(f"{CRASH_ENV}_DELAY", "0"))
        logging.getLogger("example").warning("crashing %s in %ss (%s)", point, delay, CRASH_ENV)
        await asyncio.sleep(delay)
        os.kill(os.getpid(), signal.SIGKILL)


def build(args: argparse.Namespace) -> tuple[KafkaBroker, StepbusRouter]:
    """The broker (idempotent producer: acks=all) and the stepbus router of this service."""
    broker = KafkaBroker(args.bootstrap, enable_idempotence=True, client_id="upstream-example")
    router = StepbusRouter(args.prefix, group_id=args.group, tenant=args.tenant, source=SOURCE)
    return broker, router


def consumer_app(args: argparse.Namespace, ledger: Ledger) -> FastStream:
    """The FastStream app of ``run``: every terminal result of the tenant into the ledger."""
    broker, router = build(args)

    @router.on_result(terminal_only=True, tenant=args.tenant)
    async def record(event: TaskCompleted | TaskFailed | TaskCancelled) -> None:
        await crash_if("before-record")
        ledger.record(event)
        await crash_if("after-record")
        logging.getLogger("example").info("recorded %s: %s", event.subject, event.type)

    broker.include_router(router)
    return FastStream(broker)


async def submit(args: argparse.Namespace) -> None:
    """Publish one task per input text and print each task id."""
    broker, router = build(args)
    broker.include_router(router)
    async with broker:  # connects the producer; no subscriber runs
        for text in args.inputs:
            task_id = args.task_id or f"task-{uuid.uuid4().hex[:12]}"
            await router.submit(task_id, text)
            print(task_id)


@contextlib.contextmanager
def opened(path: Path) -> Iterator[Ledger]:
    ledger = Ledger(path)
    try:
        yield ledger
    finally:
        ledger.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="stepbus topic prefix")
    parser.add_argument("--tenant", default="acme", help="the tenant tasks are submitted for")
    parser.add_argument("--group", default="upstream-example", help="consumer group of run")
    parser.add_argument("--db", type=Path, default=Path("results.sqlite"), help="SQLite file")
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("submit", help="submit one task per input text")
    sub.add_argument("inputs", nargs="+", metavar="INPUT")
    sub.add_argument("--task-id", help="the task id (one input only; default: random)")
    commands.add_parser("run", help="consume results and record them (Ctrl-C to stop)")
    commands.add_parser("show", help="print the recorded results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)

    if args.command == "submit":
        if args.task_id and len(args.inputs) > 1:
            parser.error("--task-id names one task: give one input")
        asyncio.run(submit(args))
    elif args.command == "run":
        with opened(args.db) as ledger:
            asyncio.run(consumer_app(args, ledger).run())
    else:
        with opened(args.db) as ledger:
            for tenant, task_id, kind, output, reason, deliveries in ledger.rows():
                print(f"{tenant}/{task_id}  {kind}  {output or reason}  (deliveries: {deliveries})")


if __name__ == "__main__":
    main()
