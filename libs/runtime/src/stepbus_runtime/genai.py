"""GenAI semantic conventions for model calls: ``chat {model}`` spans and model metrics.

The planner and the critic call the model through the ``openai`` client's low-level POST
(ADR-13), which the OpenTelemetry OpenAI instrumentation does not see, so the span is made
here, once, with the attributes the conventions name. Message contents go on the span only
when ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``: prompts hold user data.

Model latency is observed per call (``stepbus_model_call_seconds``); tokens are counted by the
caller once the decision they bought is recorded (``count_tokens``), so a call redone after a
crash, or a decision read back from the journal, is not counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode
from prometheus_client import Counter, Histogram

from .logs import clip

__all__ = [
    "MODEL_SECONDS",
    "MODEL_TOKENS",
    "ChatCall",
    "capture_content",
    "chat_span",
    "count_tokens",
]

_tracer = trace.get_tracer("stepbus.genai")

MODEL_SECONDS = Histogram(
    "stepbus_model_call_seconds",
    "Time of one model call, by service, model and outcome (ok, error, cancelled).",
    ["service", "model", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120),
)
MODEL_TOKENS = Counter(
    "stepbus_model_tokens_total",
    "Tokens of recorded model calls, by service, model, kind (input, output) and mode (live; "
    "replay and shadow runs are never production work); a call redone after a crash is "
    "counted once.",
    ["service", "model", "kind", "mode"],
)


def capture_content() -> bool:
    """Whether message contents may be recorded on spans (off unless asked for)."""
    flag = os.environ.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "")
    return flag.strip().lower() == "true"


def count_tokens(
    service: str, model: str, input_tokens: int, output_tokens: int, mode: str = "live"
) -> None:
    """Count a recorded call's tokens (call it from ``Emit.on_acked``)."""
    MODEL_TOKENS.labels(service, model, "input", mode).inc(input_tokens)
    MODEL_TOKENS.labels(service, model, "output", mode).inc(output_tokens)


@dataclass
class ChatCall:
    """The span of one model call, for the caller to fill with the response."""

    span: Span

    def response(
        self,
        *,
        model: str,
        finish_reason: str | None,
        input_tokens: int,
        output_tokens: int,
        response_id: str | None = None,
        output: Any = None,
    ) -> None:
        """Record what the model answered."""
        if not self.span.is_recording():
            return
        self.span.set_attributes(
            {
                "gen_ai.response.model": model,
                "gen_ai.response.finish_reasons": [finish_reason or "unknown"],
                "gen_ai.usage.input_tokens": input_tokens,
                "gen_ai.usage.output_tokens": output_tokens,
            }
        )
        if response_id:
            self.span.set_attribute("gen_ai.response.id", response_id)
        if output is not None and capture_content():
            self.span.set_attribute("gen_ai.output.messages", _json(output))


@contextlib.contextmanager
def chat_span(
    service: str,
    model: str,
    *,
    base_url: str | None = None,
    messages: Any = None,
    tools: int = 0,
) -> Iterator[ChatCall]:
    """A ``chat {model}`` CLIENT span and the call's latency, around one model call.

    An exception leaving the block marks the span as an error (``error.type``) and counts the
    call with outcome ``error``.
    """
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": model,
    }
    if base_url:
        parts = urlsplit(base_url)
        if parts.hostname:
            attributes["server.address"] = parts.hostname
        if parts.port:
            attributes["server.port"] = parts.port
    if tools:
        attributes["stepbus.gen_ai.request.tools"] = tools
    started = time.perf_counter()
    outcome = "ok"
    with _tracer.start_as_current_span(
        f"chat {model}",
        kind=SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,  # the exception's text may quote the prompt: clipped below
        set_status_on_exception=False,
    ) as span:
        if messages is not None and span.is_recording() and capture_content():
            span.set_attribute("gen_ai.input.messages", _json(messages))
        try:
            yield ChatCall(span)
        except asyncio.CancelledError:  # a cancelled task or the deadline: not the model's fault
            outcome = "cancelled"
            span.set_attribute("error.type", "cancelled")
            raise
        except BaseException as exc:
            outcome = "error"
            span.set_attribute("error.type", type(exc).__name__)
            span.set_status(StatusCode.ERROR, clip(str(exc), 200))
            raise
        finally:
            MODEL_SECONDS.labels(service, model, outcome).observe(time.perf_counter() - started)


def _json(value: Any) -> str:
    try:
        return clip(json.dumps(value, ensure_ascii=False, default=str), 32_000)
    except (TypeError, ValueError):
        return clip(repr(value), 32_000)
