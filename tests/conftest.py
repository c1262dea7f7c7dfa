"""Session fixtures: the real Kafka broker and Redis server, and per-test topics."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlparse

import pytest
from stepbus_contracts import Topics
from stepbus_runtime import ensure_topics

from .harness import delete_topics, port_open, run_script, unique_prefix


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a real Kafka 4.x broker (started from deploy/local if needed)."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    host, port = bootstrap.split(",")[0].rsplit(":", 1)
    started = not port_open(host, int(port))
    if started:
        run_script("kafka.sh", "start", env={"KAFKA_BOOTSTRAP_SERVERS": bootstrap})
    yield bootstrap
    if started and not os.environ.get("STEPBUS_KEEP_STACK"):
        run_script("kafka.sh", "stop", env={"KAFKA_BOOTSTRAP_SERVERS": bootstrap})


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis server (started from deploy/local if needed)."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    parsed = urlparse(url)
    started = not port_open(parsed.hostname or "127.0.0.1", parsed.port or 6379)
    if started:
        run_script("redis.sh", "start", env={"REDIS_URL": url})
    yield url
    if started and not os.environ.get("STEPBUS_KEEP_STACK"):
        run_script("redis.sh", "stop", env={"REDIS_URL": url})


@pytest.fixture
async def topics(kafka_bootstrap: str) -> AsyncIterator[Topics]:
    """The topic catalog under a prefix unique to this test, created on the broker."""
    catalog = Topics(unique_prefix())
    await ensure_topics(kafka_bootstrap, catalog)
    yield catalog
    await delete_topics(kafka_bootstrap, catalog.prefix)
