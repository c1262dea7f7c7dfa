"""Integration fixtures: scratch topics are deleted when their module ends."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ..harness import delete_topics


@pytest.fixture(scope="module", autouse=True)
async def _delete_scratch_topics(
    request: pytest.FixtureRequest, kafka_bootstrap: str
) -> AsyncIterator[None]:
    """Delete the topics a module created under its ``SCRATCH`` prefix, once it ends."""
    yield
    prefix = getattr(request.module, "SCRATCH", None)
    if prefix:
        await delete_topics(kafka_bootstrap, prefix)
