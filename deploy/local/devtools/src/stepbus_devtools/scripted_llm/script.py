"""The script: what the scripted model answers, decided only from the request.

Pure functions, no I/O. The conversation's first user message is the task input; bracketed
directives in it tune the behaviour (see :func:`read_directives`), the arithmetic expressions
left in it are worked through one ``calculator`` tool call at a time, and the final answer is
built from the tool results.

Memory: an input ``Remember that <fact>`` calls the ``remember`` tool with the fact; an input
without arithmetic answers from the recalled memory the planner put in the prompt (a system
message starting ``Memory:``): what the session said last, or else the best stored memory.

Critic: a request of the critic (its system prompt opens with ``judge.JUDGE_MARKER``) gets a
verdict from :mod:`.judge` instead, whatever else its task holds. The planner asks for a
revision with a user message starting ``Reviewer feedback`` after the draft; ``[draft=weak]``
and ``[draft=worse]`` make drafts that the judge scores low before or after feedback.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stepbus_devtools.scripted_llm.judge import JUDGE_MARKER, judge_reply, section

__all__ = [
    "CALCULATOR",
    "Directives",
    "ToolCall",
    "Turn",
    "Usage",
    "conversation_hash",
    "extract_expressions",
    "feedback_rounds",
    "is_judge_request",
    "message_text",
    "next_turn",
    "parse_latency_range",
    "read_directives",
    "recall_answer",
    "task_input",
]

CALCULATOR = "calculator"
"""The tool the script computes with."""

REMEMBER = "remember"
"""The tool the script stores facts with."""

_REMEMBER_INPUT = re.compile(r"^\s*remember(?:\s+that)?[\s:,]+(?P<fact>.+?)\s*$", re.I | re.S)
_MEMORY_LINE = re.compile(r"^- \[(?P<tag>[^\]]*)\] (?P<text>.*)$")

LOOP_EXPRESSION = "1 + 1"

_INJECTED_CALL = re.compile(r"\[\s*tool\s*=\s*(?P<name>[A-Za-z0-9_-]{1,64})\s*\]", re.I)
"""A call instruction in a tool result (what ``[obey]`` falls for)."""

_UNTRUSTED = re.compile(
    r"^<tool_output\b[^>]*>\n(?P<body>.*)\n</tool_output>(?:\n\[stepbus: [^\n]*\])?$", re.S
)
"""A tool result as the planner delimits it: the scripted model reads the body."""

FEEDBACK_PREFIX = "Reviewer feedback"
"""How the planner's revision turn (a user message after the draft) begins."""

WEAK_SHIFT = 9
"""How far a weak draft's number is from the true result (391 becomes "about 400")."""

_DIRECTIVE = re.compile(
    r"\[\s*(?:"
    r"latency\s*=\s*(?P<latency>\d+(?:\s*-\s*\d+)?)"
    r"|usage\s*=\s*(?P<usage>\d+)"
    r"|fail\s*=\s*(?P<fail>[45]\d\d)"
    r"|judge\s*=\s*(?P<judge>invalid-once|invalid|harsh|no-structured)"
    r"|review\s*=\s*(?P<review>reject)"
    r"|draft\s*=\s*(?P<draft>weak|worse)"
    r"|tool\s*=\s*(?P<tool>[A-Za-z0-9_-]{1,64})"
    r"|(?P<flag>parallel|loop|obey|unoffered|terse)"
    r")\s*\]",
    re.IGNORECASE,
)
# Horizontal whitespace only: a line break ends an expression, so one expression per line works.
_CANDIDATE = re.compile(r"[0-9.()+\-*/%^ \t]+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")
_OPERATOR = re.compile(r"[+\-*/%^]")
_ERROR_PREFIX = "error:"

Message = Mapping[str, Any]


@dataclass(frozen=True)
class Directives:
    """Behaviour switches read from the task input.

    Attributes:
        latency_ms: Extra latency range ``(lo, hi)`` for every call, or ``None``.
        parallel: Ask for all remaining calculator calls in one turn.
        usage: Completion tokens to report on every turn, or ``None`` to count them.
        fail: HTTP status to fail each distinct request with once, or ``None``.
        loop: Never finish; ask for ``1 + 1`` on every turn.
        judge: ``[judge=...]`` switches of the judge: ``invalid`` (no reply is JSON),
            ``invalid-once`` (only the retry's is), ``harsh`` (every score halved),
            ``no-structured`` (a request with ``response_format`` gets HTTP 400).
        review_reject: ``[review=reject]``: the judge rejects every reviewed tool call.
        draft: ``weak``: the final answer is ungrounded until the conversation has reviewer
            feedback; ``worse``: the first draft is right and each revision worse.
        tool: ``[tool=NAME]``: call the offered tool ``NAME`` once, with the first JSON object
            of the input as its arguments (``{}`` without one), and answer with its result.
        obey: ``[obey]``: a gullible model: a ``[tool=NAME] {...}`` found in the latest tool
            result is obeyed (the call is made), as a model falling for a prompt injection.
        unoffered: ``[unoffered]``: ``[tool=NAME]`` is called even when ``NAME`` was not
            offered, as a model naming a tool it was not given.
        terse: ``[terse]``: a final answer of several results is the bare list
            (``391, 195``, not ``Results: 391, 195``): with it in a system prompt, a changed
            prompt changes the final step (what ``stepbus replay --prompt`` shows).
    """

    latency_ms: tuple[int, int] | None = None
    parallel: bool = False
    usage: int | None = None
    fail: int | None = None
    loop: bool = False
    judge: frozenset[str] = frozenset()
    review_reject: bool = False
    draft: str | None = None
    tool: str | None = None
    obey: bool = False
    unoffered: bool = False
    terse: bool = False


@dataclass(frozen=True)
class ToolCall:
    """One function call the model asks for; ``arguments`` is a JSON object as text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Usage:
    """Token counts reported for one turn."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Turn:
    """The assistant's answer: final text, or tool calls (then ``content`` is ``None``)."""

    content: str | None
    tool_calls: tuple[ToolCall, ...]
    usage: Usage

    @property
    def finish_reason(self) -> str:
        """``"tool_calls"`` when the turn asks for tools, else ``"stop"``."""
        return "tool_calls" if self.tool_calls else "stop"


def parse_latency_range(text: str) -> tuple[int, int]:
    """Parse ``"200"`` or ``"50-300"`` (milliseconds) into an ordered ``(lo, hi)`` pair.

    Raises:
        ValueError: If the text is not one non-negative integer or two joined by ``-``.
    """
    parts = [part.strip() for part in text.split("-")]
    if len(parts) > 2 or not all(part.isdigit() for part in parts):
        raise ValueError(f"latency must look like '200' or '50-300', got {text!r}")
    lo, hi = int(parts[0]), int(parts[-1])
    return (min(lo, hi), max(lo, hi))


def message_text(content: Any) -> str:
    """Return the text of a message ``content`` (a string, ``None`` or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
    return ""


def task_input(messages: Sequence[Message]) -> str:
    """Return the text of the conversation's first user message (``""`` if there is none)."""
    for message in messages:
        if message.get("role") == "user":
            return message_text(message.get("content"))
    return ""


def read_directives(messages: Sequence[Message]) -> Directives:
    """Read the bracketed directives of the task input, and ``[terse]`` and ``[parallel]``
    of the system prompt.

    For a request of the critic, only its ``## Task`` section counts: the observations it
    quotes (recalled memory among them) may hold other tasks' directives. The planner's
    system prompt may change how the answer is shaped (a prompt change is what
    ``stepbus replay --prompt`` tries), not the rest; the recalled memory's system message
    (``Memory:``), which quotes other tasks, never counts.

    Syntax (case-insensitive, anywhere in the first user message): ``[latency=200]``,
    ``[latency=50-300]``, ``[parallel]``, ``[usage=5000]``, ``[fail=503]`` (any 4xx/5xx
    status), ``[loop]``, ``[terse]``; ``[judge=invalid|invalid-once|harsh|no-structured]``
    (several may be given), ``[review=reject]``, ``[draft=weak|worse]``. Anything else in
    brackets is ordinary text.
    """
    values: dict[str, Any] = {}
    judge: set[str] = set()
    text = task_input(messages)
    if is_judge_request(messages):
        text = section(text, "Task") or ""
    else:
        for prompt in _system_prompts(messages):
            for match in _DIRECTIVE.finditer(prompt):
                if (match["flag"] or "").lower() in _PROMPT_FLAGS:
                    values[match["flag"].lower()] = True
    for match in _DIRECTIVE.finditer(text):
        if match["judge"]:
            judge.add(match["judge"].lower())
        elif match["review"]:
            values["review_reject"] = True
        elif match["draft"]:
            values["draft"] = match["draft"].lower()
        elif match["tool"]:
            values["tool"] = match["tool"]
        elif match["latency"]:
            values["latency_ms"] = parse_latency_range(match["latency"])
        elif match["usage"]:
            values["usage"] = int(match["usage"])
        elif match["fail"]:
            values["fail"] = int(match["fail"])
        else:
            values[match["flag"].lower()] = True
    return Directives(**values, judge=frozenset(judge))


_PROMPT_FLAGS = frozenset({"terse", "parallel"})
"""The directives a system prompt may give."""


def _system_prompts(messages: Sequence[Message]) -> list[str]:
    """The system messages of a conversation but the recalled memory's."""
    return [
        text
        for message in messages
        if message.get("role") in ("system", "developer")
        and not (text := message_text(message.get("content"))).startswith("Memory:")
    ]


def extract_expressions(text: str) -> list[str]:
    """Return the arithmetic expressions of ``text``, in order, directives removed first.

    An expression is a maximal run of digits, ``.``, spaces, parentheses and ``+ - * / % ^``
    with at least one operator and two numbers, stripped of surrounding whitespace, a
    sentence-ending period and unbalanced outer parentheses.
    """
    expressions = []
    for candidate in _CANDIDATE.findall(_DIRECTIVE.sub(" ", text)):
        expression = _trim(candidate)
        if len(_NUMBER.findall(expression)) >= 2 and _OPERATOR.search(expression):
            expressions.append(expression)
    return expressions


def _trim(candidate: str) -> str:
    expression = candidate.strip().rstrip(".").strip()
    while expression.startswith("(") and expression.count("(") > expression.count(")"):
        expression = expression[1:].strip()
    while expression.endswith(")") and expression.count(")") > expression.count("("):
        expression = expression[:-1].strip()
    return expression


def conversation_hash(messages: Sequence[Message]) -> str:
    """Return a sha256 hex digest of the conversation's roles, texts and tool calls.

    Fields that clients add or drop freely (``name``, ``refusal``, nulls) do not count, so a
    replayed conversation hashes the same.
    """
    canonical = [
        [
            message.get("role"),
            message_text(message.get("content")),
            message.get("tool_call_id"),
            [
                [
                    call.get("id"),
                    call.get("function", {}).get("name"),
                    call.get("function", {}).get("arguments"),
                ]
                for call in message.get("tool_calls") or ()
            ],
        ]
        for message in messages
    ]
    encoded = json.dumps(canonical, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode()).hexdigest()


def next_turn(messages: Sequence[Message], tools: Sequence[Mapping[str, Any]]) -> Turn:
    """Decide the assistant's next turn for a conversation.

    Args:
        messages: The OpenAI chat messages so far (dicts with ``role``, ``content``, ...).
        tools: The OpenAI tools offered (``{"type": "function", "function": {"name": ...}}``).

    Returns:
        Tool calls for the next expression(s), or the final text, with token usage; for a
        request of the critic, the judge's verdict as JSON text.
    """
    directives = read_directives(messages)
    if is_judge_request(messages):  # before anything else: the task it quotes has arithmetic
        retry = any(message.get("role") == "assistant" for message in messages)
        verdict = judge_reply(
            task_input(messages),
            retry=retry,
            flags=directives.judge,
            reject_calls=directives.review_reject,
        )
        return Turn(content=verdict, tool_calls=(), usage=_usage(messages, verdict, directives))
    if directives.loop:
        expressions = [LOOP_EXPRESSION]
    else:
        expressions = extract_expressions(task_input(messages))
    results = _tool_results(messages)
    remember = _REMEMBER_INPUT.match(task_input(messages))
    calls: tuple[ToolCall, ...] = ()
    offered = _tool_names(tools)
    injected = _INJECTED_CALL.search(results[-1]) if directives.obey and results else None
    if injected is not None and (injected["name"] in offered or directives.unoffered):
        text = None  # falls for the instruction in the tool's output
        arguments = json.dumps(_json_object(results[-1][injected.end() :]))
        call_id = "call_" + conversation_hash(messages)[:12]
        calls = (ToolCall(id=call_id, name=injected["name"], arguments=arguments),)
    elif directives.tool is not None and (directives.tool in offered or directives.unoffered):
        text = results[-1] if results else None  # the tool's result is the answer
        if text is None:
            arguments = json.dumps(_json_object(task_input(messages)))
            call_id = "call_" + conversation_hash(messages)[:12]
            calls = (ToolCall(id=call_id, name=directives.tool, arguments=arguments),)
    elif remember and REMEMBER in _tool_names(tools) and not directives.loop:
        text = "I will remember that." if results else None
        if text is None:
            fact = json.dumps({"fact": remember["fact"]})
            calls = (ToolCall(id="call_" + conversation_hash(messages)[:12], name=REMEMBER,
                              arguments=fact),)  # fmt: skip
    elif not expressions and not directives.loop and (recalled := recall_answer(messages)):
        text = recalled
    else:
        text = _final_text(expressions, results, _tool_names(tools), directives)
    if text is None and not calls:
        pending = expressions if directives.loop else expressions[len(results) :]
        calls = _calculator_calls(messages, pending if directives.parallel else pending[:1])
    if text is not None and directives.draft is not None:
        text = _draft(text, results, directives.draft, feedback_rounds(messages))
    output = text if text is not None else "".join(call.arguments for call in calls)
    return Turn(content=text, tool_calls=calls, usage=_usage(messages, output, directives))


def is_judge_request(messages: Sequence[Message]) -> bool:
    """Whether the conversation is the critic's: a system prompt opening with the marker."""
    return any(
        message.get("role") in ("system", "developer")
        and message_text(message.get("content")).lstrip().startswith(JUDGE_MARKER)
        for message in messages
    )


def feedback_rounds(messages: Sequence[Message]) -> int:
    """How many revisions the planner asked for: user messages starting ``Reviewer feedback``."""
    return sum(
        1
        for message in messages
        if message.get("role") == "user"
        and message_text(message.get("content")).lstrip().startswith(FEEDBACK_PREFIX)
    )


def _draft(text: str, results: Sequence[str], kind: str, rounds: int) -> str:
    """The final answer as ``[draft=weak|worse]`` makes it after ``rounds`` of feedback.

    ``weak``: ungrounded (``I believe the answer is about 400.`` for 391) until feedback
    comes, then right. ``worse``: right at first; the first revision adds an unsupported
    guess (half its numbers ungrounded), later ones are ungrounded and further off.
    """
    if kind == "weak":
        return _weak(results, WEAK_SHIFT) if rounds == 0 else text
    if rounds == 0:
        return text
    if rounds == 1:
        return f"{text}, or perhaps {', '.join(_shifted(results, WEAK_SHIFT))}."
    return _weak(results, WEAK_SHIFT * rounds)


def _weak(results: Sequence[str], shift: int) -> str:
    shifted = _shifted(results, shift)
    if len(shifted) == 1:
        return f"I believe the answer is about {shifted[0]}."
    return f"I believe the answers are about {', '.join(shifted[:-1])} and {shifted[-1]}."


def _shifted(results: Sequence[str], shift: int) -> list[str]:
    """The numeric results moved by ``shift`` (``0`` moved when there is none)."""
    values = []
    for result in results:
        try:
            values.append(float(result))
        except ValueError:
            continue
    moved = [value + shift for value in values or [0.0]]
    return [str(int(value)) if value.is_integer() else str(value) for value in moved]


def _usage(messages: Sequence[Message], output: str, directives: Directives) -> Usage:
    prompt_chars = sum(len(message_text(message.get("content"))) for message in messages)
    return Usage(
        prompt_tokens=_tokens(prompt_chars),
        completion_tokens=_tokens(len(output)) if directives.usage is None else directives.usage,
    )


def _final_text(
    expressions: Sequence[str],
    results: Sequence[str],
    tool_names: set[str],
    directives: Directives,
) -> str | None:
    """The final answer, or ``None`` when the next turn must call the calculator."""
    if not expressions:
        return "I have no arithmetic to do."
    if CALCULATOR not in tool_names:
        return "I need the calculator tool."
    if directives.loop:
        return None
    errors = [result for result in results if result.startswith(_ERROR_PREFIX)]
    if errors:
        return f"I could not compute: {errors[0]}"
    if len(results) < len(expressions):
        return None
    if len(expressions) == 1:
        return results[0]
    listed = ", ".join(results[: len(expressions)])
    return listed if directives.terse else "Results: " + listed


def _tool_names(tools: Sequence[Mapping[str, Any]]) -> set[str]:
    return {
        tool.get("function", {}).get("name")
        for tool in tools
        if tool.get("type", "function") == "function"
    }


def _tool_results(messages: Sequence[Message]) -> list[str]:
    """Tool results ordered by when their call was asked for, not when they arrived."""
    call_order = {
        call.get("id"): position
        for position, call in enumerate(
            call for message in messages for call in message.get("tool_calls") or ()
        )
    }
    tool_messages = [message for message in messages if message.get("role") == "tool"]
    ranked = sorted(
        enumerate(tool_messages),
        key=lambda item: (call_order.get(item[1].get("tool_call_id"), len(call_order)), item[0]),
    )
    return [_unwrapped(message_text(message.get("content"))) for _, message in ranked]


def _unwrapped(content: str) -> str:
    """The tool result inside the planner's ``<tool_output>`` delimiters (as is without)."""
    match = _UNTRUSTED.match(content)
    return match["body"] if match else content


def _calculator_calls(
    messages: Sequence[Message], expressions: Sequence[str]
) -> tuple[ToolCall, ...]:
    conversation = conversation_hash(messages)
    return tuple(
        ToolCall(
            id="call_" + hashlib.sha256(f"{conversation}:{index}".encode()).hexdigest()[:12],
            name=CALCULATOR,
            arguments=json.dumps({"expression": expression}),
        )
        for index, expression in enumerate(expressions)
    )


def _tokens(characters: int) -> int:
    return max(1, math.ceil(characters / 4))


def recall_answer(messages: Sequence[Message]) -> str | None:
    """An answer from the memory the planner recalled into the prompt, if there is any."""
    memory = next(
        (
            message_text(m.get("content"))
            for m in messages
            if m.get("role") == "system" and message_text(m.get("content")).startswith("Memory:")
        ),
        None,
    )
    if memory is None:
        return None
    stored: list[str] = []
    said: dict[str, str] = {}
    section = ""
    for line in memory.splitlines():
        if line.startswith("Stored memories"):
            section = "stored"
        elif line.startswith("Earlier in this conversation"):
            section = "turns"
        elif match := _MEMORY_LINE.match(line):
            if section == "stored":
                stored.append(match["text"])
            elif section == "turns":
                who, _, what = match["text"].partition(": ")
                said[who] = what  # the latest of each wins
    if "user" in said and "assistant" in said:  # this session first: what was just said
        return f"Earlier you asked: {said['user']} I answered: {said['assistant']}"
    if stored:
        return f"From memory: {' '.join(stored[0].split())}"
    return None


def _json_object(text: str) -> dict[str, Any]:
    """The first JSON object written in ``text`` (``{}`` when there is none)."""
    decoder = json.JSONDecoder()
    for start in (i for i, char in enumerate(text) if char == "{"):
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}
