"""The tool-executor's ABAC policy: the file format, its errors and every kind of condition."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from stepbus_tool_executor.policy import (
    Policy,
    PolicyDecision,
    PolicyError,
    PolicyRequest,
    allow_all,
    load_policy,
    parse_policy,
)

WEDNESDAY = datetime(2025, 3, 5, 10, 30, tzinfo=UTC)
"""Berlin is UTC+1 on this day (summer time starts on 30 March)."""


def call(**changes: Any) -> PolicyRequest:
    """A plain call of the built-in calculator at WEDNESDAY, with ``changes`` applied."""
    base = PolicyRequest(
        tenant="acme",
        roles=frozenset({"user"}),
        tool="calculator",
        server=None,
        risk="low",
        arguments={},
        metadata={},
        flagged=False,
        now=WEDNESDAY,
    )
    return replace(base, **changes)


def policy(*rules: dict[str, Any], **top: Any) -> Policy:
    """A policy of ``rules`` (default deny unless ``top`` says otherwise)."""
    document = {"version": 1, **top, "rules": list(rules)}
    return parse_policy(yaml.safe_dump(document, sort_keys=False), "policy.yaml")


def allows(when: dict[str, Any], request: PolicyRequest) -> bool:
    """Whether a single allow rule with ``when`` matches ``request`` (the default denies)."""
    decision = policy({"name": "r", "effect": "allow", "when": when}).decide(request)
    return decision.rule == "r"


def error(text: str) -> str:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "policy.yaml")
    return str(caught.value)


# --- decisions ----------------------------------------------------------------------------


def test_allow_all_allows_everything_and_is_not_configured() -> None:
    everything = allow_all()
    decision = everything.decide(call(tool="files__delete", server="files", flagged=True))
    assert decision == PolicyDecision(
        "allow", "no-policy", "no policy file: every configured tool is allowed"
    )
    assert not everything.configured
    assert everything.source == "<no policy>"
    assert everything.risk("files__delete", "high") == "high"


def test_a_parsed_policy_is_configured_and_names_its_rules() -> None:
    parsed = policy({"name": "a", "effect": "allow"}, {"name": "b", "effect": "deny"})
    assert parsed.configured
    assert parsed.source == "policy.yaml"
    assert parsed.rule_names == ("a", "b")


def test_the_first_matching_rule_wins() -> None:
    rules = policy(
        {"name": "ops-may-write", "effect": "allow", "when": {"roles_any": ["ops"]}},
        {"name": "no-writes", "effect": "deny", "when": {"tool": "files__write"}},
        {"name": "rest", "effect": "allow"},
    )
    assert rules.decide(call(tool="files__write", roles=frozenset({"ops"}))).rule == "ops-may-write"
    assert rules.decide(call(tool="files__write")).rule == "no-writes"
    assert rules.decide(call(tool="files__read")).rule == "rest"


@pytest.mark.parametrize("effect", ["allow", "deny", "require_approval", "require_review"])
def test_the_default_decides_when_no_rule_matches(effect: str) -> None:
    rules = policy({"name": "ops", "effect": "allow", "when": {"roles_any": "ops"}}, default=effect)
    decision = rules.decide(call())
    assert (decision.effect, decision.rule) == (effect, "default")
    assert decision.reason


def test_the_default_default_is_deny_with_a_reason_for_the_model() -> None:
    decision = policy().decide(call())
    assert (decision.effect, decision.rule) == ("deny", "default")
    assert decision.reason == "denied by policy: no rule allows this call (the default is deny)"


def test_decisions_do_not_depend_on_earlier_calls_of_other_tools() -> None:
    rules = policy(
        {"name": "writes", "effect": "deny", "when": {"tool": "*__write"}},
        {"name": "reads", "effect": "allow", "when": {"tool": ["*__read", "calculator"]}},
        default="require_review",
    )
    for round_ in range(2):  # the second round after more tools than the per-tool index keeps
        for i in range(5000):
            assert rules.decide(call(tool=f"s{i}__write")).rule == "writes", round_
        assert rules.decide(call(tool="files__read")).rule == "reads"
        assert rules.decide(call(tool="calculator")).rule == "reads"
        assert rules.decide(call(tool="files__list")).rule == "default"


def test_an_empty_or_absent_when_matches_every_call() -> None:
    assert allows({}, call())
    rules = policy({"name": "r", "effect": "allow"})
    assert rules.decide(call(tool="anything", flagged=True)).rule == "r"


def test_deny_reasons_name_the_rule_and_its_reason() -> None:
    with_reason = {"name": "guests-no-writes", "effect": "deny", "reason": "guests may not write"}
    without = {"name": "no-shell", "effect": "deny"}
    assert policy(with_reason).decide(call()).reason == (
        "denied by policy rule 'guests-no-writes': guests may not write"
    )
    assert policy(without).decide(call()).reason == "denied by policy rule 'no-shell'"


def test_require_approval_carries_approvers_and_expiry() -> None:
    rule = {
        "name": "payments",
        "effect": "require_approval",
        "reason": "money moves",
        "approvers": ["finance", "alice@example.com"],
        "expires_seconds": 600,
    }
    decision = policy(rule).decide(call())
    assert decision.effect == "require_approval"
    assert decision.approvers == ("finance", "alice@example.com")
    assert decision.expires_seconds == 600.0
    assert decision.reason == "policy rule 'payments' requires a human approval: money moves"


def test_require_approval_defaults_to_no_approvers_and_an_hour() -> None:
    decision = policy({"name": "ask", "effect": "require_approval"}).decide(call())
    assert (decision.approvers, decision.expires_seconds) == ((), 3600.0)


def test_require_review_is_a_decision_of_its_own() -> None:
    decision = policy({"name": "look", "effect": "require_review"}).decide(call())
    assert (decision.effect, decision.rule) == ("require_review", "look")
    assert decision.reason == "policy rule 'look' requires a review of this call"


def test_a_request_needs_a_timezone_aware_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        call(now=datetime(2025, 3, 5, 10, 30))


# --- subject, tool and environment conditions ---------------------------------------------


def test_tenant_is_any_of_with_globs() -> None:
    when = {"tenant": ["globex", "acme-*"]}
    assert allows(when, call(tenant="globex"))
    assert allows(when, call(tenant="acme-eu"))
    assert not allows(when, call(tenant="acme"))
    assert not allows(when, call(tenant="Globex"))
    assert allows({"tenant": "acme"}, call(tenant="acme"))


def test_roles_any_needs_one_of_the_roles() -> None:
    when = {"roles_any": ["admin", "ops"]}
    assert allows(when, call(roles=frozenset({"user", "ops"})))
    assert not allows(when, call(roles=frozenset({"user"})))
    assert not allows(when, call(roles=frozenset()))


def test_roles_all_needs_every_role() -> None:
    when = {"roles_all": ["finance", "senior"]}
    assert allows(when, call(roles=frozenset({"finance", "senior", "user"})))
    assert not allows(when, call(roles=frozenset({"finance"})))


def test_roles_none_excludes_every_listed_role() -> None:
    when = {"roles_none": ["guest", "suspended"]}
    assert allows(when, call(roles=frozenset({"user"})))
    assert allows(when, call(roles=frozenset()))
    assert not allows(when, call(roles=frozenset({"user", "guest"})))


def test_tool_matches_full_names_by_glob() -> None:
    when = {"tool": ["files__*", "calculator"]}
    assert allows(when, call(tool="files__write", server="files"))
    assert allows(when, call(tool="calculator"))
    assert not allows(when, call(tool="search__files__x", server="search"))
    assert not allows(when, call(tool="calculator2"))


def test_server_matches_mcp_servers_and_builtin() -> None:
    assert allows({"server": "files"}, call(tool="files__read", server="files"))
    assert not allows({"server": "files"}, call(tool="calculator"))
    assert allows({"server": "builtin"}, call(tool="calculator"))
    assert not allows({"server": "builtin"}, call(tool="files__read", server="files"))
    assert allows({"server": "search-*"}, call(tool="search-eu__q", server="search-eu"))


def test_risk_condition_uses_the_request_risk() -> None:
    when = {"risk": ["medium", "high"]}
    assert allows(when, call(risk="high"))
    assert not allows(when, call(risk="low"))


def test_tools_section_overrides_risk_first_match_wins() -> None:
    tools = {
        "files__write": {"risk": "high"},
        "files__*": {"risk": "medium"},
        "search__*": {"risk": "low"},
    }
    rules = policy({"name": "r", "effect": "deny", "when": {"risk": "high"}}, tools=tools)
    assert rules.risk("files__write", "low") == "high"
    assert rules.risk("files__read", "low") == "medium"
    assert rules.risk("search__web", "high") == "low"
    assert rules.risk("calculator", "medium") == "medium"
    # The risk condition sees the override even when the caller passed the catalog's risk.
    assert rules.decide(call(tool="files__write", server="files", risk="low")).rule == "r"
    assert rules.decide(call(tool="files__read", server="files", risk="high")).rule == "default"


def test_flagged_true_and_false() -> None:
    assert allows({"flagged": True}, call(flagged=True))
    assert not allows({"flagged": True}, call(flagged=False))
    assert allows({"flagged": False}, call(flagged=False))
    assert not allows({"flagged": False}, call(flagged=True))


def test_metadata_labels_must_all_match() -> None:
    when = {"metadata": {"env": ["prod", "stage-*"], "team": "pay"}}
    assert allows(when, call(metadata={"env": "prod", "team": "pay", "x": "y"}))
    assert allows(when, call(metadata={"env": "stage-2", "team": "pay"}))
    assert not allows(when, call(metadata={"env": "dev", "team": "pay"}))
    assert not allows(when, call(metadata={"env": "prod"}))
    assert not allows(when, call(metadata={}))


def test_conditions_are_anded() -> None:
    when = {"tenant": "acme", "roles_any": "ops", "tool": "files__*", "flagged": False}
    ok = call(roles=frozenset({"ops"}), tool="files__read", server="files")
    assert allows(when, ok)
    assert not allows(when, replace(ok, tenant="globex"))
    assert not allows(when, replace(ok, roles=frozenset()))
    assert not allows(when, replace(ok, tool="calculator", server=None))
    assert not allows(when, replace(ok, flagged=True))


# --- time windows -------------------------------------------------------------------------


def at_utc(hour: int, minute: int = 0, day: int = 5) -> PolicyRequest:
    return call(now=datetime(2025, 3, day, hour, minute, tzinfo=UTC))


def test_office_hours_in_utc_from_inclusive_to_exclusive() -> None:
    when = {"time": {"from": "09:00", "to": "17:00"}}
    assert allows(when, at_utc(9, 0))
    assert allows(when, at_utc(16, 59))
    assert not allows(when, at_utc(17, 0))
    assert not allows(when, at_utc(8, 59))


def test_a_window_across_midnight() -> None:
    when = {"time": {"from": "22:00", "to": "06:00"}}
    assert allows(when, at_utc(22, 0))
    assert allows(when, at_utc(23, 30))
    assert allows(when, at_utc(0, 0))
    assert allows(when, at_utc(5, 59))
    assert not allows(when, at_utc(6, 0))
    assert not allows(when, at_utc(12, 0))
    assert not allows(when, at_utc(21, 59))


def test_a_window_is_read_in_its_time_zone() -> None:
    when = {"time": {"tz": "Europe/Berlin", "from": "09:00", "to": "17:00"}}
    assert allows(when, at_utc(8, 0))  # 09:00 in Berlin
    assert allows(when, at_utc(15, 59))  # 16:59
    assert not allows(when, at_utc(16, 0))  # 17:00
    assert not allows(when, at_utc(7, 59))  # 08:59
    summer = datetime(2025, 7, 2, 7, 0, tzinfo=UTC)  # 09:00 in Berlin (UTC+2)
    assert allows(when, call(now=summer))
    assert not allows(when, call(now=summer - timedelta(minutes=1)))


def test_now_in_any_offset_is_converted() -> None:
    when = {"time": {"from": "09:00", "to": "17:00"}}
    new_york = ZoneInfo("America/New_York")
    assert allows(when, call(now=datetime(2025, 3, 5, 4, 0, tzinfo=new_york)))  # 09:00 UTC
    assert allows(when, call(now=datetime(2025, 3, 5, 11, 59, tzinfo=new_york)))  # 16:59 UTC
    assert not allows(when, call(now=datetime(2025, 3, 5, 12, 0, tzinfo=new_york)))  # 17:00 UTC
    assert not allows(when, call(now=datetime(2025, 3, 5, 3, 59, tzinfo=new_york)))  # 08:59 UTC


def test_days_are_local_weekdays() -> None:
    late_tuesday = at_utc(23, 30, day=4)  # Wednesday 00:30 in Berlin
    assert allows({"time": {"tz": "Europe/Berlin", "days": ["wed"]}}, late_tuesday)
    assert not allows({"time": {"tz": "Europe/Berlin", "days": ["tue"]}}, late_tuesday)
    assert allows({"time": {"days": "tue"}}, late_tuesday)
    weekdays = {"time": {"days": ["mon", "tue", "wed", "thu", "fri"]}}
    assert allows(weekdays, at_utc(12, day=7))  # Friday
    assert not allows(weekdays, at_utc(12, day=8))  # Saturday


def test_to_24_00_covers_the_end_of_the_day() -> None:
    when = {"time": {"from": "18:00", "to": "24:00"}}
    assert allows(when, at_utc(23, 59))
    assert not allows(when, at_utc(0, 0))


# --- argument conditions ------------------------------------------------------------------


def with_args(**arguments: Any) -> PolicyRequest:
    return call(tool="files__read", server="files", arguments=arguments)


def test_prefix_admits_paths_under_a_directory() -> None:
    when = {"arguments": {"path": {"prefix": ["/data/", "/tmp/"]}}}
    assert allows(when, with_args(path="/data/report.csv"))
    assert allows(when, with_args(path="/tmp/x/y"))
    assert allows(when, with_args(path="/data/./a//b"))
    assert allows(when, with_args(path="/data"))
    assert not allows(when, with_args(path="/database/x"))
    assert not allows(when, with_args(path="/etc/passwd"))


def test_prefix_normalises_traversal_before_comparing() -> None:
    when = {"arguments": {"path": {"prefix": "/data/"}}}
    assert not allows(when, with_args(path="/data/../etc/passwd"))
    assert not allows(when, with_args(path="/data/a/../../etc/passwd"))
    assert not allows(when, with_args(path="data/../../data/x"))
    assert allows(when, with_args(path="/data/a/../b"))
    assert not allows({"arguments": {"path": {"prefix": "/etc/"}}}, with_args(path="/tmp"))
    assert allows({"arguments": {"path": {"prefix": "/etc/"}}}, with_args(path="//etc/passwd"))


def test_prefix_fails_on_values_that_are_not_paths() -> None:
    when = {"arguments": {"path": {"prefix": "/data/"}}}
    assert not allows(when, with_args(path=["/data/x"]))
    assert not allows(when, with_args(path=""))
    assert not allows(when, with_args(path="/data/x\x00.txt"))
    assert not allows(when, with_args())


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://example.com/a", True),
        ("http://EXAMPLE.com:8080/a?b=c", True),
        ("https://example.com./", True),
        ("https://sub.example.org/x", True),
        ("https://a.b.example.org", True),
        ("https://example.org/", False),  # "*.example.org" is subdomains only
        ("https://notexample.org/", False),
        ("http://example.com.evil.net/", False),
        ("http://example.com@evil.net/", False),  # userinfo: the host is evil.net
        ("http://user:pw@example.com/", True),
        ("http://evil.net\\@example.com/", False),  # browsers read the host as evil.net
        ("http://evil.net#@example.com/", False),
        ("ftp://example.com/", False),
        ("example.com", False),
        ("//example.com/", False),
        ("http:///example.com", False),
        ("http://exa mple.com/", False),
        ("http://[::1", False),
        ("http://ex%61mple.com/", False),
    ],
)
def test_host_in_reads_the_url_host(url: str, allowed: bool) -> None:
    when = {"arguments": {"url": {"host_in": ["example.com", "*.example.org"]}}}
    assert allows(when, with_args(url=url)) is allowed


def test_host_in_fails_on_non_strings_and_absence() -> None:
    when = {"arguments": {"url": {"host_in": "example.com"}}}
    assert not allows(when, with_args(url=None))
    assert not allows(when, with_args(url={"host": "example.com"}))
    assert not allows(when, with_args())


def test_host_patterns_are_case_insensitive() -> None:
    assert allows(
        {"arguments": {"url": {"host_in": "API.Example.com"}}},
        with_args(url="http://api.example.com"),
    )


def test_in_not_in_and_equals() -> None:
    assert allows({"arguments": {"mode": {"in": ["read", "list"]}}}, with_args(mode="list"))
    assert not allows({"arguments": {"mode": {"in": ["read", "list"]}}}, with_args(mode="rm"))
    assert allows({"arguments": {"mode": {"not_in": ["delete"]}}}, with_args(mode="read"))
    assert not allows({"arguments": {"mode": {"not_in": "delete"}}}, with_args(mode="delete"))
    assert allows({"arguments": {"mode": {"equals": "read"}}}, with_args(mode="read"))
    assert not allows({"arguments": {"mode": {"equals": "read"}}}, with_args(mode="reader"))
    assert allows({"arguments": {"n": {"in": [1, 2]}}}, with_args(n=2))


def test_booleans_never_equal_numbers() -> None:
    assert not allows({"arguments": {"n": {"equals": 1}}}, with_args(n=True))
    assert not allows({"arguments": {"n": {"in": [True]}}}, with_args(n=1))
    assert allows({"arguments": {"n": {"not_in": [0]}}}, with_args(n=False))
    assert allows({"arguments": {"n": {"equals": True}}}, with_args(n=True))


def test_unhashable_values_are_in_no_list() -> None:
    assert not allows({"arguments": {"mode": {"in": ["read"]}}}, with_args(mode=["read"]))
    assert allows({"arguments": {"mode": {"not_in": ["read"]}}}, with_args(mode=["read"]))


def test_absent_arguments_fail_everything_but_not_in() -> None:
    for condition in (
        {"in": ["read"]},
        {"equals": "read"},
        {"matches": ".*"},
        {"max_length": 10},
        {"prefix": "/"},
        {"host_in": "*"},
        {"not_in": ["x"], "max_length": 10},
    ):
        assert not allows({"arguments": {"mode": condition}}, with_args()), condition
    assert allows({"arguments": {"mode": {"not_in": ["delete"]}}}, with_args())


def test_matches_is_a_full_match_on_the_string_form() -> None:
    when = {"arguments": {"q": {"matches": "[a-z]+"}}}
    assert allows(when, with_args(q="abc"))
    assert not allows(when, with_args(q="abc1"))
    assert not allows(when, with_args(q="1abc"))
    assert allows({"arguments": {"n": {"matches": r"\d{1,3}"}}}, with_args(n=42))


def test_max_length_bounds_the_string_form() -> None:
    when = {"arguments": {"q": {"max_length": 3}}}
    assert allows(when, with_args(q="abc"))
    assert not allows(when, with_args(q="abcd"))
    assert allows(when, with_args(q=123))
    assert not allows(when, with_args(q=1234))


def test_every_condition_of_every_argument_must_hold() -> None:
    when = {
        "arguments": {
            "mode": {"in": ["read", "list"], "not_in": ["list"]},
            "path": {"prefix": "/data/"},
        }
    }
    assert allows(when, with_args(mode="read", path="/data/a"))
    assert not allows(when, with_args(mode="list", path="/data/a"))
    assert not allows(when, with_args(mode="read", path="/etc/a"))
    assert not allows(when, with_args(mode="read"))


# --- errors -------------------------------------------------------------------------------

RULE = "version: 1\nrules:\n  - name: x\n    effect: deny\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "version: 1\nrules:\n  - {name: a, effect: deny}\n  - {name: b, effect: deny}\n"
            "  - {name: x, efect: deny}\n",
            "policy.yaml: rules[2] 'x': unknown key 'efect' "
            "(allowed: name, effect, reason, when, approvers, expires_seconds)",
        ),
        (
            "version: 1\nrule: []\n",
            "policy.yaml: unknown key 'rule' (allowed: version, default, tools, rules)",
        ),
        (
            RULE + "    when: {tools: [x]}\n",
            "policy.yaml: rules[0] 'x': when: unknown key 'tools' (allowed: tenant, roles_any,",
        ),
        (
            RULE + "    when: {arguments: {url: {host: x}}}\n",
            "policy.yaml: rules[0] 'x': when.arguments.url: unknown key 'host' (allowed: in, "
            "not_in, equals, matches, max_length, host_in, prefix)",
        ),
        (
            RULE + "    when: {time: {start: '09:00'}}\n",
            "rules[0] 'x': when.time: unknown key 'start' (allowed: tz, days, from, to)",
        ),
        (
            "version: 1\nrules:\n  - {name: x, effect: deny}\n  - {name: x, effect: allow}\n",
            "policy.yaml: rules[1] 'x': duplicate rule name 'x' (first used by rules[0])",
        ),
        (
            "version: 1\nrules:\n  - {name: x, effect: permit}\n",
            "policy.yaml: rules[0] 'x': effect: 'permit' is not one of allow, deny, "
            "require_approval, require_review",
        ),
        ("version: 1\ndefault: maybe\n", "policy.yaml: default: 'maybe' is not one of allow"),
        ("version: 1\nrules:\n  - name: x\n   effect: deny\n", "policy.yaml: invalid YAML at line"),
        ("- version: 1\n", "policy.yaml: the top level must be a mapping"),
        ("", "policy.yaml: the top level must be a mapping with 'version: 1', got an empty"),
        ("rules: []\n", "policy.yaml: missing required key 'version'"),
        ("version: 2\n", "policy.yaml: version: must be 1, got 2"),
        ("version: '1'\n", "policy.yaml: version: must be 1, got '1'"),
        ("version: 1\nrules: {name: x}\n", "policy.yaml: rules: must be a list of rules"),
        (
            "version: 1\nrules:\n  - {effect: deny}\n",
            "policy.yaml: rules[0]: missing required key 'name'",
        ),
        ("version: 1\nrules:\n  - {name: x}\n", "rules[0] 'x': missing required key 'effect'"),
        ("version: 1\nrules:\n  - {name: 'a b', effect: deny}\n", "rules[0]: name 'a b' must be"),
        ("version: 1\nrules:\n  - {name: default, effect: deny}\n", "name 'default' is reserved"),
        (
            RULE + "    approvers: [ops]\n",
            "rules[0] 'x': approvers: only allowed with effect require_approval, not deny",
        ),
        (
            "version: 1\nrules:\n  - {name: x, effect: require_approval, expires_seconds: 0}\n",
            "rules[0] 'x': expires_seconds: must be a number of seconds in (0, 604800], got 0",
        ),
        (
            "version: 1\nrules:\n  - {name: x, effect: require_approval, "
            "expires_seconds: 604801}\n",
            "expires_seconds: must be a number of seconds in (0, 604800], got 604801",
        ),
        (
            RULE + "    when: {arguments: {q: {matches: '(unclosed'}}}\n",
            "rules[0] 'x': when.arguments.q.matches: invalid regular expression '(unclosed'",
        ),
        (
            RULE + "    when: {time: {tz: Mars/Olympus}}\n",
            "rules[0] 'x': when.time.tz: unknown time zone 'Mars/Olympus'",
        ),
        (
            RULE + "    when: {time: {from: '24:00'}}\n",
            "when.time.from: must be a time 'HH:MM' from '00:00' to '23:59', got '24:00'",
        ),
        (
            RULE + "    when: {time: {to: 17:00}}\n",
            "when.time.to: must be a time 'HH:MM' from '00:00' to '24:00', got 1020 (quote it",
        ),
        (RULE + "    when: {time: {from: '9:00'}}\n", "when.time.from: must be a time 'HH:MM'"),
        (
            RULE + "    when: {time: {from: '10:00', to: '10:00'}}\n",
            "when.time: 'from' equals 'to', so the window is empty",
        ),
        (
            RULE + "    when: {time: {days: [monday]}}\n",
            "when.time.days: 'monday' is not one of mon",
        ),
        (
            RULE + "    when: {risk: [extreme]}\n",
            "when.risk: 'extreme' is not one of low, medium, high",
        ),
        (
            "version: 1\ntools:\n  files__write: {risk: huge}\n",
            "policy.yaml: tools['files__write']: risk: 'huge' is not one of low, medium, high",
        ),
        (
            "version: 1\ntools:\n  files__write: {level: high}\n",
            "tools['files__write']: unknown key 'level' (allowed: risk)",
        ),
        (RULE + "    when: {flagged: yes please}\n", "when.flagged: must be true or false"),
        (RULE + "    when: {tenant: []}\n", "when.tenant: must be a string or a non-empty list"),
        (
            RULE + "    when: {metadata: {1: a}}\n",
            "when.metadata: a label must be a string, got int 1",
        ),
        (
            RULE + "    when: {metadata: {debug: on}}\n",
            "when.metadata.debug: must be a string or a non-empty list of strings, got bool True "
            "(quote it)",
        ),
        (
            RULE + "    when: {roles_any: ['adm*']}\n",
            "when.roles_any: role 'adm*': roles are matched exactly",
        ),
        (
            RULE + "    when: {arguments: {url: {host_in: ['https://example.com']}}}\n",
            "when.arguments.url.host_in: 'https://example.com' must be a host name",
        ),
        (RULE + "    when: {arguments: {url: {}}}\n", "when.arguments.url: lists no conditions"),
        (
            RULE + "    when: {arguments: {q: {max_length: -1}}}\n",
            "max_length: must be a non-negative",
        ),
        (
            RULE + "    when: {arguments: {q: {in: [[1]]}}}\n",
            "when.arguments.q.in: must be a string, number",
        ),
        (RULE + "    when: [tenant]\n", "rules[0] 'x': when: must be a mapping, got list"),
        (RULE + "    reason: 3\n", "rules[0] 'x': reason: must be a string, got int 3"),
        (
            RULE + "    when: {tenant: a}\n    when: {tenant: b}\n",
            "policy.yaml: invalid YAML at line 6, column 5: duplicate key 'when'",
        ),
    ],
)
def test_invalid_policies_say_where_and_why(text: str, message: str) -> None:
    assert message in error(text)


def test_yaml_syntax_errors_give_the_line_and_column() -> None:
    message = error("version: 1\nrules:\n  - name: x\n   effect: deny\n")
    assert message.startswith("policy.yaml: invalid YAML at line 4, column 4: expected <block end>")
    assert error("version: 1\nrules:\n\t- x\n").startswith(
        "policy.yaml: invalid YAML at line 3, column 1: found character '\\t'"
    )


def test_a_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError, match=r"nope\.yaml: cannot read the policy file: No such file"):
        load_policy(str(missing))


def test_a_directory_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        load_policy(str(tmp_path))


EXAMPLE = """\
# The policy of a small deployment: reads are open, writes need ops, money needs approval.
version: 1
default: deny

tools:
  files__write: {risk: high}
  files__delete: {risk: high}
  "search__*": {risk: low}

rules:
  - name: quarantine-after-injection
    effect: require_review
    reason: an earlier tool output looked like a prompt injection
    when:
      flagged: true
      risk: [medium, high]

  - name: guests-no-writes
    effect: deny
    reason: guests may not write files
    when:
      roles_any: [guest]
      tool: ["files__write", "files__delete"]

  - name: reads-under-data
    effect: allow
    when:
      tool: files__read
      arguments:
        path: {prefix: ["/data/"]}

  - name: ops-writes-in-office-hours
    effect: allow
    when:
      roles_any: [ops]
      server: files
      time: {tz: Europe/Berlin, days: [mon, tue, wed, thu, fri], from: "08:00", to: "18:00"}
      arguments:
        path: {prefix: ["/data/"]}

  - name: payments
    effect: require_approval
    reason: money leaves the company
    approvers: [finance]
    expires_seconds: 1800
    when:
      tool: "payments__*"
      metadata: {env: prod}

  - name: web-search
    effect: allow
    when:
      tenant: [acme, "acme-*"]
      server: search
      arguments:
        url: {host_in: [example.com, "*.example.org"]}
        q: {max_length: 200, not_in: [""]}

  - name: builtins
    effect: allow
    when:
      server: builtin
"""


def test_a_realistic_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(EXAMPLE)
    rules = load_policy(str(path))
    assert rules.source == str(path)
    assert rules.rule_names[0] == "quarantine-after-injection"
    assert rules.risk("search__web", "medium") == "low"

    def effect(**changes: Any) -> tuple[str, str]:
        decision = rules.decide(call(**changes))
        return decision.effect, decision.rule

    ops = frozenset({"ops"})
    write = {"tool": "files__write", "server": "files", "risk": "medium"}
    assert effect(**write, roles=ops, arguments={"path": "/data/a"}) == (
        "allow",
        "ops-writes-in-office-hours",
    )
    assert effect(**write, roles=ops, arguments={"path": "/data/../etc/x"}) == ("deny", "default")
    assert effect(**write, roles=ops, flagged=True, arguments={"path": "/data/a"}) == (
        "require_review",
        "quarantine-after-injection",
    )
    assert effect(**write, roles=frozenset({"guest", "ops"})) == ("deny", "guests-no-writes")
    saturday = datetime(2025, 3, 8, 10, 0, tzinfo=UTC)
    assert effect(**write, roles=ops, now=saturday, arguments={"path": "/data/a"}) == (
        "deny",
        "default",
    )
    assert effect(tool="files__read", server="files", arguments={"path": "/data/r"}) == (
        "allow",
        "reads-under-data",
    )
    payment = rules.decide(call(tool="payments__send", server="payments", metadata={"env": "prod"}))
    assert (payment.effect, payment.approvers, payment.expires_seconds) == (
        "require_approval",
        ("finance",),
        1800.0,
    )
    search = {"tool": "search__web", "server": "search"}
    assert effect(**search, arguments={"url": "https://docs.example.org/x", "q": "kafka"}) == (
        "allow",
        "web-search",
    )
    assert effect(**search, arguments={"url": "https://example.org", "q": "kafka"}) == (
        "deny",
        "default",
    )
    assert effect(**search, tenant="globex", arguments={"url": "https://example.com"}) == (
        "deny",
        "default",
    )
    assert effect() == ("allow", "builtins")
    # Flagged but low risk: the quarantine rule does not apply to the calculator.
    assert effect(flagged=True) == ("allow", "builtins")
