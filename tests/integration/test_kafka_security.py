"""Kafka security for real: a broker that takes only authenticated clients on its SASL
listeners, one in plain text and one over TLS (``deploy/kafka/authz-broker.sh``), and the
runtime's clients configured by ``STEPBUS_KAFKA_*`` alone, as a service process is: topics
created, an event published through the publisher and read back; the wrong password, and TLS
without the broker's CA, are refused."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..harness import unique_prefix

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).parents[2] / "deploy" / "kafka" / "authz-broker.sh"

CLIENT = """
import asyncio, sys
from aiokafka import AIOKafkaConsumer
from stepbus_contracts import TaskSubmitted, TaskSubmittedData, Topics
from stepbus_runtime import Emit, EventPublisher, ensure_topics, iter_to_end, topic_partitions
from stepbus_runtime.kafka_security import kafka_options

async def main(bootstrap, prefix):
    topics = Topics(prefix)
    await ensure_topics(bootstrap, topics, wait_seconds=20)
    publisher = EventPublisher(bootstrap, "security-test")
    await publisher.start()
    event = TaskSubmitted(subject="t-1", data=TaskSubmittedData(input="over SASL"))
    await publisher.publish([Emit(topics.tasks, event)])
    await publisher.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **kafka_options())
    await consumer.start()
    try:
        partitions = await topic_partitions(bootstrap, topics.tasks)
        values = [r.value async for r in iter_to_end(consumer, partitions)]
    finally:
        await consumer.stop()
    assert any(b"over SASL" in v for v in values), values
    print("read back over", kafka_options()["security_protocol"])

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def _free_run(count: int) -> int:
    """A port with ``count`` free ports from it on."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count >= 65535:
            continue
        try:
            for offset in range(count):
                with socket.socket() as taken:
                    taken.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base
    raise RuntimeError("no run of free ports")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """The broker's first port and its directory."""
    port = _free_run(4)
    directory = tmp_path_factory.mktemp("authz-kafka") / "broker"
    env = {**os.environ, "AUTHZ_KAFKA_PORT": str(port), "AUTHZ_KAFKA_DIR": str(directory)}
    subprocess.run(["bash", str(SCRIPT), "start"], env=env, check=True, timeout=180)
    try:
        yield port, directory
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, check=False, timeout=60)


def client(
    bootstrap: str, password: str, protocol: str = "SASL_PLAINTEXT", **tls: str
) -> subprocess.CompletedProcess[str]:
    """A process whose only Kafka settings are the bootstrap and ``STEPBUS_KAFKA_*``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("STEPBUS_KAFKA_")}
    env.update(
        STEPBUS_KAFKA_SECURITY_PROTOCOL=protocol,
        STEPBUS_KAFKA_SASL_MECHANISM="PLAIN",
        STEPBUS_KAFKA_SASL_USERNAME="stepbus-admin",
        STEPBUS_KAFKA_SASL_PASSWORD=password,
        **{f"STEPBUS_KAFKA_{name.upper()}": value for name, value in tls.items()},
    )
    return subprocess.run(
        [sys.executable, "-c", CLIENT, bootstrap, unique_prefix()],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_runtime_clients_authenticate_with_sasl_from_the_environment(
    broker: tuple[int, Path],
) -> None:
    done = client(f"127.0.0.1:{broker[0] + 2}", "stepbus")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "read back over SASL_PLAINTEXT" in done.stdout


def test_sasl_over_tls_verifies_the_broker_with_the_given_ca(broker: tuple[int, Path]) -> None:
    port, directory = broker
    tls = f"127.0.0.1:{port + 3}"
    done = client(tls, "stepbus", "SASL_SSL", ssl_cafile=str(directory / "tls" / "ca.crt"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "read back over SASL_SSL" in done.stdout
    unknown_ca = client(tls, "stepbus", "SASL_SSL")  # the system's CAs never signed it
    assert unknown_ca.returncode != 0
    assert "Unable to bootstrap" in unknown_ca.stderr


def test_a_wrong_password_is_refused(broker: tuple[int, Path]) -> None:
    done = client(f"127.0.0.1:{broker[0] + 2}", "not-the-password")
    assert done.returncode != 0
    assert "Unable to bootstrap" in done.stderr  # the broker never let it in
    assert "not-the-password" not in done.stdout + done.stderr  # never echoed
