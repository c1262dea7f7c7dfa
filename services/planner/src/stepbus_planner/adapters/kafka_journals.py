"""``Journals`` on Kafka: a task's events read back from ``planner.history``."""

from __future__ import annotations

from stepbus_contracts import JournalEvent, Topics

from ..replay.recording import RecordingError, load_recordings

__all__ = ["KafkaJournals"]


class KafkaJournals:
    """Reads one task's journal from the partition its id hashes to (from its beginning:
    the journal keeps 7 days; other keys' records are skipped before they are decoded)."""

    def __init__(self, bootstrap_servers: str, topics: Topics) -> None:
        self._bootstrap, self._topics = bootstrap_servers, topics

    async def read(self, task_id: str, tenant: str) -> list[JournalEvent]:
        """The task's journal events, in order, once each; empty when the tenant has none."""
        try:
            (recording,) = await load_recordings(self._bootstrap, self._topics, [task_id], tenant)
        except RecordingError:
            return []
        return recording.events
