"""Run the local stepbus stack as background processes with pid files (no Docker).

``python -m stepbus_devtools.stack up [NAME ...] | down | status | restart NAME |
kill NAME [--signal KILL|TERM]``

Kafka and Redis are started by ``deploy/local/kafka.sh`` and ``deploy/local/redis.sh``; the
scripted model and the services are ``python -m <module>`` processes in their own sessions,
logging to ``$STEPBUS_HOME/logs/<name>.log`` with pids in ``$STEPBUS_HOME/run/<name>.pid``.
``STEPBUS_HOME`` defaults to ``<repo>/.stepbus``. The same operations are importable
(:func:`up`, :func:`down`, :func:`kill`, :func:`restart`, :func:`is_running`, :func:`status`)
for the test harness and the chaos runner; they raise :class:`StackError` when the stack cannot
be brought into the requested state.

Only the standard library is used, so this runs before anything else is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PROCESSES",
    "Process",
    "StackError",
    "down",
    "is_running",
    "kill",
    "restart",
    "status",
    "up",
]

READY_TIMEOUT_SECONDS = float(os.environ.get("STEPBUS_STACK_TIMEOUT", "60"))
STOP_TIMEOUT_SECONDS = 15.0
POLL_SECONDS = 0.2
LOG_TAIL_LINES = 30

SCRIPTED_LLM = "scripted-llm"
SCRIPTED_API_KEY = "scripted-test-double"
SCRIPTED_MODEL = "stepbus-scripted"


class StackError(Exception):
    """The stack could not be brought into the requested state; the message says what to do."""


@dataclass(frozen=True)
class Process:
    """One entry of the stack: how to start it, recognise it and tell that it is ready.

    Attributes:
        name: Name on the command line and of the pid and log files.
        marker: Substring of ``/proc/<pid>/cmdline`` that identifies the process (guards
            against a reused pid).
        script: For Kafka and Redis, the ``deploy/local`` script with start/stop subcommands.
        module: For Python processes, the module run as ``sys.executable -m module``.
        port_env: Environment variable overriding ``port`` (the one the process itself reads).
        port: Default port of the readiness endpoint.
        ready_path: Path answering 200 once the process is ready.
    """

    name: str
    marker: str
    script: str | None = None
    module: str | None = None
    port_env: str | None = None
    port: int | None = None
    ready_path: str = "/readyz"

    def resolved_port(self) -> int | None:
        """The port in effect: ``port_env`` when set, else the default."""
        if self.port_env and os.environ.get(self.port_env):
            return int(os.environ[self.port_env])
        return self.port

    def argv(self) -> list[str]:
        """Command line of a Python process."""
        assert self.module is not None
        args = [sys.executable, "-m", self.module]
        if self.name == SCRIPTED_LLM:
            args += ["--port", str(self.resolved_port())]
        return args

    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.resolved_port()}{self.ready_path}"


# Start order (the tool-executor publishes the tool catalog the planner reads; the memory
# service and the critic answer the planner's requests); `down` stops in reverse.
PROCESSES: tuple[Process, ...] = (
    Process("kafka", marker="kafka.Kafka", script="kafka.sh"),
    Process("redis", marker="redis-server", script="redis.sh"),
    Process(
        SCRIPTED_LLM,
        marker="stepbus_devtools.scripted_llm",
        module="stepbus_devtools.scripted_llm",
        port_env="STEPBUS_SCRIPTED_LLM_PORT",
        port=8090,
        ready_path="/v1/models",
    ),
    Process(
        "tool-executor",
        marker="stepbus_tool_executor",
        module="stepbus_tool_executor",
        port_env="STEPBUS_TOOL_EXECUTOR_METRICS_PORT",
        port=9102,
    ),
    Process(
        "memory",
        marker="stepbus_memory",
        module="stepbus_memory",
        port_env="STEPBUS_MEMORY_METRICS_PORT",
        port=9103,
    ),
    Process(
        "critic",
        marker="stepbus_critic",
        module="stepbus_critic",
        port_env="STEPBUS_CRITIC_METRICS_PORT",
        port=9104,
    ),
    Process(
        "planner",
        marker="stepbus_planner",
        module="stepbus_planner",
        port_env="STEPBUS_PLANNER_METRICS_PORT",
        port=9101,
    ),
    Process(
        "gateway",
        marker="stepbus_gateway",
        module="stepbus_gateway",
        port_env="STEPBUS_GATEWAY_PORT",
        port=8080,
    ),
)
_BY_NAME = {process.name: process for process in PROCESSES}

# Runs in a short-lived interpreter: starts the process in its own session with its output
# appended to the log, prints its pid and exits without waiting, so the process is adopted by
# init. Nothing here is then its parent: no zombies to reap, no Popen finalizer warnings, and a
# stack started by `make up` outlives the command.
_LAUNCHER = """
import os, subprocess, sys
with open(sys.argv[1], "ab") as log:
    child = subprocess.Popen(
        sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
print(child.pid, flush=True)
os._exit(0)
"""


# --- locations ---------------------------------------------------------------------------------


def repo_root() -> Path:
    """The directory holding ``Makefile`` or ``.git`` above this file (else above the cwd)."""
    for start in (Path(__file__).resolve().parent, Path.cwd()):
        for directory in (start, *start.parents):
            if (directory / "Makefile").is_file() or (directory / ".git").exists():
                return directory
    return Path.cwd()


def stepbus_home() -> Path:
    return Path(os.environ.get("STEPBUS_HOME") or repo_root() / ".stepbus")


def _scripts_dir() -> Path:
    beside = Path(__file__).resolve().parents[3]  # deploy/local when run from the repo
    return beside if (beside / "kafka.sh").is_file() else repo_root() / "deploy" / "local"


def _pid_file(name: str) -> Path:
    return stepbus_home() / "run" / f"{name}.pid"


def _log_file(name: str) -> Path:
    return stepbus_home() / "logs" / f"{name}.log"


def _lookup(name: str) -> Process:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise StackError(f"unknown process {name!r}; one of: {', '.join(_BY_NAME)}") from None


# --- liveness ----------------------------------------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except FileNotFoundError:
        return ""
    except OSError:  # no procfs (macOS): ask ps
        result = subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False
        )
        return result.stdout


def _alive(pid: int, marker: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else; the command line decides
    cmdline = _cmdline(pid)
    if cmdline:
        return marker in cmdline  # a reused pid's command line differs
    # Empty: a zombie, or a child still inside execve right after it was spawned.
    return _state(pid) not in ("Z", "X", "")


def _state(pid: int) -> str:
    """The process state letter from /proc (R, S, D, Z, ...), or "" when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else ""


def _live_pid(process: Process) -> int | None:
    try:
        pid = int(_pid_file(process.name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid, process.marker) else None


def is_running(name: str) -> bool:
    """Whether the pid file of ``name`` names a live process of that kind."""
    return _live_pid(_lookup(name)) is not None


def status() -> dict[str, int | None]:
    """Pid of every process in the table, ``None`` for those not running."""
    return {process.name: _live_pid(process) for process in PROCESSES}


# --- helpers -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Serialise `up`/`down` of concurrent callers on the same STEPBUS_HOME."""
    run_dir = stepbus_home() / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "stack.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _say(message: str) -> None:
    print(message, flush=True)


def _runnable(module: str) -> bool:
    """Whether ``python -m module`` can run: the module exists, and a package has ``__main__``.

    Only a missing module counts as "not there"; any other import error is left for the child
    to show in its log.
    """
    try:
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations is not None:
            spec = importlib.util.find_spec(f"{module}.__main__")
    except ModuleNotFoundError:
        return False
    except Exception:
        return True
    return spec is not None


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _tail(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            lines = handle.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _scripted_url() -> str:
    return f"http://127.0.0.1:{_BY_NAME[SCRIPTED_LLM].resolved_port()}/v1"


def _uses_scripted_llm() -> bool:
    """True unless a real endpoint is configured (pointing at the stand-in itself counts too)."""
    configured = os.environ.get("OPENAI_BASE_URL", "").rstrip("/")
    return configured in ("", _scripted_url())


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["STEPBUS_HOME"] = str(stepbus_home())
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Qdrant's embedded local mode keeps its files with the rest of the stack's state.
    env.setdefault("STEPBUS_MEMORY_QDRANT_PATH", str(stepbus_home() / "qdrant"))
    # The planner and the critic (whose judge falls back to the same variables) both talk to
    # the scripted model unless a real endpoint is configured.
    if _uses_scripted_llm():
        env["OPENAI_BASE_URL"] = _scripted_url()
        env.setdefault("OPENAI_API_KEY", SCRIPTED_API_KEY)
        env.setdefault("STEPBUS_MODEL", SCRIPTED_MODEL)
    return env


def _run_script(process: Process, command: str, env: dict[str, str]) -> None:
    assert process.script is not None
    script = _scripts_dir() / process.script
    result = subprocess.run(["bash", str(script), command], env=env, check=False)
    if result.returncode != 0:
        raise StackError(
            f"`{process.script} {command}` failed (exit {result.returncode}); "
            f"see the output above and {stepbus_home() / 'logs'}"
        )


def _signal_process(pid: int, sig: int) -> None:
    """Signal the whole session of a process we started (its own children included)."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


# --- start -------------------------------------------------------------------------------------


@dataclass
class _Starting:
    process: Process
    pid: int
    log_offset: int
    note: str


# Consumer-group members given a stable instance id (static membership), as a StatefulSet
# would: a restarted process takes its partitions back at once instead of waiting for the
# group to notice the old one is gone.
_STATIC_MEMBERS = frozenset({"planner", "tool-executor"})


def _spawn(process: Process, env: dict[str, str]) -> _Starting:
    if process.name in _STATIC_MEMBERS and "STEPBUS_GROUP_INSTANCE_ID" not in env:
        env = {**env, "STEPBUS_GROUP_INSTANCE_ID": f"{process.name}-{socket.gethostname()}"}
    port = process.resolved_port()
    if port is not None and _port_open(port):
        hint = f" or set {process.port_env}" if process.port_env else ""
        raise StackError(
            f"{process.name}: port {port} is already taken by a process stepbus did not start "
            f"(pid file {_pid_file(process.name)}); stop it{hint}"
        )
    log_path = _log_file(process.name)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _pid_file(process.name).parent.mkdir(parents=True, exist_ok=True)
    offset = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log:
        log.write(f"=== stack up {time.strftime('%Y-%m-%dT%H:%M:%S%z')} ===\n".encode())
    launched = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, str(log_path), *process.argv()],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        cwd=repo_root(),
        check=False,
    )
    try:
        pid = int(launched.stdout.strip())
    except ValueError:
        raise StackError(
            f"{process.name}: could not launch {process.argv()}: {launched.stderr.strip()}"
        ) from None
    _pid_file(process.name).write_text(f"{pid}\n")
    return _Starting(process, pid, offset, "started")


def _wait_ready(starting: Iterable[_Starting], deadline: float) -> None:
    pending = list(starting)
    while pending:
        for item in list(pending):
            if _http_ok(item.process.ready_url()):
                pending.remove(item)
            elif not _alive(item.pid, item.process.marker):
                _pid_file(item.process.name).unlink(missing_ok=True)
                log = _log_file(item.process.name)
                raise StackError(
                    f"{item.process.name} (pid {item.pid}) exited during startup; "
                    f"last lines of {log}:\n{_tail(log, item.log_offset)}"
                )
        if not pending:
            break
        if time.monotonic() >= deadline:
            names = ", ".join(
                f"{item.process.name} ({item.process.ready_url()})" for item in pending
            )
            raise StackError(
                f"not ready after {READY_TIMEOUT_SECONDS:.0f}s: {names}; they are still running "
                f"(logs in {stepbus_home() / 'logs'}; `python -m stepbus_devtools.stack down`)"
            )
        time.sleep(POLL_SECONDS)


def up(names: Iterable[str] | None = None) -> None:
    """Start what is not running yet and return once everything started is ready.

    Args:
        names: Subset to start (in table order); all by default. ``scripted-llm`` starts only
            while ``OPENAI_BASE_URL`` is unset (or points at the stand-in's own URL).

    Raises:
        StackError: A process failed to start, died during startup or was not ready in time
            (what already runs is left running; call :func:`down` to clean up).
    """
    wanted = set(names) if names is not None else set(_BY_NAME)
    for name in wanted:
        _lookup(name)
    env = _child_env()
    scripted = _uses_scripted_llm()
    summary: list[tuple[str, str, str]] = []
    with _locked():
        if scripted and SCRIPTED_LLM in wanted:
            _say(
                "stepbus: OPENAI_BASE_URL is not set, so the services use the scripted stand-in "
                f"model at {_scripted_url()}: a deterministic test double, NOT a real LLM"
            )
        starting: list[_Starting] = []
        for process in PROCESSES:
            if process.name not in wanted:
                continue
            if process.script is not None:
                _run_script(process, "start", env)
                pid = _live_pid(process)
                summary.append((process.name, str(pid) if pid else "external", "ready"))
                continue
            assert process.module is not None
            if process.name == SCRIPTED_LLM and not scripted:
                _say(f"skipping {process.name}: OPENAI_BASE_URL is set, using that endpoint")
                continue
            pid = _live_pid(process)
            if pid is not None:
                starting.append(_Starting(process, pid, 0, "already running"))
            elif _runnable(process.module):
                starting.append(_spawn(process, env))
            else:
                _say(f"skipping {process.name}: `python -m {process.module}` is not available here")
        _wait_ready(starting, time.monotonic() + READY_TIMEOUT_SECONDS)
    summary += [
        (item.process.name, str(item.pid), f"ready ({item.note}, {item.process.ready_url()})")
        for item in starting
    ]
    for shown_name, shown_pid, state in summary:
        _say(f"{shown_name:<14} pid {shown_pid:<8} {state}")


# --- stop --------------------------------------------------------------------------------------


def _stop_children(processes: list[Process]) -> None:
    """SIGTERM every live one, wait up to STOP_TIMEOUT_SECONDS together, then SIGKILL."""
    live = {p: pid for p in processes if (pid := _live_pid(p)) is not None}
    for process in processes:
        if process not in live:
            _pid_file(process.name).unlink(missing_ok=True)
    for pid in live.values():
        _signal_process(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while any(_alive(pid, p.marker) for p, pid in live.items()) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    for process, pid in live.items():
        if _alive(pid, process.marker):
            _say(
                f"{process.name} (pid {pid}) still runs {STOP_TIMEOUT_SECONDS:.0f}s after "
                "SIGTERM; sending SIGKILL"
            )
            _signal_process(pid, signal.SIGKILL)
            while _alive(pid, process.marker):
                time.sleep(0.05)
        _pid_file(process.name).unlink(missing_ok=True)
        _say(f"{process.name:<14} pid {pid:<8} stopped")


def _stop(names: Iterable[str]) -> None:
    wanted = set(names)
    ordered = [p for p in reversed(PROCESSES) if p.name in wanted]
    _stop_children([p for p in ordered if p.module is not None])
    env = _child_env()
    for process in ordered:
        if process.script is not None:
            _run_script(process, "stop", env)


def down() -> None:
    """Stop everything in reverse start order (the services first, Kafka last)."""
    with _locked():
        _stop(_BY_NAME)


def restart(name: str) -> None:
    """Stop ``name`` (gracefully) and start it again, waiting until it is ready."""
    _lookup(name)
    with _locked():
        _stop([name])
    up([name])


def _parse_signal(sig: int | str) -> int:
    if isinstance(sig, int):
        return sig
    text = sig.upper().removeprefix("SIG")
    try:
        return int(signal.Signals[f"SIG{text}"])
    except KeyError:
        raise StackError(f"unknown signal {sig!r}; use KILL or TERM") from None


def kill(name: str, sig: int | str = signal.SIGTERM) -> int:
    """Send ``sig`` to ``name`` (its whole session) without waiting; used by the chaos test.

    The pid file stays, so :func:`is_running` turns false once the process is gone and
    :func:`up` or :func:`restart` brings it back.

    Returns:
        The pid that was signalled.

    Raises:
        StackError: ``name`` is not running under stepbus.
    """
    process = _lookup(name)
    number = _parse_signal(sig)
    pid = _live_pid(process)
    if pid is None:
        raise StackError(f"{name} is not running (no live process in {_pid_file(name)})")
    _signal_process(pid, number)
    return pid


# --- command line ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stepbus_devtools.stack",
        description="Start and stop the local stepbus stack (Kafka, Redis, services).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start what is not running and wait until ready")
    start.add_argument("names", nargs="*", metavar="NAME", help="subset to start")
    commands.add_parser("down", help="stop everything")
    commands.add_parser("status", help="show what runs")
    again = commands.add_parser("restart", help="stop and start one process")
    again.add_argument("name", metavar="NAME")
    signal_one = commands.add_parser("kill", help="signal one process without waiting")
    signal_one.add_argument("name", metavar="NAME")
    signal_one.add_argument("--signal", default="TERM", help="KILL or TERM (default TERM)")
    args = parser.parse_args(argv)

    try:
        if args.command == "up":
            up(args.names or None)
        elif args.command == "down":
            down()
        elif args.command == "status":
            for name, pid in status().items():
                _say(f"{name:<14} {'pid ' + str(pid) if pid else 'stopped'}")
        elif args.command == "restart":
            restart(args.name)
        elif args.command == "kill":
            pid = kill(args.name, args.signal)
            _say(f"{args.name}: sent SIG{args.signal.upper().removeprefix('SIG')} to pid {pid}")
    except StackError as error:
        print(f"stepbus: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
