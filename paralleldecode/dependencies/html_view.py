"""One self-contained HTML page per group: its dependency DAG, answers and costs.

The page has no external scripts, styles, fonts or images (inline CSS, inline SVG), so it
can be opened from a results folder or mailed as is. Every piece of text from the data or
the model goes through :func:`html.escape`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from paralleldecode.data.records import QuestionGroup
from paralleldecode.dependencies.graph import Edge
from paralleldecode.dependencies.scheduler import layers as plan_layers
from paralleldecode.dependencies.scheduler import parents as parent_map

_NODE_W, _NODE_H = 200, 52
_GAP_X, _GAP_Y = 28, 72
_MARGIN = 20
_LABEL_CHARS = 28  # question text shown in a node; the full text is in its tooltip
_RESULT_LABEL = {"correct": "correct", "incorrect": "incorrect", "unscored": "not scored"}

DAG_CSS = """
svg { border: 1px solid #ddd; background: #fcfcfc; max-width: 100%; height: auto; }
svg .node rect { stroke: #555; stroke-width: 1; }
svg .node.correct rect { fill: #dafbe1; }
svg .node.incorrect rect { fill: #ffebe9; }
svg .node.unscored rect { fill: #eef1f4; }
svg .node text { font-size: 12px; }
svg .node .qid { font-weight: bold; }
svg .edge path { fill: none; stroke: #888; stroke-width: 1.5; }
svg .edge text { font-size: 11px; fill: #444; }
"""
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; }
.meta { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.correct td.result { color: #1a7f37; font-weight: bold; }
tr.incorrect td.result { color: #cf222e; font-weight: bold; }
tr.unscored td.result { color: #666; }
details { margin: 1em 0; }
pre { white-space: pre-wrap; background: #f6f8fa; padding: 0.8em; }
""" + DAG_CSS


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _status(answer: Mapping[str, Any] | None) -> str:
    """``correct``, ``incorrect`` or ``unscored`` from an answer's ``em`` (or, for multiple
    choice, where ``em`` is None, its ``accuracy``)."""
    if answer is None:
        return "unscored"
    score = answer.get("em")
    if score is None:
        score = answer.get("accuracy")
    if score is None:
        return "unscored"
    return "correct" if score else "incorrect"


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def _fmt(value: Any) -> str:
    """A number for a table cell: thousands separators; 4 decimals for small fractional
    floats, 1 for large ones."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:,.4f}" if abs(value) < 1e4 else f"{value:,.1f}"


def _edge_path(x1: float, y1: float, x2: float, y2: float, lane: float | None) -> str:
    """SVG path data of an arrow from (x1, y1) down to (x2, y2).

    Between adjacent layers: one S-curve with vertical ends. When a layer is skipped, the
    arrow leaves the source into the gap below it, runs down the vertical ``lane`` (right
    of the nodes in between) and turns into the target in the gap above it, so it never
    crosses a node.
    """
    if lane is None:
        mid = (y1 + y2) / 2
        return f"M{x1:.1f},{y1:.1f} C{x1:.1f},{mid:.1f} {x2:.1f},{mid:.1f} {x2:.1f},{y2:.1f}"
    top, bottom = y1 + _GAP_Y / 2, y2 - _GAP_Y / 2
    return (
        f"M{x1:.1f},{y1:.1f} C{x1:.1f},{top:.1f} {lane:.1f},{y1:.1f} {lane:.1f},{top:.1f} "
        f"L{lane:.1f},{bottom:.1f} C{lane:.1f},{y2:.1f} {x2:.1f},{bottom:.1f} {x2:.1f},{y2:.1f}"
    )


def _svg(
    group: QuestionGroup,
    edges: Sequence[Edge],
    plan: list[list[int]],
    status_of: Mapping[int, str],
) -> str:
    """The DAG as an inline SVG: one row per layer, arrows parent -> child."""
    widest = max((len(layer) for layer in plan), default=1)
    width = 2 * _MARGIN + widest * _NODE_W + (widest - 1) * _GAP_X
    height = 2 * _MARGIN + len(plan) * _NODE_H + max(len(plan) - 1, 0) * _GAP_Y
    layer_of = {q: k for k, layer in enumerate(plan) for q in layer}
    pos: dict[int, tuple[float, float]] = {}  # top-left corner of each node
    right_of: list[float] = []  # right edge of each layer's last node
    for row, layer in enumerate(plan):
        row_w = len(layer) * _NODE_W + (len(layer) - 1) * _GAP_X
        x0 = (width - row_w) / 2  # centre each layer
        for k, q in enumerate(layer):
            pos[q] = (x0 + k * (_NODE_W + _GAP_X), _MARGIN + row * (_NODE_H + _GAP_Y))
        right_of.append(x0 + row_w)

    parts, canvas_w, n_lanes = [], float(width), 0
    for e in edges:
        (sx, sy), (tx, ty) = pos[e.source], pos[e.target]
        x1, y1, x2, y2 = sx + _NODE_W / 2, sy + _NODE_H, tx + _NODE_W / 2, ty
        lane = None
        between = range(layer_of[e.source] + 1, layer_of[e.target])
        if between:
            # Lanes are spaced apart so that several long arrows stay distinguishable.
            lane = max(right_of[k] for k in between) + _GAP_X / 2 + 10 * n_lanes
            n_lanes += 1
            canvas_w = max(canvas_w, lane + 40)  # room for the label right of the lane
        label_x = (x1 + x2) / 2 + 4 if lane is None else lane + 4
        title = f"Q{e.source} -> Q{e.target}" + (f": {e.reason}" if e.reason else "")
        parts.append(
            f'<g class="edge"><title>{_esc(title)}</title>'
            f'<path d="{_edge_path(x1, y1, x2, y2, lane)}" marker-end="url(#arrow)"/>'
            f'<text x="{label_x:.1f}" y="{(y1 + y2) / 2:.1f}">{e.confidence:.2f}</text></g>'
        )
    for i, q in enumerate(group.questions):
        x, y = pos[i]
        parts.append(
            f'<g class="node {status_of[i]}"><title>{_esc(f"Q{i}: {q.text}")}</title>'
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{_NODE_W}" height="{_NODE_H}" rx="6"/>'
            f'<text class="qid" x="{x + 8:.1f}" y="{y + 18:.1f}">{_esc(f"Q{i}")}</text>'
            f'<text x="{x + 8:.1f}" y="{y + 38:.1f}">{_esc(_short(q.text, _LABEL_CHARS))}</text></g>'
        )
    head = [
        f'<svg width="{canvas_w:.0f}" height="{height}" viewBox="0 0 {canvas_w:.0f} {height}" '
        f'role="img" aria-label="{_esc("dependency graph of group " + group.id)}">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#888"/></marker></defs>',
    ]
    return "\n".join(head + parts + ["</svg>"])


def dag_svg(group: QuestionGroup, edges: Sequence[Edge], status_of: Mapping[int, str] | None = None) -> str:
    """The group's dependency DAG as an inline SVG (the same drawing as the group pages):
    one row per layer, arrows parent -> child, nodes coloured by ``status_of[i]``
    (``correct``, ``incorrect`` or ``unscored``; default unscored)."""
    edges = list(edges)
    plan = plan_layers(len(group.questions), edges)
    status = {i: (status_of or {}).get(i, "unscored") for i in range(len(group.questions))}
    return _svg(group, edges, plan, status)


def render_group_html(
    group: QuestionGroup,
    edges: Sequence[Edge],
    answers: Sequence[Mapping[str, Any]],
    costs: Mapping[str, float | int],
    title: str | None = None,
) -> str:
    """Renders one group's dependency graph, answers and costs as a self-contained page.

    Questions are labelled ``Q0``, ``Q1``, ... by their index in ``group.questions`` (the
    indices the edges use).

    Args:
        group: the questions.
        edges: the selected (acyclic) dependency edges.
        answers: one dict per answered question with at least ``question_id``,
            ``answer``, ``gold`` (list of str) and ``em`` (1, 0 or None when unscored);
            optionally ``f1``, ``layer`` and ``accuracy`` (decides correctness when ``em``
            is None, as for multiple choice). Questions without an entry show no answer.
        costs: figures for the costs section, by name (prompt tokens, dependency tokens,
            layers, wall seconds, ideal latency, ...), shown in the given order.
        title: the page heading; ``"Group <id>"`` when None.

    Returns:
        The HTML document as a string.

    Raises:
        ValueError: the edges are out of range or cyclic.
    """
    edges = list(edges)
    n = len(group.questions)
    plan = plan_layers(n, edges)
    layer_of = {q: k for k, layer in enumerate(plan) for q in layer}
    parents_of = parent_map(n, edges)
    by_id = {a["question_id"]: a for a in answers}
    status_of = {i: _status(by_id.get(q.id)) for i, q in enumerate(group.questions)}
    heading = title if title is not None else f"Group {group.id}"

    rows = []
    for i, q in enumerate(group.questions):
        a = by_id.get(q.id)
        gold = "" if a is None else " | ".join(str(g) for g in a.get("gold") or [])
        em, f1 = (None, None) if a is None else (a.get("em"), a.get("f1"))
        layer = layer_of[i] if a is None or a.get("layer") is None else a["layer"]
        rows.append(
            f'<tr class="{status_of[i]}"><td>{_esc(f"Q{i}")}</td><td>{_esc(q.text)}</td>'
            f'<td class="num">{_esc(layer)}</td>'
            f'<td>{_esc(", ".join(f"Q{p}" for p in parents_of[i]) or "-")}</td>'
            f'<td>{_esc("" if a is None else a.get("answer", ""))}</td><td>{_esc(gold)}</td>'
            f'<td class="num">{_esc("" if em is None else _fmt(em))}</td>'
            f'<td class="num">{_esc("" if f1 is None else _fmt(f1))}</td>'
            f'<td class="result">{_RESULT_LABEL[status_of[i]]}</td></tr>'
        )
    edge_rows = [
        f'<tr><td>{_esc(f"Q{e.source} -> Q{e.target}")}</td><td class="num">{e.confidence:.3f}</td>'
        f"<td>{_esc(e.reason)}</td></tr>"
        for e in sorted(edges, key=lambda e: (e.target, e.source))
    ]
    cost_rows = [
        f'<tr><th>{_esc(name)}</th><td class="num">{_esc(_fmt(value))}</td></tr>'
        for name, value in costs.items()
    ]
    n_correct = sum(s == "correct" for s in status_of.values())
    n_scored = sum(s != "unscored" for s in status_of.values())
    background = (
        f"<details><summary>Background</summary><pre>{_esc(group.background)}</pre></details>"
        if group.background else ""
    )
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(heading)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_esc(heading)}</h1>",
        f'<p class="meta">group {_esc(group.id)} &middot; data set {_esc(group.dataset)} &middot; '
        f"{n} questions &middot; {len(plan)} layers &middot; {len(edges)} edges"
        + (f" &middot; {n_correct}/{n_scored} correct" if n_scored else "") + "</p>",
        background,
        "<h2>Dependency graph</h2>",
        _svg(group, edges, plan, status_of),
        "<h2>Answers</h2>",
        "<table><thead><tr><th>#</th><th>question</th><th>layer</th><th>parents</th>"
        "<th>answer</th><th>gold</th><th>EM</th><th>F1</th><th>result</th></tr></thead>",
        "<tbody>", *rows, "</tbody></table>",
        "<h2>Edges</h2>",
        ("<table><thead><tr><th>edge</th><th>confidence</th><th>reason</th></tr></thead>"
         "<tbody>" + "".join(edge_rows) + "</tbody></table>") if edge_rows else "<p>No edges.</p>",
        "<h2>Costs</h2>",
        ("<table><tbody>" + "".join(cost_rows) + "</tbody></table>") if cost_rows
        else "<p>No costs recorded.</p>",
        "</body></html>",
    ]) + "\n"


def write_group_html(
    path: str | Path,
    group: QuestionGroup,
    edges: Sequence[Edge],
    answers: Sequence[Mapping[str, Any]],
    costs: Mapping[str, float | int],
    title: str | None = None,
) -> Path:
    """Writes :func:`render_group_html` to ``path`` (UTF-8), creating its folder.

    Args:
        path: the file to write.
        group, edges, answers, costs, title: as for :func:`render_group_html`.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_group_html(group, edges, answers, costs, title), encoding="utf-8")
    return path
