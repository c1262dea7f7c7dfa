"""Which offset of a partition is safe to commit while records finish out of order."""

from __future__ import annotations

__all__ = ["PartitionOffsets"]


class PartitionOffsets:
    """Tracks the records of one partition that are in flight.

    Records of different tasks finish in any order; the committable offset is the lowest
    record not yet finished (or one past the last record seen when all are finished), so a
    crash re-delivers everything unfinished and nothing finished is skipped.
    """

    def __init__(self) -> None:
        self._pending: dict[int, bool] = {}  # offset -> finished, in arrival (= offset) order
        self._next = -1  # one past the highest offset seen
        self.committed = -1  # last offset committed by the processor

    def track(self, offset: int) -> None:
        """A record arrived and is starting."""
        self._pending[offset] = False
        self._next = max(self._next, offset + 1)

    def finish(self, offset: int) -> None:
        """A record is finished: its outputs are acknowledged."""
        if offset in self._pending:
            self._pending[offset] = True
        while self._pending:
            first = next(iter(self._pending))
            if not self._pending[first]:
                break
            del self._pending[first]

    @property
    def in_flight(self) -> int:
        """Records tracked and not yet finished or released."""
        return sum(1 for done in self._pending.values() if not done)

    def committable(self) -> int | None:
        """The offset to commit (the next record to read after a restart), if any."""
        if self._pending:
            return next(iter(self._pending))
        return self._next if self._next >= 0 else None
