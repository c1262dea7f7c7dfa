"""The tasks of a run: arithmetic inputs whose outputs are known, and their submission.

Each task is ``Compute a*b, then c+d, then e-f [latency=...]`` (one expression per tool step),
so the right output of every task is known before it runs.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from stepbus_contracts import TaskSubmitted, TaskSubmittedData

from .config import ChaosConfig

__all__ = ["Task", "make_tasks", "submit_all"]


@dataclass
class Task:
    """One task of the run and when it was submitted."""

    task_id: str
    input: str
    expected: str
    offset: float  # planned submission, seconds after the run start
    submitted_at: float | None = None  # wall clock of the first send attempt


def make_tasks(rng: random.Random, config: ChaosConfig, run_id: str) -> list[Task]:
    """``config.tasks`` tasks sorted by their (random) submission offsets in the window."""
    window = config.window()
    tasks = []
    for index in range(config.tasks):
        expressions, results = [], []
        for step in range(config.steps):
            a = index + 2 if step == 0 else rng.randint(2, 999)  # the index keeps inputs apart
            b = rng.randint(1, 99)
            op = "*+-"[step % 3]
            expressions.append(f"{a}{op}{b}")
            results.append(str(a * b if op == "*" else a + b if op == "+" else a - b))
        text = "Compute " + ", then ".join(expressions)
        if config.latency:
            text += f" [latency={config.latency}]"
        expected = results[0] if len(results) == 1 else "Results: " + ", ".join(results)
        tasks.append(Task(f"chaos-{run_id}-{index:04d}", text, expected, rng.uniform(0, window)))
    tasks.sort(key=lambda t: t.offset)
    return tasks


async def submit_all(
    producer: AIOKafkaProducer,
    topic: str,
    tasks: Sequence[Task],
    *,
    config: ChaosConfig,
    run_id: str,
    elapsed: Callable[[], float],
    log: Callable[[str], None],
) -> None:
    """Send each task's ``task.submitted`` to ``topic`` at its offset (``elapsed`` counts from
    the run start), retrying the same event while the broker is down."""
    for task in tasks:
        delay = task.offset - elapsed()
        if delay > 0:
            await asyncio.sleep(delay)
        event = TaskSubmitted(
            source="urn:stepbus:chaos",
            subject=task.task_id,
            tenant="chaos",
            data=TaskSubmittedData(
                input=task.input,
                tools=["calculator"],
                max_iterations=config.steps + 3,
                deadline_seconds=max(300.0, 2 * config.timeout),
                metadata={"chaos_run": run_id},
            ),
        )
        task.submitted_at = time.time()
        value = event.model_dump_json().encode()
        while True:  # the broker may be down right now: the same event again
            try:
                await producer.send_and_wait(topic, value, key=task.task_id.encode())
                break
            except KafkaError as exc:
                log(f"  submit {task.task_id} failed ({exc!r}); retrying")
                await asyncio.sleep(0.5)
