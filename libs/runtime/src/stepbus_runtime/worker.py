"""Run a processor as a service: topics, health endpoint, signals, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence

from .admin import ensure_topics
from .claimcheck import PayloadReaders
from .gctune import tune_gc
from .health import serve_health
from .processor import PartitionListener, Processor, Route
from .publisher import EventPublisher
from .settings import ServiceSettings
from .telemetry import shutdown_telemetry

__all__ = ["run_worker", "service_processor", "service_publisher"]

log = logging.getLogger(__name__)


def service_publisher(settings: ServiceSettings, client_id: str) -> EventPublisher:
    """A publisher configured from a service's settings, claim checks included."""
    return EventPublisher(
        settings.kafka_bootstrap_servers,
        client_id,
        payloads_topic=settings.topics.payloads,
        claim_check_threshold=settings.claim_check_threshold_bytes,
    )


def service_processor(
    settings: ServiceSettings,
    *,
    name: str,
    group_id: str,
    routes: dict[str, Route],
    publisher: EventPublisher,
    listener: PartitionListener | None = None,
    payloads: PayloadReaders | None = None,
) -> Processor:
    """A processor configured from a service's settings: its group under the topic prefix, the
    DLQ, in-flight and attempt limits, static membership and claim checks (resolved by the
    publisher's store unless ``payloads`` says otherwise)."""
    return Processor(
        name=name,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"{settings.topic_prefix}{group_id}",
        routes=routes,
        publisher=publisher,
        dlq_topic=settings.topics.dlq,
        max_in_flight=settings.max_in_flight,
        max_attempts=settings.max_attempts,
        group_instance_id=settings.group_instance_id,
        commit_interval=settings.commit_interval_seconds,
        listener=listener,
        payloads=payloads or publisher.payloads,
    )


async def run_worker(
    settings: ServiceSettings,
    publisher: EventPublisher,
    processor: Processor,
    metrics_port: int,
    on_started: Callable[[], Awaitable[None]] | None = None,
    also: Sequence[Processor] = (),
    detail: Callable[[], str] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT: finished work is committed, unfinished work left for others.

    Args:
        settings: Kafka and topic settings.
        publisher: Not yet started; started and stopped here.
        processor: The service's processor.
        metrics_port: Port of ``/metrics``, ``/healthz`` and ``/readyz``.
        on_started: Awaited once the publisher is connected, before consuming starts.
        also: More processors of the service (their own groups, sharing the publisher): run,
            stopped and reported in ``/readyz`` with ``processor``. A service splits its work
            this way when one kind must not wait behind another (the memory service answers
            recalls in a group of their own, apart from the backlog of what it remembers).
        detail: A line added to the ``/readyz`` body (e.g. degraded dependencies that leave
            the service ready); empty when there is nothing to say.
    """
    await ensure_topics(
        settings.kafka_bootstrap_servers,
        settings.topics,
        replication_factor=settings.topic_replication_factor,
    )
    await publisher.start()
    server: asyncio.Server | None = None
    try:
        if on_started is not None:
            await on_started()
        processors = [processor, *also]

        def health() -> tuple[bool, str]:
            answers = [p.health() for p in processors]
            bad = [f"{p.name}: {why}" for p, (ok, why) in zip(processors, answers, strict=True)
                   if not ok]  # fmt: skip
            extra = detail() if detail is not None else ""
            if not bad:
                return (True, f"ready; {extra}" if extra else "ready")
            return (False, "; ".join([*bad, extra] if extra else bad))

        server = await serve_health(settings.metrics_host, metrics_port, health)
        tune_gc()
        loop = asyncio.get_running_loop()

        def stop() -> None:
            for each in processors:
                each.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        log.info(
            "%s started; metrics on %s:%d", processor.name, settings.metrics_host, metrics_port
        )
        runs = [asyncio.create_task(each.run()) for each in processors]
        done, _ = await asyncio.wait(runs, return_when=asyncio.FIRST_COMPLETED)
        stop()  # one ended (stopped, or failed): the service stops as a whole
        await asyncio.gather(*runs, return_exceptions=True)
        for task in done:
            task.result()  # a processor that crashed makes the service exit with its error
        failed = [each.name for each in processors if each.failed]
        if failed:
            raise SystemExit(f"{', '.join(failed)} stopped: state could not be restored")
    finally:
        if server is not None:
            server.close()
        with contextlib.suppress(Exception):
            await publisher.stop()
        await asyncio.to_thread(shutdown_telemetry)
        log.info("%s stopped", processor.name)
