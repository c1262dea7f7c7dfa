"""Settings every service shares; each service subclasses with its own env prefix."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from stepbus_contracts import DEFAULT_PREFIX, Topics

__all__ = ["ServiceSettings"]


class ServiceSettings(BaseSettings):
    """Kafka, topics and the processor's bounds; read from the environment."""

    model_config = SettingsConfigDict(env_prefix="STEPBUS_", extra="ignore", validate_by_name=True)

    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "STEPBUS_KAFKA_BOOTSTRAP_SERVERS"),
        description="Kafka bootstrap servers.",
    )
    topic_prefix: str = Field(
        default=DEFAULT_PREFIX,
        validation_alias=AliasChoices("STEPBUS_TOPIC_PREFIX"),
        description="Prefix of every topic name.",
    )
    topic_replication_factor: int = Field(
        default=1,
        validation_alias=AliasChoices("STEPBUS_TOPIC_REPLICATION_FACTOR"),
        description="Replication factor for topics the service creates.",
    )
    group_instance_id: str | None = Field(
        default=None,
        validation_alias=AliasChoices("STEPBUS_GROUP_INSTANCE_ID"),
        description="Static group membership id, e.g. the pod name of a StatefulSet.",
    )
    max_in_flight: int = Field(default=512, ge=1, description="Records in flight per replica.")
    max_attempts: int = Field(default=5, ge=1, description="Handler attempts before the DLQ.")
    metrics_host: str = Field(default="127.0.0.1", description="Address of /metrics, /readyz.")
    commit_interval_seconds: float = Field(
        default=0.5,
        gt=0,
        le=300,
        description="Seconds between offset commits (records past the last commit are handled "
        "again by the next owner after a crash).",
    )
    claim_check_threshold_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        le=900 * 1024,
        validation_alias=AliasChoices("STEPBUS_CLAIM_CHECK_THRESHOLD_BYTES"),
        description="Encoded events above this size are stored in the payloads topic and "
        "published as a claim check (Kafka's default record limit is about 1 MiB).",
    )

    @property
    def topics(self) -> Topics:
        """The topic catalog under the configured prefix."""
        return Topics(self.topic_prefix)
