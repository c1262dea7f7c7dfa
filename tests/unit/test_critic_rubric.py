"""The critic's rubric: the judge prompts it builds and how it reads the judge's replies."""

from __future__ import annotations

import json

import pytest
from stepbus_contracts import CriticReply, CritiqueRequestedData, ToolReviewReply
from stepbus_critic.ports import InvalidReplyError
from stepbus_critic.rubric import (
    DEFAULT_ANSWER_RUBRIC,
    JUDGE_MARKER,
    answer_messages,
    parse_reply,
    reply_schema,
    request_messages,
    retry_messages,
    strict_schema,
    tool_messages,
)
from stepbus_devtools.scripted_llm import judge as scripted_judge

VALID = {"score": 0.8, "relevance": 1, "completeness": 0.8, "groundedness": 0.9, "feedback": "ok"}

# --- prompts -----------------------------------------------------------------------------------


def test_an_answer_prompt_is_the_rubric_then_the_headed_sections_in_order() -> None:
    system, user = answer_messages(
        "What is 17 * 23?", ["calculator: 391", "search: a\nb"], "It is 391."
    )
    assert system["role"] == "system"
    assert system["content"].startswith(JUDGE_MARKER)
    assert DEFAULT_ANSWER_RUBRIC in system["content"]
    for key in ("score", "relevance", "completeness", "groundedness", "feedback"):
        assert f'"{key}"' in system["content"]
    assert "groundedness" in DEFAULT_ANSWER_RUBRIC and "observations" in DEFAULT_ANSWER_RUBRIC
    assert user == {
        "role": "user",
        "content": "## Task\nWhat is 17 * 23?\n\n"
        "## Observations\n- calculator: 391\n- search: a\n  b\n\n"
        "## Draft answer\nIt is 391.",
    }


def test_no_observations_read_none_and_a_custom_rubric_keeps_the_marker_and_shape() -> None:
    system, user = answer_messages("Say hi.", [], "hi", rubric="Be kind.")
    assert "## Observations\n(none)\n\n## Draft answer\nhi" in user["content"]
    assert system["content"].startswith(JUDGE_MARKER)
    assert "Be kind." in system["content"]
    assert DEFAULT_ANSWER_RUBRIC not in system["content"]
    assert '"groundedness": <number 0-1>' in system["content"]


def test_a_tool_prompt_names_the_tool_and_shows_the_arguments_as_json() -> None:
    system, user = tool_messages("Clean up", "shell", "Runs a command.", {"cmd": "ls", "a": 1})
    assert system["content"].startswith(JUDGE_MARKER)
    assert '"approved"' in system["content"] and '"reason"' in system["content"]
    task, tool, arguments = user["content"].split("\n\n", 2)
    assert task == "## Task\nClean up"
    assert tool == "## Tool\nshell\nRuns a command."
    assert arguments.startswith("## Arguments\n")
    assert json.loads(arguments.removeprefix("## Arguments\n")) == {"cmd": "ls", "a": 1}
    [_, bare] = tool_messages("t", "calc", None, None)
    assert bare["content"] == "## Task\nt\n\n## Tool\ncalc\n\n## Arguments\n{}"


def test_a_request_picks_its_prompt_by_kind() -> None:
    answer = CritiqueRequestedData(kind="answer", step=2, input="q", draft="d", observations=[])
    assert request_messages(answer) == answer_messages("q", [], "d")
    call = CritiqueRequestedData(
        kind="tool_call", step=1, call_index=0, input="q", tool="rm", arguments={"p": "/"}
    )
    assert request_messages(call) == tool_messages("q", "rm", None, {"p": "/"})


def test_the_scripted_model_knows_the_marker() -> None:
    assert scripted_judge.JUDGE_MARKER == JUDGE_MARKER


def test_a_retry_shows_the_invalid_reply_and_what_was_wrong() -> None:
    first = answer_messages("q", [], "d")
    again = retry_messages(first, "I think it is fine.", "no JSON object found", "answer")
    assert again[:2] == first
    assert again[2] == {"role": "assistant", "content": "I think it is fine."}
    assert again[3]["role"] == "user"
    assert "no JSON object found" in again[3]["content"]
    assert "only the JSON" in again[3]["content"]
    assert '"score"' in again[3]["content"]
    tool = retry_messages(first, "?", "bad", "tool_call")
    assert '"approved"' in tool[3]["content"]


def test_reply_schemas_are_strict_mode_compatible() -> None:
    for kind, model, name in (
        ("answer", CriticReply, "critic_reply"),
        ("tool_call", ToolReviewReply, "tool_review_reply"),
    ):
        got_name, schema = reply_schema(kind)  # type: ignore[arg-type]
        assert got_name == name
        assert schema == strict_schema(model)
        assert schema["type"] == "object"
        assert schema["additionalProperties"] is False
        assert set(schema["required"]) == set(schema["properties"]) == set(model.model_fields)
        assert all("title" not in spec for spec in schema["properties"].values())
    _, answer = reply_schema("answer")
    assert answer["properties"]["score"] == {
        "type": "number",
        "minimum": 0.0,
        "maximum": 1.0,
        "description": "Overall, 0 to 1.",
    }
    answer["properties"].clear()  # a copy each time
    assert reply_schema("answer")[1]["properties"]


# --- replies -----------------------------------------------------------------------------------


def test_a_valid_answer_reply() -> None:
    reply = parse_reply(json.dumps(VALID), "answer")
    assert reply == CriticReply(
        score=0.8, relevance=1.0, completeness=0.8, groundedness=0.9, feedback="ok"
    )


@pytest.mark.parametrize(
    "text",
    [
        "```json\n" + json.dumps(VALID) + "\n```",
        "```\n" + json.dumps(VALID, indent=2) + "\n```",
        "Here is my verdict:\n" + json.dumps(VALID) + "\nI hope this helps.",
        "Verdict {not json} then " + json.dumps(VALID) + " done",
        "  " + json.dumps({**VALID, "confidence": "high", "notes": [1]}) + "  ",
    ],
)
def test_fences_prose_and_extra_keys_are_tolerated(text: str) -> None:
    reply = parse_reply(text, "answer")
    assert isinstance(reply, CriticReply)
    assert reply.score == 0.8


def test_a_valid_tool_review_reply() -> None:
    reply = parse_reply('Sure. {"approved": false, "reason": "deletes files"}', "tool_call")
    assert reply == ToolReviewReply(approved=False, reason="deletes files")


@pytest.mark.parametrize(
    ("text", "kind", "message"),
    [
        ("I think it is fine.", "answer", "not JSON: no JSON object"),
        ("", "answer", "empty"),
        ("[0.5, 0.5]", "answer", "not an object (it is an array)"),
        ('"fine"', "tool_call", "not an object (it is a string)"),
        ("```json\n[1]\n```", "answer", "not an object"),
        ('{"score": 0.5', "answer", "not JSON"),
        (json.dumps({k: v for k, v in VALID.items() if k != "groundedness"}), "answer",
         "'groundedness' is missing"),
        (json.dumps({**VALID, "score": 1.5}), "answer", "'score' is invalid"),
        (json.dumps({**VALID, "relevance": -0.1}), "answer", "'relevance' is invalid"),
        (json.dumps({**VALID, "score": "0.8"}), "answer", "'score' is invalid"),
        (json.dumps({**VALID, "feedback": None}), "answer", "'feedback' is invalid"),
        ('{"approved": "yes", "reason": "r"}', "tool_call", "'approved' is invalid"),
        ('{"reason": "r"}', "tool_call", "'approved' is missing"),
        (json.dumps(VALID), "tool_call", "'approved' is missing"),
    ],
)  # fmt: skip
def test_invalid_replies_say_what_was_wrong(text: str, kind: str, message: str) -> None:
    with pytest.raises(InvalidReplyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_reply(text, kind)  # type: ignore[arg-type]


def test_an_out_of_range_score_names_the_bound_and_the_value() -> None:
    with pytest.raises(InvalidReplyError) as caught:
        parse_reply(json.dumps({**VALID, "score": 1.5}), "answer")
    assert "less than or equal to 1" in str(caught.value)
    assert "got 1.5" in str(caught.value)
    assert isinstance(caught.value, ValueError)
