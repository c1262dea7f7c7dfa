"""``Judge`` over any OpenAI-compatible endpoint, through the official ``openai`` client."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import openai
from pydantic import BaseModel, ConfigDict, ValidationError
from stepbus_contracts import TokenUsage
from stepbus_runtime import clip
from stepbus_runtime.genai import chat_span

from ..ports import JudgeError, JudgeReply
from ..settings import ResponseFormat

__all__ = ["OpenAIJudge", "parse_completion", "refuses_response_format"]

log = logging.getLogger(__name__)


class OpenAIJudge:
    """Chat completions asked for one JSON object.

    With ``json_schema`` the reply's strict JSON Schema goes along as structured output; with
    ``json_object``, JSON mode; with ``prompt``, nothing but the prompt. An endpoint that
    refuses ``response_format`` (HTTP 400 naming it) is asked again at once with the prompt
    alone, and so is every later request of the process (logged once).

    The client retries 429, 5xx, timeouts and connection errors with exponential backoff and
    honours ``Retry-After``; what still fails becomes a ``JudgeError``, retryable for those,
    not for any other refusal.

    Args:
        client: A configured ``openai.AsyncOpenAI``.
        model: Model name sent with each request.
        response_format: How the reply's shape is asked for.
    """

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        model: str,
        response_format: ResponseFormat = "json_schema",
    ) -> None:
        self._client = client
        self.model = model
        self.response_format: ResponseFormat = response_format

    async def judge(
        self,
        messages: Sequence[dict[str, Any]],
        schema_name: str,
        schema: dict[str, Any],
    ) -> JudgeReply:
        """Ask the judge; its reply's text, token usage and model."""
        mode = self.response_format
        try:
            return await self._ask(messages, schema_name, schema, mode)
        except JudgeError as exc:
            refused = exc.__cause__
            if mode == "prompt" or not refuses_response_format(refused):
                raise
        if self.response_format != "prompt":  # once per process, however many ask at once
            self.response_format = "prompt"
            log.warning(
                "the judge endpoint refused response_format=%s (%s); asking with the prompt "
                "alone from now on",
                mode,
                clip(getattr(refused, "message", refused), 300),
            )
        return await self._ask(messages, schema_name, schema, "prompt")

    async def _ask(
        self,
        messages: Sequence[dict[str, Any]],
        schema_name: str,
        schema: dict[str, Any],
        mode: ResponseFormat,
    ) -> JudgeReply:
        body: dict[str, Any] = {"model": self.model, "messages": list(messages)}
        if mode == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "strict": True, "schema": schema},
            }
        elif mode == "json_object":
            body["response_format"] = {"type": "json_object"}
        with chat_span(
            "critic", self.model, base_url=str(self._client.base_url), messages=body["messages"]
        ) as call:
            try:
                # The client's low-level POST, as the planner's adapter does (ADR-13): the same
                # auth, retries and typed errors as ``chat.completions.create``, one validation
                # of the fields read instead of the SDK's generic response model.
                raw = await self._client.post("/chat/completions", body=body, cast_to=bytes)
            except (openai.APIConnectionError, openai.RateLimitError) as exc:  # timeouts too
                raise JudgeError(f"{type(exc).__name__}: {exc}", retryable=True) from exc
            except openai.APIStatusError as exc:
                raise JudgeError(
                    f"HTTP {exc.status_code}: {exc.message}", retryable=exc.status_code >= 500
                ) from exc
            reply = parse_completion(raw, self.model)
            call.response(
                model=reply.model,
                finish_reason=reply.finish_reason,
                input_tokens=reply.usage.prompt_tokens,
                output_tokens=reply.usage.completion_tokens,
                output=[{"content": reply.text}],
            )
        return reply


def refuses_response_format(error: BaseException | None) -> bool:
    """Whether an error is an endpoint's refusal of ``response_format`` (HTTP 400 naming
    ``response_format`` or ``json_schema``)."""
    if not isinstance(error, openai.APIStatusError) or error.status_code != 400:
        return False
    said = f"{error.message} {error.body}".lower()
    return "response_format" in said or "json_schema" in said


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Message(_Lenient):
    content: str | None = None
    refusal: str | None = None


class _Choice(_Lenient):
    message: _Message
    finish_reason: str | None = None


class _Usage(_Lenient):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Completion(_Lenient):
    """The part of an OpenAI ``ChatCompletion`` the critic uses."""

    model: str | None = None
    choices: list[_Choice]
    usage: _Usage | None = None


def parse_completion(raw: bytes, default_model: str) -> JudgeReply:
    """The first choice's text of a chat completion response body (``""`` when the model
    refused or said nothing: an invalid reply, asked again).

    Raises:
        JudgeError: (retryable) the body is not a chat completion or has no choices.
    """
    try:
        completion = _Completion.model_validate_json(raw)
    except ValidationError as exc:
        snippet = raw[:200].decode(errors="replace")
        raise JudgeError(
            f"the endpoint returned no chat completion ({exc.error_count()} problems: "
            f"{exc.errors()[0]['msg']}): {snippet!r}",
            retryable=True,
        ) from exc
    if not completion.choices:
        raise JudgeError("the judge model returned no choices", retryable=True)
    usage = completion.usage or _Usage()
    return JudgeReply(
        text=completion.choices[0].message.content or "",
        usage=TokenUsage(
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens
        ),
        model=completion.model or default_model,
        finish_reason=completion.choices[0].finish_reason,
    )
