"""``make bench``, policy part: what deciding a call and scanning its output cost.

Times the tool-executor's own gate (``guard.verdict``: the task's narrowing and a 20-rule
policy of the documented form, with argument, role, metadata and time conditions) and the
prompt-injection scan of tool outputs of several sizes, in this process, and prints the
median per call of several runs.

    python -m stepbus_devtools.policy_bench [--calls 20000] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from stepbus_contracts import ToolCallRequestedData
from stepbus_tool_executor.guard import verdict
from stepbus_tool_executor.injection import scan
from stepbus_tool_executor.policy import parse_policy
from stepbus_tool_executor.registry import Tool

RULES = "\n".join(
    f"""  - name: team-{i}
    effect: {"deny" if i % 3 else "require_approval"}
    when:
      tool: "team{i}__*"
      roles_any: [role-{i}]
      metadata: {{env: prod}}
      arguments:
        path: {{prefix: ["/team-{i}/"]}}"""
    for i in range(17)
)
POLICY = f"""
version: 1
default: deny
rules:
{RULES}
  - name: office-hours
    effect: require_approval
    when:
      tool: files__write
      time: {{tz: Europe/Berlin, days: [sat, sun]}}
  - name: fetch-docs
    effect: allow
    when:
      tool: http_fetch
      arguments:
        url: {{host_in: [docs.example.com, "*.wikipedia.org"]}}
  - name: analysts
    effect: allow
    when: {{roles_any: [analyst], risk: [low, medium]}}
"""

TEXT = (
    "Search results for 'kafka exactly once': 1. Transactions in Apache Kafka (confluent.io) "
    "- idempotent producers and transactional consumers. 2. KIP-98 - Exactly Once Delivery. "
)


async def _run(arguments: dict[str, Any], call: Any) -> str:
    return ""


def _median_us(fn: Callable[[], object], calls: int, runs: int) -> float:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        timings.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(timings)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    policy = parse_policy(POLICY, "bench")
    now = datetime(2026, 12, 2, 12, tzinfo=UTC)
    tool = Tool("files__write", "write", {}, _run, source="mcp:files", risk="high")
    call = ToolCallRequestedData(
        step=1,
        call_index=0,
        name="files__write",
        idempotency_key="t:1:0",
        arguments={"path": "/notes/a.txt", "text": "hello"},
        roles=["analyst"],
        offered=["files__write", "http_fetch", "calculator"],
        metadata={"env": "prod"},
    )
    fetch = Tool("http_fetch", "fetch", {}, _run)
    get = call.model_copy(
        update={"name": "http_fetch", "arguments": {"url": "https://en.wikipedia.org/wiki/X"}}
    )

    def decide_write() -> object:
        return verdict(policy, call, tool, tenant="acme", flagged=False, now=now)

    def decide_fetch() -> object:
        return verdict(policy, get, fetch, tenant="acme", flagged=False, now=now)

    print(f"policy check per call (median of {args.runs} runs of {args.calls:,}, 20 rules):")
    write = _median_us(decide_write, args.calls, args.runs)
    get_cost = _median_us(decide_fetch, args.calls, args.runs)
    print(f"  files__write (matched late, time window): {write:7.2f} µs")
    print(f"  http_fetch (host_in):                     {get_cost:7.2f} µs")
    print("prompt-injection scan per output:")
    for size in (1_000, 10_000, 100_000):
        text = (TEXT * (size // len(TEXT) + 1))[:size]
        calls = max(20, args.calls // (size // 100))
        cost = _median_us(lambda t=text: scan(t, call.offered or ()), calls, args.runs)
        print(f"  {size:>7,} characters: {cost / 1000:7.3f} ms")


if __name__ == "__main__":
    main()
