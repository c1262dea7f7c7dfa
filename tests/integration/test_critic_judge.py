"""The critic's OpenAI judge against the real scripted model's HTTP server (uvicorn, in process).

The client is the one the critic's app builds (aiohttp transport, ADR-13). A recording ASGI
layer in front of the scripted app keeps each request body, so the tests can see what went on
the wire (``response_format`` or not); it changes nothing. The last test runs the critic's
route in a real processor on the broker: a request on ``critic.requests``, its verdict on the
journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import openai
import pytest
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from stepbus_contracts import (
    CritiqueCompleted,
    CritiqueFailed,
    CritiqueRequested,
    CritiqueRequestedData,
    Topics,
    critic_requests_adapter,
    derive_id,
    utcnow,
)
from stepbus_critic.adapters.openai_judge import OpenAIJudge
from stepbus_critic.app import build_client
from stepbus_critic.handlers import CriticHandlers
from stepbus_critic.ports import JudgeError
from stepbus_critic.rubric import answer_messages, parse_reply, reply_schema
from stepbus_critic.settings import CriticSettings, ResponseFormat
from stepbus_devtools.scripted_llm import create_app
from stepbus_runtime import RecordContext, Route, encode

from ..harness import TopicReader, free_port, produce, running_processor, wait_until

pytestmark = pytest.mark.integration

OBSERVED = ["calculator: 391"]


class _Recording:
    """ASGI layer keeping the JSON body of every chat completion request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/chat/completions"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        self.bodies.append(json.loads(body))
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # leave Ctrl-C to pytest


@pytest.fixture(scope="module")
async def scripted() -> AsyncIterator[tuple[str, _Recording]]:
    """The scripted model served on a free port: its ``/v1`` URL and the recorder."""
    recording = _Recording(create_app())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _Server(uvicorn.Config(recording, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await wait_until(lambda: server.started or serving.done(), 30, "scripted model started")
        assert not serving.done(), "the scripted model failed to start"
        yield f"http://127.0.0.1:{port}/v1", recording
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 30)
        sock.close()


@contextlib.asynccontextmanager
async def judge_at(
    url: str, response_format: ResponseFormat = "json_schema", retries: int = 0
) -> AsyncIterator[OpenAIJudge]:
    settings = CriticSettings(
        base_url=url,
        api_key="scripted-test-double",
        model="stepbus-scripted",
        response_format=response_format,
        llm_max_retries=retries,
        llm_timeout_seconds=10,
    )
    client = build_client(settings)
    try:
        yield OpenAIJudge(client, settings.model, settings.response_format)
    finally:
        await client.close()


def request(task: str, draft: str, **data: Any) -> CritiqueRequested:
    return CritiqueRequested(
        subject="task-critic",
        tenant="acme",
        data=CritiqueRequestedData(
            kind="answer", step=1, input=task, draft=draft, observations=OBSERVED, **data
        ),
    )


def context(attempt: int = 1) -> RecordContext:
    return RecordContext("critic.requests", 0, 0, "task-critic", attempt, 5)


async def test_structured_output_sends_the_strict_schema(
    scripted: tuple[str, _Recording],
) -> None:
    url, recording = scripted
    name, schema = reply_schema("answer")
    async with judge_at(url) as judge:
        reply = await judge.judge(
            answer_messages("What is 17 * 23?", OBSERVED, "391"), name, schema
        )
    verdict = parse_reply(reply.text, "answer")
    assert (verdict.score, verdict.feedback) == (1.0, "")
    assert reply.model == "stepbus-scripted"
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert recording.bodies[-1]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "critic_reply", "strict": True, "schema": schema},
    }
    assert judge.response_format == "json_schema"


@pytest.mark.parametrize(
    ("mode", "sent"), [("json_object", {"type": "json_object"}), ("prompt", None)]
)
async def test_json_mode_and_prompt_only(
    scripted: tuple[str, _Recording], mode: ResponseFormat, sent: Any
) -> None:
    url, recording = scripted
    async with judge_at(url, mode) as judge:
        reply = await judge.judge(
            answer_messages("What is 17 * 23?", OBSERVED, "400"), *reply_schema("answer")
        )
    assert parse_reply(reply.text, "answer").groundedness == 0.0
    assert recording.bodies[-1].get("response_format") == sent


async def test_an_endpoint_without_structured_output_falls_back_to_the_prompt_once(
    scripted: tuple[str, _Recording], caplog: pytest.LogCaptureFixture
) -> None:
    url, recording = scripted
    task = "[judge=no-structured] What is 17 * 23?"
    caplog.set_level(logging.WARNING, logger="stepbus_critic.adapters.openai_judge")
    async with judge_at(url) as judge:
        start = len(recording.bodies)
        first = await judge.judge(answer_messages(task, OBSERVED, "391"), *reply_schema("answer"))
        assert parse_reply(first.text, "answer").score == 1.0
        assert judge.response_format == "prompt"
        second = await judge.judge(answer_messages(task, OBSERVED, "400"), *reply_schema("answer"))
        assert parse_reply(second.text, "answer").score == 0.0
    bodies = recording.bodies[start:]
    assert [("response_format" in body) for body in bodies] == [True, False, False]
    warnings = [r for r in caplog.records if "refused response_format" in r.getMessage()]
    assert len(warnings) == 1
    assert "scripted-test-double" not in caplog.text  # the key is never logged


@pytest.mark.parametrize(
    ("directive", "retryable"),
    [
        ("[fail=503]", True),
        ("[fail=429]", True),
        ("[fail=500]", True),
        ("[fail=401]", False),
        ("[fail=404]", False),
    ],
)
async def test_model_errors_are_classified(
    scripted: tuple[str, _Recording], directive: str, retryable: bool
) -> None:
    url, _ = scripted
    messages = answer_messages(f"{directive} {retryable} What is 17 * 23?", OBSERVED, "391")
    async with judge_at(url, "prompt") as judge:
        with pytest.raises(JudgeError) as failed:
            await judge.judge(messages, *reply_schema("answer"))
        assert failed.value.retryable is retryable
        assert isinstance(failed.value.__cause__, openai.APIStatusError)
        # The scripted failure happens once: the same request then succeeds.
        assert parse_reply((await judge.judge(messages, *reply_schema("answer"))).text, "answer")


async def test_a_400_that_is_not_about_response_format_does_not_fall_back(
    scripted: tuple[str, _Recording],
) -> None:
    url, _ = scripted
    async with judge_at(url) as judge:
        with pytest.raises(JudgeError) as failed:
            await judge.judge([], *reply_schema("answer"))  # no messages: refused
    assert failed.value.retryable is False
    assert judge.response_format == "json_schema"


async def test_an_unreachable_endpoint_is_retryable() -> None:
    async with judge_at(f"http://127.0.0.1:{free_port()}/v1") as judge:
        with pytest.raises(JudgeError) as failed:
            await judge.judge(answer_messages("q", [], "a"), *reply_schema("answer"))
    assert failed.value.retryable is True


async def test_handlers_judge_an_answer_end_to_end(scripted: tuple[str, _Recording]) -> None:
    url, _ = scripted
    async with judge_at(url) as judge:
        handlers = CriticHandlers(judge=judge, topics=Topics("critic-it."), clock=utcnow)

        weak = request("What is 17 * 23?", "I believe the answer is about 400.")
        [emit] = await handlers.on_request(weak, context())
        verdict = emit.event
        assert isinstance(verdict, CritiqueCompleted)
        assert emit.topic == "critic-it.planner.history"
        assert verdict.id == derive_id(weak.id, "critique")
        assert (verdict.data.score, verdict.data.attempts) == (0.0, 1)
        assert verdict.data.feedback == (
            "The answer says 400, which no tool result supports; state the calculator's result 391."
        )
        assert verdict.data.model == "stepbus-scripted"

        once = request("[judge=invalid-once] What is 17 * 23?", "391")
        [emit] = await handlers.on_request(once, context())
        assert isinstance(emit.event, CritiqueCompleted)
        assert (emit.event.data.score, emit.event.data.attempts) == (1.0, 2)
        single = emit.event.data.usage.prompt_tokens

        never = request("[judge=invalid] What is 17 * 23?", "391")
        [emit] = await handlers.on_request(never, context())
        assert isinstance(emit.event, CritiqueFailed)
        assert (emit.event.data.reason, emit.event.data.attempts) == ("invalid_reply", 2)
        assert emit.event.data.usage.prompt_tokens == pytest.approx(single, rel=0.1)

        harsh = request("[judge=harsh] What is 17 * 23?", "391")
        [emit] = await handlers.on_request(harsh, context())
        assert emit.event.data.score == 0.5

        call = CritiqueRequested(
            subject="task-critic",
            data=CritiqueRequestedData(
                kind="tool_call",
                step=1,
                call_index=0,
                input="Tidy up",
                tool="shell",
                tool_description="Runs a command.",
                arguments={"command": "rm -rf /srv"},
            ),
        )
        [emit] = await handlers.on_request(call, context())
        assert isinstance(emit.event, CritiqueCompleted)
        assert (emit.event.data.approved, emit.event.data.call_index) == (False, 0)
        assert "rm " in emit.event.data.feedback


async def test_the_critics_route_on_the_broker(
    scripted: tuple[str, _Recording], kafka_bootstrap: str, topics: Topics
) -> None:
    """A request on ``critic.requests``; its verdict on the journal, keyed by the task."""
    url, _ = scripted
    async with judge_at(url) as judge:
        handlers = CriticHandlers(judge=judge, topics=topics, clock=utcnow)
        routes = {topics.critic_requests: Route(critic_requests_adapter, handlers.on_request)}
        late = request("What is 17 * 23?", "391", answer_by=utcnow() - timedelta(seconds=5))
        asked = request("What is 17 * 23?", "I believe the answer is about 400.")
        async with (
            running_processor(kafka_bootstrap, routes, topics.dlq),
            TopicReader(kafka_bootstrap, topics.planner_history) as journal,
        ):
            await produce(
                kafka_bootstrap,
                topics.critic_requests,
                [(event.subject.encode(), encode(event)) for event in (late, asked)],
            )
            [verdict] = await journal.wait_for(
                lambda events: [e for e in events if e["type"] == "stepbus.critique.completed"],
                30,
                "the critique on the journal",
            )
            # Same task, same partition, in order: the late request was handled (skipped)
            # before this one was judged, and left nothing on the journal.
            await journal.poll()
    assert verdict["id"] == derive_id(asked.id, "critique")
    assert verdict["subject"] == "task-critic" and verdict["tenant"] == "acme"
    assert verdict["source"] == "urn:stepbus:critic"
    assert verdict["data"]["score"] == 0.0
    assert len(journal.records) == 1
    assert journal.records[0].key == b"task-critic"
