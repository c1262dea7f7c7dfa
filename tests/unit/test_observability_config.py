"""The observability files under deploy/observability are valid and agree with each other.

promtool checks the Prometheus config and the alert rules, runs the rules' unit tests and parses
every dashboard query. The rest is checked here for the mistakes that make a stack load but show
nothing: a collector pipeline naming an undefined component, a panel or an alert querying a
metric (or a label) the services do not export, a data source uid that is not provisioned, a
runbook link to a heading that does not exist.

promtool comes from ``deploy/observability/promtool.sh --no-install`` (PATH, then
``.stepbus/bin``). Without it these tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
OBSERVABILITY = REPO / "deploy" / "observability"
PROMETHEUS_CONFIG = OBSERVABILITY / "prometheus.yml"
ALERTS = OBSERVABILITY / "alerts.yml"
ALERT_TESTS = OBSERVABILITY / "alerts.test.yml"
COLLECTOR = OBSERVABILITY / "otel-collector.yaml"
DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "stepbus.json"
DATASOURCES = OBSERVABILITY / "grafana" / "provisioning" / "datasources" / "datasources.yaml"
DASHBOARD_PROVIDER = OBSERVABILITY / "grafana" / "provisioning" / "dashboards" / "stepbus.yaml"
DOC = REPO / "docs" / "observability.md"

SERVICES = ("planner", "tool-executor", "memory", "critic", "gateway")

# Every metric the services export: name -> (type, labels). The services own the metrics; this
# table is what the dashboard, the alerts and docs/observability.md are checked against.
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "stepbus_records_total": ("counter", ("service", "topic", "type", "outcome")),
    "stepbus_record_seconds": ("histogram", ("service", "topic")),
    "stepbus_in_flight_records": ("gauge", ("service",)),
    "stepbus_dlq_records_total": ("counter", ("service", "topic")),
    "stepbus_records_dropped_total": ("counter", ("service", "topic", "reason")),
    "stepbus_consumer_lag_records": ("gauge", ("service", "topic", "partition")),
    "stepbus_trace_spans_exported_total": ("counter", ("service",)),
    "stepbus_trace_spans_dropped_total": ("counter", ("service", "reason")),
    "stepbus_tasks_accepted_total": ("counter", ("mode",)),
    "stepbus_tasks_finished_total": ("counter", ("outcome", "reason", "mode")),
    "stepbus_task_duration_seconds": ("histogram", ("outcome", "mode")),
    "stepbus_step_duration_seconds": ("histogram", ("mode",)),
    "stepbus_tasks_in_flight": ("gauge", ()),
    "stepbus_replayed_steps_total": ("counter", ("service", "mode")),
    "stepbus_approvals_waiting": ("gauge", ()),
    "stepbus_approval_oldest_wait_seconds": ("gauge", ()),
    "stepbus_model_call_seconds": ("histogram", ("service", "model", "outcome")),
    "stepbus_model_tokens_total": ("counter", ("service", "model", "kind", "mode")),
    "stepbus_tool_calls_total": ("counter", ("tool", "outcome")),
    "stepbus_tool_call_seconds": ("histogram", ("tool",)),
    "stepbus_policy_decisions_total": ("counter", ("tool", "decision")),
    "stepbus_tool_outputs_flagged_total": ("counter", ("tool", "kind")),
    "stepbus_mcp_server_up": ("gauge", ("server",)),
    "stepbus_memory_recalls_total": ("counter", ("outcome",)),
    "stepbus_memory_recall_hits": ("histogram", ()),
    "stepbus_memory_recall_seconds": ("histogram", ()),
    "stepbus_critiques_total": ("counter", ("kind", "outcome")),
    "stepbus_critic_score": ("histogram", ()),
    "stepbus_critic_judge_seconds": ("histogram", ()),
    "stepbus_gateway_sse_streams": ("gauge", ()),
}
TARGET_LABELS = ("job", "instance")  # added by Prometheus to every scraped series


def _series() -> dict[str, set[str]]:
    """Every series name a query may use, with the labels it carries."""
    series: dict[str, set[str]] = {}
    for name, (kind, labels) in METRICS.items():
        label_set = {*labels, *TARGET_LABELS}
        if kind == "histogram":
            series[f"{name}_bucket"] = label_set | {"le"}
            series[f"{name}_sum"] = label_set
            series[f"{name}_count"] = label_set
        else:
            series[name] = label_set
    return series


SERIES = _series()
ALERT_SERIES = {**SERIES, "up": set(TARGET_LABELS)}

EXPECTED_ALERTS = {
    "StepbusServiceDown",
    "StepbusDeadLettersGrowing",
    "StepbusConsumerLagGrowing",
    "StepbusNoProgress",
    "StepbusTaskFailureRateHigh",
    "StepbusTraceExportDropping",
    "StepbusApprovalWaitingTooLong",
    "StepbusModelErrors",
}


# --- PromQL, as far as these checks need it ----------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"(?<![\w:.])([a-zA-Z_:][\w:]*)?\s*\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(\s*\()?")
_KEYWORDS = {
    *("and", "or", "unless", "atan2", "offset", "bool", "inf", "nan"),
    *("by", "without", "on", "ignoring", "group_left", "group_right"),
}


def _without_strings(expr: str) -> str:
    return _STRING.sub('""', expr)


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (not functions, keywords or label names)."""
    bare = _without_strings(expr)
    bare = re.sub(r"\{[^{}]*\}", " ", bare)
    bare = _GROUPING.sub(" ", bare)
    bare = _RANGE.sub(" ", bare)
    return {
        match.group(1)
        for match in _IDENTIFIER.finditer(bare)
        if not match.group(2) and match.group(1).lower() not in _KEYWORDS
    }


def matcher_labels(expr: str) -> Iterator[tuple[str, str]]:
    """(series name, label name) of every label matcher on a named selector."""
    for match in _SELECTOR.finditer(_without_strings(expr)):
        name, body = match.group(1), match.group(2)
        if name and name.lower() not in _KEYWORDS:
            for label in _MATCHER_LABEL.findall(body):
                yield name, label


def test_metric_names_finds_series_and_ignores_the_rest() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, model) (rate(stepbus_model_call_seconds_bucket"
        '{service=~"$service", outcome="ok"}[$__rate_interval]))) / on (model) group_left '
        "sum without (le) (up offset 5m) > bool 1e3 and stepbus_tasks_in_flight"
    )
    assert metric_names(expr) == {
        "stepbus_model_call_seconds_bucket",
        "up",
        "stepbus_tasks_in_flight",
    }
    assert set(matcher_labels(expr)) == {
        ("stepbus_model_call_seconds_bucket", "service"),
        ("stepbus_model_call_seconds_bucket", "outcome"),
    }


def _check_query(expr: str, series: dict[str, set[str]], where: str) -> list[str]:
    problems = []
    names = metric_names(expr)
    if not names:
        problems.append(f"{where}: selects no metric: {expr}")
    problems += [f"{where}: unknown metric {name}" for name in sorted(names - set(series))]
    problems += [
        f"{where}: {name} has no label {label}"
        for name, label in matcher_labels(expr)
        if name in series and label not in series[name]
    ]
    return problems


# --- promtool ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    found = subprocess.run(
        ["bash", str(OBSERVABILITY / "promtool.sh"), "--no-install"],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode == 0 and found.stdout.strip():
        return found.stdout.strip()
    message = (
        "promtool not found (install Debian's `prometheus` package, or run "
        f"deploy/observability/promtool.sh to build it with Go): {found.stderr.strip()}"
    )
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(message)
    pytest.skip(message)


def _run(promtool: str, *args: str | Path) -> None:
    done = subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, f"promtool {' '.join(map(str, args))}:\n{done.stdout}{done.stderr}"


def test_prometheus_config_is_valid(promtool: str) -> None:
    _run(promtool, "check", "config", PROMETHEUS_CONFIG)


def test_alert_rules_are_valid(promtool: str) -> None:
    _run(promtool, "check", "rules", ALERTS)


def test_alert_rules_pass_their_unit_tests(promtool: str) -> None:
    _run(promtool, "test", "rules", ALERT_TESTS)


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, as a recording rule promtool parses."""
    rules = [
        {"record": f"dashboard:panel_{panel['id']}:{target['refId']}", "expr": _filled(target)}
        for panel in _panels(_dashboard())
        for target in panel.get("targets", [])
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _run(promtool, "check", "rules", path)


def _filled(target: dict[str, Any]) -> str:
    expr = re.sub(r"\$__(rate_)?interval\b|\$__range\b", "5m", target["expr"])
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


# --- Prometheus --------------------------------------------------------------------------------


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_prometheus_scrapes_every_service_and_the_collector() -> None:
    config = _yaml(PROMETHEUS_CONFIG)
    targets = {
        job["job_name"]: [t for static in job["static_configs"] for t in static["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets == {
        "planner": ["planner:9101"],
        "tool-executor": ["tool-executor:9102"],
        "memory": ["memory:9103"],
        "critic": ["critic:9104"],
        "gateway": ["gateway:8080"],
        "otel-collector": ["otel-collector:8889"],
    }
    assert config["rule_files"] == ["alerts.yml"]
    for job in config["scrape_configs"]:
        # A `service` target label would rename the services' own `service` label.
        labels = [s.get("labels", {}) for s in job["static_configs"]]
        assert all("service" not in label for label in labels), job["job_name"]
        assert job.get("metrics_path", "/metrics") == "/metrics"


# --- alerts ------------------------------------------------------------------------------------


def _alert_rules() -> list[dict[str, Any]]:
    groups = _yaml(ALERTS)["groups"]
    assert [group["name"] for group in groups] == ["stepbus"]
    return [rule for rule in groups[0]["rules"] if "alert" in rule]


def test_the_alerts_are_the_documented_set() -> None:
    assert {rule["alert"] for rule in _alert_rules()} == EXPECTED_ALERTS


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    for rule in _alert_rules():
        assert rule.get("labels", {}).get("severity") in ("critical", "warning", "info"), rule
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            assert annotations.get(key, "").strip(), f"{rule['alert']} lacks {key}"
        assert annotations["runbook_url"].startswith("docs/observability.md#"), rule["alert"]


def test_alert_expressions_use_exported_metrics_and_labels() -> None:
    problems = [
        problem
        for rule in _alert_rules()
        for problem in _check_query(rule["expr"], ALERT_SERIES, rule["alert"])
    ]
    assert not problems, "\n".join(problems)


def test_service_down_watches_exactly_the_stepbus_jobs() -> None:
    (rule,) = [r for r in _alert_rules() if r["alert"] == "StepbusServiceDown"]
    jobs = re.search(r'job=~"([^"]*)"', rule["expr"])
    assert jobs and set(jobs.group(1).split("|")) == set(SERVICES)


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for test in _yaml(ALERT_TESTS)["tests"]:
        for case in test.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert _yaml(ALERT_TESTS)["rule_files"] == ["alerts.yml"]
    assert EXPECTED_ALERTS - fired == set(), "alerts no test fires"
    assert EXPECTED_ALERTS - quiet == set(), "alerts no test expects quiet"


# --- docs --------------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _doc_sections() -> dict[str, str]:
    """Text of each `## ` section of docs/observability.md, by heading."""
    sections: dict[str, str] = {}
    current = ""
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            sections[current] = ""
        elif current:
            sections[current] += line + "\n"
    return sections


def _table_rows(section: str, first_cell_prefix: str) -> list[list[str]]:
    """The cells of the table rows whose first cell starts with ``first_cell_prefix``."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("|")
    ]
    return [row for row in rows if row[0].startswith(first_cell_prefix)]


def test_every_runbook_link_lands_on_a_heading() -> None:
    anchors = {
        _slug(line.lstrip("#"))
        for line in DOC.read_text().splitlines()
        if re.match(r"#{1,6} ", line)
    }
    for rule in _alert_rules():
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in {DOC.name}"
        assert anchor == _slug(rule["alert"]), f"{rule['alert']} links another alert's runbook"


def test_doc_has_its_sections() -> None:
    assert {"Traces", "Metrics", "Logs", "Alerts", "Runbooks", "Running it locally"} <= set(
        _doc_sections()
    )


def test_doc_metrics_table_matches_the_exported_metrics() -> None:
    documented = {
        row[0].strip("`"): (row[1], tuple(re.findall(r"`(\w+)`", row[2])))
        for row in _table_rows(_doc_sections()["Metrics"], "`stepbus_")
    }
    assert documented == METRICS


def test_doc_alerts_table_lists_every_alert_with_its_severity() -> None:
    rows = _table_rows(_doc_sections()["Alerts"], "`Stepbus")
    documented = {row[0].strip("`"): row[-1] for row in rows}
    expected = {rule["alert"]: rule["labels"]["severity"] for rule in _alert_rules()}
    assert documented == expected


# --- OpenTelemetry Collector -------------------------------------------------------------------


def test_collector_pipelines_use_defined_components() -> None:
    config = _yaml(COLLECTOR)
    service = config["service"]
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    for name, pipeline in service["pipelines"].items():
        assert name.split("/")[0] in ("traces", "metrics", "logs"), name
        assert pipeline["receivers"] and pipeline["exporters"], name
        for kind in used:
            for component in pipeline.get(kind, []):
                assert component in (config.get(kind) or {}), f"{name}: undefined {component}"
                used[kind].add(component)
        # memory_limiter first, so that a full collector refuses data instead of dying.
        assert pipeline["processors"][0] == "memory_limiter", name
    for kind, names in used.items():
        assert set(config.get(kind) or {}) == names, f"{kind} defined but unused"
    assert set(service.get("extensions", [])) == set(config.get("extensions") or {})


def test_collector_listens_and_exports_where_the_stack_expects() -> None:
    config = _yaml(COLLECTOR)
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"
    exporters = config["exporters"]
    pipelines = config["service"]["pipelines"]
    (traces_out,) = pipelines["traces"]["exporters"]
    assert traces_out.split("/")[0] in ("otlp", "otlp_grpc")
    assert exporters[traces_out]["endpoint"] == "jaeger:4317"
    assert exporters[traces_out]["tls"]["insecure"] is True
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    port = exporters["prometheus"]["endpoint"].rsplit(":", 1)[1]
    scraped = _yaml(PROMETHEUS_CONFIG)["scrape_configs"]
    assert f"otel-collector:{port}" in str(scraped)
    assert "health_check" in config["extensions"]


# --- Grafana -----------------------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # the panels of a collapsed row


def _datasource_uids() -> set[str]:
    return {source["uid"] for source in _yaml(DATASOURCES)["datasources"]}


def test_datasources_are_provisioned_with_fixed_uids() -> None:
    sources = {source["uid"]: source for source in _yaml(DATASOURCES)["datasources"]}
    assert sources["prometheus"]["type"] == "prometheus"
    assert sources["prometheus"]["url"] == "http://prometheus:9090"
    assert sources["jaeger"]["type"] == "jaeger"
    assert sources["jaeger"]["url"] == "http://jaeger:16686"
    assert [s["uid"] for s in sources.values() if s.get("isDefault")] == ["prometheus"]


def test_dashboard_provider_reads_the_mounted_dashboards() -> None:
    (provider,) = _yaml(DASHBOARD_PROVIDER)["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dashboard_identity() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "stepbus"
    assert dashboard["title"] == "stepbus"
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36


def test_dashboard_panels_have_unique_ids_and_fit_the_grid() -> None:
    panels = list(_panels(_dashboard()))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells: dict[tuple[int, int], int] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")), panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                other = cells.setdefault((x, y), panel["id"])
                assert other == panel["id"], f"panels {other} and {panel['id']} overlap"


def test_dashboard_queries_use_exported_metrics_and_labels() -> None:
    problems = []
    for panel in _panels(_dashboard()):
        if panel["type"] == "row":
            continue
        targets = panel.get("targets", [])
        if not targets:
            problems.append(f"panel {panel['title']!r} has no targets")
        ref_ids = [target["refId"] for target in targets]
        if len(ref_ids) != len(set(ref_ids)):
            problems.append(f"panel {panel['title']!r}: duplicate refIds")
        for target in targets:
            where = f"panel {panel['title']!r} {target['refId']}"
            problems += _check_query(target.get("expr", ""), SERIES, where)
    assert not problems, "\n".join(problems)


def test_dashboard_shows_every_metric() -> None:
    shown = {
        name
        for panel in _panels(_dashboard())
        for target in panel.get("targets", [])
        for name in metric_names(target["expr"])
    }
    missing = {
        metric
        for metric, (kind, _) in METRICS.items()
        if not (
            {f"{metric}_{s}" for s in ("bucket", "sum", "count")}
            if kind == "histogram"
            else {metric}
        )
        & shown
    }
    assert not missing, f"metrics on no panel: {sorted(missing)}"


def test_dashboard_datasources_resolve() -> None:
    provisioned = _datasource_uids()
    dashboard = _dashboard()
    refs = []
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        refs.append((panel["title"], panel.get("datasource")))
        refs += [(panel["title"], target.get("datasource")) for target in panel["targets"]]
    refs += [(v["name"], v.get("datasource")) for v in dashboard["templating"]["list"]]
    for where, ref in refs:
        assert isinstance(ref, dict), f"{where}: no datasource"
        assert ref["uid"] in provisioned, f"{where}: datasource uid {ref['uid']} not provisioned"
    for annotation in dashboard.get("annotations", {}).get("list", []):
        uid = annotation["datasource"]["uid"]
        assert uid in provisioned or uid == "-- Grafana --", annotation["name"]


def test_dashboard_variables_are_defined() -> None:
    dashboard = _dashboard()
    defined = {variable["name"] for variable in dashboard["templating"]["list"]}
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            used = set(re.findall(r"\$\{?(\w+)", target["expr"])) - {"__rate_interval"}
            assert used <= defined, f"panel {panel['title']!r} uses undefined {used - defined}"
