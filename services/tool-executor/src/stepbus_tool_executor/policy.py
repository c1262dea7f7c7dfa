"""Attribute-based access control for tool calls: the policy file (``STEPBUS_POLICY_FILE``).

Before a call runs, the tool-executor builds a :class:`PolicyRequest` (who asks, which tool,
with which arguments, when) and asks :meth:`Policy.decide` for a :class:`PolicyDecision`. The
file is YAML and strict: an unknown key at any level, a wrong type or an empty list is a
:class:`PolicyError` naming the file, the rule and the field::

    version: 1                      # required, must be 1
    default: deny                   # when no rule matches: allow | deny | require_approval
                                    #   | require_review (default deny)
    tools:                          # risk overrides, glob keys, first match wins
      files__write: {risk: high}
      "search__*": {risk: low}
    rules:                          # ordered: the first rule whose `when` holds decides
      - name: guests-no-writes      # required, unique, [A-Za-z0-9_.-]{1,64}
        effect: deny
        reason: guests may not write files    # optional, shown to the model
        when:                       # every condition must hold; absent or empty: always
          tenant: [acme, "glob*"]   # any of (globs)
          roles_any: [admin, ops]   # at least one of; roles_all: every one; roles_none: none
          tool: ["files__*"]        # globs over the full tool name
          server: [files]           # MCP server (globs); built-in tools have server "builtin"
          risk: [high]              # the tool's risk after the `tools:` overrides
          flagged: true             # an earlier output of the task was flagged as an injection
          metadata: {env: [prod, "stage-*"]}  # every label equals one of (globs)
          time: {tz: Europe/Berlin, days: [mon, fri], from: "09:00", to: "17:00"}
          arguments:                # by argument name; every condition must hold
            url: {host_in: [example.com, "*.example.org"]}
            path: {prefix: ["/data/"]}
            mode: {in: [read], not_in: [rm], equals: read, matches: "^[a-z]+$", max_length: 9}
        approvers: [ops]            # require_approval only (default none)
        expires_seconds: 3600       # require_approval only, in (0, 604800] (default 3600)

Where a list is expected a single string is a one-item list. Globs are :mod:`fnmatch`
patterns, case-sensitive except host patterns, which are lowercased like host names; roles
are matched exactly. Arguments:

* an absent argument fails every condition on it except ``not_in``;
* ``host_in`` needs an ``http``/``https`` URL string; its host (lowercased, without port,
  userinfo or a trailing dot) must match a pattern, and ``*.example.org`` matches
  ``a.example.org`` but not ``example.org``. URLs with spaces, control characters or
  backslashes, and hosts outside ``[a-z0-9._:-]``, fail;
* ``prefix`` needs a string; it is normalised with :func:`posixpath.normpath` first, so
  ``/data/../etc/passwd`` is ``/etc/passwd``. A prefix ending in ``/`` also admits the
  directory itself (``/data``);
* ``in``/``not_in``/``equals`` compare scalars (``true`` never equals ``1``); ``matches`` is
  :func:`re.fullmatch` on ``str(value)``; ``max_length`` bounds ``len(str(value))``.

A condition fails on a value it cannot read (an unparsable URL, a non-string path), so put
argument conditions in allow rules and let the default deny, rather than listing what to deny.

Time windows: ``now`` is converted to ``tz`` (default UTC); ``days`` are local weekdays
(default every day); ``from`` is inclusive (default ``"00:00"``), ``to`` exclusive (default
``"24:00"``, the only place ``24:00`` is allowed); ``from`` later than ``to`` is a window across
midnight. Quote the times: unquoted YAML reads ``17:00`` as the number 1020.

Everything is compiled at load and rules are indexed by tool name on first use, so
:meth:`Policy.decide` only calls small precompiled predicates of the rules that can apply.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

__all__ = [
    "BUILTIN_SERVER",
    "Effect",
    "Policy",
    "PolicyDecision",
    "PolicyError",
    "PolicyRequest",
    "Risk",
    "allow_all",
    "load_policy",
    "parse_policy",
]

Effect = Literal["allow", "deny", "require_approval", "require_review"]
Risk = Literal["low", "medium", "high"]

BUILTIN_SERVER = "builtin"
"""The ``server`` condition's name for built-in tools (``PolicyRequest.server is None``)."""

_EFFECTS: tuple[str, ...] = get_args(Effect)
_RISKS: tuple[str, ...] = get_args(Risk)
_MAX_EXPIRES_SECONDS = 7 * 24 * 3600
_RULE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_RESERVED_NAMES = ("default", "no-policy")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_HOST = re.compile(r"[a-z0-9._:-]+")
_UNSAFE_URL = re.compile(r"[\x00-\x20\x7f\\]")
_GLOB_CHARS = frozenset("*?[")
_NEEDS_NORMPATH = re.compile(r"(?:^|/)\.|//|/$")
"""Without a "." segment start, "//" or a trailing "/", normpath returns the path unchanged."""

_TOP_KEYS = ("version", "default", "tools", "rules")
_TOOL_KEYS = ("risk",)
_RULE_KEYS = ("name", "effect", "reason", "when", "approvers", "expires_seconds")
_TIME_KEYS = ("tz", "days", "from", "to")
_ARGUMENT_KEYS = ("in", "not_in", "equals", "matches", "max_length", "host_in", "prefix")
# Evaluated in this order whatever the file's order: the cheap checks first.
_WHEN_KEYS = (
    "tenant",
    "roles_any",
    "roles_all",
    "roles_none",
    "tool",
    "server",
    "risk",
    "flagged",
    "metadata",
    "time",
    "arguments",
)


class PolicyError(ValueError):
    """The policy file is invalid; the message names the file, the rule (by index and name) and
    the field. Not retryable: fix the file."""


@dataclass(frozen=True)
class PolicyRequest:
    """Everything a rule may look at about one tool call.

    Attributes:
        tenant: The task's tenant.
        roles: The roles the task carries.
        tool: The full tool name, e.g. ``files__write`` or ``calculator``.
        server: The MCP server name for an MCP tool, ``None`` for a built-in.
        risk: The tool's risk level (low|medium|high) as the executor knows it; the file's
            ``tools:`` overrides are applied on top, so passing :meth:`Policy.risk` is fine.
        arguments: The call's arguments.
        metadata: The task's metadata labels.
        flagged: An earlier tool output of the same task was flagged as a likely prompt
            injection.
        now: The time of the call; must be timezone-aware.
    """

    tenant: str
    roles: frozenset[str]
    tool: str
    server: str | None
    risk: str
    arguments: Mapping[str, Any]
    metadata: Mapping[str, str]
    flagged: bool
    now: datetime

    def __post_init__(self) -> None:
        if self.now.utcoffset() is None:
            raise ValueError("PolicyRequest.now must be timezone-aware (time windows need it)")


@dataclass(frozen=True)
class PolicyDecision:
    """What the policy says about one call.

    Attributes:
        effect: allow, deny, require_approval or require_review.
        rule: The matched rule's name; ``default`` when none matched; ``no-policy`` for
            :func:`allow_all`.
        reason: Human readable, written for the model reading it on a deny.
        approvers: For require_approval: the roles or people who may approve.
        expires_seconds: For require_approval: how long the approval may wait.
    """

    effect: Effect
    rule: str
    reason: str
    approvers: tuple[str, ...] = ()
    expires_seconds: float = 3600.0


# Truthy when the condition holds: a bare ``re.Match`` saves a Python call per check.
Predicate = Callable[[PolicyRequest], object]
Matcher = Callable[[str], object]
RiskOf = Callable[[str, str], str]
Rule = tuple[Matcher | None, tuple[Predicate, ...], PolicyDecision]
"""A compiled rule: its ``tool`` condition (if any), its other conditions and its decision."""
_MAX_TOOLS_INDEXED = 4096


class Policy:
    """A compiled policy. Build one with :func:`parse_policy`, :func:`load_policy` or
    :func:`allow_all`.

    Attributes:
        source: The file path, ``<string>`` or ``<no policy>``.
        rule_names: The rules' names in evaluation order.
    """

    __slots__ = ("_by_tool", "_configured", "_default", "_rules", "_tools", "rule_names", "source")

    def __init__(
        self,
        *,
        source: str,
        rules: tuple[Rule, ...],
        default: PolicyDecision,
        tools: tuple[tuple[Matcher, str], ...] = (),
        configured: bool = True,
    ) -> None:
        self.source = source
        self.rule_names = tuple(decision.rule for _, _, decision in rules)
        self._rules = rules
        self._by_tool: dict[str, tuple[tuple[tuple[Predicate, ...], PolicyDecision], ...]] = {}
        self._default = default
        self._tools = tools
        self._configured = configured

    @property
    def configured(self) -> bool:
        """``False`` for :func:`allow_all`, ``True`` for a policy read from a file or string."""
        return self._configured

    def decide(self, request: PolicyRequest) -> PolicyDecision:
        """The decision of the first rule whose conditions all hold, else the default's."""
        rules = self._by_tool.get(request.tool)
        if rules is None:
            rules = self._index(request.tool)
        for conditions, decision in rules:
            for condition in conditions:
                if not condition(request):
                    break
            else:
                return decision
        return self._default

    def _index(self, tool: str) -> tuple[tuple[tuple[Predicate, ...], PolicyDecision], ...]:
        """The rules whose ``tool`` condition admits ``tool``, in order; cached per tool name,
        so a call only checks the rules that can apply to its tool."""
        if len(self._by_tool) >= _MAX_TOOLS_INDEXED:  # bounds memory if names are unbounded
            self._by_tool.clear()
        rules = tuple(
            (conditions, decision)
            for match, conditions, decision in self._rules
            if match is None or match(tool)
        )
        self._by_tool[tool] = rules
        return rules

    def risk(self, tool: str, default: str) -> str:
        """The risk of the first ``tools:`` pattern matching ``tool``, else ``default``."""
        for match, level in self._tools:
            if match(tool):
                return level
        return default

    def __repr__(self) -> str:
        return f"Policy(source={self.source!r}, rules={len(self._rules)})"


def allow_all() -> Policy:
    """The policy used without a policy file: every call is allowed by rule ``no-policy``."""
    decision = PolicyDecision(
        "allow", "no-policy", "no policy file: every configured tool is allowed"
    )
    return Policy(source="<no policy>", rules=(), default=decision, configured=False)


def load_policy(path: str) -> Policy:
    """Read and compile the policy file at ``path``.

    Raises:
        PolicyError: The file is missing, unreadable or invalid.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{path}: the policy file is not UTF-8: {exc}") from exc
    return parse_policy(text, source=path)


def parse_policy(text: str, source: str = "<string>") -> Policy:
    """Compile a policy from YAML text; ``source`` names it in error messages.

    Raises:
        PolicyError: The text is not valid YAML or not a valid policy.
    """
    data = _load_yaml(text, source)
    top = _At(source)
    if not isinstance(data, dict):
        got = "an empty document" if data is None else _kind(data)
        raise top.error(f"the top level must be a mapping with 'version: 1', got {got}")
    _check_keys(data, _TOP_KEYS, top)
    if "version" not in data:
        raise top.error("missing required key 'version' (this format is version 1)")
    if type(data["version"]) is not int or data["version"] != 1:
        raise top.field("version").error(f"must be 1, got {data['version']!r}")
    default = _effect(data.get("default", "deny"), top.field("default"))
    tools = _tools(data.get("tools"), _At(source, "tools"))

    def risk_of(tool: str, fallback: str) -> str:
        for match, level in tools:
            if match(tool):
                return level
        return fallback

    rules = _rules(data.get("rules"), source, risk_of)
    return Policy(
        source=source,
        rules=rules,
        default=PolicyDecision(default, "default", _DEFAULT_REASONS[default]),
        tools=tools,
    )


_DEFAULT_REASONS: dict[str, str] = {
    "allow": "allowed by the policy default: no rule matched",
    "deny": "denied by policy: no rule allows this call (the default is deny)",
    "require_approval": "no policy rule matched and the default requires a human approval",
    "require_review": "no policy rule matched and the default requires a review of this call",
}


def _rule_reason(effect: str, rule: str, reason: str | None) -> str:
    detail = f": {reason}" if reason else ""
    return {
        "allow": f"allowed by policy rule {rule!r}{detail}",
        "deny": f"denied by policy rule {rule!r}{detail}",
        "require_approval": f"policy rule {rule!r} requires a human approval{detail}",
        "require_review": f"policy rule {rule!r} requires a review of this call{detail}",
    }[effect]


# --- reading ------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that rejects duplicate keys instead of keeping the last one."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool):
                continue  # the base class rejects unhashable keys with its own message
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: plain data only
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise PolicyError(f"{source}: invalid YAML{where}: {exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: invalid YAML: {exc}") from exc


@dataclass(frozen=True)
class _At:
    """Where in the file a value sits, for error messages."""

    source: str
    section: str = ""
    path: str = ""

    def field(self, name: str) -> _At:
        return _At(self.source, self.section, f"{self.path}.{name}" if self.path else name)

    def error(self, message: str) -> PolicyError:
        parts = [part for part in (self.source, self.section, self.path) if part]
        return PolicyError(f"{': '.join(parts)}: {message}")


def _kind(value: object) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"


def _check_keys(mapping: Mapping[Any, Any], allowed: tuple[str, ...], at: _At) -> None:
    for key in mapping:
        if key not in allowed:
            raise at.error(f"unknown key {key!r} (allowed: {', '.join(allowed)})")


def _mapping(value: object, at: _At) -> dict[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise at.error(f"must be a mapping, got {_kind(value)}")
    return value


def _strings(value: object, at: _At) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise at.error(
            f"must be a string or a non-empty list of strings, got {_kind(value)}{_hint(value)}"
        )
    for item in items:
        if not isinstance(item, str) or not item:
            raise at.error(f"must list non-empty strings, got {_kind(item)}{_hint(item)}")
    return tuple(items)


def _hint(value: object) -> str:
    """YAML reads unquoted yes/no/on/off as booleans and 1.0 or 10:30 as numbers."""
    return " (quote it)" if isinstance(value, bool | int | float) else ""


def _choices(value: object, allowed: tuple[str, ...], at: _At) -> tuple[str, ...]:
    items = _strings(value, at)
    for item in items:
        if item not in allowed:
            raise at.error(f"{item!r} is not one of {', '.join(allowed)}")
    return items


def _effect(value: object, at: _At) -> Effect:
    if not isinstance(value, str) or value not in _EFFECTS:
        raise at.error(f"{value!r} is not one of {', '.join(_EFFECTS)}")
    return value  # type: ignore[return-value]


def _tools(raw: object, at: _At) -> tuple[tuple[Matcher, str], ...]:
    tools = []
    for pattern, spec in _mapping(raw, at).items():
        here = _At(at.source, f"tools[{pattern!r}]")
        if not isinstance(pattern, str) or not pattern:
            raise here.error("a tool pattern must be a non-empty string")
        spec = _mapping(spec, here)
        _check_keys(spec, _TOOL_KEYS, here)
        if "risk" not in spec:
            raise here.error("missing required key 'risk'")
        (level,) = _choices(spec["risk"], _RISKS, here.field("risk"))
        tools.append((_glob((pattern,)), level))
    return tuple(tools)


def _rules(raw: object, source: str, risk_of: RiskOf) -> tuple[Rule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _At(source, "rules").error(f"must be a list of rules, got {_kind(raw)}")
    rules = []
    seen: dict[str, int] = {}
    for index, item in enumerate(raw):
        rule = _rule(item, _At(source, f"rules[{index}]"), risk_of)
        decision = rule[2]
        if decision.rule in seen:
            first = seen[decision.rule]
            raise _At(source, f"rules[{index}] {decision.rule!r}").error(
                f"duplicate rule name {decision.rule!r} (first used by rules[{first}])"
            )
        seen[decision.rule] = index
        rules.append(rule)
    return tuple(rules)


def _rule(raw: object, at: _At, risk_of: RiskOf) -> Rule:
    if not isinstance(raw, dict):
        raise at.error(f"a rule must be a mapping with 'name' and 'effect', got {_kind(raw)}")
    if "name" not in raw:
        raise at.error("missing required key 'name'")
    name = raw["name"]
    if not isinstance(name, str) or not _RULE_NAME.fullmatch(name):
        raise at.error(f"name {name!r} must be 1-64 letters, digits, '_', '.' or '-'")
    if name in _RESERVED_NAMES:
        raise at.error(f"name {name!r} is reserved (decisions use it when no rule matched)")
    at = _At(at.source, f"{at.section} {name!r}")
    _check_keys(raw, _RULE_KEYS, at)
    if "effect" not in raw:
        raise at.error("missing required key 'effect'")
    effect = _effect(raw["effect"], at.field("effect"))
    reason = raw.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise at.field("reason").error(f"must be a string, got {_kind(reason)}")
    for key in ("approvers", "expires_seconds"):
        if key in raw and effect != "require_approval":
            raise at.field(key).error(f"only allowed with effect require_approval, not {effect}")
    approvers = raw.get("approvers")
    expires = raw.get("expires_seconds", 3600)
    if type(expires) not in (int, float) or not 0 < expires <= _MAX_EXPIRES_SECONDS:
        raise at.field("expires_seconds").error(
            f"must be a number of seconds in (0, {_MAX_EXPIRES_SECONDS}], got {expires!r}"
        )
    decision = PolicyDecision(
        effect=effect,
        rule=name,
        reason=_rule_reason(effect, name, reason),
        approvers=() if approvers in (None, []) else _strings(approvers, at.field("approvers")),
        expires_seconds=float(expires),
    )
    when = _mapping(raw.get("when"), at.field("when"))
    tool = _glob(_strings(when["tool"], at.field("when.tool"))) if "tool" in when else None
    return tool, _when(when, at.field("when"), risk_of), decision


# --- conditions ---------------------------------------------------------------------------


def _when(spec: dict[Any, Any], at: _At, risk_of: RiskOf) -> tuple[Predicate, ...]:
    """The conditions of ``spec`` but ``tool``, which :meth:`Policy.decide` checks per tool."""
    _check_keys(spec, _WHEN_KEYS, at)
    conditions = []
    for key in _WHEN_KEYS:
        if key in spec and key != "tool":
            here = at.field(key)
            if key == "risk":
                conditions.append(_when_risk(spec[key], here, risk_of))
            else:
                conditions.append(_CONDITIONS[key](spec[key], here))
    return tuple(conditions)


def _glob(patterns: tuple[str, ...]) -> Matcher:
    """A matcher for any of ``patterns``: a set lookup for plain names, else one regex."""
    if all(_GLOB_CHARS.isdisjoint(pattern) for pattern in patterns):
        return frozenset(patterns).__contains__
    return re.compile("|".join(fnmatch.translate(pattern) for pattern in patterns)).match


def _roles(value: object, at: _At) -> frozenset[str]:
    roles = _strings(value, at)
    for role in roles:
        if not _GLOB_CHARS.isdisjoint(role):
            raise at.error(f"role {role!r}: roles are matched exactly, globs are not allowed")
    return frozenset(roles)


def _when_tenant(value: object, at: _At) -> Predicate:
    match = _glob(_strings(value, at))
    return lambda request: match(request.tenant)


def _when_roles_any(value: object, at: _At) -> Predicate:
    roles = _roles(value, at)
    return lambda request: not roles.isdisjoint(request.roles)


def _when_roles_all(value: object, at: _At) -> Predicate:
    roles = _roles(value, at)
    return lambda request: roles.issubset(request.roles)


def _when_roles_none(value: object, at: _At) -> Predicate:
    roles = _roles(value, at)
    return lambda request: roles.isdisjoint(request.roles)


def _when_server(value: object, at: _At) -> Predicate:
    match = _glob(_strings(value, at))
    return lambda request: match(BUILTIN_SERVER if request.server is None else request.server)


def _when_risk(value: object, at: _At, risk_of: RiskOf) -> Predicate:
    levels = frozenset(_choices(value, _RISKS, at))
    return lambda request: risk_of(request.tool, request.risk) in levels


def _when_flagged(value: object, at: _At) -> Predicate:
    if not isinstance(value, bool):
        raise at.error(f"must be true or false, got {_kind(value)}")
    return lambda request: bool(request.flagged) is value


def _when_metadata(value: object, at: _At) -> Predicate:
    spec = _mapping(value, at)
    for label in spec:
        if not isinstance(label, str):
            raise at.error(f"a label must be a string, got {_kind(label)} (quote it)")
    labels = tuple((label, _glob(_strings(spec[label], at.field(label)))) for label in spec)

    def holds(request: PolicyRequest) -> bool:
        metadata = request.metadata
        for label, match in labels:
            found = metadata.get(label)
            if not isinstance(found, str) or not match(found):
                return False
        return True

    return holds


def _when_time(value: object, at: _At) -> Predicate:
    spec = _mapping(value, at)
    _check_keys(spec, _TIME_KEYS, at)
    zone = _zone(spec.get("tz", "UTC"), at.field("tz"))
    days = frozenset(
        map(_DAYS.index, _choices(spec.get("days", list(_DAYS)), _DAYS, at.field("days")))
    )
    start = _minutes(spec.get("from", "00:00"), at.field("from"), allow_24=False)
    end = _minutes(spec.get("to", "24:00"), at.field("to"), allow_24=True)
    if start == end:
        raise at.error("'from' equals 'to', so the window is empty")

    def holds(request: PolicyRequest) -> bool:
        local = request.now.astimezone(zone)
        minute = local.hour * 60 + local.minute
        inside = start <= minute < end if start < end else minute >= start or minute < end
        return inside and local.weekday() in days

    return holds


def _zone(value: object, at: _At) -> ZoneInfo:
    if not isinstance(value, str) or not value:
        raise at.error(f"must be an IANA time zone name like 'Europe/Berlin', got {_kind(value)}")
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise at.error(f"unknown time zone {value!r}") from exc


def _minutes(value: object, at: _At, *, allow_24: bool) -> int:
    if allow_24 and value == "24:00":
        return 24 * 60
    clock = _CLOCK.fullmatch(value) if isinstance(value, str) else None
    if clock is None:
        hint = " (quote it: YAML reads unquoted 17:00 as a number)" if type(value) is int else ""
        upto = "24:00" if allow_24 else "23:59"
        raise at.error(f"must be a time 'HH:MM' from '00:00' to '{upto}', got {value!r}{hint}")
    return int(clock[1]) * 60 + int(clock[2])


def _when_arguments(value: object, at: _At) -> Predicate:
    checks = tuple(
        _argument(name, spec, at.field(str(name))) for name, spec in _mapping(value, at).items()
    )

    def holds(request: PolicyRequest) -> bool:
        arguments = request.arguments
        for check in checks:
            if not check(arguments):
                return False
        return True

    return holds


_CONDITIONS: dict[str, Callable[[object, _At], Predicate]] = {
    "tenant": _when_tenant,
    "roles_any": _when_roles_any,
    "roles_all": _when_roles_all,
    "roles_none": _when_roles_none,
    "server": _when_server,
    "flagged": _when_flagged,
    "metadata": _when_metadata,
    "time": _when_time,
    "arguments": _when_arguments,
}


# --- argument conditions ------------------------------------------------------------------

ValueTest = Callable[[Any], bool]


def _argument(name: object, raw: object, at: _At) -> Callable[[Mapping[str, Any]], bool]:
    if not isinstance(name, str):
        raise at.error(f"an argument name must be a string, got {_kind(name)}")
    spec = _mapping(raw, at)
    if not spec:
        raise at.error(f"lists no conditions (use any of: {', '.join(_ARGUMENT_KEYS)})")
    _check_keys(spec, _ARGUMENT_KEYS, at)
    tests = tuple(_ARGUMENT_TESTS[key](spec[key], at.field(key)) for key in spec)
    absent_holds = set(spec) == {"not_in"}

    def holds(arguments: Mapping[str, Any]) -> bool:
        if name not in arguments:
            return absent_holds
        value = arguments[name]
        for test in tests:
            if not test(value):
                return False
        return True

    return holds


def _scalar_key(value: object) -> tuple[bool, object]:
    """Keeps ``True`` from equalling ``1``: the key records whether the value is a bool."""
    return (type(value) is bool, value)


def _scalars(value: object, at: _At, *, many: bool) -> frozenset[tuple[bool, object]]:
    items = value if many and isinstance(value, list) else [value]
    if not items:
        raise at.error("must list at least one value")
    for item in items:
        if item is not None and not isinstance(item, str | int | float | bool):
            raise at.error(f"must be a string, number, boolean or null, got {_kind(item)}")
    return frozenset(_scalar_key(item) for item in items)


def _is_member(keys: frozenset[tuple[bool, object]], value: object) -> bool:
    try:
        return _scalar_key(value) in keys
    except TypeError:  # an unhashable value (list, object) equals no scalar
        return False


def _arg_in(value: object, at: _At) -> ValueTest:
    keys = _scalars(value, at, many=True)
    return lambda found: _is_member(keys, found)


def _arg_not_in(value: object, at: _At) -> ValueTest:
    keys = _scalars(value, at, many=True)
    return lambda found: not _is_member(keys, found)


def _arg_equals(value: object, at: _At) -> ValueTest:
    keys = _scalars(value, at, many=False)
    return lambda found: _is_member(keys, found)


def _arg_matches(value: object, at: _At) -> ValueTest:
    if not isinstance(value, str):
        raise at.error(f"must be a regular expression string, got {_kind(value)}")
    try:
        fullmatch = re.compile(value).fullmatch
    except re.error as exc:
        raise at.error(f"invalid regular expression {value!r}: {exc}") from exc
    return lambda found: fullmatch(str(found)) is not None


def _arg_max_length(value: object, at: _At) -> ValueTest:
    if type(value) is not int or value < 0:
        raise at.error(f"must be a non-negative integer, got {_kind(value)}")
    return lambda found: len(str(found)) <= value


def _arg_host_in(value: object, at: _At) -> ValueTest:
    patterns = tuple(pattern.lower() for pattern in _strings(value, at))
    for pattern in patterns:
        if any(char in pattern for char in "/@ "):
            raise at.error(f"{pattern!r} must be a host name or a glob like '*.example.org'")
    match = _glob(patterns)

    def holds(found: object) -> bool:
        host = _url_host(found)
        return host is not None and bool(match(host))

    return holds


def _url_host(value: object) -> str | None:
    """The lowercased host of an http(s) URL, or ``None`` when ``value`` is not one."""
    if not isinstance(value, str) or _UNSAFE_URL.search(value):
        return None
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not host:
        return None
    host = host.removesuffix(".")
    return host if _HOST.fullmatch(host) else None


def _arg_prefix(value: object, at: _At) -> ValueTest:
    prefixes = _strings(value, at)

    def holds(found: object) -> bool:
        if not isinstance(found, str) or not found or "\x00" in found:
            return False
        normalised = posixpath.normpath(found) if _NEEDS_NORMPATH.search(found) else found
        if normalised.startswith("//"):  # POSIX keeps a leading "//"; Linux reads it as "/"
            normalised = "/" + normalised.lstrip("/")
        # The added "/" lets prefix "/data/" admit "/data" itself (and still not "/database").
        return (normalised + "/").startswith(prefixes)

    return holds


_ARGUMENT_TESTS: dict[str, Callable[[object, _At], ValueTest]] = {
    "in": _arg_in,
    "not_in": _arg_not_in,
    "equals": _arg_equals,
    "matches": _arg_matches,
    "max_length": _arg_max_length,
    "host_in": _arg_host_in,
    "prefix": _arg_prefix,
}
