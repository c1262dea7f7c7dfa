"""``stepbus``: submit tasks, follow their steps, decide approvals, all through the gateway.

The gateway is ``STEPBUS_URL`` (default ``http://127.0.0.1:8080``) and the API key
``STEPBUS_API_KEY`` (none: the gateway's open development mode). Every command prints JSON with
``--json``. Exit codes: 0 success (a followed task completed), 1 a followed task failed, 2 it
was cancelled, 3 the gateway could not be reached or refused the request.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.table import Table

__all__ = ["app", "load_plugins", "main"]

app = typer.Typer(
    help="stepbus: durable LLM agents on Kafka. Submit tasks, follow them, decide approvals.",
    no_args_is_help=True,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)

EXIT_FAILED, EXIT_CANCELLED, EXIT_UNREACHABLE = 1, 2, 3
TERMINAL = {
    "stepbus.task.completed": 0,
    "stepbus.task.failed": EXIT_FAILED,
    "stepbus.task.cancelled": EXIT_CANCELLED,
}

Url = Annotated[
    str, typer.Option("--url", envvar="STEPBUS_URL", help="The gateway.", show_default=True)
]
Key = Annotated[
    str | None,
    typer.Option("--key", envvar="STEPBUS_API_KEY", help="API key (Bearer).", show_default=False),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]
DEFAULT_URL = "http://127.0.0.1:8080"


class Gateway:
    """The gateway's HTTP API, with errors turned into messages that say what to do."""

    def __init__(self, url: str, key: str | None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of a request (exits with a clear message on an error)."""
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            self._unreachable(exc)
        if response.status_code >= 400:
            self._refused(response)
        return response.json()

    def events(self, path: str, last_event_id: str | None = None) -> Iterator[dict[str, Any]]:
        """The SSE messages of a stream, as ``{"id", "event", "data"}`` (data decoded)."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        try:
            with self._client.stream("GET", path, headers=headers, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    self._refused(response)
                message: dict[str, Any] = {}
                for line in response.iter_lines():
                    if line == "":
                        if "data" in message:
                            message["data"] = json.loads(message["data"])
                            yield message
                        message = {}
                    elif not line.startswith(":"):
                        name, _, value = line.partition(":")
                        message[name] = value.removeprefix(" ")
        except httpx.HTTPError as exc:
            self._unreachable(exc)

    def _unreachable(self, exc: Exception) -> NoReturn:
        err.print(
            f"[red]cannot reach the gateway at {self.url}[/] ({type(exc).__name__}): is it "
            "running (`make up`)? Set STEPBUS_URL to another address."
        )
        raise typer.Exit(EXIT_UNREACHABLE)

    def _refused(self, response: httpx.Response) -> NoReturn:
        try:
            error = response.json()["error"]
            message = error["message"]
            details = error.get("details") or []
        except (ValueError, KeyError, TypeError):
            message, details = response.text[:500], []
        hint = {
            401: " Set STEPBUS_API_KEY to a key of the gateway (`--key`).",
            403: " Use a key with a role the approval names.",
            429: f" Retry after {response.headers.get('retry-after', 'a few')} s.",
            503: " The gateway is catching up; retry in a few seconds.",
        }.get(response.status_code, "")
        err.print(f"[red]HTTP {response.status_code}[/]: {message}.{hint}")
        for detail in details:
            err.print(f"  {detail.get('field')}: {detail.get('message')}")
        raise typer.Exit(EXIT_UNREACHABLE)


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def _step_line(event: dict[str, Any]) -> str | None:
    """How a followed task's event reads on the terminal (None: not shown)."""
    kind, data = event.get("type", ""), event.get("data") or {}
    if kind == "stepbus.task.progress":
        return f"[dim]step {data.get('step')}[/] [bold]{data.get('stage')}[/] {data.get('message')}"
    if kind == "stepbus.approval.requested":
        return (
            f"[yellow]approval needed[/] for {data.get('tool')} "
            f"({data.get('approval_id')}): stepbus approve <task> {data.get('approval_id')}"
        )
    if kind == "stepbus.approval.resolved":
        return f"[yellow]approval {data.get('outcome')}[/] by {data.get('by')}"
    return None


def _follow(gateway: Gateway, task_id: str, as_json: bool) -> int:
    """Show a task's events until its terminal one; the exit code its outcome gives."""
    code = 0
    with out.status("waiting for the next step…", spinner="dots") as spinner:
        for message in gateway.events(f"/v1/tasks/{task_id}/events"):
            event = message["data"]
            if as_json:
                _print_json(event)
            elif (line := _step_line(event)) is not None:
                spinner.console.print(line)
            if event.get("type") in TERMINAL:
                code = TERMINAL[event["type"]]
                if not as_json:
                    _print_terminal(event, spinner.console)
                break
    return code


def _print_terminal(event: dict[str, Any], console: Console) -> None:
    data = event.get("data") or {}
    if event["type"] == "stepbus.task.completed":
        console.print(f"[green]answer[/]: {data.get('output')}")
        usage = data.get("usage") or {}
        tokens = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
        console.print(f"[dim]{data.get('steps')} steps, {tokens} tokens[/]")
        critic = data.get("critic")
        if critic:
            judged = f"score {critic['score']:.2f}" if critic.get("judged") else "unjudged"
            console.print(f"[dim]critic: {judged} after {critic.get('revisions', 0)} revisions[/]")
    elif event["type"] == "stepbus.task.failed":
        console.print(f"[red]failed[/] ({data.get('reason')}): {data.get('message')}")
    else:
        console.print(f"[yellow]cancelled[/]: {data.get('reason') or 'no reason given'}")


@app.command()
def submit(
    question: Annotated[str, typer.Argument(help="What the agent should do.")],
    session: Annotated[str | None, typer.Option(help="Session id (shared memory).")] = None,
    tool: Annotated[list[str] | None, typer.Option(help="A tool it may use (repeat).")] = None,
    follow: Annotated[bool, typer.Option(help="Show the steps live until the answer.")] = False,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Submit at most once under this key.")
    ] = None,
    url: Url = DEFAULT_URL,
    key: Key = None,
    as_json: AsJson = False,
) -> None:
    """Submit a task: prints its id at once; with --follow, its steps and its answer."""
    gateway = Gateway(url, key)
    body: dict[str, Any] = {"input": question}
    if session:
        body["session_id"] = session
    if tool:
        body["tools"] = tool
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    task = gateway.request("POST", "/v1/tasks", json=body, headers=headers)
    if as_json:
        _print_json(task)
    else:
        out.print(task["task_id"])
    if follow:
        raise typer.Exit(_follow(gateway, task["task_id"], as_json))


@app.command()
def status(
    task_id: Annotated[str, typer.Argument(help="The task.")],
    url: Url = DEFAULT_URL,
    key: Key = None,
    as_json: AsJson = False,
) -> None:
    """A task's status and result."""
    view = Gateway(url, key).request("GET", f"/v1/tasks/{task_id}")
    if as_json:
        _print_json(view)
        return
    out.print(f"{view['task_id']}: [bold]{view['status']}[/] ({view.get('steps')} steps)")
    if view.get("output") is not None:
        out.print(f"answer: {view['output']}")
    if view.get("error"):
        out.print(f"[red]{view['error']['reason']}[/]: {view['error']['message']}")


@app.command()
def tail(
    from_id: Annotated[
        str | None, typer.Option("--from", help="Resume after this event position.")
    ] = None,
    url: Url = DEFAULT_URL,
    key: Key = None,
    as_json: AsJson = False,
) -> None:
    """The live events of every task of the tenant (Ctrl-C to stop)."""
    gateway = Gateway(url, key)
    try:
        for message in gateway.events("/v1/events", from_id):
            event = message["data"]
            if as_json:
                _print_json({"position": message.get("id"), **event})
                continue
            line = _step_line(event)
            if event.get("type") in TERMINAL:
                line = f"[bold]{event['type'].rsplit('.', 1)[1]}[/]"
            if line is not None:
                out.print(f"[cyan]{event.get('subject')}[/] {line}")
    except KeyboardInterrupt:
        pass


@app.command()
def cancel(
    task_id: Annotated[str, typer.Argument(help="The task.")],
    reason: Annotated[str, typer.Option(help="Why, for the audit trail.")] = "",
    url: Url = DEFAULT_URL,
    key: Key = None,
    as_json: AsJson = False,
) -> None:
    """Cancel a task."""
    answer = Gateway(url, key).request(
        "POST", f"/v1/tasks/{task_id}/cancel", json={"reason": reason}
    )
    _print_json(answer) if as_json else out.print(f"cancellation of {task_id} requested")


@app.command()
def approvals(url: Url = DEFAULT_URL, key: Key = None, as_json: AsJson = False) -> None:
    """The tenant's tool calls waiting for approval."""
    waiting = Gateway(url, key).request("GET", "/v1/approvals")["approvals"]
    if as_json:
        _print_json(waiting)
        return
    if not waiting:
        out.print("no approval waits")
        return
    table = Table("task", "approval", "tool", "arguments", "approvers", "expires")
    for item in waiting:
        table.add_row(
            item["task_id"],
            item["approval_id"],
            item["tool"],
            json.dumps(item["arguments"])[:60],
            ", ".join(item["approvers"]) or "any",
            item["expires_at"],
        )
    out.print(table)


@app.command()
def approve(
    task_id: Annotated[str, typer.Argument(help="The task.")],
    approval_id: Annotated[str, typer.Argument(help="The approval (see `stepbus approvals`).")],
    deny: Annotated[bool, typer.Option("--deny", help="Deny instead of approving.")] = False,
    reason: Annotated[str, typer.Option(help="Why, for the audit trail.")] = "",
    url: Url = DEFAULT_URL,
    key: Key = None,
    as_json: AsJson = False,
) -> None:
    """Approve (or --deny) a waiting tool call."""
    decision = "deny" if deny else "approve"
    answer = Gateway(url, key).request(
        "POST",
        f"/v1/tasks/{task_id}/approvals/{approval_id}",
        json={"decision": decision, "reason": reason},
    )
    _print_json(answer) if as_json else out.print(f"{decision} of {approval_id} sent")


@app.command()
def forget(
    session: Annotated[str, typer.Option(help="The session whose memory to forget.")],
    url: Url = DEFAULT_URL,
    key: Key = None,
    as_json: AsJson = False,
) -> None:
    """Forget a session's memory."""
    answer = Gateway(url, key).request("DELETE", f"/v1/sessions/{session}")
    _print_json(answer) if as_json else out.print(f"forgetting session {session}")


PLUGINS = "stepbus.cli"
"""Entry-point group of commands other packages add (the planner adds ``replay`` and
``export``): each names a ``register(app)`` function."""


def load_plugins(target: typer.Typer = app) -> list[str]:
    """Register the commands of the installed ``stepbus.cli`` plugins; their names.

    A plugin that fails to load is reported and skipped: the gateway commands still work.
    """
    loaded = []
    for entry in entry_points(group=PLUGINS):
        try:
            entry.load()(target)
        except Exception as exc:  # a broken plugin must not take the CLI down
            err.print(f"stepbus: the {entry.name!r} commands are unavailable: {exc}")
            continue
        loaded.append(entry.name)
    return loaded


def main() -> None:
    """The ``stepbus`` console script."""
    load_plugins()
    app()
