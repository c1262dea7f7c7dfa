"""``make run``'s demo: two tasks of one session through the gateway, progress and results.

python -m stepbus_devtools.demo [--input TEXT] [--follow-up TEXT] [--gateway URL] [--timeout S]

The second task asks about the first: its answer comes from the session memory the planner
recalled (``stepbus.memory.recalled``), not from anything the demo passes along. The critic
judges each answer before it is given (``critique`` steps, and the score in the result).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from typing import Any

import httpx

DEFAULT_INPUT = "What is 17 * 23, and then (391 - 1) / 2?"
DEFAULT_FOLLOW_UP = "What did I ask you before, and what did you answer?"


def _events(response: httpx.Response) -> Any:
    """Server-sent events of a streaming response as (type, data) pairs."""
    event_type, data = "message", []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield event_type, json.loads("\n".join(data))
            event_type, data = "message", []
        elif line.startswith("event:"):
            event_type = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def run_task(client: httpx.Client, text: str, session_id: str) -> dict[str, Any] | None:
    """Submit one task, print its progress; its terminal event (None if the stream ended)."""
    body = {"input": text, "tools": ["calculator"], "session_id": session_id}
    response = client.post("/v1/tasks", json=body)
    if response.status_code != 202:
        print(f"submit failed: HTTP {response.status_code} {response.text}", file=sys.stderr)
        return None
    task = response.json()
    print(f"task {task['task_id']} submitted (session {session_id}): {text}")
    with client.stream("GET", task["events_url"]) as stream:
        for event_type, event in _events(stream):
            data = event.get("data", {})
            if event_type == "stepbus.task.progress":
                print(f"  step {data['step']} {data['stage']:<12} {data['message']}")
            elif event_type.startswith("stepbus.task."):
                return dict(event)
    print("the event stream ended without a result", file=sys.stderr)
    return None


def _report(terminal: dict[str, Any]) -> bool:
    data = terminal["data"]
    if terminal["type"] == "stepbus.task.completed":
        usage = data.get("usage", {})
        print(
            f"result: {data['output']}\n"
            f"({data['steps']} LLM steps, "
            f"{usage.get('prompt_tokens', 0) + usage.get('completion_tokens', 0)} tokens)"
        )
        critic = data.get("critic")
        if critic:
            rounds = ", ".join(
                "unjudged" if r["score"] is None else f"{r['score']:.2f}" for r in critic["rounds"]
            )
            verdict = f"score {critic['score']:.2f}" if critic["judged"] else "unjudged"
            print(f"critic: {verdict} after {critic['revisions']} revisions (rounds: {rounds})")
        return True
    print(f"task ended with {terminal['type']}: {data.get('reason', '')} {data.get('message', '')}")
    return False


def main(argv: list[str] | None = None) -> int:
    """Run the demo tasks end to end; exit 0 when both completed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default=DEFAULT_INPUT, help="the first task")
    parser.add_argument("--follow-up", default=DEFAULT_FOLLOW_UP, help="the second task")
    parser.add_argument(
        "--gateway",
        default=f"http://127.0.0.1:{os.environ.get('STEPBUS_GATEWAY_PORT', '8080')}",
        help="gateway base URL",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait")
    args = parser.parse_args(argv)
    session = f"demo-{uuid.uuid4().hex[:8]}"
    key = os.environ.get("STEPBUS_API_KEY")  # a key of the gateway's; none in open mode
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=args.gateway, timeout=args.timeout, headers=headers) as client:
        for text in (args.input, args.follow_up):
            terminal = run_task(client, text, session)
            if terminal is None or not _report(terminal):
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
