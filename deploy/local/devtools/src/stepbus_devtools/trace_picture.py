"""One trace as a waterfall picture (like Jaeger's timeline view), for ``docs/observability.md``.

Reads the trace's spans as JSON, a list of span objects::

    {"trace_id", "span_id", "parent_span_id" (null for the root), "name", "kind", "service",
     "start_ns", "end_ns", "attributes": {...}, "links": [{"trace_id", "span_id",
     "attributes"}], "status"}

builds a self-contained HTML page (inline CSS, nothing fetched) and renders it to a PNG with
headless Chromium (``/usr/bin/chromium`` on Debian; ``STEPBUS_CHROMIUM`` names another binary).

The picture: a header (trace id, the root's ``stepbus.task.id``, span count, services, total
duration) with a legend of one colour per service, a time axis in milliseconds, then one row
per span in depth-first order of the parent tree (children by start time), indented by depth,
the span's name on the left and on the right a bar from its start to its end, labelled with its
duration and, in small text, a few key attributes: tokens of ``chat …`` spans
(``gen_ai.usage.input_tokens``/``output_tokens``), the tool of ``execute_tool …``
(``gen_ai.tool.name``), the hits of a recall (``stepbus.memory.hits``), the score of a critique
(``stepbus.critic.score``). Replayed spans (``stepbus.replay``) are hatched and marked
``replay``; failed ones (status ``ERROR``) are outlined in red and marked ``error``.

    python -m stepbus_devtools.trace_picture SPANS.json OUT.png [--html OUT.html]
        [--trace-id ID]

Exits 2 when Chromium is not installed.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "WIDTH",
    "ChromiumNotFoundError",
    "find_chromium",
    "main",
    "page_height",
    "render_html",
    "render_png",
]

WIDTH = 1400
"""Width of the page and of the picture, in CSS pixels (= PNG pixels)."""

_PAD = 24  # page padding, left and right
_HEADER_H = 112  # title, summary line and legend
_AXIS_H = 30
_ROW_H = 26
_BOTTOM_H = 20
_LABEL_W = 480  # the span-name column
_TIMELINE_W = WIDTH - 2 * _PAD - _LABEL_W
_BAR_INSET = 10  # timeline padding left and right, so bars at 0 and 100% keep clear of edges
_INDENT = 14  # per depth level
_CHAR_W = 6.6  # estimated width of one character of a bar label (12px DejaVu Sans)

# Tableau 10 without its red (red means an error here).
_PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#b07aa1",
    "#76b7b2",
    "#9c755f",
    "#ff9da7",
    "#edc948",
    "#bab0ac",
    "#2f4b7c",
)

_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class ChromiumNotFoundError(RuntimeError):
    """No headless Chromium to render the page with."""


@dataclass(frozen=True)
class _Row:
    span: Mapping[str, Any]
    depth: int
    orphan: bool
    """Its parent is not among the spans."""


# --------------------------------------------------------------------------------------------
# The tree


def _start(span: Mapping[str, Any]) -> int:
    return int(span.get("start_ns") or 0)


def _end(span: Mapping[str, Any]) -> int:
    return max(int(span.get("end_ns") or 0), _start(span))


def _order_key(span: Mapping[str, Any]) -> tuple[int, int, str, str]:
    return (_start(span), -_end(span), str(span.get("name", "")), str(span.get("span_id", "")))


def _rows(spans: Sequence[Mapping[str, Any]]) -> list[_Row]:
    """The spans depth first down the parent tree, children (and roots) by start time.

    A span whose parent is missing is a root of its own (after the true roots); a cycle of
    parents, which a well-formed trace never has, is broken where it was entered.
    """
    ids = {str(span.get("span_id")) for span in spans}
    children: dict[str, list[Mapping[str, Any]]] = {}
    roots: list[Mapping[str, Any]] = []
    orphans: list[Mapping[str, Any]] = []
    for span in spans:
        parent = span.get("parent_span_id")
        if not parent:
            roots.append(span)
        elif str(parent) not in ids:
            orphans.append(span)
        else:
            children.setdefault(str(parent), []).append(span)
    for siblings in children.values():
        siblings.sort(key=_order_key)
    rows: list[_Row] = []
    seen: set[int] = set()

    def walk(top: Mapping[str, Any], orphan: bool) -> None:
        stack: list[tuple[Mapping[str, Any], int]] = [(top, 0)]
        while stack:
            span, depth = stack.pop()
            if id(span) in seen:
                continue
            seen.add(id(span))
            rows.append(_Row(span, depth, orphan and depth == 0))
            below = children.get(str(span.get("span_id")), [])
            stack.extend((child, depth + 1) for child in reversed(below))

    for span in sorted(roots, key=_order_key):
        walk(span, orphan=False)
    for span in sorted(orphans, key=_order_key):
        walk(span, orphan=True)
    for span in sorted(spans, key=_order_key):  # only in a cycle of parents
        if id(span) not in seen:
            walk(span, orphan=True)
    return rows


# --------------------------------------------------------------------------------------------
# Formatting


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _duration(ns: int) -> str:
    if ns < 1_000_000:
        return f"{ns / 1000:.0f} µs" if ns >= 1000 else f"{ns} ns"
    ms = ns / 1_000_000
    if ms < 10:
        return f"{ms:.2f} ms"
    if ms < 1000:
        return f"{ms:.1f} ms"
    return f"{ms / 1000:.2f} s"


def _number(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".") if math.isfinite(value) else str(value)
    return str(value)


def _status(span: Mapping[str, Any]) -> tuple[str, str]:
    """The span's status code (``UNSET``, ``OK``, ``ERROR``) and message."""
    status = span.get("status")
    message = str(span.get("status_message") or "")
    if isinstance(status, Mapping):
        message = str(status.get("message") or status.get("description") or message)
        status = status.get("code") or status.get("status_code")
    code = str(status or "UNSET").upper()
    if code.startswith("STATUS_CODE_"):
        code = code.removeprefix("STATUS_CODE_")
    return code, message


def _truthy(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _key_attributes(span: Mapping[str, Any]) -> list[str]:
    """The few attributes worth showing on the row, as short texts."""
    attributes = span.get("attributes") or {}
    shown: list[str] = []
    tokens_in = attributes.get("gen_ai.usage.input_tokens")
    tokens_out = attributes.get("gen_ai.usage.output_tokens")
    if tokens_in is not None or tokens_out is not None:
        parts = []
        if tokens_in is not None:
            parts.append(f"in {_number(tokens_in)}")
        if tokens_out is not None:
            parts.append(f"out {_number(tokens_out)}")
        shown.append(" / ".join(parts) + " tokens")
    if attributes.get("gen_ai.tool.name") is not None:
        shown.append(f"tool {attributes['gen_ai.tool.name']}")
    if attributes.get("stepbus.memory.hits") is not None:
        hits = attributes["stepbus.memory.hits"]
        shown.append(f"{_number(hits)} hit" + ("" if hits == 1 else "s"))
    if attributes.get("stepbus.critic.score") is not None:
        shown.append(f"score {_number(attributes['stepbus.critic.score'])}")
    links = span.get("links") or []
    if links:
        shown.append(f"{len(links)} link" + ("" if len(links) == 1 else "s"))
    return shown


def _tick_step(total_ms: float) -> float:
    """A 1-2-5 step giving at most about ten ticks over ``total_ms``."""
    raw = total_ms / 8
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * magnitude >= raw:
            return float(factor * magnitude)
    return float(10 * magnitude)  # pragma: no cover


def _tick_label(value: float) -> str:
    return f"{round(value, 6):g} ms"


def page_height(rows: int) -> int:
    """The height, in pixels, of the page of a trace of ``rows`` spans."""
    return _HEADER_H + _AXIS_H + rows * _ROW_H + _BOTTOM_H


# --------------------------------------------------------------------------------------------
# The page

_CSS = f"""
* {{ box-sizing: border-box; margin: 0; padding: 0; }}
html, body {{ width: {WIDTH}px; background: #ffffff; overflow: hidden; }}
body {{ font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; font-size: 12px;
  color: #1f2328; padding: 0 {_PAD}px; }}
.header {{ height: {_HEADER_H}px; padding-top: 14px; overflow: hidden; }}
.title {{ font-size: 17px; font-weight: bold; white-space: nowrap; }}
.title .id {{ font-family: "DejaVu Sans Mono", monospace; font-weight: normal; font-size: 15px;
  color: #444c56; }}
.summary {{ margin-top: 8px; font-size: 13px; color: #444c56; white-space: nowrap;
  overflow: hidden; text-overflow: ellipsis; }}
.summary b {{ color: #1f2328; }}
.summary .mono {{ font-family: "DejaVu Sans Mono", monospace; }}
.legend {{ margin-top: 12px; white-space: nowrap; overflow: hidden; height: 22px; }}
.chip {{ display: inline-block; margin-right: 18px; font-size: 12px; line-height: 20px; }}
.swatch {{ display: inline-block; width: 12px; height: 12px; border-radius: 2px;
  vertical-align: -1px; margin-right: 6px; }}
.chip .count {{ color: #6e7781; }}
.waterfall {{ position: relative; border: 1px solid #d0d7de; border-radius: 4px;
  overflow: hidden; }}
.grid {{ position: absolute; top: 0; bottom: 0; left: {_LABEL_W + _BAR_INSET}px;
  width: {_TIMELINE_W - 2 * _BAR_INSET - 2}px; }}
.gridline {{ position: absolute; top: 0; bottom: 0; width: 1px; background: #e6e9ed; }}
.axis, .row {{ position: relative; display: flex; white-space: nowrap; }}
.axis {{ height: {_AXIS_H - 2}px; background: #f6f8fa; border-bottom: 1px solid #d0d7de;
  font-size: 11px; color: #57606a; }}
.axis .name {{ line-height: {_AXIS_H - 2}px; padding-left: 10px; font-weight: bold; }}
.axis .time {{ position: relative; }}
.tick {{ position: absolute; top: 8px; transform: translateX(-50%); }}
.tick.first {{ transform: none; }}
.tick.last {{ transform: translateX(-100%); }}
.row {{ height: {_ROW_H}px; }}
.row:nth-child(even) {{ background: rgba(140, 149, 159, 0.07); }}
.name {{ width: {_LABEL_W}px; flex: none; overflow: hidden; text-overflow: ellipsis;
  border-right: 1px solid #d0d7de; line-height: {_ROW_H}px; padding-right: 8px; }}
.guide {{ display: inline-block; width: {_INDENT}px; height: {_ROW_H}px; vertical-align: top;
  border-left: 1px solid #d8dee4; margin-left: 4px; margin-right: -4px; }}
.dot {{ display: inline-block; width: 4px; height: 16px; border-radius: 2px;
  vertical-align: -4px; margin: 0 6px 0 8px; }}
.service {{ color: #6e7781; font-size: 11px; margin-left: 6px; }}
.badge {{ display: inline-block; font-size: 10px; line-height: 14px; padding: 0 5px;
  border-radius: 7px; margin-left: 6px; vertical-align: 1px; font-weight: bold; }}
.badge.replay {{ background: #fff1c2; color: #7d4e00; border: 1px solid #d4a72c; }}
.badge.error {{ background: #ffebe9; color: #a40e26; border: 1px solid #ff8182; }}
.badge.orphan {{ background: #eaeef2; color: #57606a; border: 1px solid #afb8c1; }}
.time {{ width: {_TIMELINE_W - 2}px; flex: none; position: relative; }}
.track {{ position: absolute; top: 0; bottom: 0; left: {_BAR_INSET}px; right: {_BAR_INSET}px; }}
.bar {{ position: absolute; top: 6px; height: {_ROW_H - 12}px; min-width: 2px;
  border-radius: 2px; }}
.bar.replay {{ background-image: repeating-linear-gradient(135deg,
  rgba(255, 255, 255, 0.55) 0 3px, transparent 3px 7px); }}
.bar.error {{ box-shadow: 0 0 0 2px #cf222e; }}
.label {{ position: absolute; top: 0; line-height: {_ROW_H}px; font-size: 12px; }}
.label.right {{ padding-left: 6px; }}
.label.left {{ padding-right: 6px; transform: translateX(-100%); }}
.label.inside {{ padding-left: 6px; color: #ffffff; text-shadow: 0 0 2px rgba(0, 0, 0, 0.7); }}
.label .attrs {{ font-size: 10.5px; color: #57606a; margin-left: 6px; }}
.label.inside .attrs {{ color: #ffffff; }}
"""


def _services(rows: Sequence[_Row]) -> dict[str, int]:
    """Span count per service, in order of first appearance down the tree."""
    counts: dict[str, int] = {}
    for row in rows:
        service = str(row.span.get("service") or "unknown")
        counts[service] = counts.get(service, 0) + 1
    return counts


def render_html(spans: list[dict[str, Any]]) -> str:
    """The waterfall page of one trace's spans (self-contained: inline CSS, nothing fetched).

    Raises ``ValueError`` when there are no spans or they belong to more than one trace.
    """
    if not spans:
        raise ValueError("no spans to draw")
    traces = sorted({str(span.get("trace_id")) for span in spans})
    if len(traces) > 1:
        raise ValueError(f"spans of {len(traces)} traces ({', '.join(traces)}): pick one")
    rows = _rows(spans)
    services = _services(rows)
    colours = {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(services)}
    origin = min(_start(span) for span in spans)
    total_ns = max(max(_end(span) for span in spans) - origin, 1)
    total_ms = total_ns / 1_000_000
    track_w = _TIMELINE_W - 2 - 2 * _BAR_INSET

    root = next((row.span for row in rows if not row.orphan and row.depth == 0), rows[0].span)
    task_id = (root.get("attributes") or {}).get("stepbus.task.id")

    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>trace {_esc(traces[0])}</title>",
        f"<style>{_CSS}</style></head>",
        "<body>",
        '<div class="header">',
        f'<div class="title">Trace <span class="id">{_esc(traces[0])}</span></div>',
        '<div class="summary">',
        f'task <b class="mono">{_esc(task_id) if task_id is not None else "—"}</b>'
        f" &nbsp;·&nbsp; <b>{len(spans)}</b> spans"
        f" &nbsp;·&nbsp; <b>{len(services)}</b> services"
        f" &nbsp;·&nbsp; total <b>{_esc(_duration(total_ns))}</b>",
        f" &nbsp;·&nbsp; root <b>{_esc(root.get('name', ''))}</b>",
        "</div>",
        '<div class="legend">',
    ]
    for name, count in services.items():
        out.append(
            f'<span class="chip"><span class="swatch" style="background:{colours[name]}"></span>'
            f'{_esc(name)} <span class="count">({count})</span></span>'
        )
    out.append("</div></div>")

    # The waterfall: grid lines behind, the axis, the rows.
    step = _tick_step(total_ms)
    ticks = [k * step for k in range(int(total_ms / step + 1e-9) + 1)]
    out.append('<div class="waterfall"><div class="grid">')
    for tick in ticks:
        out.append(f'<div class="gridline" style="left:{tick / total_ms * 100:.4f}%"></div>')
    out.append("</div>")
    out.append(
        '<div class="axis"><div class="name">span</div><div class="time"><div class="track">'
    )
    for i, tick in enumerate(ticks):
        left = tick / total_ms
        where = " first" if i == 0 else " last" if left > 0.97 else ""
        out.append(
            f'<span class="tick{where}" style="left:{left * 100:.4f}%">'
            f"{_esc(_tick_label(tick))}</span>"
        )
    out.append("</div></div></div>")

    for row in rows:
        out.append(_row_html(row, colours, origin, total_ns, track_w))
    out.append("</div></body></html>")
    return "\n".join(out) + "\n"


def _row_html(
    row: _Row, colours: Mapping[str, str], origin: int, total_ns: int, track_w: int
) -> str:
    span = row.span
    name = str(span.get("name", ""))
    service = str(span.get("service") or "unknown")
    colour = colours[service]
    start, end = _start(span), _end(span)
    duration = _duration(end - start)
    code, message = _status(span)
    error = code == "ERROR"
    replay = _truthy((span.get("attributes") or {}).get("stepbus.replay"))

    tooltip = f"{name}\nservice: {service}\nkind: {span.get('kind', '')}\n"
    tooltip += f"start: +{_duration(start - origin)}\nduration: {duration}"
    if message:
        tooltip += f"\nstatus: {code} {message}"

    badges = ""
    if replay:
        badges += '<span class="badge replay">replay</span>'
    if error:
        badges += '<span class="badge error">error</span>'
    if row.orphan:
        badges += '<span class="badge orphan">parent missing</span>'
    label = (
        '<div class="name">'
        + '<span class="guide"></span>' * row.depth
        + f'<span class="dot" style="background:{colour}"></span>'
        + f"{_esc(name)}{badges}"
        + f'<span class="service">{_esc(service)}</span></div>'
    )

    left = (start - origin) / total_ns
    width = (end - start) / total_ns
    attributes = _key_attributes(span)
    text = duration + ("  " + "  ·  ".join(attributes) if attributes else "")
    text_w = len(text) * _CHAR_W + 12
    bar_right_px = (left + width) * track_w
    if track_w - bar_right_px >= text_w:
        place, at = "right", left + width
    elif left * track_w >= text_w:
        place, at = "left", left
    else:
        place, at = "inside", left
    attrs_html = f'<span class="attrs">{_esc(" · ".join(attributes))}</span>' if attributes else ""
    classes = "bar" + (" replay" if replay else "") + (" error" if error else "")
    timeline = (
        '<div class="time"><div class="track">'
        f'<div class="{classes}" style="left:{left * 100:.4f}%;width:{width * 100:.4f}%;'
        f'background-color:{colour}"></div>'
        f'<div class="label {place}" style="left:{at * 100:.4f}%">'
        f"{_esc(duration)}{attrs_html}</div></div></div>"
    )
    return f'<div class="row" title="{_esc(tooltip)}">{label}{timeline}</div>'


# --------------------------------------------------------------------------------------------
# The picture


def find_chromium() -> str:
    """The Chromium binary: ``STEPBUS_CHROMIUM``, else the first on ``PATH``, else Debian's."""
    named = os.environ.get("STEPBUS_CHROMIUM")
    if named:
        found = shutil.which(named)
        if found is None:
            raise ChromiumNotFoundError(f"STEPBUS_CHROMIUM={named} is not an executable")
        return found
    for candidate in _CHROMIUM_NAMES:
        found = shutil.which(candidate)
        if found is not None:
            return found
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    raise ChromiumNotFoundError(
        "headless Chromium not found (install Debian's `chromium` package, "
        "or set STEPBUS_CHROMIUM to the binary)"
    )


def render_png(spans: list[dict[str, Any]], out: Path, html_out: Path | None = None) -> Path:
    """Draw the trace's waterfall to the PNG ``out`` (WIDTH pixels wide); returns ``out``.

    The page is written to ``html_out`` when given (and rendered from there), else to a
    temporary file. Raises ``ChromiumNotFoundError`` without Chromium, ``RuntimeError`` when
    Chromium fails.
    """
    chromium = find_chromium()
    page = render_html(spans)
    height = page_height(len(spans))
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="stepbus-trace-picture-") as scratch:
        page_path = Path(html_out).resolve() if html_out is not None else Path(scratch, "page.html")
        page_path.parent.mkdir(parents=True, exist_ok=True)
        page_path.write_text(page, encoding="utf-8")
        out.unlink(missing_ok=True)
        command = [
            chromium,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--force-device-scale-factor=1",
            f"--user-data-dir={Path(scratch, 'profile')}",
            f"--window-size={WIDTH},{height}",
            f"--screenshot={out}",
            page_path.as_uri(),
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"chromium did not finish in {exc.timeout} s") from exc
    if done.returncode != 0 or not out.is_file() or out.stat().st_size == 0:
        raise RuntimeError(
            f"chromium failed (exit {done.returncode}) to render {out}:\n{done.stderr[-2000:]}"
        )
    return out


def _load(path: Path, trace_id: str | None) -> list[dict[str, Any]]:
    loaded = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(loaded, Mapping) and isinstance(loaded.get("spans"), list):
        loaded = loaded["spans"]
    if not isinstance(loaded, list) or not all(isinstance(span, dict) for span in loaded):
        raise ValueError(f"{path}: expected a JSON list of span objects")
    if trace_id is not None:
        loaded = [span for span in loaded if str(span.get("trace_id")) == trace_id]
        if not loaded:
            raise ValueError(f"{path}: no span of trace {trace_id}")
    return loaded


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stepbus_devtools.trace_picture",
        description="Render one trace's spans (JSON) as a waterfall picture (PNG).",
    )
    parser.add_argument("spans", type=Path, help="JSON file: a list of span objects")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--html", type=Path, default=None, help="also keep the HTML page here")
    parser.add_argument(
        "--trace-id", default=None, help="draw only this trace (when the file holds several)"
    )
    args = parser.parse_args(argv)
    try:
        spans = _load(args.spans, args.trace_id)
    except (OSError, ValueError) as exc:
        print(f"trace_picture: {exc}", file=sys.stderr)
        return 1
    try:
        out = render_png(spans, args.out, args.html)
    except ChromiumNotFoundError as exc:
        print(f"trace_picture: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, ValueError) as exc:
        print(f"trace_picture: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({len(spans)} spans)" + (f" and {args.html}" if args.html else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
