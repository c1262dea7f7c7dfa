"""Heuristics for prompt injections in tool outputs: text that speaks to the model instead of
informing it.

A finding is a reason to contain an output and a line in the audit trail, not proof. The rules
favour precision on what tools ordinarily return (pages, READMEs, JSON, code): each asks for
the shape of an injection, not its vocabulary ("ignore the previous section" is fine, "ignore
the previous instructions" is not).

Fast by construction, since every tool output is scanned. Each rule begins with a literal
anchor ("ignore", "<", "http"); the rules sharing an anchor are joined into one regular
expression run on the lowercased text without ``re.IGNORECASE``, so the regex engine jumps
from one occurrence of the anchor to the next instead of trying every position: one pass per
anchor (about 35). What a regex cannot say cheaply (the words before an anchor, the start of a
line, whether a URL's query holds encoded data) is checked in Python at the few places the
regex matched. Only the first 256 kB are scanned.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from urllib.parse import unquote

__all__ = ["KINDS", "MAX_SCAN_CHARS", "Finding", "reasons", "scan"]

KINDS = ("instruction", "tool_request", "exfiltration", "role_marker")
"""The kinds of finding, in the order ``scan`` reports them."""

MAX_SCAN_CHARS = 256 * 1024
"""Only this much of an output is scanned (an injection further on goes unseen)."""

_MAX_EXCERPT = 120


@dataclass(frozen=True)
class Finding:
    """One likely injection in a tool output."""

    kind: str
    """One of ``KINDS``: ``instruction`` (instructions aimed at the model), ``tool_request``
    (asks to call a tool or function), ``exfiltration`` (a URL, markdown image or phrase that
    would carry data out), ``role_marker`` (fake chat-role or system-prompt markers, or an
    attempt to close stepbus's ``<tool_output>`` delimiter)."""
    excerpt: str
    """At most 120 characters of the matched text (whitespace collapsed), for the audit trail."""


def scan(text: str, tools: Collection[str] = ()) -> tuple[Finding, ...]:
    """Likely prompt injections in a tool output; empty when none.

    Args:
        text: The tool output; only its first ``MAX_SCAN_CHARS`` characters are scanned.
        tools: The names of the tools offered to the model: a verb such as "call" or "use" a
            few words before one of them is a ``tool_request``.

    Returns:
        At most one finding per kind (its first match), in the order of ``KINDS``.
    """
    text = text[:MAX_SCAN_CHARS]
    if not text.isascii():
        for char in _INVISIBLE:  # zero-width characters splitting "ig\u200bnore"
            if char in text:
                text = text.replace(char, "")
        text = text.replace("\u0130", "I")  # the one character whose lowercase is longer
    lowered = text.lower()  # as long as ``text``: a span fits both
    found = _search(_table(frozenset(tools)), text, lowered)
    return tuple(
        Finding(kind, " ".join(text[found[kind][0] : found[kind][1]].split())[:_MAX_EXCERPT])
        for kind in KINDS
        if kind in found
    )


def reasons(findings: Iterable[Finding]) -> list[str]:
    """One line per finding, e.g. ``instruction: 'ignore all previous instructions'``."""
    return [f"{finding.kind}: {finding.excerpt!r}" for finding in findings]


# -- the engine --------------------------------------------------------------------------------

Span = tuple[int, int]
Check = Callable[[str, str, re.Match[str]], Span | None]
"""Given the text, the lowered text and a rule's match: the span to report, or None to reject."""


@dataclass(frozen=True)
class _Rule:
    kind: str
    anchor: str
    """The lowercase literal every match begins with."""
    tail: str
    """A verbose regular expression for what follows the anchor."""
    check: Check | None = None


@dataclass(frozen=True)
class _Anchor:
    literal: str
    gate: re.Pattern[str]
    """The anchor followed by any of its rules' tails: where a rule may match."""
    rules: tuple[tuple[_Rule, re.Pattern[str]], ...]


def _rules(
    kind: str,
    anchors: str,
    tail: str,
    check: Check | None = None,
    line_start: str | None = None,
) -> list[_Rule]:
    """One rule per space-separated anchor, each followed by ``tail``.

    With ``line_start``, only those characters may come before the anchor on its line.
    """
    if line_start is None:
        return [_Rule(kind, anchor, tail, check) for anchor in anchors.split()]
    # The character just before the anchor is checked by the regex, the rest of the line in
    # Python (at the few places the regex matched).
    allowed, check = re.escape(line_start), _line_start(line_start)
    return [
        _Rule(kind, anchor, rf"(?<![^\n{allowed}]{re.escape(anchor)}){tail}", check)
        for anchor in anchors.split()
    ]


def _compile(anchor: str, tails: Iterable[str]) -> re.Pattern[str]:
    literal = re.escape(anchor)
    # A word anchor starts a word; the lookbehind comes after the literal so that the engine
    # still looks for the literal first.
    before = r"[\w.]" if anchor in _METHODS else r"\w"  # ``.run(`` is code, not a request
    boundary = rf"(?<!{before}{literal})" if anchor[0].isalnum() else ""
    alternatives = "|".join(f"(?:{tail})" for tail in tails)
    return re.compile(f"{literal}{boundary}(?:{alternatives})", re.VERBOSE | re.MULTILINE)


@functools.lru_cache(maxsize=64)
def _table(tools: frozenset[str]) -> tuple[_Anchor, ...]:
    """The rules grouped by anchor: those of the verbs, which depend on ``tools``, compiled
    for each set of tools, the others once."""
    verbs = [rule for rule in _FIXED if rule.anchor in _METHODS]
    return _FIXED_ANCHORS + _group((*verbs, *_naming(tools)))


def _group(rules: Iterable[_Rule]) -> tuple[_Anchor, ...]:
    by_anchor: dict[str, list[_Rule]] = {}
    for rule in rules:
        by_anchor.setdefault(rule.anchor, []).append(rule)
    return tuple(
        _Anchor(
            anchor,
            _compile(anchor, [rule.tail for rule in rules]),
            tuple((rule, _compile(anchor, [rule.tail])) for rule in rules),
        )
        for anchor, rules in by_anchor.items()
    )


def _search(table: Iterable[_Anchor], text: str, lowered: str) -> dict[str, Span]:
    """The span of the first accepted match of each kind."""
    best: dict[str, Span] = {}
    for anchor in table:
        position = lowered.find(anchor.literal)
        while position >= 0:
            candidate = anchor.gate.search(lowered, position)
            if candidate is None:
                break
            position = candidate.start()
            pending = [
                (rule, pattern)
                for rule, pattern in anchor.rules
                if rule.kind not in best or position < best[rule.kind][0]
            ]
            if not pending:
                break
            for rule, pattern in pending:
                match = pattern.match(lowered, position)
                if match is None:
                    continue
                span = match.span() if rule.check is None else rule.check(text, lowered, match)
                if span is not None and (rule.kind not in best or span < best[rule.kind]):
                    best[rule.kind] = span
            position += 1
    return best


def _preceded_by(pattern: str, window: int, hints: str = "") -> Check:
    """Accept a match when the ``window`` characters before it (on its line) end with
    ``pattern``; the report then starts where ``pattern`` matched.

    ``hints``, space-separated words one of which ``pattern`` needs, spare the regex search
    of windows that cannot match.
    """
    before = re.compile(rf"(?:{pattern})\Z", re.VERBOSE)
    needed = hints.split()

    def check(text: str, lowered: str, match: re.Match[str]) -> Span | None:
        start = max(lowered.rfind("\n", 0, match.start()) + 1, match.start() - window)
        if needed and not any(word in lowered[start : match.start()] for word in needed):
            return None
        found = before.search(lowered, start, match.start())
        return (found.start(), match.end()) if found else None

    return check


def _not_preceded_by(pattern: str, window: int) -> Check:
    """Accept a match unless the ``window`` characters before it end with ``pattern``."""
    before = re.compile(rf"(?:{pattern})\Z", re.VERBOSE)

    def check(text: str, lowered: str, match: re.Match[str]) -> Span | None:
        start = max(0, match.start() - window)
        return None if before.search(lowered, start, match.start()) else match.span()

    return check


def _line_start(allowed: str) -> Check:
    """Accept a match when only ``allowed`` characters come before it on its line."""

    def check(text: str, lowered: str, match: re.Match[str]) -> Span | None:
        begin = lowered.rfind("\n", 0, match.start()) + 1
        prefix = lowered[begin : match.start()]
        if prefix.strip(allowed):
            return None
        return begin + len(prefix) - len(prefix.lstrip(" \t")), match.end()

    return check


_not_after_modal = _not_preceded_by(r"\b(?:can|may|could|might|safely|just|simply)\s+", 16)

_INVISIBLE = "\u00ad\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\ufeff"

# -- instruction -------------------------------------------------------------------------------

_DETERMINERS = r"(?:(?:all|any|the|your|my|of|these|those|every|each)\s+){0,3}"
_EARLIER = r"""(?:previous|prior|above|earlier|preceding|foregoing|former|original|initial|system
    |developer)"""
_MODEL = r"""(?:ai|llms?|language\s+models?|assistants?|chatbots?)
    (?:\s+(?:assistants?|agents?|models?|systems?))?"""

_INSTRUCTION = [
    *_rules(
        "instruction",
        "ignore disregard forget override bypass discard",
        rf"""\s+{_DETERMINERS}{_EARLIER}\s+(?:instructions?|prompts?|rules|directives?|guidelines
        |constraints|guardrails|programming)\b""",
    ),
    # Weaker nouns ("you can ignore previous messages" is ordinary advice): not after a modal.
    *_rules(
        "instruction",
        "ignore disregard forget",
        rf"""\s+{_DETERMINERS}{_EARLIER}\s+(?:messages?|directions?|commands?|context|orders)\b""",
        _not_after_modal,
    ),
    *_rules(
        "instruction",
        "ignore disregard forget",
        r"""\s+everything\s+(?:(?:written|said|stated)\s+)?(?:above|before|prior|previously
        |so\s+far|you\s+(?:were|have\s+been|'ve\s+been)\s+(?:told|given))\b""",
        _not_after_modal,
    ),
    *_rules(
        "instruction",
        "ignore disregard",
        r"""\s+(?:all\s+(?:of\s+)?)?(?:the\s+)?(?:above|previous|prior)(?:\s+(?:text|content))?
        (?:\s*[,.;:!])?\s+(?:and|then|instead|now)\b""",
        _not_after_modal,
    ),
    *_rules(
        "instruction",
        "forget",
        r"""\s+(?:all\s+(?:of\s+)?)?your\s+(?:\w+\s+)?
        (?:instructions|rules|guidelines|prompts?|programming|directives|constraints|guardrails)\b""",
    ),
    *_rules(
        "instruction",
        "you",
        r"""\s+are\s+(?:now|no\s+longer)\s+
        (?:(?:a|an|the|my|acting\s+as|operating\s+as|playing)\s+)?(?:[\w-]+\s+){0,2}?
        (?:ai|assistant|chatbot|bot|llm|gpt|dan|jailbroken|unrestricted|unfiltered|uncensored)\b
        |\s+are\s+now\s+in\s+(?:developer|dan|god|jailbreak|jailbroken|unrestricted|debug|admin
        |sudo)\s+mode\b
        |\s+are\s+no\s+longer\s+(?:bound|constrained)\s+by\b""",
    ),
    *_rules(
        "instruction",
        "instruction",
        r"s?\s*:",
        _preceded_by(
            r"\b(?:new|real|actual|true|secret|hidden|overriding|override|revised|system)\s+", 24
        ),
    ),
    *_rules(
        "instruction",
        "from",
        r"""\s+now\s+on,?\s+(?:
        you\s+(?:must|will|should|shall|are\s+to|have\s+to|need\s+to)\s+(?:(?:always|never|only|now)\s+)?
        (?:act|respond|answer|reply|pretend|behave|ignore|obey|follow\s+(?:my|these|the\s+new)|refuse
        |speak|talk|role-?play|be\s+(?:called|known\s+as|dan)|say|output|print|reveal|disregard
        |start\s+(?:every|each|your)|end\s+(?:every|each|your))
        |(?:always|never|only)\s+(?:respond|answer|reply|say|speak|output|act|refer))\b""",
    ),
    *_rules(
        "instruction",
        "tell inform",
        r"\s+(?:the\s+)?(?:user|human|operator)s?\b",
        _preceded_by(r"\b(?:do\s+not|don'?t|don\u2019t|never)\s+", 16),
    ),
    *_rules(
        "instruction",
        "to",
        r"\s+the\s+(?:user|human)\b",
        _preceded_by(
            r"""\b(?:do\s+not|don'?t|don\u2019t|never)\s+(?:mention|reveal|disclose|show|say)\s+
            (?:this|these|that|it|anything)\s+(?:[\w-]+\s+){0,2}""",
            80,
        ),
    ),
    *_rules(
        "instruction",
        "without",
        r"""\s+(?:(?:telling|informing)\s+(?:the\s+)?(?:user|human|operator)s?
        |the\s+user(?:'s)?\s+(?:knowing|noticing))\b""",
    ),
    *_rules(
        "instruction",
        "to for",
        rf"""\s+(?:the\s+|any\s+|all\s+)?{_MODEL}
        (?:\s*[:,.!;]|\s+(?:reading|processing|that|who)\b)""",
        _preceded_by(
            r"\b(?:attention|note|message|instructions?|important|notice|reminder)s?\s*",
            20,
            hints="attention note message instruction important notice reminder",
        ),
    ),
    *_rules(
        "instruction",
        "your the",
        r"""\s+(?:(?:full|entire|complete|exact|original|initial|hidden|secret|confidential
        |verbatim)\s+)*(?:system\s+(?:prompt|message|instructions)|(?:initial|original|hidden
        |secret)\s+(?:prompt|instructions))\b""",
        _preceded_by(
            r"""\b(?:reveal|print|output|repeat|leak|disclose|show|display|dump|share|send|return
            |(?:tell|give)\s+(?:me|us)|write\s+out)\s+(?:me\s+|us\s+)?""",
            24,
            hints="reveal print output repeat leak disclose show display dump share send return "
            "tell give write",
        ),
    ),
    *_rules(
        "instruction",
        "your",
        r"""\s+(?:real|true|actual|new)\s+(?:instructions|task|purpose|goal|objective|mission)
        \s+(?:is|are)\b""",
    ),
    *_rules(
        "instruction",
        "as",
        rf"""\s+an?\s+{_MODEL}\b[^.\n]{{0,60}}?\byou\s+(?:must|should|shall|will|need\s+to
        |have\s+to|are\s+(?:required|obligated|instructed)\s+to)\b""",
    ),
    *_rules(
        "instruction",
        "if",
        r"""\s+you\s+are\s+an?\s+(?:ai|llm|large\s+language\s+model|language\s+model)
        (?:\s+(?:assistant|agent|model|system|bot))?
        (?:\s*[,;.]|\s+(?:reading|processing|that|who)\b)""",
    ),
]

# -- tool_request ------------------------------------------------------------------------------

_VERBS = "call invoke run use execute trigger"
_METHODS = frozenset(_VERBS.split())
_NAME_SHAPED = r"""(?:[`'"]\s*[a-z_][\w.\-]{0,63}\s*[`'"]
    |(?=[a-z_][\w.\-]*[_.\-\d][\w.\-]*\w)[a-z_][\w.\-]*\w
    |[a-z_]\w*(?=\s*\(|\s+with\s+(?:the\s+)?(?:arguments?|parameters?|params|input|query)\b))"""

_TOOL_REQUEST = [
    *_rules(
        "tool_request",
        _VERBS,
        rf"""\s+(?:the\s+|this\s+|that\s+|your\s+|a\s+)?tools?(?:\s+(?:called|named)\b)?
        (?:\s*[:=]\s*|\s+){_NAME_SHAPED}""",
    ),
    *_rules(
        "tool_request",
        "[",
        r"""\s*(?:tool|tool_call|tool_use|use_tool|call_tool|function_call)\s*(?:=|:\s)\s*[\w.\-]+
        [^\]\n]{0,80}\]""",
    ),
    *_rules(
        "tool_request",
        "{",
        r"""\s*"(?:name|tool|tool_name|function)"\s*:\s*"[\w.\-]{1,64}"\s*,\s*
        "(?:arguments|args)"\s*:""",
    ),
    *_rules(
        "tool_request",
        "<",
        r"""\|?\s*/?\s*(?:tool_calls?|function_calls?|tool_use|python_tag)\s*\|?>
        |\s*(?:invoke|tool_call|function_call)\s+name\s*=""",
    ),
    *_rules("tool_request", '"', r"""(?:function_call|tool_calls)"\s*:\s*[\[{]"""),
    *_rules("tool_request", "to", r"=functions\.[\w.\-]+"),
]

_SHAPED_NAME = re.compile(r"[_.\-\d]|[a-z][A-Z]")


def _naming(tools: frozenset[str]) -> list[_Rule]:
    """Rules for a verb a few words before one of ``tools``.

    A name shaped like an identifier (``http_fetch``, ``files__append``) counts anywhere; a
    plain word (``calculator``) only quoted or followed by "tool" or "(", since "use a
    calculator" is ordinary English.
    """
    shaped = sorted(name.lower() for name in tools if _SHAPED_NAME.search(name))
    plain = sorted(name.lower() for name in tools if name and not _SHAPED_NAME.search(name))
    names = []
    if shaped:
        names.append(rf"(?:{_alternatives(shaped)})(?![\w-])")
    if plain:
        words = _alternatives(plain)
        names.append(rf"(?<=[`'\"])(?:{words})(?=[`'\"])")
        names.append(rf"(?:{words})(?=\s+(?:tool|function)\b|\s*\()")
    if not names:
        return []
    gap = r"(?:[^\w\n]+\w+){0,2}?[^\w\n]+"  # at most two words between verb and name
    return _rules("tool_request", _VERBS, f"{gap}(?:{'|'.join(names)})")


def _alternatives(names: Iterable[str]) -> str:
    # In verbose patterns a space would vanish: escape it (re.escape does).
    return "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))


# -- exfiltration ------------------------------------------------------------------------------

_URL_CHARS = r"""[^\s<>"'`\\)\]}]"""
_HOST_CHARS = r"""[^\s/<>"'`\\)\]}?#]"""
_VALUE_CHARS = r"""[^\s<>"'`\\)\]}&;\#=]"""
_RUN_CHARS = r"[a-z0-9+_=\-]"
_URL = re.compile(rf"https?://{_URL_CHARS}+")
_URL_LOOKBACK = 1024
"""A query value further than this into its URL is not looked into."""
_PATH_RUN = 65
"""A base64-looking run in a URL's path must be this long to count (and hex in a query): ids
and hashes run to 64 (SHA-256; Google Docs ids are 44), and flagging every commit or document
link would make the finding worthless."""
_QUERY_RUN = 32
"""A base64-looking run this long in a query value carries data (hex: ``_PATH_RUN``)."""
_SUSPECT_VALUE = 16
"""For a parameter named like ``data``, ``token`` or ``q``, 16 encoded characters suffice."""

_QUERY_PAIR = re.compile(r"(?:^|[&;])([^=&;]{1,40})=([^&;]*)")
_RUN = re.compile(r"[A-Za-z0-9+/_=\-]{16,}")
_PATH_SEGMENT_RUN = re.compile(rf"[A-Za-z0-9+_=\-]{{{_PATH_RUN},}}")
_PLACEHOLDER = re.compile(r"\{[^}]{1,60}\}|\[[^\]]{1,60}\]|<[^>]{1,60}>|\$\{?\w+\}?")
_SUSPECT_PARAMS = frozenset(
    "data q secret token key password passwd pwd payload d content body msg message info text "
    "leak exfil conversation chat history memory prompt".split()
)


def _in_url(text: str, lowered: str, match: re.Match[str]) -> Span | None:
    """Accept a match in an http(s) URL (or at its start) that carries data; report the URL."""
    start = lowered.rfind("http", max(0, match.start() - _URL_LOOKBACK), match.start() + 4)
    url = _URL.match(lowered, start) if start >= 0 else None
    if url is None or url.end() < match.end():
        return None
    return url.span() if _carries_data(text[url.start() : url.end()]) else None


def _image_carries_data(text: str, lowered: str, match: re.Match[str]) -> Span | None:
    url = text[match.start(1) : match.end(1)]
    return match.span() if _carries_data(url, image=True) else None


def _carries_data(url: str, image: bool = False) -> bool:
    """Whether a URL's path or query looks like it carries encoded data out.

    An image also counts when a query value is a placeholder the model is to fill in
    (``![](https://x/p.png?d={secret})``): rendering it would send the data.
    """
    head, _, query = url.partition("?")
    head, query = head.partition("#")[0], query.partition("#")[0]
    # Hex in a path is what CDNs (GitHub's camo) and content hashes look like: base64 only.
    if any(_encoded(run, _PATH_RUN, None) for run in _PATH_SEGMENT_RUN.findall(head)):
        return True
    for name, value in _QUERY_PAIR.findall(query):
        value = unquote(value)
        if name.lower() in _SUSPECT_PARAMS:
            base64, hex_ = _SUSPECT_VALUE, _SUSPECT_VALUE
        else:
            base64, hex_ = _QUERY_RUN, _PATH_RUN  # a commit's SHA in a query is no secret
        if any(_encoded(run, base64, hex_) for run in _RUN.findall(value)):
            return True
        if image and _PLACEHOLDER.fullmatch(value):
            return True
    return False


def _encoded(run: str, base64: int, hex_: int | None) -> bool:
    """Hex at least ``hex_`` long, or base64 (mixed case and digits, few separators, unlike a
    long slug) at least ``base64`` long."""
    body = run.rstrip("=")
    if all(char in "0123456789abcdefABCDEF" for char in body):
        return hex_ is not None and len(body) >= hex_
    separators = sum(char in "-_" for char in body)
    return (
        len(body) >= base64
        and separators * 10 < len(body)
        and any(char.isupper() for char in body)
        and any(char.islower() for char in body)
        and any(char.isdigit() for char in body)
    )


_SEND_VERBS = "send post upload transmit forward exfiltrate leak copy append"

_EXFILTRATION = [
    # A query value of 16+ characters with a digit (as encoded data nearly always has): the URL
    # around it is checked.
    *_rules(
        "exfiltration", "=", rf"(?={_VALUE_CHARS}{{16}})(?={_VALUE_CHARS}{{0,64}}?\d)", _in_url
    ),
    # A path segment starting with a long run, not all hex, with a digit (skipping whole
    # segments keeps this cheap).
    *_rules(
        "exfiltration",
        "http",
        rf"""s?://{_HOST_CHARS}{{1,253}}+/(?:{_HOST_CHARS}*+/)*?
        (?={_RUN_CHARS}{{{_PATH_RUN}}})(?={_RUN_CHARS}{{0,64}}[g-z+_=\-])(?={_RUN_CHARS}{{0,64}}\d)""",
        _in_url,
    ),
    # "send the conversation ... to https://...": the URL after "to", "at" or "into".
    *_rules(
        "exfiltration",
        "http",
        r"""(?:(?<=to\shttp)|(?<=at\shttp)|(?<=into\shttp)|(?<=\s<http))s?://[^\s<>"')\]]+""",
        _preceded_by(
            rf"""\b(?:{_SEND_VERBS.replace(" ", "|")})\s+
            (?:(?:the|all|this|that|your|my|any|every|of|entire|whole|full)\s+){{0,3}}
            (?:conversation|chat|history|context|secrets?|credentials?|passwords?|api\s+keys?|keys
            |tokens?|system\s+prompt|instructions|memory|memories|everything|previous\s+messages
            |(?:personal|private|sensitive|confidential)\s+(?:data|information|details|files)
            |user'?s?\s+(?:data|information|details|messages|emails|files|name|address))\b
            [^\n]{{0,60}}?\b(?:to|at|into)\s+<?""",
            160,
            hints=_SEND_VERBS,
        ),
    ),
    *_rules(
        "exfiltration",
        "!",
        # with a query value of 16+ characters or one that looks like a placeholder
        r"""\[[^\]\n]{0,200}\]\(\s*<?(https?://[^\s)>?]*\?
        (?=[^\s)>]*(?:=[^\s)>&;\#]{16}|[{\[<$]|%7b|%5b))[^\s)>]+)""",
        _image_carries_data,
    ),
]

# -- role_marker -------------------------------------------------------------------------------

_ROLE_MARKER = [
    *_rules(
        "role_marker",
        "system assistant developer",
        r"""(?:\*\*|__)?[ \t]*:(?:\*\*|__)?
        (?=[^\n]{0,100}?\b(?:you|your|ignore|instructions?|must|always|never|i\s+will|i'll|sure
        |certainly|tool|call)\b)[^\n]{0,100}""",
        line_start=" \t>*_",
    ),
    *_rules(
        "role_marker",
        "#",
        r"""\#{1,5}[ \t]*(?:system|assistant|developer)(?:[ \t]+(?:prompt|message|instructions?))?
        [ \t]*:?[ \t]*$""",
        line_start=" \t>",
    ),
    *_rules(
        "role_marker",
        "<",
        r"""\|(?:im_start|im_end|im_sep|system|user|assistant|endoftext|eot_id|start_header_id
        |end_header_id|begin_of_text)\|>
        |<\s*/?\s*sys\s*>>
        |(?:start|end)_of_turn>
        |\s*/?\s*tool_output\b[^>\n]{0,80}>?""",
    ),
    *_rules("role_marker", "[", r"/?inst\]"),
]

_FIXED = (*_INSTRUCTION, *_TOOL_REQUEST, *_EXFILTRATION, *_ROLE_MARKER)
_FIXED_ANCHORS = _group(rule for rule in _FIXED if rule.anchor not in _METHODS)
