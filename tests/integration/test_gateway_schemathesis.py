"""schemathesis against the gateway's own ``/openapi.json``, with a valid key: no generated
request gets a 5xx, every response has a documented status and matches its schema.

The gateway runs as its own process (real Kafka and Redis). The SSE routes are left out (a
generated request may open a stream that never ends); their behaviour has its own tests.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)
from stepbus_contracts import Topics
from stepbus_gateway.openapi import document
from stepbus_runtime import ensure_topics

from ..harness import TEST_API_KEYS, ServiceProcess, auth, free_port, unique_prefix

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("STEPBUS_SCHEMATHESIS_EXAMPLES", "25"))
"""Generated requests per operation (``make test`` runs a small number; raise it to fuzz)."""

SCHEMA = schemathesis.openapi.from_dict(document()).exclude(path_regex="events$")


@pytest.fixture(scope="module")
def gateway_url(kafka_bootstrap: str, redis_url: str) -> Iterator[str]:
    topics = Topics(unique_prefix())
    asyncio.run(ensure_topics(kafka_bootstrap, topics))
    port = free_port()
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "REDIS_URL": redis_url,
        "STEPBUS_TOPIC_PREFIX": topics.prefix,
        "STEPBUS_GATEWAY_PORT": str(port),
        "STEPBUS_API_KEYS": TEST_API_KEYS,
        "STEPBUS_GATEWAY_RATE_LIMIT_PER_SECOND": "10000",
        "STEPBUS_GATEWAY_RATE_LIMIT_BURST": "10000",
    }
    url = f"http://127.0.0.1:{port}"
    gateway = ServiceProcess("gateway-schemathesis", ["stepbus_gateway"], env, f"{url}/readyz")
    gateway.start()
    try:
        asyncio.run(gateway.wait_ready())
        yield url
    finally:
        gateway.stop()


def test_the_served_document_is_the_one_tested(gateway_url: str) -> None:
    served = httpx.get(f"{gateway_url}/openapi.json", timeout=10).json()
    assert served == document()


@settings(
    max_examples=EXAMPLES * len(list(SCHEMA.get_all_operations())),
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(case=SCHEMA.as_strategy())
def test_no_generated_request_gets_a_server_error(
    gateway_url: str, case: schemathesis.Case
) -> None:
    response = case.call(base_url=gateway_url, headers=auth("acme"), timeout=15)
    case.validate_response(
        response,
        checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
    )
