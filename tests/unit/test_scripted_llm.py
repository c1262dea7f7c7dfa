"""The scripted model: its pure script, and its HTTP API as the real ``openai`` client sees it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from stepbus_contracts import CritiqueRequestedData
from stepbus_critic.ports import InvalidReplyError
from stepbus_critic.rubric import (
    answer_messages,
    parse_reply,
    reply_schema,
    request_messages,
    retry_messages,
)
from stepbus_critic.rubric import tool_messages as tool_prompt
from stepbus_devtools.scripted_llm import (
    MODEL_ID,
    TEST_DOUBLE_HEADER,
    Directives,
    conversation_hash,
    create_app,
    extract_expressions,
    next_turn,
    parse_latency_range,
    read_directives,
)
from stepbus_devtools.scripted_llm.__main__ import parse_args
from stepbus_devtools.scripted_llm.script import feedback_rounds, is_judge_request

CALCULATOR_TOOL = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}
OTHER_TOOL = {"type": "function", "function": {"name": "search", "parameters": {}}}


def evaluate(expression: str) -> str:
    """The calculator the tests play: Python arithmetic with ``^`` as power."""
    try:
        value = eval(expression.replace("^", "**"), {"__builtins__": {}})  # test-only input
    except ZeroDivisionError:
        return "error: division by zero"
    return str(int(value)) if float(value).is_integer() else str(value)


def tool_messages(turn_calls: Any, results: list[str]) -> list[dict[str, Any]]:
    return [
        {"role": "tool", "tool_call_id": call.id, "content": result}
        for call, result in zip(turn_calls, results, strict=True)
    ]


def assistant_message(turn: Any) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": turn.content,
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in turn.tool_calls
        ],
    }


def converse(task: str, tools: list[dict[str, Any]] | None = None) -> tuple[str, list[Any]]:
    """Play the planner against ``next_turn`` until a final answer; return it and all turns."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a careful assistant. Use 9 * 9 tools."},
        {"role": "user", "content": task},
    ]
    turns = []
    for _ in range(20):
        turn = next_turn(messages, [CALCULATOR_TOOL] if tools is None else tools)
        turns.append(turn)
        if not turn.tool_calls:
            assert turn.finish_reason == "stop"
            return turn.content, turns
        assert turn.finish_reason == "tool_calls"
        results = [evaluate(json.loads(call.arguments)["expression"]) for call in turn.tool_calls]
        messages += [assistant_message(turn), *tool_messages(turn.tool_calls, results)]
    raise AssertionError("the conversation did not finish in 20 turns")


# --- the script --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("What is 17 * 23?", ["17 * 23"]),
        ("Compute 1+2, then (3*4)-5, then 2^10", ["1+2", "(3*4)-5", "2^10"]),
        ("[latency=50-300] What is 2 ** 8.", ["2 ** 8"]),
        ("(remember: 10 % 3) and 1.5/0.5", ["10 % 3", "1.5/0.5"]),
        ("Add 4 + 5\nthen 6 - 1", ["4 + 5", "6 - 1"]),
        ("task-42 has 3 items, -7 and 12", []),
        ("Nothing to do here.", []),
    ],
)
def test_extract_expressions(text: str, expected: list[str]) -> None:
    assert extract_expressions(text) == expected


def test_directives_are_read_from_the_first_user_message_only() -> None:
    messages = [
        {"role": "system", "content": "[loop] [fail=503]"},
        {"role": "user", "content": "[Latency=50-300] [parallel] [usage=5000] [fail=429] 1+1"},
        {"role": "user", "content": "[loop]"},
    ]
    assert read_directives(messages) == Directives(
        latency_ms=(50, 300), parallel=True, usage=5000, fail=429, loop=False
    )
    assert read_directives([{"role": "user", "content": "[maybe] [latency=200]"}]) == Directives(
        latency_ms=(200, 200)
    )


def test_a_system_prompt_shapes_the_answer_but_memory_does_not() -> None:
    def final(system: list[str]) -> str | None:
        messages = [
            *({"role": "system", "content": text} for text in system),
            {"role": "user", "content": "What is 1 + 1 and 2 + 2?"},
            {"role": "assistant", "content": None, "tool_calls": []},
            {"role": "tool", "tool_call_id": "a", "content": "2"},
            {"role": "tool", "tool_call_id": "b", "content": "4"},
        ]
        return next_turn(messages, [CALCULATOR_TOOL]).content

    assert read_directives([{"role": "system", "content": "Be brief. [terse]"}]).terse
    assert (
        read_directives([{"role": "system", "content": "Memory:\n- [x] [terse]"}]) == Directives()
    )
    assert read_directives([{"role": "system", "content": "[parallel]"}]).parallel
    assert final(["You are careful."]) == "Results: 2, 4"
    assert final(["You are careful. [terse]"]) == "2, 4"
    assert final(["You are careful.", "Memory:\n- [terse]"]) == "Results: 2, 4"


def test_parse_latency_range() -> None:
    assert parse_latency_range("200") == (200, 200)
    assert parse_latency_range("300-50") == (50, 300)
    for bad in ("", "-5", "1-2-3", "fast"):
        with pytest.raises(ValueError, match="latency"):
            parse_latency_range(bad)


def test_first_turn_asks_the_calculator_with_a_deterministic_call_id() -> None:
    messages = [{"role": "user", "content": "What is 17 * 23?"}]
    turn = next_turn(messages, [CALCULATOR_TOOL])
    assert turn.content is None
    assert turn.finish_reason == "tool_calls"
    [call] = turn.tool_calls
    assert call.name == "calculator"
    assert json.loads(call.arguments) == {"expression": "17 * 23"}
    assert re.fullmatch(r"call_[0-9a-f]{12}", call.id)
    assert next_turn(messages, [CALCULATOR_TOOL]) == turn
    other = next_turn([{"role": "user", "content": "What is 17 * 24?"}], [CALCULATOR_TOOL])
    assert other.tool_calls[0].id != call.id


def test_one_expression_answers_with_the_tool_result_exactly() -> None:
    answer, turns = converse("What is 17 * 23?")
    assert answer == "391"
    assert len(turns) == 2


def test_several_expressions_are_computed_one_per_turn_in_order() -> None:
    answer, turns = converse("Compute 1+2, then (3*4)-5, then 2^10")
    assert answer == "Results: 3, 7, 1024"
    assert [len(turn.tool_calls) for turn in turns] == [1, 1, 1, 0]


def test_parallel_asks_for_all_remaining_calls_in_one_turn() -> None:
    answer, turns = converse("[parallel] Compute 1+2, then (3*4)-5, then 2^10")
    assert answer == "Results: 3, 7, 1024"
    assert [len(turn.tool_calls) for turn in turns] == [3, 0]
    assert len({call.id for call in turns[0].tool_calls}) == 3


def test_results_follow_call_order_even_when_tool_messages_arrive_out_of_order() -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "[parallel] 1+1 and 2*5"}]
    first = next_turn(messages, [CALCULATOR_TOOL])
    replies = tool_messages(first.tool_calls, ["2", "10"])
    messages += [assistant_message(first), *reversed(replies)]
    assert next_turn(messages, [CALCULATOR_TOOL]).content == "Results: 2, 10"


def test_a_tool_error_ends_the_conversation_with_the_error() -> None:
    answer, turns = converse("Compute 1/0 and then 2+2")
    assert answer == "I could not compute: error: division by zero"
    assert len(turns) == 2


@pytest.mark.parametrize(
    ("task", "tools", "expected"),
    [
        ("Say hello.", [CALCULATOR_TOOL], "I have no arithmetic to do."),
        ("What is 17 * 23?", [], "I need the calculator tool."),
        ("What is 17 * 23?", [OTHER_TOOL], "I need the calculator tool."),
    ],
)
def test_answers_without_tool_calls(task: str, tools: list[Any], expected: str) -> None:
    answer, turns = converse(task, tools)
    assert answer == expected
    assert len(turns) == 1


def test_loop_never_finishes() -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "[loop] What is 17 * 23?"}]
    for _ in range(6):
        turn = next_turn(messages, [CALCULATOR_TOOL])
        [call] = turn.tool_calls
        assert json.loads(call.arguments) == {"expression": "1 + 1"}
        messages += [assistant_message(turn), *tool_messages(turn.tool_calls, ["2"])]


def test_usage_counts_characters_or_follows_the_usage_directive() -> None:
    messages = [{"role": "system", "content": "x" * 10}, {"role": "user", "content": "2+3"}]
    turn = next_turn(messages, [CALCULATOR_TOOL])
    assert turn.usage.prompt_tokens == math.ceil(13 / 4)
    assert turn.usage.completion_tokens == math.ceil(len(turn.tool_calls[0].arguments) / 4)
    assert turn.usage.total_tokens == turn.usage.prompt_tokens + turn.usage.completion_tokens

    budget = next_turn([{"role": "user", "content": "[usage=5000] 2+3"}], [CALCULATOR_TOOL])
    assert budget.usage.completion_tokens == 5000
    empty = next_turn([{"role": "user", "content": ""}], [])
    assert (empty.usage.prompt_tokens, empty.usage.completion_tokens) == (1, 7)


def test_conversation_hash_ignores_client_noise_but_not_content() -> None:
    base = [{"role": "user", "content": "1+1"}]
    noisy = [{"role": "user", "content": [{"type": "text", "text": "1+1"}], "name": "ann"}]
    assert conversation_hash(base) == conversation_hash(noisy)
    assert conversation_hash(base) != conversation_hash([{"role": "user", "content": "1+2"}])


# --- the HTTP API, through the real openai client --------------------------------------------


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port in a thread; yield the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn exited"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serving(create_app()) as url:
        yield url


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[..., openai.AsyncOpenAI]]:
    clients: list[openai.AsyncOpenAI] = []

    def make(url: str, **options: Any) -> openai.AsyncOpenAI:
        clients.append(openai.AsyncOpenAI(base_url=url, api_key="not-a-real-key", **options))
        return clients[-1]

    yield make
    for client in clients:
        await client.close()


async def test_models_lists_the_scripted_model(base_url: str) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{base_url}/models")
    assert response.status_code == 200
    assert response.headers[TEST_DOUBLE_HEADER] == "true"
    assert response.json() == {
        "object": "list",
        "data": [
            {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "stepbus-test-double"}
        ],
    }


async def test_a_full_conversation_without_streaming(base_url: str, client_for: Any) -> None:
    client = client_for(base_url)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "What is 17 * 23?"}]
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages, tools=[CALCULATOR_TOOL]
    )
    assert raw.headers[TEST_DOUBLE_HEADER] == "true"
    first = raw.parse()
    assert first.id.startswith("chatcmpl-")
    assert first.model == "gpt-4o-mini"
    [choice] = first.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.function.name == "calculator"
    assert json.loads(call.function.arguments) == {"expression": "17 * 23"}

    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "391"},
    ]
    final = await client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, tools=[CALCULATOR_TOOL]
    )
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == "391"
    assert final.choices[0].message.tool_calls is None
    assert final.usage is not None
    assert final.usage.completion_tokens == 1
    assert final.usage.total_tokens == final.usage.prompt_tokens + 1
    again = await client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, tools=[CALCULATOR_TOOL]
    )
    assert again.model_dump() == final.model_dump()


async def test_streamed_tool_calls_and_usage(base_url: str, client_for: Any) -> None:
    client = client_for(base_url)
    stream = await client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "[parallel] 1+2 and (3*4)-5"}],
        tools=[CALCULATOR_TOOL],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    arguments: dict[int, str] = {}
    ids: dict[int, str] = {}
    for chunk in chunks[:-1]:
        for delta in chunk.choices[0].delta.tool_calls or []:
            arguments[delta.index] = arguments.get(delta.index, "") + delta.function.arguments
            if delta.id:
                ids[delta.index] = delta.id
    assert [json.loads(arguments[i]) for i in sorted(arguments)] == [
        {"expression": "1+2"},
        {"expression": "(3*4)-5"},
    ]
    assert len(set(ids.values())) == 2
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == math.ceil(sum(map(len, arguments.values())) / 4)
    assert all(chunk.usage is None for chunk in chunks[:-1])


async def test_streamed_text_and_the_wire_format(base_url: str) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "Just chat."}],
        "stream": True,
    }
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{base_url}/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers[TEST_DOUBLE_HEADER] == "true"
    events = [line for line in response.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert all("usage" not in chunk for chunk in chunks)
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
    assert text == "I have no arithmetic to do."
    assert len(chunks) > 3
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }


async def test_the_stream_helper_builds_the_final_completion(
    base_url: str, client_for: Any
) -> None:
    client = client_for(base_url)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Compute 2^10 and 3 * 3"}]
    async with client.chat.completions.stream(
        model="m", messages=messages, tools=[CALCULATOR_TOOL]
    ) as stream:
        first = await stream.get_final_completion()
    [call] = first.choices[0].message.tool_calls
    assert json.loads(call.function.arguments) == {"expression": "2^10"}
    messages += [
        first.choices[0].message.model_dump(include={"role", "content", "tool_calls"}),
        {"role": "tool", "tool_call_id": call.id, "content": "1024"},
    ]
    async with client.chat.completions.stream(
        model="m",
        messages=messages,
        tools=[CALCULATOR_TOOL],
        stream_options={"include_usage": True},
    ) as stream:
        second = await stream.get_final_completion()
    assert json.loads(second.choices[0].message.tool_calls[0].function.arguments) == {
        "expression": "3 * 3"
    }
    assert second.usage is not None
    assert second.usage.prompt_tokens == math.ceil((len(messages[0]["content"]) + len("1024")) / 4)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'{"model": "m", "messages": []}',
        b'{"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [1]}',
        b'{"messages": [{"role": "user", "content": "hi"}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "1+1"}], "stream": "yes"}',
    ],
)
async def test_malformed_requests_get_an_openai_style_400(base_url: str, body: bytes) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{base_url}/chat/completions",
            content=body,
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 400
    assert response.headers[TEST_DOUBLE_HEADER] == "true"
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]


async def test_the_openai_client_raises_bad_request_on_400(base_url: str, client_for: Any) -> None:
    client = client_for(base_url)
    with pytest.raises(openai.BadRequestError, match="messages"):
        await client.chat.completions.create(model="m", messages=[])


@pytest.mark.parametrize("status", [503, 429])
async def test_fail_directive_fails_each_distinct_request_once(base_url: str, status: int) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": f"[fail={status}] raw {status}: 6*7"}],
        "tools": [CALCULATOR_TOOL],
    }
    async with httpx.AsyncClient() as http:
        first = await http.post(f"{base_url}/chat/completions", json=body)
        second = await http.post(f"{base_url}/chat/completions", json=body)
        third = await http.post(f"{base_url}/chat/completions", json=body)
    assert first.status_code == status
    assert first.headers["retry-after"] == "0"
    assert first.headers[TEST_DOUBLE_HEADER] == "true"
    assert "fail" in first.json()["error"]["message"]
    assert (second.status_code, third.status_code) == (200, 200)
    assert second.json() == third.json()


async def test_the_openai_client_sees_scripted_failures(base_url: str, client_for: Any) -> None:
    no_retries = client_for(base_url, max_retries=0)
    messages = [{"role": "user", "content": "[fail=503] no retries: 6*7"}]
    with pytest.raises(openai.InternalServerError):
        await no_retries.chat.completions.create(model="m", messages=messages)
    assert (await no_retries.chat.completions.create(model="m", messages=messages)).choices

    rate_limited = [{"role": "user", "content": "[fail=429] rate limited: 6*7"}]
    with pytest.raises(openai.RateLimitError):
        await no_retries.chat.completions.create(model="m", messages=rate_limited)

    retrying = client_for(base_url, max_retries=2)
    started = time.monotonic()
    completion = await retrying.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "[fail=503] retried: 6*7"}]
    )
    assert completion.choices[0].message.content == "I need the calculator tool."
    assert time.monotonic() - started < 0.3, "retry-after-ms should make the retry immediate"


async def test_latency_from_the_server_and_from_the_conversation(client_for: Any) -> None:
    with serving(create_app(latency_ms=(150, 150))) as url:
        client = client_for(url)
        started = time.monotonic()
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a"}])
        plain = time.monotonic() - started
        started = time.monotonic()
        await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "[latency=250] a"}]
        )
        directed = time.monotonic() - started
    assert 0.15 <= plain < 0.4
    assert 0.40 <= directed < 0.8


async def test_hundreds_of_concurrent_requests_wait_together(client_for: Any) -> None:
    with serving(create_app(latency_ms=(200, 300))) as url:
        client = client_for(url)

        async def ask(n: int) -> str | None:
            completion = await client.chat.completions.create(
                model="m",
                messages=[
                    {"role": "user", "content": f"What is {n} * 2?"},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "calculator", "arguments": "{}"},
                            },
                        ],
                    },
                    {"role": "tool", "tool_call_id": "c", "content": str(n * 2)},
                ],
                tools=[CALCULATOR_TOOL],
            )
            return completion.choices[0].message.content

        started = time.monotonic()
        answers = await asyncio.gather(*(ask(n) for n in range(300)))
        elapsed = time.monotonic() - started
    assert answers == [str(n * 2) for n in range(300)]
    # One at a time this would take at least 60 s.
    assert elapsed < 10


# --- the command line --------------------------------------------------------------------------


def test_latency_default_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPBUS_SCRIPTED_LLM_LATENCY_MS", "50-300")
    assert parse_args([]).latency_ms == (50, 300)
    assert parse_args(["--latency-ms", "200"]).latency_ms == (200, 200)
    monkeypatch.delenv("STEPBUS_SCRIPTED_LLM_LATENCY_MS")
    assert parse_args([]).latency_ms == (0, 0)
    with pytest.raises(SystemExit):
        parse_args(["--latency-ms", "soon"])


def test_the_module_serves_and_says_it_is_a_test_double() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "stepbus_devtools.scripted_llm", "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "STEPBUS_SCRIPTED_LLM_LATENCY_MS": "5-10"},
    )
    try:
        assert process.stderr is not None
        banner = process.stderr.readline()
        assert "test double" in banner.lower()
        assert "not a real model" in banner
        assert "5-10 ms" in banner
        deadline = time.monotonic() + 10
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/v1/models")
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, "the server never became ready"
                assert process.poll() is None, "the server exited"
                time.sleep(0.05)
        assert response.json()["data"][0]["id"] == MODEL_ID
    finally:
        process.terminate()
        process.wait(10)


def test_the_script_stores_a_fact_with_the_remember_tool_then_confirms() -> None:
    from stepbus_devtools.scripted_llm.script import next_turn

    tools = [{"type": "function", "function": {"name": "remember"}}]
    messages = [{"role": "user", "content": "Remember that my favourite colour is teal"}]
    turn = next_turn(messages, tools)
    [call] = turn.tool_calls
    assert call.name == "remember"
    assert json.loads(call.arguments) == {"fact": "my favourite colour is teal"}
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": "remember", "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "Remembered: teal"},
    ]  # fmt: skip
    assert next_turn(messages, tools).content == "I will remember that."


def test_the_script_answers_from_recalled_memory() -> None:
    from stepbus_devtools.scripted_llm.script import next_turn

    memory = (
        "Memory: context recalled ...\nEarlier in this conversation (oldest first):\n"
        "- [2 hours ago] user: What is 2 + 2?\n- [2 hours ago] assistant: 4\n"
        "Stored memories (most relevant first):\n- [fact from task t, 1 day ago] teal is best"
    )
    session = [{"role": "system", "content": memory}, {"role": "user", "content": "And before?"}]
    assert next_turn(session, []).content == "Earlier you asked: What is 2 + 2? I answered: 4"
    other = memory.split("Earlier")[0] + "Stored memories (most relevant first):\n- [fact] teal"
    answer = next_turn([{"role": "system", "content": other}, {"role": "user", "content": "?"}], [])
    assert answer.content == "From memory: teal"
    assert (
        next_turn([{"role": "user", "content": "hi"}], []).content == "I have no arithmetic to do."
    )


# --- the judge (requests of the critic) and drafts for revision ------------------------------


def judge_json(messages: list[dict[str, Any]]) -> dict[str, Any]:
    turn = next_turn(messages, [])
    assert turn.tool_calls == () and turn.finish_reason == "stop"
    assert turn.content is not None
    return dict(json.loads(turn.content))


def test_a_judge_request_is_recognised_by_the_critics_system_prompt_before_any_arithmetic() -> None:
    messages = answer_messages("What is 17 * 23?", ["calculator: 391"], "391")
    assert is_judge_request(messages)
    assert not is_judge_request([{"role": "user", "content": "What is 17 * 23?"}])
    # The task quotes arithmetic and a calculator is offered: still a verdict, no tool call.
    turn = next_turn(messages, [CALCULATOR_TOOL])
    assert turn.tool_calls == ()
    assert json.loads(turn.content or "") == {
        "score": 1.0,
        "relevance": 1.0,
        "completeness": 1.0,
        "groundedness": 1.0,
        "feedback": "",
    }
    assert turn.usage.prompt_tokens == math.ceil(sum(len(m["content"]) for m in messages) / 4)


@pytest.mark.parametrize(
    ("task", "observations", "draft", "scores", "feedback"),
    [
        (
            "What is 17 * 23?",
            ["calculator: 391"],
            "I believe the answer is about 400.",
            (0.0, 1.0, 0.0, 0.0),
            "The answer says 400, which no tool result supports; state the calculator's "
            "result 391.",
        ),
        (
            "What is 17 * 23?",
            ["calculator: 391"],
            "17 * 23 is 391.0",
            (1.0, 1.0, 1.0, 1.0),
            "",
        ),
        (
            "Compute 1+2, then (3*4)-5",
            ["calculator: 3", "calculator: 7"],
            "The first is 3.",
            (0.5, 1.0, 0.5, 1.0),
            "The answer leaves out the calculator's result 7; state it.",
        ),
        (
            "What is 17 * 23?",
            ["calculator: 391"],
            "391, or perhaps 400.",
            (0.5, 1.0, 1.0, 0.5),
            "The answer says 400, which no tool result supports; remove it or back it with a "
            "tool result.",
        ),
        ("[latency=5] Say hi.", [], "Hello there.", (1.0, 1.0, 1.0, 1.0), ""),
        ("Say hi.", [], "", (0.0, 0.0, 1.0, 1.0), "The answer is empty; answer the task."),
        (
            "Divide",
            ["calculator: error: division by zero"],
            "I could not compute: error: division by zero",
            (1.0, 1.0, 1.0, 1.0),
            "",
        ),
    ],
)
def test_the_judge_scores_drafts_by_what_the_observations_support(
    task: str,
    observations: list[str],
    draft: str,
    scores: tuple[float, float, float, float],
    feedback: str,
) -> None:
    verdict = judge_json(answer_messages(task, observations, draft))
    assert list(verdict) == ["score", "relevance", "completeness", "groundedness", "feedback"]
    got = (verdict["score"], verdict["relevance"], verdict["completeness"], verdict["groundedness"])
    assert got == scores
    assert verdict["feedback"] == feedback
    parse_reply(json.dumps(verdict), "answer")  # the critic accepts it


def test_directive_numbers_in_the_task_do_not_ground_a_draft() -> None:
    verdict = judge_json(
        answer_messages("[latency=400] What is 17 * 23?", ["calculator: 391"], "About 400.")
    )
    assert verdict["groundedness"] == 0.0


def test_a_harsh_judge_halves_every_score() -> None:
    perfect = judge_json(
        answer_messages("[judge=harsh] What is 17 * 23?", ["calculator: 391"], "391")
    )
    assert (perfect["score"], perfect["relevance"], perfect["groundedness"]) == (0.5, 0.5, 0.5)
    assert perfect["feedback"]
    partial = judge_json(
        answer_messages("[judge=harsh] 1+2 and 3+4", ["calculator: 3", "calculator: 7"], "3")
    )
    assert (partial["score"], partial["completeness"]) == (0.25, 0.25)


def test_an_invalid_judge_never_replies_with_json() -> None:
    first = answer_messages("[judge=invalid] What is 17 * 23?", ["calculator: 391"], "391")
    turn = next_turn(first, [])
    assert turn.content == "I think it is fine."
    with pytest.raises(InvalidReplyError):
        parse_reply(turn.content, "answer")
    again = retry_messages(first, turn.content, "not JSON", "answer")
    assert next_turn(again, []).content == "I think it is fine."


def test_an_invalid_once_judge_answers_the_retry() -> None:
    first = answer_messages("[judge=invalid-once] What is 17 * 23?", ["calculator: 391"], "391")
    turn = next_turn(first, [])
    assert turn.content == "I think it is fine."
    again = retry_messages(first, turn.content, "not JSON", "answer")
    assert judge_json(again)["score"] == 1.0


def test_the_judge_reviews_tool_calls() -> None:
    safe = judge_json(tool_prompt("Add them", "calculator", "Arithmetic.", {"expression": "1+1"}))
    assert safe == {"approved": True, "reason": "The call to calculator fits the task."}
    rm = judge_json(tool_prompt("Tidy up", "shell", "Runs a command.", {"cmd": "rm -rf /tmp"}))
    assert rm["approved"] is False and "rm " in rm["reason"]
    told = judge_json(tool_prompt("[review=reject] Add", "calculator", None, {"e": "1+1"}))
    assert told["approved"] is False
    assert list(told) == ["approved", "reason"]
    parse_reply(json.dumps(told), "tool_call")


def test_judge_and_draft_directives_are_read_with_the_others() -> None:
    text = "[judge=harsh] [judge=Invalid-Once] [review=reject] [draft=worse] [parallel] 1+1"
    directives = read_directives([{"role": "user", "content": text}])
    assert directives == Directives(
        parallel=True,
        judge=frozenset({"harsh", "invalid-once"}),
        review_reject=True,
        draft="worse",
    )
    assert extract_expressions(text) == ["1+1"]
    assert read_directives([{"role": "user", "content": "[judge=lenient]"}]) == Directives()


def revise(messages: list[dict[str, Any]], draft: str) -> list[dict[str, Any]]:
    """The planner's revision turn: the draft, then the reviewer's feedback."""
    return [
        *messages,
        {"role": "assistant", "content": draft},
        {"role": "user", "content": "Reviewer feedback (score 0.00): state the result 391."},
    ]


def drafts(task: str, rounds: int) -> list[str]:
    """The first draft and ``rounds`` revisions the script writes for ``task``."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": task}]
    turn = next_turn(messages, [CALCULATOR_TOOL])
    [call] = turn.tool_calls
    messages += [assistant_message(turn), *tool_messages(turn.tool_calls, ["391"])]
    assert call.name == "calculator"
    written = []
    for _ in range(rounds + 1):
        final = next_turn(messages, [CALCULATOR_TOOL])
        assert final.tool_calls == () and final.content is not None
        written.append(final.content)
        messages = revise(messages, final.content)
    return written


def test_a_weak_draft_is_ungrounded_until_the_reviewer_gives_feedback() -> None:
    assert feedback_rounds([{"role": "user", "content": "Reviewer feedback: x"}]) == 1
    assert drafts("[draft=weak] What is 17 * 23?", 2) == [
        "I believe the answer is about 400.",
        "391",
        "391",
    ]
    assert drafts("What is 17 * 23?", 1) == ["391", "391"]  # without the directive: unchanged


def test_worse_drafts_score_lower_with_each_revision_so_the_first_is_best() -> None:
    written = drafts("[draft=worse] [judge=harsh] What is 17 * 23?", 3)
    assert written[0] == "391"
    scores = [
        judge_json(
            answer_messages(
                "[draft=worse] [judge=harsh] What is 17 * 23?", ["calculator: 391"], draft
            )
        )["score"]
        for draft in written
    ]
    assert scores == [0.5, 0.25, 0.0, 0.0]
    assert scores.index(max(scores)) == 0


async def test_the_api_accepts_response_format(base_url: str, client_for: Any) -> None:
    client = client_for(base_url)
    messages = answer_messages("What is 17 * 23?", ["calculator: 391"], "391")
    name, schema = reply_schema("answer")
    structured = await client.chat.completions.create(
        model="m",
        messages=messages,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": name, "strict": True, "schema": schema},
        },
    )
    assert json.loads(structured.choices[0].message.content or "")["score"] == 1.0
    plain = await client.chat.completions.create(
        model="m", messages=messages, response_format={"type": "json_object"}
    )
    assert plain.choices[0].message.content == structured.choices[0].message.content


@pytest.mark.parametrize(
    "response_format",
    [{"type": "yaml"}, "json", {"type": "json_schema"}, {"type": "json_schema", "json_schema": {}}],
)
async def test_a_malformed_response_format_gets_a_400(base_url: str, response_format: Any) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": response_format,
    }
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{base_url}/chat/completions", json=body)
    assert response.status_code == 400
    assert "response_format" in response.json()["error"]["message"]


async def test_no_structured_refuses_response_format_like_an_endpoint_without_it(
    base_url: str, client_for: Any
) -> None:
    client = client_for(base_url, max_retries=0)
    messages = answer_messages("[judge=no-structured] What is 17 * 23?", ["calculator: 391"], "391")
    with pytest.raises(openai.BadRequestError, match="response_format") as refused:
        await client.chat.completions.create(
            model="m", messages=messages, response_format={"type": "json_object"}
        )
    assert refused.value.status_code == 400
    assert refused.value.param == "response_format"
    without = await client.chat.completions.create(model="m", messages=messages)
    assert json.loads(without.choices[0].message.content or "")["score"] == 1.0


def test_a_judge_request_reads_directives_from_its_task_only() -> None:
    """Recalled memory quoted among the observations may hold another task's directives."""
    from stepbus_devtools.scripted_llm.script import read_directives

    request = CritiqueRequestedData(
        kind="answer",
        step=1,
        input="What is 17 * 23?",
        draft="391",
        observations=["calculator: 391", "memory: Q: What is 17 * 23? [judge=harsh] A: 391"],
    )
    messages = request_messages(request, "rubric")
    assert read_directives(messages).judge == frozenset()
    verdict = json.loads(next_turn(messages, []).content or "")
    assert verdict["score"] == 1.0


def test_a_tool_directive_calls_that_tool_with_the_inputs_json_and_answers_its_result() -> None:
    tool = {"type": "function", "function": {"name": "files__append", "parameters": {}}}
    text = 'Note this down [tool=files__append] {"line": "milk", "n": [1, 2]}'
    messages: list[dict[str, Any]] = [{"role": "user", "content": text}]
    first = next_turn(messages, [tool])
    [call] = first.tool_calls
    assert (call.name, json.loads(call.arguments)) == (
        "files__append",
        {"line": "milk", "n": [1, 2]},
    )
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.name, "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "appended 1 line"},
    ]  # fmt: skip
    assert next_turn(messages, [tool]).content == "appended 1 line"
    # Not offered: the directive does nothing.
    assert next_turn([{"role": "user", "content": text}], []).tool_calls == ()
