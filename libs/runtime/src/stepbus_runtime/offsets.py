"""Which offset of a partition is safe to commit while records finish out of order."""

from __future__ import annotations

import time

__all__ = ["PartitionOffsets"]


class PartitionOffsets:
    """Tracks the records of one partition that are in flight.

    Records of different tasks finish in any order; the committable offset is the lowest
    record not yet finished (or one past the last record seen when all are finished), so a
    crash re-delivers everything unfinished and nothing finished is skipped.
    """

    def __init__(self) -> None:
        # offset -> when it started (None once finished), in arrival (= offset) order
        self._pending: dict[int, float | None] = {}
        self._next = -1  # one past the highest offset seen
        self.committed = -1  # last offset committed by the processor

    def track(self, offset: int) -> None:
        """A record arrived and is starting."""
        self._pending[offset] = time.monotonic()
        self._next = max(self._next, offset + 1)

    def finish(self, offset: int) -> None:
        """A record is finished: its outputs are acknowledged."""
        if offset in self._pending:
            self._pending[offset] = None
        while self._pending:
            first = next(iter(self._pending))
            if self._pending[first] is not None:
                break
            del self._pending[first]

    @property
    def in_flight(self) -> int:
        """Records tracked and not yet finished or released."""
        return sum(1 for started in self._pending.values() if started is not None)

    def oldest_since(self) -> float | None:
        """When the lowest unfinished record started (``time.monotonic()``), if any: the
        record the committed offset waits for."""
        for started in self._pending.values():
            if started is not None:
                return started
        return None

    def committable(self) -> int | None:
        """The offset to commit (the next record to read after a restart), if any."""
        if self._pending:
            return next(iter(self._pending))
        return self._next if self._next >= 0 else None
