"""The tool policy end to end (real Kafka, a real stdio MCP server, every service a process):
a denied call never reaches the server and is audited with its rule; a tool the task was not
offered is denied; an approval keeps the task waiting as state across restarts of the planner
and the executor, and an approval, a denial or an expiry ends it cleanly; a tool output
carrying an injected instruction is flagged, and the call the model then makes is denied."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from stepbus_runtime import PayloadStore

from ..harness import TopicReader, wait_until
from .conftest import Stack, mcp_server_files, running_stack
from .test_critic import topic_events
from .test_recovery import of, submit
from .test_task_flow import cli, publish_plain, terminals

pytestmark = pytest.mark.e2e

SERVER = Path(__file__).with_name("mcp_desk_server.py")
REPORT_KB = 700
"""A tool result above the claim-check threshold (256 KiB), under the output cap: it travels by
reference, whole."""
POLICY = Path(__file__).with_name("policy.yaml")


TRACE_URL_TEMPLATE = "http://jaeger.test:16686/trace/{trace_id}"


@pytest.fixture(scope="module")
async def stack(kafka_bootstrap: str, redis_url: str) -> AsyncIterator[Stack]:
    files = mcp_server_files("policy", "desk", SERVER)
    env = {
        "STEPBUS_MCP_CONFIG": str(files / "mcp.json"),
        "STEPBUS_POLICY_FILE": str(POLICY),
        "STEPBUS_TRACE_URL_TEMPLATE": TRACE_URL_TEMPLATE,  # the timeline's trace links
    }
    async with running_stack(kafka_bootstrap, redis_url, env=env) as running:
        running.files = files  # type: ignore[attr-defined]
        yield running


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(row) for row in path.read_text().splitlines()] if path.exists() else []


def task(text: str, tools: list[str], **data: Any) -> dict[str, Any]:
    """A task the scripted model answers with the last tool result (the critic off: the
    answer is the tool's word)."""
    return {"input": text, "tools": tools, "critic": {"enabled": False}, **data}


async def decide(stack: Stack, task_id: str, approval_id: str, decision: str, by: str) -> None:
    """Publish ``stepbus.approval.decided`` by hand, as any upstream system would."""
    event = {
        "specversion": "1.0",
        "type": "stepbus.approval.decided",
        "source": "urn:example:console",
        "id": str(uuid.uuid4()),
        "subject": task_id,
        "datacontenttype": "application/json",
        "tenant": "acme",
        "data": {"approval_id": approval_id, "decision": decision, "by": by, "reason": "checked"},
    }
    await publish_plain(
        stack.bootstrap, stack.topics.tasks, [(task_id, json.dumps(event).encode())]
    )


def writes(stack: Stack, task_id: str) -> list[dict[str, Any]]:
    files: Path = stack.files  # type: ignore[attr-defined]
    return [
        c
        for c in lines(files / "calls.jsonl")
        if c["tool"] == "write" and c["meta"].get("stepbus/task_id") == task_id
    ]


async def run(stack: Stack, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    async with TopicReader(stack.bootstrap, stack.topics.results) as results:
        task_id = await submit(stack, data)
        await results.wait_for(lambda ev: terminals(ev, task_id), 90, f"{task_id} to end")
        [end] = terminals(results.events(), task_id)
    return task_id, end


async def test_a_denied_call_never_reaches_the_server_and_is_audited(stack: Stack) -> None:
    text = 'Save it [tool=desk__write] {"path": "/secrets/key.txt", "text": "hunter2"}'
    task_id, end = await run(stack, task(text, ["desk__write"]))

    assert end["type"] == "stepbus.task.completed"
    assert end["data"]["output"].startswith("error: denied by policy rule 'no-secrets'")
    assert writes(stack, task_id) == []
    [decided] = of(await topic_events(stack, stack.topics.audit, task_id), task_id,
                   "stepbus.policy.decided")  # fmt: skip
    assert (decided["data"]["decision"], decided["data"]["rule"]) == ("deny", "no-secrets")
    assert (decided["data"]["task_id"], decided["data"]["tenant"]) == (task_id, "acme")
    assert decided["data"]["server"] == "desk"


async def test_a_tool_the_task_was_not_offered_is_denied_though_the_model_names_it(
    stack: Stack,
) -> None:
    text = 'Read it [unoffered] [tool=desk__read] {"path": "/notes/a.txt"}'
    task_id, end = await run(stack, task(text, ["calculator"]))

    assert end["type"] == "stepbus.task.completed"
    assert "was not offered to this task" in end["data"]["output"]
    files: Path = stack.files  # type: ignore[attr-defined]
    assert [
        c for c in lines(files / "calls.jsonl") if c["meta"].get("stepbus/task_id") == task_id
    ] == []
    [decided] = of(await topic_events(stack, stack.topics.audit, task_id), task_id,
                   "stepbus.policy.decided")  # fmt: skip
    assert (decided["data"]["decision"], decided["data"]["rule"]) == ("deny", "not-offered")


async def test_an_approval_survives_restarts_and_resumes_the_task(stack: Stack) -> None:
    text = 'Note it [tool=desk__write] {"path": "/notes/a.txt", "text": "hello"}'
    async with TopicReader(stack.bootstrap, stack.topics.results) as results:
        task_id = await submit(stack, task(text, ["desk__write"]))
        [asked] = await results.wait_for(
            lambda ev: of(ev, task_id, "stepbus.approval.requested"), 60, "the approval request"
        )
        assert asked["data"]["tool"] == "desk__write"
        assert asked["data"]["approvers"] == ["ops"]
        assert asked["data"]["arguments"] == {"path": "/notes/a.txt", "text": "hello"}
        assert writes(stack, task_id) == []
        # The task waits as state: restart the planner and the executor while it waits.
        for name in ("planner", "tool-executor"):
            service = stack.services[name]
            service.stop(signal.SIGKILL)
            service.start()
            await service.wait_ready()
        await results.poll()
        assert terminals(results.events(), task_id) == []
        await decide(stack, task_id, asked["data"]["approval_id"], "approve", "alice@acme")
        await results.wait_for(lambda ev: terminals(ev, task_id), 90, "the task to finish")
        [end] = terminals(results.events(), task_id)

    assert (end["type"], end["data"]["output"]) == ("stepbus.task.completed", "wrote /notes/a.txt")
    assert len(writes(stack, task_id)) == 1
    audit = await topic_events(stack, stack.topics.audit, task_id)
    [resolved] = of(audit, task_id, "stepbus.approval.resolved")
    assert (resolved["data"]["outcome"], resolved["data"]["by"]) == ("approved", "alice@acme")
    decisions = {e["data"]["decision"] for e in of(audit, task_id, "stepbus.policy.decided")}
    assert decisions == {"approval_required", "allow"}


async def test_a_denied_approval_ends_the_task_without_the_call(stack: Stack) -> None:
    text = 'Note it [tool=desk__write] {"path": "/notes/b.txt", "text": "bye"}'
    async with TopicReader(stack.bootstrap, stack.topics.results) as results:
        task_id = await submit(stack, task(text, ["desk__write"]))
        [asked] = await results.wait_for(
            lambda ev: of(ev, task_id, "stepbus.approval.requested"), 60, "the approval request"
        )
        await decide(stack, task_id, asked["data"]["approval_id"], "deny", "bob@acme")
        await results.wait_for(lambda ev: terminals(ev, task_id), 90, "the task to finish")
        [end] = terminals(results.events(), task_id)

    assert end["type"] == "stepbus.task.completed"
    assert end["data"]["output"] == "error: denied by bob@acme: checked"
    assert writes(stack, task_id) == []
    [resolved] = of(await topic_events(stack, stack.topics.audit, task_id), task_id,
                    "stepbus.approval.resolved")  # fmt: skip
    assert resolved["data"]["outcome"] == "denied"


async def test_an_approval_nobody_decides_expires_as_a_denial(stack: Stack) -> None:
    text = 'Note it [tool=desk__write] {"path": "/notes/c.txt", "text": "late"}'
    task_id, end = await run(stack, task(text, ["desk__write"], metadata={"approval": "quick"}))

    assert end["type"] == "stepbus.task.completed"
    assert "approval expired" in end["data"]["output"]
    assert writes(stack, task_id) == []
    [resolved] = of(await topic_events(stack, stack.topics.audit, task_id), task_id,
                    "stepbus.approval.resolved")  # fmt: skip
    assert (resolved["data"]["outcome"], resolved["data"]["by"]) == ("expired", "stepbus")


async def test_an_injected_instruction_is_flagged_and_the_call_it_asks_for_is_denied(
    stack: Stack,
) -> None:
    text = 'Weather in Lisbon? [obey] [tool=desk__inject] {"topic": "lisbon"}'
    task_id, end = await run(stack, task(text, ["desk__inject", "desk__write"]))

    assert end["type"] == "stepbus.task.completed"
    assert writes(stack, task_id) == []  # the model fell for it; the policy did not
    journal = await topic_events(stack, stack.topics.planner_history, task_id)
    [first] = [e for e in of(journal, task_id, "stepbus.tool.call_completed")]
    assert first["data"]["flags"] and first["data"]["source"] == "mcp:desk"
    [denied] = of(journal, task_id, "stepbus.tool.call_failed")
    assert (denied["data"]["name"], denied["data"]["error_type"]) == ("desk__write", "denied")
    audit = await topic_events(stack, stack.topics.audit, task_id)
    [flagged] = of(audit, task_id, "stepbus.injection.flagged")
    assert any(f.startswith("instruction") for f in flagged["data"]["findings"])
    rules = {(e["data"]["tool"], e["data"]["decision"], e["data"]["rule"])
             for e in of(audit, task_id, "stepbus.policy.decided")}  # fmt: skip
    assert ("desk__write", "deny", "after-injection") in rules


async def test_a_result_above_the_claim_check_threshold_travels_by_reference_uncut(
    stack: Stack,
) -> None:
    text = f'Summarise it [tool=desk__report] {{"kilobytes": {REPORT_KB}}}'
    task_id, end = await run(stack, task(text, ["desk__report"]))
    journal = await topic_events(stack, stack.topics.planner_history, task_id)
    claims = [e for e in of(journal, task_id, "stepbus.tool.call_completed") if "claimcheck" in e]
    [claim] = claims
    assert "data" not in claim and claim["claimcheck"]["size"] > REPORT_KB * 1024
    # The answer is the whole result: the terminal event is big too, and travels by claim.
    assert end["type"] == "stepbus.task.completed" and "claimcheck" in end
    store = PayloadStore(stack.bootstrap, stack.topics.payloads)
    await store.start()
    try:
        resolved = json.loads(await store.resolve(json.dumps(end).encode()) or b"{}")
    finally:
        await store.stop()
    assert len(resolved["data"]["output"]) == REPORT_KB * 1024


async def test_the_cli_lists_a_waiting_approval_and_approving_it_resumes_the_task(
    stack: Stack,
) -> None:
    text = 'Note it [tool=desk__write] {"path": "/notes/cli.txt", "text": "from the cli"}'
    async with TopicReader(stack.bootstrap, stack.topics.results) as results:
        task_id = await submit(stack, task(text, ["desk__write"]))
        await results.wait_for(
            lambda ev: of(ev, task_id, "stepbus.approval.requested"), 60, "the approval request"
        )

        async def listed() -> list[dict[str, Any]]:
            shown = await asyncio.to_thread(cli, stack, "approvals", "--json")
            return [a for a in json.loads(shown.stdout) if a["task_id"] == task_id]

        [waiting] = await wait_until(listed, 30, "the approval in the gateway")
        approval = waiting["approval_id"]
        no_role = await asyncio.to_thread(cli, stack, "approve", task_id, approval)
        ops = "test-key-acme-ops-0123456789"
        approved = await asyncio.to_thread(cli, stack, "approve", task_id, approval, key=ops)
        await results.wait_for(lambda ev: terminals(ev, task_id), 90, "the task to finish")
        [end] = terminals(results.events(), task_id)
    assert no_role.returncode == 3 and "role" in no_role.stderr
    assert approved.returncode == 0, approved.stderr
    assert (end["type"], end["data"]["output"]) == (
        "stepbus.task.completed",
        "wrote /notes/cli.txt",
    )
    assert len(writes(stack, task_id)) == 1
