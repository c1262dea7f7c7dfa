"""Wiring of the critic: the judge model's client, the rubric, the processor."""

from __future__ import annotations

import httpx2
import openai
from stepbus_contracts import critic_requests_adapter, utcnow
from stepbus_runtime import Route, run_worker, service_processor, service_publisher, setup_telemetry

from .adapters.openai_judge import OpenAIJudge
from .handlers import CriticHandlers
from .rubric import DEFAULT_ANSWER_RUBRIC
from .settings import CriticSettings

__all__ = ["build_client", "load_rubric", "main"]


def build_client(settings: CriticSettings) -> openai.AsyncOpenAI:
    """The judge endpoint's client: bounded, over aiohttp like the planner's (ADR-13)."""
    return openai.AsyncOpenAI(
        base_url=settings.base_url,
        api_key=settings.api_key.get_secret_value() or "unset",
        timeout=settings.llm_timeout_seconds,
        max_retries=settings.llm_max_retries,
        http_client=openai.DefaultAioHttpClient(
            limits=httpx2.Limits(
                max_connections=settings.llm_max_connections,
                max_keepalive_connections=settings.llm_max_connections,
            ),
            timeout=settings.llm_timeout_seconds,
        ),
    )


def load_rubric(settings: CriticSettings) -> str:
    """The answer rubric: ``rubric_file``'s text, else the default.

    Raises:
        ValueError: The file is empty (a blank rubric would judge by nothing).
    """
    if settings.rubric_file is None:
        return DEFAULT_ANSWER_RUBRIC
    text = settings.rubric_file.read_text(encoding="utf-8").strip()
    if not text:
        raise ValueError(f"the rubric file {settings.rubric_file} is empty")
    return text


async def main(settings: CriticSettings | None = None) -> None:
    """Run the critic until SIGTERM."""
    settings = settings or CriticSettings()
    setup_telemetry("critic")
    topics = settings.topics
    rubric = load_rubric(settings)
    client = build_client(settings)
    publisher = service_publisher(settings, "stepbus-critic")
    handlers = CriticHandlers(
        judge=OpenAIJudge(client, settings.model, settings.response_format),
        topics=topics,
        clock=utcnow,
        rubric=rubric,
    )
    processor = service_processor(
        settings,
        name="critic",
        group_id=settings.group_id,
        routes={topics.critic_requests: Route(critic_requests_adapter, handlers.on_request)},
        publisher=publisher,
    )
    try:
        await run_worker(settings, publisher, processor, settings.metrics_port)
    finally:
        await client.close()
