"""``make run``'s demo: submit a task to the gateway, follow its progress, print the result.

python -m stepbus_devtools.demo [--input TEXT] [--gateway URL] [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import httpx

DEFAULT_INPUT = "What is 17 * 23, and then (391 - 1) / 2?"


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


def main(argv: list[str] | None = None) -> int:
    """Run one demo task end to end; exit 0 when it completed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default=DEFAULT_INPUT, help="the task for the agent")
    parser.add_argument(
        "--gateway",
        default=f"http://127.0.0.1:{os.environ.get('STEPBUS_GATEWAY_PORT', '8080')}",
        help="gateway base URL",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait")
    args = parser.parse_args(argv)

    with httpx.Client(base_url=args.gateway, timeout=args.timeout) as client:
        response = client.post("/v1/tasks", json={"input": args.input, "tools": ["calculator"]})
        if response.status_code != 202:
            print(f"submit failed: HTTP {response.status_code} {response.text}", file=sys.stderr)
            return 1
        task = response.json()
        print(f"task {task['task_id']} submitted: {args.input}")
        terminal: dict[str, Any] | None = None
        with client.stream("GET", task["events_url"]) as stream:
            for event_type, event in _events(stream):
                data = event.get("data", {})
                if event_type == "stepbus.task.progress":
                    print(f"  step {data['step']} {data['stage']:<12} {data['message']}")
                elif event_type.startswith("stepbus.task."):
                    terminal = event
                    break
    if terminal is None:
        print("the event stream ended without a result", file=sys.stderr)
        return 1
    data = terminal["data"]
    if terminal["type"] == "stepbus.task.completed":
        usage = data.get("usage", {})
        print(
            f"result: {data['output']}\n"
            f"({data['steps']} LLM steps, "
            f"{usage.get('prompt_tokens', 0) + usage.get('completion_tokens', 0)} tokens)"
        )
        return 0
    print(f"task ended with {terminal['type']}: {data.get('reason', '')} {data.get('message', '')}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
