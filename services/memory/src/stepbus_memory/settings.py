"""Memory service settings (env prefix ``STEPBUS_MEMORY_``; ``REDIS_URL``, ``QDRANT_URL``)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict
from stepbus_runtime import ServiceSettings

__all__ = ["MemorySettings"]


class MemorySettings(ServiceSettings):
    """How the memory service stores, recalls and forgets."""

    model_config = SettingsConfigDict(
        env_prefix="STEPBUS_MEMORY_", extra="ignore", validate_by_name=True
    )

    metrics_port: int = Field(default=9103, description="Port of /metrics and /readyz.")
    group_id: str = Field(default="stepbus-memory", description="Consumer group.")
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "STEPBUS_MEMORY_REDIS_URL"),
        description="Redis holding session memory (a cache: rebuilt from `memory.sessions`).",
    )
    qdrant_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("QDRANT_URL", "STEPBUS_MEMORY_QDRANT_URL"),
        description="A Qdrant server; unset: Qdrant's embedded local mode at `qdrant_path`.",
    )
    qdrant_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("QDRANT_API_KEY", "STEPBUS_MEMORY_QDRANT_API_KEY"),
        description="API key of the Qdrant server.",
    )
    qdrant_path: str = Field(
        default=".stepbus/qdrant",
        description="Directory of the embedded local Qdrant (one process at a time).",
    )
    embeddings: Literal["onnx", "openai"] = Field(
        default="onnx",
        validation_alias=AliasChoices("STEPBUS_EMBEDDINGS", "STEPBUS_MEMORY_EMBEDDINGS"),
        description="`onnx`: all-MiniLM-L6-v2 on this machine (offline); `openai`: the OpenAI "
        "embeddings API (`OPENAI_BASE_URL`, `OPENAI_API_KEY`).",
    )
    openai_embeddings_model: str = Field(
        default="text-embedding-3-small", description="Model of the OpenAI embeddings API."
    )
    onnx_threads: int = Field(default=1, ge=1, le=64, description="Threads of the ONNX model.")
    embed_batch: int = Field(default=32, ge=1, le=1024, description="Texts per embedding batch.")
    session_token_budget: int = Field(
        default=1_000, ge=0, description="Tokens of recent session turns a recall returns."
    )
    hits_token_budget: int = Field(
        default=1_000, ge=0, description="Tokens of long-term memories a recall returns."
    )
    session_ttl_seconds: int = Field(
        default=7 * 86_400,
        ge=60,
        description="A session is forgotten this long after its last task.",
    )
    session_max_tasks: int = Field(
        default=50, ge=1, description="Most recent tasks of a session kept in Redis."
    )
    min_score: float = Field(
        default=0.2,
        ge=-1,
        le=1,
        description="Long-term memories below this similarity are left out.",
    )
    chunk_tokens: int = Field(default=512, ge=16, description="Tokens per document chunk.")
    chunk_overlap: int = Field(default=64, ge=0, description="Tokens two document chunks share.")
    rebuild_check_seconds: float = Field(
        default=1.0, gt=0, description="How often Redis is checked for a lost session memory."
    )
