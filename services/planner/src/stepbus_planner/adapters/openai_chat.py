"""``ChatModel`` over any OpenAI-compatible endpoint, through the official ``openai`` client."""

from __future__ import annotations

from typing import Any

import openai
from pydantic import BaseModel, ConfigDict, ValidationError
from stepbus_contracts import TokenUsage
from stepbus_runtime.genai import chat_span

from ..ports import ModelError, ModelToolCall, ModelTurn

__all__ = ["OpenAIChatModel", "parse_completion"]


class OpenAIChatModel:
    """Chat completions with function calling.

    The client retries 429, 5xx, timeouts and connection errors with exponential backoff and
    honours ``Retry-After``; what still fails becomes a ``ModelError``.

    Args:
        client: A configured ``openai.AsyncOpenAI``.
        model: Model name sent with each request.
    """

    def __init__(self, client: openai.AsyncOpenAI, model: str) -> None:
        self._client = client
        self.model = model

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        *,
        task_id: str = "",
        step: int = 0,
    ) -> ModelTurn:
        """Ask the model for its next turn (``task_id`` and ``step`` are not sent)."""
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        if tools:
            body["tools"] = tools
        base_url = str(self._client.base_url)
        with chat_span(
            "planner", self.model, base_url=base_url, messages=messages, tools=len(tools)
        ) as call:
            turn = await self._post(body)
            call.response(
                model=turn.model,
                finish_reason=turn.finish_reason,
                input_tokens=turn.usage.prompt_tokens,
                output_tokens=turn.usage.completion_tokens,
                output=[{"content": turn.content, "tool_calls": [c.name for c in turn.tool_calls]}],
            )
        return turn

    async def _post(self, body: dict[str, Any]) -> ModelTurn:
        try:
            # The client's low-level POST: the same request, auth, retries and typed errors as
            # ``chat.completions.create``, minus two costs measured under load (ADR-13): the
            # TypedDict transform of parameters we built well-formed, and the SDK's generic
            # model construction of the response, which ``parse_completion`` replaces with one
            # validation of the fields the planner reads.
            raw = await self._client.post("/chat/completions", body=body, cast_to=bytes)
        except (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError) as exc:
            raise ModelError(f"{type(exc).__name__}: {exc}", retryable=True) from exc
        except openai.APIStatusError as exc:
            raise ModelError(
                f"HTTP {exc.status_code}: {exc.message}", retryable=exc.status_code >= 500
            ) from exc
        return parse_completion(raw, self.model)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Function(_Lenient):
    name: str
    arguments: str = ""


class _ToolCall(_Lenient):
    id: str
    type: str = "function"
    function: _Function | None = None


class _Message(_Lenient):
    content: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(_Lenient):
    message: _Message
    finish_reason: str | None = None


class _Usage(_Lenient):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Completion(_Lenient):
    """The part of an OpenAI ``ChatCompletion`` the planner uses."""

    model: str | None = None
    choices: list[_Choice]
    usage: _Usage | None = None


def parse_completion(raw: bytes, default_model: str) -> ModelTurn:
    """The first choice of a chat completion response body.

    Raises:
        ModelError: (retryable) the body is not a chat completion or has no choices.
    """
    try:
        completion = _Completion.model_validate_json(raw)
    except ValidationError as exc:
        snippet = raw[:200].decode(errors="replace")
        raise ModelError(
            f"the endpoint returned no chat completion ({exc.error_count()} problems: "
            f"{exc.errors()[0]['msg']}): {snippet!r}",
            retryable=True,
        ) from exc
    if not completion.choices:
        raise ModelError("the model returned no choices", retryable=True)
    choice = completion.choices[0]
    usage = completion.usage or _Usage()
    return ModelTurn(
        content=choice.message.content,
        tool_calls=[
            ModelToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments)
            for call in choice.message.tool_calls or []
            if call.type == "function" and call.function is not None
        ],
        usage=TokenUsage(
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens
        ),
        finish_reason=choice.finish_reason,
        model=completion.model or default_model,
    )
