"""Critic settings (env prefix ``STEPBUS_CRITIC_``; the judge model falls back to the planner's
model and the standard OpenAI variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict
from stepbus_contracts import MAX_MODEL_NAME_LENGTH
from stepbus_runtime import ServiceSettings

__all__ = ["CriticSettings", "ResponseFormat"]

ResponseFormat = Literal["json_schema", "json_object", "prompt"]
"""How the judge is held to the reply's shape: OpenAI structured output with the reply's JSON
Schema (``json_schema``), JSON mode (``json_object``), or the prompt alone (``prompt``)."""


class CriticSettings(ServiceSettings):
    """How the critic reaches its judge model and what rubric it judges by."""

    model_config = SettingsConfigDict(
        env_prefix="STEPBUS_CRITIC_", extra="ignore", validate_by_name=True
    )

    metrics_port: int = Field(default=9104, description="Port of /metrics and /readyz.")
    group_id: str = Field(default="stepbus-critic", description="Consumer group.")
    model: str = Field(
        default="gpt-4o-mini",
        min_length=1,
        max_length=MAX_MODEL_NAME_LENGTH,
        validation_alias=AliasChoices(
            "STEPBUS_CRITIC_MODEL", "STEPBUS_MODEL", "STEPBUS_PLANNER_MODEL"
        ),
        description="The judge model; the planner's model (`STEPBUS_MODEL`) unless set.",
    )
    base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("STEPBUS_CRITIC_BASE_URL", "OPENAI_BASE_URL"),
        description="OpenAI-compatible endpoint of the judge; `OPENAI_BASE_URL`, else the "
        "OpenAI API.",
    )
    api_key: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=AliasChoices("STEPBUS_CRITIC_API_KEY", "OPENAI_API_KEY"),
        description="API key for the judge's endpoint (`OPENAI_API_KEY` unless set).",
    )
    response_format: ResponseFormat = Field(
        default="json_schema",
        description="`json_schema`: structured output (strict JSON Schema of the reply); "
        "`json_object`: JSON mode; `prompt`: the prompt alone. An endpoint that refuses "
        "`response_format` makes the critic fall back to `prompt`.",
    )
    llm_timeout_seconds: float = Field(default=120.0, gt=0, description="Per-request timeout.")
    llm_max_retries: int = Field(
        default=3, ge=0, description="Client retries (429, 5xx, timeouts) with backoff."
    )
    llm_max_connections: int = Field(
        default=200, ge=1, description="Concurrent connections to the judge's endpoint."
    )
    rubric_file: Path | None = Field(
        default=None,
        description="A text file replacing the default answer rubric (the criteria); the "
        "reply's JSON shape is always asked for after it.",
    )
