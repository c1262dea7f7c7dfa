"""The parts of the Helm chart derived from the code: the topic catalog (``files/topics.json``),
each service's ``config`` section of ``values.schema.json`` and the settings tables of the
chart's README. ``uv run --frozen python -m tests.helm_chart`` writes them; the chart tests
fail when a written file differs from what the code says today."""

from __future__ import annotations

import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr
from stepbus_contracts import Topics

from tests.deploy_settings import SERVICES, env_names

__all__ = [
    "CHART",
    "MANAGED",
    "config_fields",
    "config_schema",
    "settings_tables",
    "topics_catalog",
    "write",
]

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "stepbus"
README = CHART / "README.md"
SCHEMA = CHART / "values.schema.json"
TOPICS = CHART / "files" / "topics.json"

_SHARED = {
    "kafka_bootstrap_servers": "`kafka.bootstrapServers`",
    "topic_prefix": "`topics.prefix`",
    "topic_replication_factor": "`topics.replicationFactor`",
    "group_instance_id": "the pod's name (downward API)",
    "metrics_host": "`0.0.0.0`",
}
_REDIS = "`redis.url`, or `redis.existingSecret` / `redis.urlKey`"

MANAGED: dict[str, dict[str, str]] = {
    "gateway": {
        **_SHARED,
        "host": "`0.0.0.0`",
        "port": "8080 (the container port `http`)",
        "instance_id": "the pod's name (downward API)",
        "redis_url": _REDIS,
        "api_keys": "`gateway.apiKeys.existingSecret` / `gateway.apiKeys.envKey`",
        "api_keys_file": "`gateway.apiKeys.existingSecret` / `gateway.apiKeys.fileKey` (mounted)",
    },
    "planner": {
        **_SHARED,
        "metrics_port": "9101 (the container port `metrics`)",
        "redis_url": _REDIS,
        "openai_base_url": "`llm.baseUrl`",
        "openai_api_key": "`llm.existingSecret` / `llm.apiKeyKey`",
    },
    "tool-executor": {
        **_SHARED,
        "metrics_port": "9102 (the container port `metrics`)",
        "policy_file": "`toolExecutor.policy.existingSecret` / `toolExecutor.policy.key` (mounted)",
    },
    "memory": {
        **_SHARED,
        "metrics_port": "9103 (the container port `metrics`)",
        "redis_url": _REDIS,
        "qdrant_url": "`qdrant.url`",
        "qdrant_api_key": "`qdrant.existingSecret` / `qdrant.apiKeyKey`",
        "qdrant_path": "an emptyDir when `qdrant.url` is empty",
    },
    "critic": {
        **_SHARED,
        "metrics_port": "9104 (the container port `metrics`)",
        "api_key": "`llm.existingSecret` (OPENAI_API_KEY), or "
        "`services.critic.secretEnv.STEPBUS_CRITIC_API_KEY`",
    },
}
"""Settings the chart sets itself (from a dedicated value, a Secret or the pod): field -> how.
Every other field is settable through ``services.<name>.config`` by its variable."""


def config_fields(service: str) -> dict[str, str]:
    """Field -> the variable ``services.<service>.config`` sets it by (the preferred name)."""
    settings = SERVICES[service]
    return {
        field: env_names(settings, field)[0]
        for field in settings.model_fields
        if field not in MANAGED[service]
    }


def _json_type(annotation: Any) -> dict[str, Any]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = [_json_type(arg) for arg in typing.get_args(annotation) if arg is not type(None)]
        return parts[0] if len(parts) == 1 else {"anyOf": parts}
    if origin is Literal:
        return {"type": "string", "enum": list(typing.get_args(annotation))}
    if annotation is bool:
        return {"type": "boolean"}
    if annotation is int:
        return {"type": "integer"}
    if annotation is float:
        return {"type": "number"}
    if annotation is SecretStr:
        raise TypeError("a secret setting belongs in a Secret, not in the config")
    return {"type": "string"}


def config_schema(service: str) -> dict[str, Any]:
    """The JSON Schema of ``services.<service>.config``: one property per settable variable."""
    settings = SERVICES[service]
    properties: dict[str, Any] = {}
    for field, env in sorted(config_fields(service).items(), key=lambda item: item[1]):
        info = settings.model_fields[field]
        kind = _json_type(info.annotation)
        described = {"description": info.description or field}
        if "anyOf" in kind:
            properties[env] = {**described, "anyOf": [*kind["anyOf"], {"type": "null"}]}
        else:
            properties[env] = {**described, **kind, "type": [kind["type"], "null"]}
    return {
        "type": "object",
        "description": "Settings by environment variable (null: the code's default).",
        "additionalProperties": False,
        "properties": properties,
    }


def _default(service: str, field: str) -> str:
    info = SERVICES[service].model_fields[field]
    if info.default_factory is not None:
        return "(computed)"
    value = info.default
    if value is None or value == "":
        return "unset"
    return f"`{value}`"


def settings_tables() -> str:
    """The README's settings section: per service, every field and how the chart sets it."""
    out: list[str] = []
    for service, settings in SERVICES.items():
        out += [
            f"### {service}",
            "",
            f"`python -m` runs `{settings.__module__.split('.')[0]}`.",
            "",
            "| variable | default | set by | description |",
            "|---|---|---|---|",
        ]
        configurable = config_fields(service)
        for field, info in settings.model_fields.items():
            names = env_names(settings, field)
            how = (
                MANAGED[service][field]
                if field in MANAGED[service]
                else f"`services.{service}.config.{configurable[field]}`"
            )
            description = re.sub(r"\s+", " ", info.description or "").replace("|", "\\|")
            variable = " / ".join(f"`{name}`" for name in names)
            out.append(f"| {variable} | {_default(service, field)} | {how} | {description} |")
        out.append("")
    return "\n".join(out)


def topics_catalog() -> dict[str, Any]:
    """The catalog as the chart reads it: suffix -> partitions and topic configs."""
    return {
        spec.suffix: {"partitions": spec.partitions, "configs": dict(spec.configs)}
        for _, spec in Topics().specs()
    }


BEGIN = "<!-- settings: generated by `uv run --frozen python -m tests.helm_chart` -->"
END = "<!-- end of settings -->"


def readme_with_tables(text: str) -> str:
    """``text`` with the generated settings section between its markers replaced."""
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n\n{settings_tables()}\n{END}{tail}"


def schema_with_configs(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with each service's ``config`` and the topic names the derived ones."""
    services = schema["properties"]["services"]["properties"]
    for service in SERVICES:
        services[service]["properties"]["config"] = config_schema(service)
    partitions = schema["properties"]["topics"]["properties"]["partitions"]
    partitions["propertyNames"] = {"enum": list(topics_catalog())}
    return schema


def dump_json(value: Any) -> str:
    """JSON as the chart's files hold it."""
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def write() -> None:
    """Write the derived parts into the chart."""
    TOPICS.write_text(dump_json(topics_catalog()))
    SCHEMA.write_text(dump_json(schema_with_configs(json.loads(SCHEMA.read_text()))))
    README.write_text(readme_with_tables(README.read_text()))


if __name__ == "__main__":
    write()
    sys.exit(0)
