"""The Helm chart (helm/stepbus) lints, renders and validates offline, and deploys what the code
needs: every setting each service reads is settable, every topic of the catalog is created, the
pods are locked down, and each service talks only to what it uses.

Rendered manifests are validated against the Kubernetes schemas that ``kubernetes-validate``
ships (strict: an unknown field fails) for the oldest and newest versions the chart supports,
and the KEDA and Prometheus Operator objects against their CRDs' schemas, vendored under
``crd_schemas/``. helm comes from ``make helm`` (``.stepbus/bin/helm``) or PATH; without it
these tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from stepbus_contracts import Topics
from stepbus_runtime.create_topics import CO_PARTITIONED, desired_specs

from tests.deploy_settings import MODULES, SERVICES, service_env
from tests.helm_chart import (
    CHART,
    MANAGED,
    config_fields,
    readme_with_tables,
    schema_with_configs,
    topics_catalog,
)

REPO = CHART.parents[1]
PRODUCTION = CHART / "ci" / "production-values.yaml"
CRD_SCHEMAS = Path(__file__).parent / "crd_schemas"
KUBERNETES_VERSIONS = ("1.29", "1.37")  # Chart.yaml's kubeVersion floor, the newest shipped
PORTS = {"gateway": 8080, "planner": 9101, "tool-executor": 9102, "memory": 9103, "critic": 9104}
WORKERS = [name for name in SERVICES if name != "gateway"]
# Dependencies by service (NetworkPolicy egress): what each one's settings reach.
USES = {
    "gateway": {"kafka", "redis", "collector", "dns"},
    "planner": {"kafka", "redis", "collector", "dns", "llm"},
    "tool-executor": {"kafka", "collector", "dns"},
    "memory": {"kafka", "redis", "qdrant", "collector", "dns"},
    "critic": {"kafka", "collector", "dns", "llm"},
}
CRDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_triggerauthentications.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.json",
}


class UniqueKeyLoader(yaml.SafeLoader):
    """Refuses a mapping with a key twice, as the API server's strict decoding does."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        twice = {key for key in keys if keys.count(key) > 1}
        if twice:
            raise yaml.constructor.ConstructorError(
                None, None, f"keys twice: {twice}", node.start_mark
            )
        return super().construct_mapping(node, deep=deep)


@cache
def helm() -> str:
    """The helm binary: ``.stepbus/bin/helm`` (``make helm``), else PATH."""
    built = REPO / ".stepbus" / "bin" / "helm"
    found = str(built) if built.exists() else shutil.which("helm")
    if found is None:
        message = "helm not found: run `make helm` (builds it into .stepbus/bin)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, timeout=120, check=False)


def render(values: dict[str, Any] | None = None, *files: Path, ok: bool = True) -> list[Any]:
    """``helm template`` of the chart with value files and a values document; its manifests."""
    # rendered for the oldest Kubernetes the chart supports (its kubeVersion floor)
    args = ["template", "rel", str(CHART), "--namespace", "stepbus", "--kube-version", "1.29.0"]
    for file in files:
        args += ["--values", str(file)]
    with tempfile.NamedTemporaryFile("w", suffix=".json") as extra:
        if values is not None:  # a file: --set cannot express every value
            extra.write(json.dumps(values))
            extra.flush()
            args += ["--values", extra.name]
        result = run_helm(*args)
    if not ok:
        assert result.returncode != 0, "helm template should have refused these values"
        return [result.stderr]
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.load_all(result.stdout, Loader=UniqueKeyLoader) if doc]


@cache
def default_docs() -> tuple[Any, ...]:
    return tuple(render())


@cache
def production_docs() -> tuple[Any, ...]:
    return tuple(render(None, PRODUCTION))


def everything_set() -> dict[str, Any]:
    """Values over the production file that set every configurable setting of every service."""
    services: dict[str, Any] = {}
    for service in SERVICES:
        settings = SERVICES[service]
        config: dict[str, Any] = {}
        for field, env in config_fields(service).items():
            default = settings.model_fields[field].default
            config[env] = default if isinstance(default, bool | int | float) else "x"
        services[service] = {"config": config}
    services["critic"]["secretEnv"] = {"STEPBUS_CRITIC_API_KEY": {"secret": "c", "key": "k"}}
    services["memory"]["config"]["STEPBUS_EMBEDDINGS"] = "openai"
    services["critic"]["config"]["STEPBUS_CRITIC_RESPONSE_FORMAT"] = "prompt"
    services["gateway"]["config"]["STEPBUS_GATEWAY_SHUTDOWN_TIMEOUT_SECONDS"] = 10
    return {"services": services, "gateway": {"apiKeys": {"envKey": "plain"}}}


def kinds(docs: Any, kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def component(doc: dict[str, Any]) -> str:
    return str(doc["metadata"]["labels"]["app.kubernetes.io/component"])


def workloads(docs: Any) -> dict[str, dict[str, Any]]:
    return {component(doc): doc for doc in docs if doc["kind"] in ("Deployment", "StatefulSet")}


def container_env(docs: Any, service: str) -> dict[str, Any]:
    """Every variable the service's container gets: ConfigMap keys and its own env entries."""
    pod = workloads(docs)[service]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    found: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        (config,) = [d for d in kinds(docs, "ConfigMap") if d["metadata"]["name"] == name]
        found.update(config["data"])
    for entry in container.get("env", []):
        found[entry["name"]] = entry.get("value", entry.get("valueFrom"))
    return found


# -- the chart's files agree with the code -------------------------------------------------


def test_the_alerts_and_the_dashboard_are_the_observability_files_byte_for_byte() -> None:
    observability = REPO / "deploy" / "observability"
    assert (CHART / "files" / "alerts.yml").read_bytes() == (
        observability / "alerts.yml"
    ).read_bytes(), "copy deploy/observability/alerts.yml to helm/stepbus/files/"
    assert (CHART / "files" / "stepbus.json").read_bytes() == (
        observability / "grafana" / "dashboards" / "stepbus.json"
    ).read_bytes(), "copy the Grafana dashboard to helm/stepbus/files/"


def test_the_derived_files_are_what_the_code_says_today() -> None:
    hint = "run `uv run --frozen python -m tests.helm_chart`"
    assert json.loads((CHART / "files" / "topics.json").read_text()) == topics_catalog(), hint
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema == schema_with_configs(copy.deepcopy(schema)), hint
    readme = (CHART / "README.md").read_text()
    assert readme == readme_with_tables(readme), hint


def test_the_chart_knows_each_services_module_port_and_consumer_groups() -> None:
    text = (CHART / "templates" / "_helpers.tpl").read_text()
    body = text.split('{{- define "stepbus.catalog" -}}', 1)[1].split("{{- end }}", 1)[0]
    helpers = yaml.safe_load(body)
    for service, settings in SERVICES.items():
        fixed = helpers[service]
        assert fixed["module"] == MODULES[service]
        assert fixed["port"] == PORTS[service]
        assert fixed["prefix"] == settings.model_config.get("env_prefix")
        assert set(fixed["uses"]) == USES[service]
        if service != "gateway":
            assert fixed["port"] == settings.model_fields["metrics_port"].default
            assert fixed["group"] == settings.model_fields["group_id"].default
        scaled_on = {topic for group in fixed["groups"] for topic in group["topics"]}
        assert scaled_on == consumed_topics(service), f"{service}: KEDA triggers vs app.py"
    assert SERVICES["gateway"].model_fields["port"].default == PORTS["gateway"]


def consumed_topics(service: str) -> set[str]:
    """The catalog suffixes a service's processors consume, read from its app.py routes."""
    if service == "gateway":
        return set()  # its results feed is one group per replica: nothing to scale on
    module = MODULES[service]
    app = REPO / "services" / service / "src" / module / "app.py"
    attrs = re.findall(r"\btopics\.(\w+): (?:Route\(|task_route\b)", app.read_text())
    assert attrs, f"no routes found in {app}"
    return {getattr(Topics(""), attr) for attr in attrs}


def schema_objects(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            yield path, node
        for key, value in node.items():
            yield from schema_objects(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from schema_objects(value, f"{path}[{index}]")


def test_the_values_schema_refuses_unknown_keys_everywhere() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    for path, node in schema_objects(schema):
        assert "additionalProperties" in node, f"{path} accepts any key"
        if "properties" in node:
            assert node["additionalProperties"] is False, path
        elif path == ".properties.global":
            continue  # a parent chart's shared values, passed when this chart is a dependency
        elif node["additionalProperties"] is True:
            # Kubernetes objects passed through (tolerations, affinity, EnvVars, volumes,
            # NetworkPolicyPeers) are validated where they are rendered, strictly, below.
            assert node["description"].startswith("A Kubernetes API object"), path


def value_paths(node: Any, path: str = "") -> Iterator[str]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from value_paths(value, f"{path}.{key}" if path else key)
    else:
        yield path


def documented_as(path: str) -> str:
    """How the README names a value: one row for what every service or dependency shares."""
    for service in SERVICES:
        path = path.replace(f"services.{service}.", "services.<name>.")
    for dep in ("kafka", "redis", "qdrant", "collector", "llm", "dns"):
        path = path.replace(f"networkPolicy.egress.{dep}.", "networkPolicy.egress.<dep>.")
    if ".resources." in path:  # a Kubernetes ResourceRequirements, one value
        path = path.split(".resources.")[0] + ".resources"
    return path


def test_the_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    # every key the schema allows for a service, not only those values.yaml sets
    service_keys = schema["properties"]["services"]["properties"]["planner"]["properties"]
    paths = {documented_as(p) for p in value_paths(values)}
    paths |= {f"services.<name>.{key}" for key in service_keys if key != "autoscaling"}
    paths |= {f"services.<name>.autoscaling.{key}" for key in
              service_keys["autoscaling"]["properties"]}  # fmt: skip
    missing = sorted(path for path in paths if f"| `{path}` |" not in readme)
    assert not missing, f"README.md does not document {missing}"


# -- helm lint and template -----------------------------------------------------------------


@pytest.mark.parametrize("values", [None, PRODUCTION], ids=["defaults", "production"])
def test_helm_lint_strict_passes(values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)]
    if values is not None:
        args += ["--values", str(values)]
    result = run_helm(*args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_typo_in_the_values_fails_the_install() -> None:
    (error,) = render({"services": {"planner": {"replica": 3}}}, ok=False)
    assert "replica" in error
    (error,) = render(
        {"services": {"planner": {"config": {"STEPBUS_PLANER_MODEL": "x"}}}}, ok=False
    )
    assert "STEPBUS_PLANER_MODEL" in error
    (error,) = render({"topics": {"partitions": {"taks": 12}}}, ok=False)
    assert "taks" in error


def validate_offline(docs: Any) -> None:
    for doc in docs:
        crd = CRDS.get((doc["apiVersion"], doc["kind"]))
        if crd is not None:
            schema = json.loads((CRD_SCHEMAS / crd).read_text())
            jsonschema.validate(doc, schema, cls=jsonschema.Draft7Validator)
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                name = f"{doc['kind']}/{doc['metadata']['name']}"
                pytest.fail(f"{name} is invalid on Kubernetes {version}: {exc.message}")


@pytest.mark.parametrize("which", ["defaults", "production", "everything"])
def test_every_rendered_manifest_validates_offline(which: str) -> None:
    docs = {
        "defaults": default_docs,
        "production": production_docs,
        "everything": lambda: render(everything_set(), PRODUCTION),
    }[which]()
    assert docs
    validate_offline(docs)
    if which == "production":
        rendered = {(d["apiVersion"], d["kind"]) for d in docs}
        assert rendered >= set(CRDS), "production values render every CRD object"


# -- what the pods are -------------------------------------------------------------------------


def pod_specs(docs: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


@pytest.mark.parametrize("docs", [default_docs, production_docs], ids=["defaults", "production"])
def test_every_pod_runs_locked_down(docs: Any) -> None:
    specs = list(pod_specs(docs()))
    assert len(specs) == len(SERVICES) + 1  # the services and the topic job
    for name, pod in specs:
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, name
        assert context["runAsUser"] == 10001, name
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            own = container["securityContext"]
            assert own["allowPrivilegeEscalation"] is False, name
            assert own["readOnlyRootFilesystem"] is True, name
            assert own["capabilities"] == {"drop": ["ALL"]}, name
            assert own["runAsNonRoot"] is True, name
            assert own["seccompProfile"] == {"type": "RuntimeDefault"}, name
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts, f"{name}: /tmp must be writable (an emptyDir)"
    accounts = kinds(docs(), "ServiceAccount")
    assert accounts
    assert all(a["automountServiceAccountToken"] is False for a in accounts)


@pytest.mark.parametrize("docs", [default_docs, production_docs], ids=["defaults", "production"])
def test_each_service_runs_its_module_with_probes_on_its_port(docs: Any) -> None:
    found = workloads(docs())
    assert set(found) == set(SERVICES)
    for service, workload in found.items():
        pod = workload["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"] == ["python", "-m", MODULES[service]]
        (port,) = container["ports"]
        assert port["containerPort"] == PORTS[service]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert container["resources"]["requests"], service
        assert pod["topologySpreadConstraints"], service
        env = container_env(docs(), service)
        bind = "STEPBUS_GATEWAY_HOST" if service == "gateway" else "METRICS_HOST"
        assert any(k.endswith(bind) and v == "0.0.0.0" for k, v in env.items()), service
        group_id = {e["name"]: e for e in container["env"]}["STEPBUS_GROUP_INSTANCE_ID"]
        assert group_id["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_termination_grace_outlasts_the_drain() -> None:
    for docs in (default_docs(), production_docs()):
        for service, workload in workloads(docs).items():
            grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            if service == "gateway":
                drain = int(container_env(docs, service).get(
                    "STEPBUS_GATEWAY_SHUTDOWN_TIMEOUT_SECONDS",
                    SERVICES["gateway"].model_fields["shutdown_timeout_seconds"].default,
                ))  # fmt: skip
            else:
                drain = 5 + 1  # a revoked partition's grace, then the last commit
            assert grace > drain, service
    (error,) = render({"defaults": {"terminationGracePeriodSeconds": 8}}, ok=False)
    assert "terminationGracePeriodSeconds" in error


def test_every_setting_each_service_reads_is_settable_through_the_chart() -> None:
    one = {"autoscaling": {"enabled": False}, "replicas": 1}
    embedded = {"qdrant": {"url": ""}, "services": {"memory": one}}
    variants = [render(everything_set(), PRODUCTION), render(embedded, PRODUCTION)]
    for service in SERVICES:
        env = {name for docs in variants for name in container_env(docs, service)}
        unset = {
            field: names
            for field, names in service_env(service).items()
            if not any(name in env for name in names)
        }
        assert not unset, f"{service}: the chart cannot set {unset}"
    (error,) = render({"qdrant": {"url": ""}, "defaults": {"replicas": 2}}, ok=False)
    assert "embedded mode" in error


def test_secrets_come_from_existing_secrets_by_name() -> None:
    docs = production_docs()
    assert not kinds(docs, "Secret"), "the chart makes no Secret; it names existing ones"
    refs = {
        service: {
            name: value["secretKeyRef"]["name"]
            for name, value in container_env(docs, service).items()
            if isinstance(value, dict) and "secretKeyRef" in value
        }
        for service in SERVICES
    }
    for service in ("planner", "critic"):
        assert refs[service]["OPENAI_API_KEY"] == "stepbus-openai"
    assert "OPENAI_API_KEY" not in refs["memory"], "onnx embeddings need no LLM key"
    assert refs["memory"]["QDRANT_API_KEY"] == "stepbus-qdrant"
    assert refs["gateway"]["REDIS_URL"] == "stepbus-redis"
    assert refs["planner"]["STEPBUS_KAFKA_SASL_PASSWORD"] == "kafka-sasl"
    volumes = {
        service: {
            v["secret"]["secretName"]
            for v in workload["spec"]["template"]["spec"]["volumes"]
            if "secret" in v
        }
        for service, workload in workloads(docs).items()
    }
    assert "stepbus-api-keys" in volumes["gateway"]
    assert "stepbus-tool-policy" in volumes["tool-executor"]
    assert container_env(docs, "tool-executor")["STEPBUS_POLICY_FILE"].startswith("/etc/")
    assert container_env(docs, "gateway")["STEPBUS_API_KEYS_FILE"].startswith("/etc/")
    for config in kinds(docs, "ConfigMap"):
        text = json.dumps(config.get("data", {})).lower()
        assert "password" not in text and 'api_key"' not in text, config["metadata"]["name"]


# -- network -----------------------------------------------------------------------------------


def policies(docs: Any) -> dict[str, dict[str, Any]]:
    return {component(d): d for d in kinds(docs, "NetworkPolicy")}


def egress_ports(policy: dict[str, Any]) -> set[int]:
    return {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}


def test_each_service_reaches_only_what_it_uses() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["networkPolicy"]["egress"]
    for docs, memory_llm in (
        (default_docs(), False),
        (render({"services": {"memory": {"config": {"STEPBUS_EMBEDDINGS": "openai"}}}}), True),
    ):
        found = policies(docs)
        assert set(found) == {*SERVICES, "topics"}
        for service in SERVICES:
            uses = USES[service] | ({"llm"} if service == "memory" and memory_llm else set())
            policy = found[service]
            assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            assert set(policy["metadata"]["annotations"]["stepbus.dev/egress"].split(",")) == uses
            expected = {port for dep in uses for port in values[dep]["ports"]}
            assert egress_ports(policy) == expected, service
        assert egress_ports(found["topics"]) == {9092, 53}


def test_only_the_gateway_takes_traffic_the_workers_only_scrapes() -> None:
    for docs in (default_docs(), production_docs()):
        found = policies(docs)
        (gateway,) = found["gateway"]["spec"]["ingress"]
        assert gateway["ports"] == [{"port": "http", "protocol": "TCP"}]
        for service in WORKERS:
            (rule,) = found[service]["spec"]["ingress"]
            assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
            assert rule["from"], f"{service} must take scrapes from Prometheus only"
        assert found["topics"]["spec"]["ingress"] == []
    prod = policies(production_docs())
    assert prod["gateway"]["spec"]["ingress"][0]["from"][0]["namespaceSelector"]
    assert all(rule.get("to") for rule in prod["planner"]["spec"]["egress"])


def test_the_gateway_has_a_service_and_in_production_an_ingress() -> None:
    (ingress,) = kinds(production_docs(), "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    services = {s["metadata"]["name"]: s for s in kinds(production_docs(), "Service")}
    assert services[backend["name"]]["spec"]["ports"][0]["name"] == backend["port"]["name"]
    assert not kinds(default_docs(), "Ingress")


def test_every_service_has_a_disruption_budget() -> None:
    for docs in (default_docs(), production_docs()):
        budgets = {component(d) for d in kinds(docs, "PodDisruptionBudget")}
        assert budgets == set(SERVICES)


# -- topics and autoscaling ----------------------------------------------------------------


def partition_args(job: dict[str, Any]) -> dict[str, int]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    found = {}
    for arg in container.get("args", []):
        suffix, _, count = arg.removeprefix("--partitions=").partition("=")
        found[suffix] = int(count)
    return found


def test_the_topic_job_creates_the_whole_catalog_before_the_services() -> None:
    production = yaml.safe_load(PRODUCTION.read_text())
    for docs, prefix in ((default_docs(), "stepbus."), (production_docs(), "stepbus.")):
        (job,) = kinds(docs, "Job")
        hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
        assert set(hooks) == {"pre-install", "pre-upgrade"}
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["python", "-m", "stepbus_runtime.create_topics"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["STEPBUS_TOPIC_PREFIX"] == prefix
        assert env["KAFKA_BOOTSTRAP_SERVERS"]
        # what the job is asked for is what the module accepts: the catalog, raised as asked
        desired = dict(desired_specs(Topics(prefix), partition_args(job)))
        assert set(desired) == {name for name, _ in Topics(prefix).specs()}
    (job,) = kinds(production_docs(), "Job")
    assert partition_args(job) == production["topics"]["partitions"]
    assert {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0][
        "env"]}["STEPBUS_TOPIC_REPLICATION_FACTOR"] == "3"  # fmt: skip


def test_co_partitioned_topics_cannot_be_split_by_the_values() -> None:
    for group in CO_PARTITIONED:
        (error,) = render({"topics": {"partitions": {group[0]: 24}}}, ok=False)
        assert "equal partitions" in error


def test_workers_scale_on_their_consumer_lag_never_past_their_partitions() -> None:
    docs = production_docs()
    production = yaml.safe_load(PRODUCTION.read_text())
    prefix = production["topics"]["prefix"]
    counts = {s: production["topics"]["partitions"].get(s, spec["partitions"])
              for s, spec in topics_catalog().items()}  # fmt: skip
    scaled = {component(d): d for d in kinds(docs, "ScaledObject")}
    assert set(scaled) == set(WORKERS)
    for service, scaler in scaled.items():
        spec = scaler["spec"]
        target = workloads(docs)[service]
        assert spec["scaleTargetRef"]["name"] == target["metadata"]["name"]
        assert spec["scaleTargetRef"]["kind"] == target["kind"]
        assert "replicas" not in target["spec"], "the scaler owns the replica count"
        group = SERVICES[service].model_fields["group_id"].default
        for trigger in spec["triggers"]:
            meta = trigger["metadata"]
            assert trigger["type"] == "kafka"
            assert meta["consumerGroup"] in (f"{prefix}{group}", f"{prefix}{group}-store")
            topic = meta["topic"].removeprefix(prefix)
            assert spec["maxReplicaCount"] <= counts[topic], f"{service} on {topic}"
            assert int(meta["lagThreshold"]) > 0
            assert meta["sasl"] == "scram_sha512" and meta["tls"] == "enable"
            assert trigger["authenticationRef"]["name"]
    topics = {t["metadata"]["topic"] for t in scaled["planner"]["spec"]["triggers"]}
    assert topics == {f"{prefix}tasks", f"{prefix}planner.history"}
    (hpa,) = kinds(docs, "HorizontalPodAutoscaler")
    assert component(hpa) == "gateway"
    (error,) = render(
        {"services": {"critic": {"autoscaling": {"maxReplicas": 7}}}}, PRODUCTION, ok=False
    )
    assert "partitions" in error


def test_without_keda_workers_scale_on_cpu() -> None:
    docs = render({"keda": {"enabled": False}}, PRODUCTION)
    assert not kinds(docs, "ScaledObject")
    hpas = {component(d): d for d in kinds(docs, "HorizontalPodAutoscaler")}
    assert set(hpas) == set(SERVICES)
    metric = hpas["planner"]["spec"]["metrics"][0]["resource"]
    assert metric["name"] == "cpu"


def test_a_statefulset_gives_stable_names_behind_a_headless_service() -> None:
    docs = render({"defaults": {"kind": "StatefulSet"}})
    services = {s["metadata"]["name"]: s for s in kinds(docs, "Service")}
    for name, workload in workloads(docs).items():
        assert workload["kind"] == "StatefulSet", name
        if name != "gateway":
            assert services[workload["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"


# -- observability -----------------------------------------------------------------------------


def test_the_prometheus_rule_carries_exactly_the_alert_groups() -> None:
    (rule,) = kinds(production_docs(), "PrometheusRule")
    alerts = yaml.safe_load((REPO / "deploy" / "observability" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    assert not kinds(default_docs(), "PrometheusRule")


def test_the_service_monitor_names_each_job_like_its_service() -> None:
    (monitor,) = kinds(production_docs(), "ServiceMonitor")
    label = monitor["spec"]["jobLabel"]
    ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    for service in kinds(production_docs(), "Service"):
        assert service["metadata"]["labels"][label] in SERVICES
        assert {p["name"] for p in service["spec"]["ports"]} & ports


def test_the_dashboard_configmap_is_picked_up_by_the_grafana_sidecar() -> None:
    (dashboard,) = [d for d in kinds(default_docs(), "ConfigMap") if "dashboard" in
                    d["metadata"]["name"]]  # fmt: skip
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    source = REPO / "deploy" / "observability" / "grafana" / "dashboards" / "stepbus.json"
    assert json.loads(dashboard["data"]["stepbus.json"]) == json.loads(source.read_text())


def test_managed_settings_are_only_fields_that_exist() -> None:
    for service, fields in MANAGED.items():
        assert set(fields) <= set(SERVICES[service].model_fields), service
