"""The trace picture: one trace's spans as a waterfall page, and that page as a PNG."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from stepbus_devtools import trace_picture
from stepbus_devtools.trace_picture import (
    WIDTH,
    ChromiumNotFoundError,
    find_chromium,
    page_height,
    render_html,
    render_png,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TASK = "task-7f3a"
MS = 1_000_000
T0 = 1_760_000_000_000_000_000


def span(
    span_id: str,
    parent: str | None,
    name: str,
    service: str,
    start_ms: float,
    end_ms: float,
    kind: str = "INTERNAL",
    status: str = "UNSET",
    links: list[dict[str, Any]] | None = None,
    **attributes: Any,
) -> dict[str, Any]:
    return {
        "trace_id": TRACE,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": name,
        "kind": kind,
        "service": service,
        "start_ns": T0 + int(start_ms * MS),
        "end_ns": T0 + int(end_ms * MS),
        "attributes": {key.replace("__", "."): value for key, value in attributes.items()},
        "links": links or [],
        "status": status,
    }


def a_trace() -> list[dict[str, Any]]:
    """A task of two steps across five services, shuffled (the picture orders it)."""
    link = [{"trace_id": TRACE, "span_id": "00000000000000a1", "attributes": {}}]
    spans = [
        span(
            "0000000000000001", None, "invoke_agent stepbus", "planner", 2, 412,
            stepbus__task__id=TASK,
        ),
        span("0000000000000002", "0000000000000001", "send stepbus.tasks", "gateway", 0, 3,
             kind="PRODUCER"),
        span("0000000000000003", "0000000000000001", "step 0", "planner", 5, 140),
        span("0000000000000004", "0000000000000003", "process stepbus.memory.requests",
             "memory", 8, 30, kind="CONSUMER"),
        span("0000000000000005", "0000000000000004", "recall memory", "memory", 10, 28,
             stepbus__memory__hits=3),
        span("0000000000000006", "0000000000000003", "chat gpt-4o-mini", "planner", 32, 120,
             kind="CLIENT", gen_ai__usage__input_tokens=812, gen_ai__usage__output_tokens=64),
        span("0000000000000007", "0000000000000001", "step 1", "planner", 142, 330,
             links=link, stepbus__replay=True),
        span("0000000000000008", "0000000000000007", "execute_tool calculator",
             "tool-executor", 150, 190, gen_ai__tool__name="calculator"),
        span("0000000000000009", "0000000000000007", "execute_tool <script>alert(1)</script>",
             "tool-executor", 192, 205, status="ERROR", gen_ai__tool__name="<b>fetch</b>"),
        span("000000000000000a", "0000000000000007", "chat gpt-4o-mini & co", "planner",
             210, 320, kind="CLIENT", gen_ai__usage__input_tokens=1290,
             gen_ai__usage__output_tokens=41),
        span("000000000000000b", "0000000000000001", "critique answer", "critic", 335, 400,
             stepbus__critic__score=0.86),
        span("000000000000000c", "000000000000000b", "send stepbus.critiques", "critic",
             398, 401, kind="PRODUCER"),
    ]  # fmt: skip
    return spans[::-1]


TREE_ORDER = [
    "invoke_agent stepbus",
    "send stepbus.tasks",
    "step 0",
    "process stepbus.memory.requests",
    "recall memory",
    "chat gpt-4o-mini",
    "step 1",
    "execute_tool calculator",
    "execute_tool &lt;script&gt;alert(1)&lt;/script&gt;",
    "chat gpt-4o-mini &amp; co",
    "critique answer",
    "send stepbus.critiques",
]
SERVICES = ["planner", "gateway", "memory", "tool-executor", "critic"]


def name_cells(page: str) -> list[str]:
    """The span names of the rows, in row order (the text after each row's colour dot)."""
    names = []
    for cell in page.split('<span class="dot"')[1:]:
        text = cell.split("></span>", 1)[1]
        names.append(text.split("<span", 1)[0].split("</div>", 1)[0])
    return names


def test_rows_follow_the_parent_tree_depth_first_children_by_start_time() -> None:
    page = render_html(a_trace())
    assert name_cells(page) == TREE_ORDER
    positions = [page.index(f"{name}<") for name in TREE_ORDER]
    assert positions == sorted(positions)
    depths = [cell.count('class="guide"') for cell in page.split('<div class="row"')[1:]]
    assert depths == [0, 1, 1, 2, 3, 2, 1, 2, 2, 2, 1, 2]


def test_text_is_escaped_and_the_page_is_self_contained() -> None:
    page = render_html(a_trace())
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>fetch</b>" not in page and "tool &lt;b&gt;fetch&lt;/b&gt;" in page
    assert "http://" not in page and "https://" not in page and "<link" not in page


def test_header_legend_and_key_attributes() -> None:
    page = render_html(a_trace())
    header = page.split('<div class="waterfall">', 1)[0]
    for text in (TRACE, TASK, "<b>12</b> spans", "<b>5</b> services", "total <b>412.0 ms</b>"):
        assert text in header
    legend = header.split('<div class="legend">', 1)[1]
    listed = [chip.split("</span>", 1)[1].split(" <", 1)[0] for chip in legend.split('"chip"')[1:]]
    assert listed == SERVICES
    colours = {chip.split("background:", 1)[1][:7] for chip in legend.split('"chip"')[1:]}
    assert len(colours) == len(SERVICES)
    for text in (
        "in 812 / out 64 tokens",
        "in 1290 / out 41 tokens",
        "tool calculator",
        "3 hits",
        "score 0.86",
        "1 link",
        'class="badge replay"',
        'class="badge error"',
        "88.0 ms",
        "ms</span>",  # axis ticks
    ):
        assert text in page, text


def test_an_orphan_is_a_root_of_its_own_and_traces_are_not_mixed() -> None:
    spans = a_trace()
    orphan = span("00000000000000ff", "00000000000000ee", "late", "memory", 500, 501)
    page = render_html([*spans, orphan])
    assert name_cells(page)[-1] == "late" and "parent missing" in page
    with pytest.raises(ValueError, match="2 traces"):
        render_html([*spans, {**orphan, "trace_id": "0" * 32}])
    with pytest.raises(ValueError):
        render_html([])


def test_the_cli_exits_2_without_chromium(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "spans.json"
    source.write_text(json.dumps(a_trace()))
    monkeypatch.setenv("STEPBUS_CHROMIUM", str(tmp_path / "no-such-chromium"))
    assert trace_picture.main([str(source), str(tmp_path / "out.png")]) == 2
    assert "STEPBUS_CHROMIUM" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


@pytest.fixture
def chromium() -> str:
    try:
        return find_chromium()
    except ChromiumNotFoundError as exc:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def test_render_png_writes_a_picture_1400_wide(chromium: str, tmp_path: Path) -> None:
    spans = a_trace()
    out = render_png(spans, tmp_path / "trace.png", html_out=tmp_path / "trace.html")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width == WIDTH == 1400
    assert height == page_height(len(spans))
    assert (tmp_path / "trace.html").read_text() == render_html(spans)
