"""Topic creation says why the broker refused, instead of waiting for leaders that never come."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from stepbus_runtime.admin import _raise_refusals


def test_a_refused_creation_is_raised_with_the_brokers_reason() -> None:
    response = SimpleNamespace(
        topic_errors=[
            ("stepbus.tasks", 36, "already exists"),  # another service was first: fine
            ("stepbus.results", 29, "Authorization failed."),
        ]
    )
    with pytest.raises(PermissionError, match=r"stepbus.results: error 29 Authorization failed"):
        _raise_refusals(response)


def test_created_or_existing_topics_raise_nothing() -> None:
    _raise_refusals(SimpleNamespace(topic_errors=[("a", 0, None), ("b", 36, "exists")]))
    _raise_refusals(None)
