"""deploy/kafka/acls.sh grants what docs/security.md documents, for every catalog topic.

The script's ``--dry-run`` prints one shell-quoted kafka-acls command per line; these tests
parse them into ACL bindings and compare them with the two tables of the security page and
with the topic catalog. The bindings were also applied to a real Kafka 4.4 broker and probed
principal by principal (``deploy/kafka/authz-broker.sh check``, about a minute: too slow for
this suite).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from stepbus_contracts import Topics
from stepbus_critic.settings import CriticSettings
from stepbus_gateway.settings import GatewaySettings
from stepbus_memory.settings import MemorySettings
from stepbus_planner.settings import PlannerSettings
from stepbus_tool_executor.settings import ToolExecutorSettings

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "kafka" / "acls.sh"
DOC = REPO / "docs" / "security.md"

ROLES = ("planner", "tool-executor", "gateway", "memory", "critic", "upstream", "operator")
DESCRIBE_ALL = ("planner", "tool-executor", "gateway", "memory", "critic", "operator")
"""The roles that run ``ensure_topics`` and so describe every catalog topic (security.md)."""

Binding = tuple[str, str, str, str, str]
"""(principal, resource type, name, pattern type, operation)."""


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``acls.sh --dry-run`` with ``args``; the ACL tool named explicitly (none is needed)."""
    return subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--kafka-acls", "kafka-acls.sh", *args],
        capture_output=True,
        text=True,
        check=check,
        env={"PATH": "/usr/bin:/bin", "STEPBUS_HOME": "/nonexistent"},
    )


def bindings(output: str) -> set[Binding]:
    """The ACLs the printed kafka-acls commands add (or remove)."""
    found: set[Binding] = set()
    for line in output.splitlines():
        argv = shlex.split(line)
        assert argv[0] == "kafka-acls.sh", line
        principal = argv[argv.index("--allow-principal") + 1]
        pattern = argv[argv.index("--resource-pattern-type") + 1].upper()
        operation = argv[argv.index("--operation") + 1].upper()
        for flag, kind in (("--topic", "TOPIC"), ("--group", "GROUP")):
            for i, arg in enumerate(argv):
                if arg == flag:
                    found.add((principal, kind, argv[i + 1], pattern, operation))
        assert "--cluster" not in argv, line
    return found


def _rows(header: str) -> list[list[str]]:
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    return rows


def documented_topics() -> dict[str, dict[str, str]]:
    """Access per topic suffix and role, from the topic-by-principal table: "R", "W", "RW", ""."""
    return {
        row[0].removeprefix("stepbus."): {
            role: "".join(op for op in "RW" if op in cell)
            for role, cell in zip(ROLES, row[1 : 1 + len(ROLES)], strict=True)
        }
        for row in _rows(f"| topic | {' | '.join(ROLES)} |")
    }


def documented_groups() -> list[tuple[str, str, str]]:
    """(group suffix after the prefix, pattern, role), from the consumer-group table."""
    return [
        (row[0].removeprefix("stepbus."), row[1], row[2])
        for row in _rows("| consumer group | pattern | principal |")
    ]


def documented_bindings(prefix: str, principals: dict[str, str]) -> set[Binding]:
    """Every ACL the security page says the script grants."""
    expected: set[Binding] = set()
    for suffix, per_role in documented_topics().items():
        for role, ops in per_role.items():
            for op, name in (("R", "READ"), ("W", "WRITE")):
                if op in ops:
                    expected.add((principals[role], "TOPIC", prefix + suffix, "LITERAL", name))
            if role in DESCRIBE_ALL:
                expected.add((principals[role], "TOPIC", prefix + suffix, "LITERAL", "DESCRIBE"))
    for suffix, pattern, role in documented_groups():
        expected.add((principals[role], "GROUP", prefix + suffix, pattern.upper(), "READ"))
    return expected


DEFAULT_PRINCIPALS = {role: f"User:stepbus-{role}" for role in ROLES}


def test_every_catalog_topic_is_documented_and_granted() -> None:
    topics = Topics()
    catalog = {spec.suffix for _, spec in topics.specs()}
    assert set(documented_topics()) == catalog
    granted = bindings(run("--bootstrap-server", "b:9092").stdout)
    assert {name for _, kind, name, _, _ in granted if kind == "TOPIC"} == {
        topics.name(suffix) for suffix in catalog
    }


def test_each_principal_gets_exactly_the_documented_operations() -> None:
    actual = bindings(run("--bootstrap-server", "b:9092").stdout)
    assert actual == documented_bindings("stepbus.", DEFAULT_PRINCIPALS)


def test_the_table_says_who_writes_the_journal_and_the_results() -> None:
    """The invariants the trust model rests on, stated once more against the table."""
    table = documented_topics()
    writers = {s: {r for r, ops in roles.items() if "W" in ops} for s, roles in table.items()}
    assert writers["planner.history"] == {
        "planner",
        "tool-executor",
        "memory",
        "critic",
        "operator",
    }
    assert writers["results"] == {"planner", "operator"}
    assert writers["planner.snapshots"] == {"planner"}
    assert writers["tool.ledger"] == {"tool-executor"}
    assert writers["tool.calls"] == {"planner", "operator"}
    assert writers["memory.requests"] == {"planner", "tool-executor", "operator"}
    assert writers["memory.items"] == writers["memory.sessions"] == {"memory"}
    assert writers["critic.requests"] == {"planner", "operator"}
    assert "upstream" not in writers["payloads"]
    readers = {s: {r for r, ops in roles.items() if "R" in ops} for s, roles in table.items()}
    assert readers["tasks"] == {"planner", "memory"}
    assert readers["memory.requests"] == {"memory"}
    assert readers["critic.requests"] == {"critic"}
    critic = {s for s, roles in table.items() if roles["critic"]}
    assert critic == {"critic.requests", "planner.history", "dlq", "payloads"}


def test_groups_match_the_services_settings() -> None:
    groups: dict[str, tuple[str, str]] = {}
    for suffix, pattern, role in documented_groups():
        groups.setdefault(role, (suffix, pattern))  # a role's first group: its main one
    prefix = "stepbus."
    assert prefix + groups["planner"][0] == f"{prefix}{PlannerSettings().group_id}"
    assert prefix + groups["tool-executor"][0] == f"{prefix}{ToolExecutorSettings().group_id}"
    assert prefix + groups["memory"][0] == f"{prefix}{MemorySettings().group_id}"
    assert groups["critic"] == (CriticSettings().group_id, "literal")
    memory_groups = [suffix for suffix, _, role in documented_groups() if role == "memory"]
    assert memory_groups == [MemorySettings().group_id, f"{MemorySettings().group_id}-store"]
    gateway = GatewaySettings(instance_id="replica-1").feed_group_id
    assert groups["gateway"] == ("gateway-", "prefixed")
    assert gateway.startswith(prefix + groups["gateway"][0])


def test_prefix_principals_and_groups_are_configurable() -> None:
    principals = {role: f"User:{role}.prod" for role in ROLES}
    output = run(
        "--bootstrap-server",
        "b:9092",
        "--prefix",
        "prod.",
        "--planner-group-id",
        "planner-blue",
        "--tool-executor-group-id",
        "executor-blue",
        "--memory-group-id",
        "memory-blue",
        "--critic-group-id",
        "critic-blue",
        "--upstream-group-prefix",
        "billing-",
        *[arg for role, principal in principals.items() for arg in (f"--{role}", principal)],
    ).stdout
    expected = documented_bindings("prod.", principals)
    renamed = {
        "prod.stepbus-planner": "prod.planner-blue",
        "prod.stepbus-tool-executor": "prod.executor-blue",
        "prod.stepbus-memory": "prod.memory-blue",
        "prod.stepbus-memory-store": "prod.memory-blue-store",
        "prod.stepbus-critic": "prod.critic-blue",
        "prod.upstream-": "billing-",
    }
    expected = {
        (p, k, renamed.get(n, n) if k == "GROUP" else n, t, o) for p, k, n, t, o in expected
    }
    assert bindings(output) == expected


def test_no_create_unless_asked_and_then_only_under_the_prefix() -> None:
    plain = bindings(run("--bootstrap-server", "b:9092").stdout)
    assert not {b for b in plain if b[4] == "CREATE"}
    created = bindings(run("--bootstrap-server", "b:9092", "--allow-create").stdout) - plain
    assert created == {
        (DEFAULT_PRINCIPALS[role], "TOPIC", "stepbus.", "PREFIXED", "CREATE")
        for role in DESCRIBE_ALL
    }


def test_remove_undoes_exactly_what_add_does_create_included() -> None:
    added = run("--bootstrap-server", "b:9092", "--allow-create").stdout.splitlines()
    removed = run("--bootstrap-server", "b:9092", "--remove").stdout.splitlines()
    assert all(" --remove --force " in line for line in removed)
    assert [line.replace(" --remove --force ", " --add ") for line in removed] == added


def test_list_names_every_principal_and_passes_the_admin_config() -> None:
    output = run(
        "--bootstrap-server", "b:9092", "--command-config", "/etc/admin.properties", "--list"
    ).stdout
    argv = shlex.split(output)
    assert argv[:6] == [
        "kafka-acls.sh",
        "--bootstrap-server",
        "b:9092",
        "--command-config",
        "/etc/admin.properties",
        "--list",
    ]
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--principal"] == list(
        DEFAULT_PRINCIPALS.values()
    )


def test_only_and_empty_principals_select_roles() -> None:
    only = bindings(run("--bootstrap-server", "b:9092", "--only", "upstream,operator").stdout)
    assert {b[0] for b in only} == {"User:stepbus-upstream", "User:stepbus-operator"}
    without = bindings(run("--bootstrap-server", "b:9092", "--upstream", "").stdout)
    assert "User:stepbus-upstream" not in {b[0] for b in without}
    assert len({b[0] for b in without}) == len(ROLES) - 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "judge"], "unknown role 'judge'"),
        (["--planner", "stepbus-planner"], "not of the form Type:name"),
        (["--prefix", "a b"], "characters Kafka topic names cannot hold"),
        (["--prefix", "", "--allow-create"], "needs a non-empty prefix"),
        (["--bogus"], "unknown argument"),
        (["--prefix"], "needs a value"),
    ],
)
def test_bad_arguments_fail_with_a_reason(args: list[str], message: str) -> None:
    result = run("--bootstrap-server", "b:9092", *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert result.stdout == ""


def test_bootstrap_server_is_required() -> None:
    result = run(check=False)
    assert result.returncode != 0
    assert "--bootstrap-server is required" in result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_scripts_are_shellcheck_clean() -> None:
    scripts = [str(SCRIPT), str(SCRIPT.with_name("authz-broker.sh"))]
    result = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
