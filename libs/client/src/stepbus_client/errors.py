"""Errors of the stepbus client; each says what the caller should do about it."""

from __future__ import annotations

__all__ = ["ClaimCheckError", "NotConnectedError", "StepbusClientError"]


class StepbusClientError(Exception):
    """Root of every error raised by ``stepbus_client``."""


class NotConnectedError(StepbusClientError):
    """Publishing before the router is connected: call ``broker.include_router(router)`` and
    connect the broker (``await broker.start()``, ``async with broker``, or a running
    ``FastStream`` app) first."""


class ClaimCheckError(StepbusClientError):
    """A claim-checked event cannot be read back: its payload expired, is missing, or does
    not match its reference. Retrying cannot help; the subscriber logs and skips the record."""
