"""Planner settings (env prefix ``STEPBUS_PLANNER_``; the LLM by the standard OpenAI variables)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict
from stepbus_contracts import MAX_DEADLINE_SECONDS, MAX_MODEL_NAME_LENGTH, CriticPolicy
from stepbus_runtime import ServiceSettings

__all__ = ["PlannerSettings"]


class PlannerSettings(ServiceSettings):
    """How the planner runs the ReAct loop."""

    model_config = SettingsConfigDict(env_prefix="STEPBUS_PLANNER_", extra="ignore")

    metrics_port: int = Field(default=9101, description="Port of /metrics and /readyz.")
    group_id: str = Field(default="stepbus-planner", description="Consumer group.")
    model: str = Field(
        default="gpt-4o-mini",
        min_length=1,
        max_length=MAX_MODEL_NAME_LENGTH,
        validation_alias=AliasChoices("STEPBUS_MODEL", "STEPBUS_PLANNER_MODEL"),
        description="Model name sent to the OpenAI-compatible endpoint.",
    )
    openai_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_BASE_URL"),
        description="OpenAI-compatible endpoint; the OpenAI API when unset.",
    )
    openai_api_key: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=AliasChoices("OPENAI_API_KEY"),
        description="API key for the endpoint.",
    )
    llm_timeout_seconds: float = Field(default=120.0, gt=0, description="Per-request timeout.")
    llm_max_retries: int = Field(
        default=3, ge=0, description="Client retries (429, 5xx, timeouts) with backoff."
    )
    llm_max_connections: int = Field(
        default=200, ge=1, description="Concurrent connections to the LLM endpoint."
    )
    tool_timeout_seconds: float = Field(
        default=30.0, gt=0, le=MAX_DEADLINE_SECONDS, description="Per tool call."
    )
    system_prompt: str | None = Field(default=None, description="Overrides the system prompt.")
    deadline_sweep_seconds: float = Field(
        default=1.0, gt=0, description="How often tasks waiting past their deadline are ended."
    )
    ended_task_retention_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="How long an ended task is remembered, so its late or duplicate events "
        "(a re-published submission included) change nothing; then its snapshot is "
        "tombstoned and a submission with the same id runs again.",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "STEPBUS_PLANNER_REDIS_URL"),
        description="Redis holding the index of public event ids seen (a guard: a flush only "
        "forgets ids seen before it; when Redis is unreachable the check is skipped, logged).",
    )
    event_id_ttl_seconds: int = Field(
        default=86_400,
        ge=60,
        description="How long a public event id is remembered: an id reused for a different "
        "event within it is dead-lettered.",
    )
    memory: bool = Field(
        default=True,
        description="Recall memory (session turns, long-term memories) before each task's first "
        "step, from the memory service; recorded on the journal.",
    )
    recall_timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        le=300,
        description="How long a task waits for its recall; then it goes on without memory, "
        "recorded as such.",
    )
    recall_limit: int = Field(
        default=5, ge=0, le=50, description="Most long-term memories recalled per task."
    )
    critic: bool = Field(
        default=True,
        description="The deployment's switch for the critic: when false no task is judged "
        "(whatever its `critic` object says); when true a task is judged unless it sets "
        "`critic.enabled: false`.",
    )
    critic_threshold: float = Field(
        default=0.7,
        ge=0,
        le=1,
        description="Score below which a draft goes back for revision, for tasks that do not "
        "set `critic.threshold`.",
    )
    critic_max_revisions: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Most revisions, for tasks that do not set `critic.max_revisions`.",
    )
    critique_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="How long a task waits for the critic's verdict; then a draft is the answer "
        "(marked unjudged) and a reviewed tool call is not run.",
    )

    shadow: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9-]{0,39}$",
        description="Run as the shadow planner NAME (also `--shadow NAME`): it runs the live "
        "tasks beside production in its own consumer group, answers tool calls, recalls and "
        "critiques from what production records (stubs otherwise: no tool ever runs), and "
        "writes only to `<prefix>shadow.NAME.*`; `stepbus shadow-report NAME` compares.",
    )
    shadow_wait_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="How long a shadow waits for production to record the answer to a call "
        "before answering it as not recorded.",
    )

    def critic_policy(self) -> CriticPolicy:
        """The critic policy of tasks that do not give their own."""
        return CriticPolicy(
            threshold=self.critic_threshold, max_revisions=self.critic_max_revisions
        )
