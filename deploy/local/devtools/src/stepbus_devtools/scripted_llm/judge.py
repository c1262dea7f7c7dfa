"""The scripted model as a judge: deterministic verdicts for the critic's requests (pure).

A judge request is recognised by the critic's system prompt, which opens with
``JUDGE_MARKER``; its user message has headed sections, ``## Task``, ``## Observations``,
``## Draft answer`` for a draft and ``## Task``, ``## Tool``, ``## Arguments`` for a tool
call (``stepbus_critic.rubric`` writes them). A draft is scored by arithmetic, not by taste:

- groundedness: the share of the numbers in the draft that appear in the observations or in
  the task (1.0 when the draft has no numbers);
- completeness: the share of the calculator's results (observations ``calculator: <result>``)
  that appear in the draft (1.0 without any);
- relevance: 1.0 for a draft with any text, else 0;
- score: the lowest of the three.

A tool call is approved unless its arguments hold ``rm `` or the task says ``[review=reject]``.
Directives in the task tune the judge (``Directives.judge``): ``invalid`` (no reply is JSON),
``invalid-once`` (the first reply of a conversation is not JSON, the retry is), ``harsh``
(every score halved).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

__all__ = ["INVALID_REPLY", "JUDGE_MARKER", "judge_reply", "score_draft", "section"]

JUDGE_MARKER = "You are the stepbus critic"
"""What the critic's system prompt opens with (``stepbus_critic.rubric.JUDGE_MARKER``)."""

INVALID_REPLY = "I think it is fine."
"""What the judge says instead of JSON under ``[judge=invalid]`` and ``[judge=invalid-once]``."""

_CALCULATOR_PREFIX = "calculator: "
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")
_BRACKETED = re.compile(r"\[[^\]\n]*\]")  # directives: their numbers are not the task's


def judge_reply(
    request: str, *, retry: bool, flags: frozenset[str], reject_calls: bool = False
) -> str:
    """The judge's reply text to its user message ``request``.

    Args:
        request: The judge request's user message (its headed sections).
        retry: The conversation already holds an assistant turn (the critic asks again).
        flags: The task's ``[judge=...]`` directives.
        reject_calls: The task says ``[review=reject]``.
    """
    if "invalid" in flags or ("invalid-once" in flags and not retry):
        return INVALID_REPLY
    if section(request, "Arguments") is not None and section(request, "Draft answer") is None:
        return json.dumps(_review(request, reject_calls))
    task = section(request, "Task") or ""
    observations = _observations(section(request, "Observations") or "")
    draft = section(request, "Draft answer") or ""
    return json.dumps(score_draft(task, observations, draft, harsh="harsh" in flags))


def score_draft(
    task: str, observations: Sequence[str], draft: str, *, harsh: bool = False
) -> dict[str, float | str]:
    """The five keys of a draft's verdict (``CriticReply``), scored as the module says;
    ``harsh`` halves every score (and never leaves the feedback empty)."""
    grounds = {
        *_numbers(_BRACKETED.sub(" ", task)),
        *(n for o in observations for n in _numbers(o)),
    }
    said = _numbers(draft)
    unsupported = list(dict.fromkeys(n for n in said if n not in grounds))
    results = [
        o[len(_CALCULATOR_PREFIX) :].strip()
        for o in observations
        if o.startswith(_CALCULATOR_PREFIX)
    ]
    missing = [r for r in dict.fromkeys(results) if not _mentions(draft, r)]
    groundedness = 1.0 if not said else (len(said) - _count(said, unsupported)) / len(said)
    completeness = 1.0 if not results else (len(results) - _count(results, missing)) / len(results)
    relevance = 1.0 if draft.strip() else 0.0
    feedback = _feedback(draft, unsupported, missing)
    factor = 0.5 if harsh else 1.0
    if harsh and not feedback:
        feedback = "Explain how the result was reached, step by step."
    scores = [round(value * factor, 4) for value in (relevance, completeness, groundedness)]
    return {
        "score": min(scores),
        "relevance": scores[0],
        "completeness": scores[1],
        "groundedness": scores[2],
        "feedback": feedback,
    }


def _feedback(draft: str, unsupported: list[str], missing: list[str]) -> str:
    if not draft.strip():
        return "The answer is empty; answer the task."
    result = "result" if len(missing) == 1 else "results"
    if unsupported and missing:
        return (
            f"The answer says {_listed(unsupported)}, which no tool result supports; state "
            f"the calculator's {result} {_listed(missing)}."
        )
    if unsupported:
        return (
            f"The answer says {_listed(unsupported)}, which no tool result supports; remove it "
            "or back it with a tool result."
        )
    if missing:
        return f"The answer leaves out the calculator's {result} {_listed(missing)}; state it."
    return ""


def _review(request: str, reject_calls: bool) -> dict[str, bool | str]:
    tool = (section(request, "Tool") or "").partition("\n")[0].strip() or "the tool"
    arguments = section(request, "Arguments") or ""
    if reject_calls:
        return {"approved": False, "reason": "The task asks for every call to be rejected."}
    if "rm " in arguments:
        return {
            "approved": False,
            "reason": f"The arguments of {tool} run 'rm ', which deletes files the task did "
            "not ask to delete.",
        }
    return {"approved": True, "reason": f"The call to {tool} fits the task."}


def section(request: str, heading: str) -> str | None:
    """The text under ``## heading`` up to the next known heading (None when absent)."""
    match = re.search(rf"^## {re.escape(heading)}[ \t]*\n", request, re.M)
    if match is None:
        return None
    rest = request[match.end() :]
    if heading != "Draft answer":  # the draft is last: whatever it holds is the draft
        following = re.search(
            r"^## (?:Task|Observations|Draft answer|Tool|Arguments)[ \t]*$", rest, re.M
        )
        if following is not None:
            rest = rest[: following.start()]
    return rest.strip("\n")


def _observations(text: str) -> list[str]:
    """One per ``- `` line; indented lines continue the one before; ``(none)``: none."""
    found: list[str] = []
    for line in text.splitlines():
        if line.startswith("- "):
            found.append(line[2:])
        elif line.startswith("  ") and found:
            found[-1] += "\n" + line[2:]
    return found


def _numbers(text: str) -> list[str]:
    """The numbers of ``text`` in canonical form (``391.0`` and ``391`` alike)."""
    numbers = []
    for raw in _NUMBER.findall(text):
        try:
            numbers.append(format(Decimal(raw).normalize(), "f"))
        except InvalidOperation:
            continue
    return numbers


def _mentions(draft: str, result: str) -> bool:
    """Whether the draft states a result: the same number, or the result's text."""
    numbers = _numbers(result)
    if len(numbers) == 1 and _NUMBER.fullmatch(result.lstrip("-")):
        return numbers[0] in _numbers(draft)
    return result in draft


def _count(items: Sequence[str], among: Sequence[str]) -> int:
    return sum(1 for item in items if item in among)


def _listed(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"
