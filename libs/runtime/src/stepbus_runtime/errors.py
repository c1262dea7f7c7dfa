"""Errors of the stepbus runtime; each subclass says what the processor does with the record."""

from __future__ import annotations

__all__ = ["DecodeError", "PermanentError", "RetryableError", "StepbusError"]


class StepbusError(Exception):
    """Root of every error raised by stepbus code."""


class RetryableError(StepbusError):
    """Transient: the processor retries the record with backoff, then dead-letters it."""


class PermanentError(StepbusError):
    """Retrying cannot help: the processor sends the record to the DLQ at once."""


class DecodeError(PermanentError):
    """The record is not a valid event for its topic (bad JSON or schema-invalid)."""
