"""Stopping, restarting and waiting for the stack's processes, and ``kafka.sh`` for the broker.

A thin layer over :mod:`stepbus_devtools.stack` that behaves like a supervisor under chaos:
restarts are retried, and service processes that ``stack.up`` lost track of are found again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from stepbus_devtools import stack

from .config import SERVICES

__all__ = ["broker_port_open", "kafka_sh", "restart", "stop_services", "wait_dead"]


def wait_dead(name: str, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``name`` to stop running; ``False`` if it still runs."""
    deadline = time.monotonic() + timeout
    while stack.is_running(name):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _orphans(name: str) -> list[int]:
    """Live processes of ``name`` started under this ``STEPBUS_HOME`` that no pid file names.

    ``stack.up`` can take a process that is still inside ``execve`` (its ``/proc/<pid>/cmdline``
    reads empty for a moment, which happens under load) for one that "exited during startup":
    it then forgets the pid while the process lives on and a retry starts a second one.
    """
    process = stack._lookup(name)
    if process.module is None:
        return []
    home = f"STEPBUS_HOME={stack.stepbus_home()}".encode()
    known = stack.status().get(name)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (known, os.getpid()):
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        # The service itself (`python -m <module>`), not a launcher that mentions it.
        is_service = b"-m" in argv and process.module.encode() in argv and b"-c" not in argv
        if is_service and home in environ and state != "Z":
            found.append(int(entry.name))
    return sorted(found)


def _kill_orphans(pids: Sequence[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def _adopt_orphan(name: str, log: Callable[[str], None]) -> None:
    """Give the pid file back to a lone orphan of ``name``; kill several (a retry starts one)."""
    if stack.is_running(name):
        return
    orphans = _orphans(name)
    if len(orphans) == 1:
        stack._pid_file(name).write_text(f"{orphans[0]}\n")
        log(f"  {name}: adopted pid {orphans[0]}, which stack.up had given up on while it ran")
    else:
        _kill_orphans(orphans)


def stop_services(names: Sequence[str] = SERVICES, timeout: float = 20.0) -> None:
    """SIGTERM the running services among ``names`` (SIGKILL after ``timeout``); not Kafka/Redis.

    Orphans of this ``STEPBUS_HOME`` (see :func:`_orphans`) are stopped too.
    """
    for name in names:
        _adopt_orphan(name, lambda _: None)
    running = [name for name in reversed(names) if stack.is_running(name)]
    for name in running:
        with contextlib.suppress(stack.StackError):
            stack.kill(name, signal.SIGTERM)
    for name in running:
        if not wait_dead(name, timeout):
            with contextlib.suppress(stack.StackError):
                stack.kill(name, signal.SIGKILL)
            wait_dead(name, 5)
    for name in names:
        _kill_orphans(_orphans(name))


def restart(name: str, log: Callable[[str], None], within: float = 90.0) -> None:
    """``stack.up([name])`` like a supervisor: retried while it fails (the old process's port
    not yet released, the broker away during a broker kill, ...), for up to ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        try:
            _adopt_orphan(name, log)
            stack.up([name])
            return
        except stack.StackError as error:
            if time.monotonic() > deadline:
                raise
            log(f"  restart of {name} failed, retrying in 1s: {error}")
            time.sleep(1.0)


def kafka_sh(
    command: str, bootstrap: str, home: Path, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``kafka.sh <command>`` for the broker at ``bootstrap`` managed under ``home``.

    Raises:
        stack.StackError: With ``check``, when the script fails.
    """
    script = stack._scripts_dir() / "kafka.sh"
    env = {**os.environ, "STEPBUS_HOME": str(home), "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    result = subprocess.run(
        ["bash", str(script), command], env=env, capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        raise stack.StackError(
            f"kafka.sh {command} failed ({result.returncode}): "
            f"{result.stdout.strip()} {result.stderr.strip()}"
        )
    return result


def broker_port_open(bootstrap: str) -> bool:
    """Whether the first broker of ``bootstrap`` answers (always ``True`` when not local)."""
    host, port = bootstrap.split(",")[0].removeprefix("PLAINTEXT://").rsplit(":", 1)
    return stack._port_open(int(port)) if host in ("127.0.0.1", "localhost") else True
