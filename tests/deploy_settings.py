"""What each service reads from its environment, derived from its settings class: the list the
deployment artefacts (Helm chart, docker-compose.yml) are checked against, never kept by hand."""

from __future__ import annotations

from pydantic import AliasChoices
from pydantic_settings import BaseSettings
from stepbus_critic.settings import CriticSettings
from stepbus_gateway.settings import GatewaySettings
from stepbus_memory.settings import MemorySettings
from stepbus_planner.settings import PlannerSettings
from stepbus_tool_executor.settings import ToolExecutorSettings

__all__ = ["SERVICES", "env_names", "service_env"]

SERVICES: dict[str, type[BaseSettings]] = {
    "gateway": GatewaySettings,
    "planner": PlannerSettings,
    "tool-executor": ToolExecutorSettings,
    "memory": MemorySettings,
    "critic": CriticSettings,
}
"""Every service, by the name the deployment gives it, with its settings class."""

MODULES = {
    "gateway": "stepbus_gateway",
    "planner": "stepbus_planner",
    "tool-executor": "stepbus_tool_executor",
    "memory": "stepbus_memory",
    "critic": "stepbus_critic",
}
"""``python -m <module>`` runs the service."""


def env_names(settings: type[BaseSettings], field: str) -> list[str]:
    """The environment variables a settings field is read from, the preferred one first."""
    info = settings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices if isinstance(choice, str)]
    if isinstance(alias, str):
        return [alias]
    prefix = str(settings.model_config.get("env_prefix", ""))
    return [f"{prefix}{field}".upper()]


def service_env(service: str) -> dict[str, list[str]]:
    """Field name -> the variables it is read from, for one service."""
    settings = SERVICES[service]
    return {field: env_names(settings, field) for field in settings.model_fields}
