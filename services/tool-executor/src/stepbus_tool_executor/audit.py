"""An append-only log of real tool executions (not replays), for audit and for proving
that a tool ran once per idempotency key under crashes (``make chaos`` reads it)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TextIO

__all__ = ["ExecutionLog"]


class ExecutionLog:
    """Appends one JSON line per execution, flushed before the outcome is recorded.

    A process killed with SIGKILL keeps what it flushed (the kernel holds it); fsync is left
    out on purpose: it would put a disk sync on every tool call.
    """

    def __init__(self, path: str | None) -> None:
        self._file: TextIO | None = None
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")

    def executed(self, idempotency_key: str, tool: str) -> None:
        """Record that ``tool`` really ran for ``idempotency_key``."""
        if self._file is not None:
            line = {"idempotency_key": idempotency_key, "tool": tool, "at": time.time()}
            self._file.write(json.dumps(line) + "\n")
            self._file.flush()
