"""A predict run as one self-contained HTML page, and a page comparing several runs.

The page is built from the run folder's files alone (``summary.json``, ``predictions.jsonl``,
``group_costs.jsonl``, ``groups.jsonl``, ``run.json``, ``config.yaml``; see
:mod:`paralleldecode.run_folder`), so the same code writes ``report.html`` at the end of
every run and serves the ``paralleldecode-report`` command afterwards:

    paralleldecode-report RUN_DIR                       # writes RUN_DIR/report.html
    paralleldecode-report RUN_A RUN_B --out cmp.html    # one page comparing the runs
    python -m paralleldecode.report ...                 # the same

What the page holds: the command and settings that made the run; skipped strategies and
failed questions; the summary table (sortable); quality against cost (wall seconds, and
prompt + generated tokens), one point per strategy, the Pareto-optimal ones marked; and
every question with its gold answers and each strategy's answer and score, coloured
right / wrong / malformed / failed, grouped by question group with the group's context (and,
for the dependency strategies, the DAG they used) folded away.

Plain HTML, CSS and a little JavaScript; no network, no external file. A large run stays
light in the browser: each question is an inert ``<template>`` (parsed, never laid out) and
the page shows 50 at a time; the filters (strategies that disagree, wrong answers, one
strategy against another, one group) read the templates' data attributes and show the
matching questions page by page.

An answer is *right* when its exact match (or, for multiple choice, its accuracy) is 1,
*wrong* when 0, *unscored* without gold or for long answers (their ROUGE is shown);
*malformed* when the reply was not the requested JSON (its parsed answer is still scored
and shown), *failed* when the strategy failed on the group.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paralleldecode.errors import UserError
from paralleldecode.report.figures import formatted, number, shown
from paralleldecode.run_folder import GROUP_COSTS, GROUPS, PREDICTIONS, SETTINGS

REPORT = "report.html"
PAGE_SIZE = 50
QUALITY = (("em", "EM"), ("f1", "F1"), ("lenient", "lenient"), ("accuracy", "accuracy"),
           ("bleu4", "BLEU-4"), ("rougeL", "ROUGE-L"))
COSTS = (("wall_seconds", "wall seconds"), ("tokens", "prompt + generated tokens"))



class ReportError(UserError):
    """A folder holds no finished run, or runs cannot be compared."""


@dataclass
class Run:
    """What a run folder holds (see the module docstring)."""

    folder: Path
    summary: dict[str, dict[str, Any]]
    records: list[dict[str, Any]]
    units: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    config: str = ""

    @property
    def strategies(self) -> list[str]:
        return list(self.summary)

    @property
    def name(self) -> str:
        return self.folder.name or str(self.folder)


def load_run(folder: str | Path) -> Run:
    """Read a finished run's folder.

    Raises:
        ReportError: no finished run there (``summary.json`` and ``predictions.jsonl``
            are written last, when a run completes).
    """
    folder = Path(folder)
    missing = [n for n in ("summary.json", PREDICTIONS) if not (folder / n).is_file()]
    if missing:
        hint = (" (a run stopped before it finished; resume it with --model.init_args.resume true)"
                if any(folder.glob("predictions.rank*.jsonl")) else "")
        raise ReportError(f"{folder} holds no finished predict run: {' and '.join(missing)} missing{hint}")

    def lines(name: str) -> list[dict[str, Any]]:
        path = folder / name
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    settings = json.loads((folder / SETTINGS).read_text(encoding="utf-8")) if (folder / SETTINGS).is_file() else {}
    config = (folder / "config.yaml").read_text(encoding="utf-8") if (folder / "config.yaml").is_file() else ""
    return Run(folder, json.loads((folder / "summary.json").read_text(encoding="utf-8")), lines(PREDICTIONS),
               lines(GROUP_COSTS), lines(GROUPS), settings, config)


# -- pieces ------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(key: str, value: Any) -> str:
    return formatted(key, value, thousands=True)


def status(record: Mapping[str, Any]) -> str:
    """``failed``, ``malformed``, ``right``, ``wrong`` or ``unscored`` (module docstring)."""
    if record.get("finish_reason") == "error":
        return "failed"
    if not record.get("format_ok"):
        return "malformed"
    return correctness(record)


def correctness(record: Mapping[str, Any]) -> str:
    score = record.get("em")
    if score is None:
        score = record.get("accuracy")
    if score is None:
        return "unscored"
    return "right" if score >= 1 else "wrong"


def _score_text(record: Mapping[str, Any]) -> str:
    parts = []
    for key, label in (("em", "EM"), ("f1", "F1"), ("accuracy", "acc"), ("rougeL", "R-L"), ("bleu4", "BLEU")):
        v = number(record.get(key))
        if v is not None:
            parts.append(f"{label} {v:.2f}" if key != "em" and key != "accuracy" else f"{label} {v:.0f}")
    return " · ".join(parts)


def _norm(answer: str) -> str:
    from paralleldecode.metrics import normalize_answer

    return normalize_answer(answer or "")


# -- the frontier -----------------------------------------------------------------------


def pareto(points: Sequence[tuple[str, float, float]]) -> set[str]:
    """Names of the points no other point beats: as good or better quality at no more
    cost, and strictly better in one (``(name, cost, quality)``)."""
    best = set()
    for name, c, q in points:
        if not any((c2 <= c and q2 >= q) and (c2 < c or q2 > q) for _, c2, q2 in points):
            best.add(name)
    return best


def frontier_svg(summary: Mapping[str, Mapping[str, Any]], quality: str, cost: str, label: tuple[str, str]) -> str:
    """One scatter: ``quality`` against ``cost`` per strategy, Pareto-optimal ones marked and
    joined; empty string when fewer than one strategy has both figures."""
    points = []
    for name, fig in summary.items():
        if fig.get("skipped"):
            continue
        c = (number(fig.get("prompt_tokens")) or 0) + (number(fig.get("generated_tokens")) or 0) \
            if cost == "tokens" else number(fig.get(cost))
        q = number(fig.get(quality))
        if c is not None and q is not None:
            points.append((name, c, q))
    if not points:
        return ""
    best = pareto(points)
    w, h, left, bottom, top, right = 460, 300, 56, 40, 16, 110
    cs, qs = [p[1] for p in points], [p[2] for p in points]
    c0, c1 = min(cs + [0.0]), max(cs) or 1.0
    q0, q1 = 0.0, max(max(qs), 1.0)

    def x(v: float) -> float:
        return left + (v - c0) / ((c1 - c0) or 1) * (w - left - right)

    def y(v: float) -> float:
        return h - bottom - (v - q0) / ((q1 - q0) or 1) * (h - bottom - top)

    out = [f'<svg class="frontier" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
           f'aria-label="{_e(f"{label[0]} against {label[1]}")}" data-quality="{quality}" data-cost="{cost}">',
           f'<line class="axis" x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}"/>',
           f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}"/>']
    for v in (q0, (q0 + q1) / 2, q1):
        tick = f"{v:.0f}" if q1 >= 10 else f"{v:.1f}"
        out.append(f'<text class="tick" x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{tick}</text>')
    for v in (c0, (c0 + c1) / 2, c1):
        out.append(f'<text class="tick" x="{x(v):.1f}" y="{h - bottom + 16}" text-anchor="middle">'
                   f'{_compact(v)}</text>')
    out.append(f'<text class="axis-label" x="{(left + w - right) / 2:.0f}" y="{h - 6}" '
               f'text-anchor="middle">{_e(label[1])}</text>')
    out.append(f'<text class="axis-label" x="14" y="{(top + h - bottom) / 2:.0f}" text-anchor="middle" '
               f'transform="rotate(-90 14 {(top + h - bottom) / 2:.0f})">{_e(label[0])}</text>')
    front = sorted((p for p in points if p[0] in best), key=lambda p: p[1])
    if len(front) > 1:
        path = " ".join(f"{x(c):.1f},{y(q):.1f}" for _, c, q in front)
        out.append(f'<polyline class="pareto-line" points="{path}"/>')
    labels = _label_places([(x(c) + 8, y(q) + 4, name) for name, c, q in points])
    for (name, c, q), (lx, ly) in zip(points, labels):
        cls = "point pareto" if name in best else "point"
        out.append(f'<g class="{cls}" data-strategy="{_e(name)}"><title>{_e(name)}: {_e(label[0])} {q:.1f}, '
                   f'{_e(label[1])} {_compact(c)}{" (Pareto-optimal)" if name in best else ""}</title>'
                   f'<circle cx="{x(c):.1f}" cy="{y(q):.1f}" r="{6 if name in best else 4}"/>'
                   f'<text x="{lx:.1f}" y="{ly:.1f}">{_e(name)}</text></g>')
    out.append("</svg>")
    return "".join(out)


def _label_places(wanted: list[tuple[float, float, str]], char: float = 6.2, line: float = 12.0):
    """Where each point's label goes: beside its point, moved up a line at a time while
    it would overlap a label already placed (close points otherwise print on each other)."""
    placed: list[tuple[float, float, float]] = []  # x0, x1, baseline
    out = []
    for lx, ly, name in wanted:
        width = char * len(name)
        while any(lx < b1 and a0 < lx + width and abs(ly - base) < line for a0, b1, base in placed):
            ly -= line
        placed.append((lx, lx + width, ly))
        out.append((lx, ly))
    return out


def _compact(v: float) -> str:
    if abs(v) >= 1e6:
        return f"{v / 1e6:.1f}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.0f}k"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}"


# -- the page ---------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em 2em; color: #1f2328; }
h1 { font-size: 1.5em; margin: 0 0 .3em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #d0d7de; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .2em 1em; margin: .5em 0; }
dl.meta dt { color: #59636e; } dl.meta dd { margin: 0; font-family: ui-monospace, monospace; font-size: .9em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .92em; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.sortable th { cursor: pointer; user-select: none; } table.sortable th.sorted-asc::after { content: " ▲"; }
table.sortable th.sorted-desc::after { content: " ▼"; }
.skipped, .warn { color: #9a6700; } .failed-note { color: #cf222e; }
.frontiers { display: flex; flex-wrap: wrap; gap: 1em; }
svg.frontier { border: 1px solid #d0d7de; background: #fff; }
svg.frontier .axis { stroke: #59636e; } svg.frontier .tick, svg.frontier .axis-label { font-size: 11px; fill: #59636e; }
svg.frontier .point circle { fill: #8c959f; } svg.frontier .point.pareto circle { fill: #0969da; stroke: #033d8b; }
svg.frontier .point text { font-size: 11px; }
svg.frontier .pareto-line { fill: none; stroke: #0969da; stroke-dasharray: 4 3; }
.filters { position: sticky; top: 0; background: #fff; padding: .5em 0; border-bottom: 1px solid #d0d7de;
  display: flex; flex-wrap: wrap; gap: .4em 1.2em; align-items: center; z-index: 1; }
.pager button { margin: 0 .2em; }
.group-head { margin-top: 1.2em; padding: .3em .6em; background: #f6f8fa; border-left: 4px solid #0969da; }
.group-head details pre { white-space: pre-wrap; max-height: 18em; overflow: auto; background: #fff; padding: .6em; }
.question { margin: .6em 0 .6em 1em; } .question .qtext { font-weight: 600; }
.question .gold { color: #59636e; font-size: .9em; }
tr.answer td.label { font-family: ui-monospace, monospace; white-space: nowrap; min-width: 12em; }
tr.answer td.text { min-width: 20em; max-width: 60em; }
tr.answer.right td.text { background: #dafbe1; } tr.answer.wrong td.text { background: #ffebe9; }
tr.answer.malformed td.text { background: #fff8c5; } tr.answer.failed td.text { background: #eaeef2; color: #cf222e; }
tr.answer.unscored td.text { background: #f6f8fa; }
.legend span { padding: 0 .5em; margin-right: .4em; border-radius: 3px; }
.legend .right { background: #dafbe1; }
.legend .wrong { background: #ffebe9; }
.legend .malformed { background: #fff8c5; }
.legend .failed { background: #eaeef2; } .legend .unscored { background: #f6f8fa; }
.dags { display: flex; flex-wrap: wrap; gap: 1em; }
.dags figure { margin: 0; }
.dags figcaption { font-size: .85em; color: #59636e; }
"""

SCRIPT = r"""
(function () {
  // The summary tables sort by a column when its header is clicked.
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("th").forEach(function (th, col) {
      th.addEventListener("click", function () {
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        var desc = !th.classList.contains("sorted-desc");
        table.querySelectorAll("th").forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
        th.classList.add(desc ? "sorted-desc" : "sorted-asc");
        rows.sort(function (a, b) {
          // A skipped strategy's row has one wide cell: it stays below the others.
          var ca = a.cells.length > col ? a.cells[col] : null, cb = b.cells.length > col ? b.cells[col] : null;
          if (!ca || !cb) return (ca ? 0 : 1) - (cb ? 0 : 1);
          var x = ca.dataset.value, y = cb.dataset.value;
          var nx = parseFloat(x), ny = parseFloat(y);
          var c = (isNaN(nx) || isNaN(ny)) ? String(x).localeCompare(String(y)) : nx - ny;
          return desc ? -c : c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  var view = document.getElementById("view");
  if (!view) return;
  var all = Array.prototype.slice.call(document.querySelectorAll("template.q"));
  var size = parseInt(view.dataset.pageSize, 10), page = 0, shown = all;
  var f = function (id) { return document.getElementById(id); };
  function statusOf(list, name) {  // "batch:right one_sequence:wrong" -> the named strategy's
    var parts = list.split(" ");
    for (var i = 0; i < parts.length; i++) {
      var k = parts[i].lastIndexOf(":");
      if (parts[i].slice(0, k) === name) return parts[i].slice(k + 1);
    }
    return null;
  }
  function matches(t) {
    var d = t.dataset, group = f("f-group").value, a = f("f-a").value, b = f("f-b").value;
    if (group && d.group !== group) return false;
    if (f("f-disagree").checked && d.disagree !== "1") return false;
    if (f("f-wrong").checked && !d.wrong) return false;
    if (a && b && a !== b) {
      var sa = statusOf(d.status, a), sb = statusOf(d.status, b);
      if (!sa || !sb || sa === sb) return false;
    }
    return true;
  }
  function render() {
    var pages = Math.max(1, Math.ceil(shown.length / size));
    page = Math.min(page, pages - 1);
    view.textContent = "";
    var last = null;
    shown.slice(page * size, (page + 1) * size).forEach(function (t) {
      if (t.dataset.group !== last) {
        last = t.dataset.group;
        var head = document.getElementById("g-" + last);
        if (head) view.appendChild(head.content.cloneNode(true));
      }
      view.appendChild(t.content.cloneNode(true));
    });
    f("count").textContent = shown.length + " of " + all.length + " questions · page " + (page + 1) + " of " + pages;
    f("prev").disabled = page === 0; f("next").disabled = page >= pages - 1;
  }
  function apply() { shown = all.filter(matches); page = 0; render(); }
  ["f-group", "f-disagree", "f-wrong", "f-a", "f-b"].forEach(function (id) {
    f(id).addEventListener("change", apply);
  });
  f("prev").addEventListener("click", function () { page--; render(); window.scrollTo(0, view.offsetTop - 60); });
  f("next").addEventListener("click", function () { page++; render(); window.scrollTo(0, view.offsetTop - 60); });
  render();
})();
"""


def _page(title: str, body: list[str]) -> str:
    return "\n".join(["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                      '<meta name="viewport" content="width=device-width, initial-scale=1">',
                      f"<title>{_e(title)}</title>", f"<style>{CSS}{_dag_css()}</style></head><body>",
                      *body, f"<script>{SCRIPT}</script>", "</body></html>"]) + "\n"


def _dag_css() -> str:
    from paralleldecode.dependencies.html_view import DAG_CSS

    return DAG_CSS.replace("svg ", ".dags svg ")


def _header(run: Run) -> list[str]:
    s = run.settings.get("settings", {})
    model, data = s.get("model", {}), s.get("data", {})
    rows = [("command", "paralleldecode " + " ".join(run.settings.get("command", [])[1:]) if run.settings else "")]
    rows += [("model", model.get("model_name")), ("data set", _data_label(data)),
             ("strategies", ", ".join(run.strategies)),
             ("strategy options", json.dumps(model["strategy_options"]) if model.get("strategy_options") else "none"),
             ("decoding", _decoding(model)),
             ("structured output", "on" if model.get("structured_output", True) else "off"),
             ("package version", run.settings.get("version")), ("started", run.settings.get("started")),
             ("resumed", ", ".join(run.settings.get("resumed") or []) or "no")]
    out = [f"<h1>{_e('Run ' + run.name)}</h1>", '<dl class="meta">']
    out += [f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows if v not in (None, "")]
    out.append("</dl>")
    if run.config:
        out.append(f"<details><summary>config.yaml</summary><pre>{_e(run.config)}</pre></details>")
    skipped = {n: f["skipped"] for n, f in run.summary.items() if f.get("skipped")}
    for name, reason in skipped.items():
        out.append(f'<p class="skipped" data-skipped="{_e(name)}">skipped: <b>{_e(name)}</b>: {_e(reason)}</p>')
    failed = {n: f.get("failed_questions") for n, f in run.summary.items() if f.get("failed_questions")}
    if failed:
        out.append('<p class="failed-note">failed questions: ' + ", ".join(
            f'<span data-failed="{_e(n)}">{_e(n)} {int(v)}</span>' for n, v in failed.items()) + "</p>")
    return out


def _data_label(data: Mapping[str, Any]) -> str:
    if not data:
        return ""
    parts = [str(data.get("dataset"))]
    for key in ("data_path", "context_count", "min_questions", "max_questions", "seed", "dataset_options"):
        if data.get(key) not in (None, {}, ""):
            parts.append(f"{key}={json.dumps(data[key]) if isinstance(data[key], dict) else data[key]}")
    return " ".join(parts)


def _decoding(model: Mapping[str, Any]) -> str:
    keys = ("max_new_tokens", "temperature", "top_p", "seed", "dtype", "use_chat_template")
    return ", ".join(f"{k}={model[k]}" for k in keys if k in model)


def _columns(summaries: Sequence[Mapping[str, Mapping[str, Any]]]) -> list[tuple[str, str]]:
    """``(key, header)`` of the summary columns (:data:`~paralleldecode.report.figures.FIGURES`)."""
    return [(f.key, f.header) for f in shown(summaries)]


def summary_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    cols = _columns([summary])
    head = "<tr><th>strategy</th>" + "".join(f'<th data-key="{k}">{_e(h)}</th>' for k, h in cols) + "</tr>"
    rows = []
    for name, fig in summary.items():
        if fig.get("skipped"):
            rows.append(f'<tr data-strategy="{_e(name)}"><td data-value="{_e(name)}">{_e(name)}</td>'
                        f'<td colspan="{len(cols)}" class="skipped">skipped: {_e(fig["skipped"])}</td></tr>')
            continue
        values = {k: number(fig.get(k)) for k, _ in cols}
        cells = "".join(f'<td class="num" data-value="{values[k] if values[k] is not None else ""}">'
                        f"{_fmt(k, fig.get(k))}</td>" for k, _ in cols)
        rows.append(f'<tr data-strategy="{_e(name)}"><td data-value="{_e(name)}">{_e(name)}</td>{cells}</tr>')
    return (f'<table class="sortable" id="summary-table"><thead>{head}</thead><tbody>'
            + "".join(rows) + "</tbody></table>")


def frontiers(summary: Mapping[str, Mapping[str, Any]]) -> str:
    figs = [frontier_svg(summary, q, c, (ql, cl)) for q, ql in QUALITY for c, cl in COSTS]
    figs = [f for f in figs if f]
    if not figs:
        return "<p>No strategy has both a quality figure and a cost.</p>"
    return ('<p>One point per strategy; filled blue points are Pareto-optimal (no other strategy is as '
            'good for less, or better for as much).</p><div class="frontiers">' + "".join(figs) + "</div>")


def _filters(strategies: Sequence[str], groups: Sequence[tuple[str, str]]) -> str:
    opts = "".join(f'<option value="{_e(s)}">{_e(s)}</option>' for s in strategies)
    gopts = "".join(f'<option value="{_e(i)}">{_e(label)}</option>' for i, label in groups)
    return ('<div class="filters">'
            '<label><input type="checkbox" id="f-disagree"> strategies disagree</label>'
            '<label><input type="checkbox" id="f-wrong"> some answer not right</label>'
            f'<label>compare <select id="f-a"><option value="">-</option>{opts}</select> with '
            f'<select id="f-b"><option value="">-</option>{opts}</select></label>'
            f'<label>group <select id="f-group"><option value="">all</option>{gopts}</select></label>'
            '<span class="pager"><button id="prev" type="button">◀</button><span id="count"></span>'
            '<button id="next" type="button">▶</button></span>'
            '<span class="legend"><span class="right">right</span><span class="wrong">wrong</span>'
            '<span class="malformed">malformed</span><span class="failed">failed</span>'
            '<span class="unscored">unscored</span></span></div>')


def _answer_row(label: str, rec: Mapping[str, Any] | None, strategy: str) -> str:
    if rec is None:
        return (f'<tr class="answer missing" data-strategy="{_e(strategy)}"><td class="label">{_e(label)}</td>'
                '<td class="text">(not answered)</td><td></td></tr>')
    st = status(rec)
    text = rec.get("error") if st == "failed" else rec.get("answer")
    note = ""
    if st == "malformed":
        note = " (cut by max_new_tokens)" if rec.get("finish_reason") == "length" else " (malformed reply)"
    return (f'<tr class="answer {st}" data-strategy="{_e(strategy)}" data-status="{st}" '
            f'data-correct="{correctness(rec)}"><td class="label">{_e(label)}</td>'
            f'<td class="text" title="{_e(rec.get("raw"))}">{_e(text)}{_e(note)}</td>'
            f'<td class="num">{_e(_score_text(rec))}</td></tr>')


def _question_template(uid: str, group_key: str, text: str, gold: Sequence[str], options, rows: list[str],
                       statuses: list[tuple[str, Mapping[str, Any] | None]], qid: str) -> str:
    answered = [(s, r) for s, r in statuses if r is not None]
    norm = {_norm(r.get("answer", "")) for _, r in answered if r.get("finish_reason") != "error"}
    disagree = "1" if len(norm) > 1 else "0"
    wrong = " ".join(s for s, r in answered if correctness(r) == "wrong" or status(r) == "failed")
    status_attr = " ".join(f"{s}:{status(r) if status(r) == 'failed' else correctness(r)}" for s, r in answered)
    opts = ""
    if options:
        opts = '<div class="gold">options: ' + " · ".join(
            f"{chr(65 + i)}. {_e(o)}" for i, o in enumerate(options)) + "</div>"
    return (f'<template class="q" id="q-{uid}" data-question-id="{_e(qid)}" data-group="{_e(group_key)}" '
            f'data-disagree="{disagree}" data-wrong="{_e(wrong)}" data-status="{_e(status_attr)}">'
            f'<div class="question" data-question-id="{_e(qid)}"><div class="qtext">{_e(text)}</div>{opts}'
            f'<div class="gold">gold: {_e(" | ".join(gold)) or "(none)"}</div>'
            f'<table class="answers"><tbody>{"".join(rows)}</tbody></table></div></template>')


def _group_template(key: str, group: Mapping[str, Any] | None, gid: str, dags: list[str]) -> str:
    title = (group or {}).get("title") or ""
    context = (group or {}).get("background") or ""
    parts = [f'<template class="g" id="g-{_e(key)}" data-group="{_e(key)}"><div class="group-head" '
             f'data-group-id="{_e(gid)}"><b>{_e(gid)}</b> {_e(title)}']
    if context:
        parts.append(f"<details><summary>context ({len(context):,} characters)</summary>"
                     f"<pre>{_e(context)}</pre></details>")
    if dags:
        parts.append('<details><summary>dependency graphs</summary><div class="dags">'
                     + "".join(dags) + "</div></details>")
    parts.append("</div></template>")
    return "".join(parts)


def _dag(strategy: str, group_id: str, questions: list[dict[str, Any]], edges: list, recs: Mapping[str, Any]) -> str:
    from paralleldecode.data.records import Question, QuestionGroup
    from paralleldecode.dependencies.graph import Edge
    from paralleldecode.dependencies.html_view import dag_svg

    group = QuestionGroup(group_id, "report", [Question(q["question_id"], q["question"] or "?") for q in questions])
    es = [Edge(int(s), int(t), float(c), str(r)) for s, t, c, r in edges]
    colour = {"right": "correct", "wrong": "incorrect"}
    status_of = {i: colour.get(correctness(recs[q["question_id"]]), "unscored") for i, q in enumerate(questions)
                 if q["question_id"] in recs}
    return f"<figure><figcaption>{_e(strategy)}</figcaption>{dag_svg(group, es, status_of)}</figure>"


def _questions_section(runs: list[Run], question_order: list[tuple[str, str]],
                       columns: list[tuple[str, str]]) -> list[str]:
    """The per-question part: ``question_order`` lists ``(group id, question id)``;
    ``columns`` lists ``(run index, strategy)`` pairs, one answer row each."""
    by = [{(r["group_id"], r["question_id"], r["strategy"]): r for r in run.records} for run in runs]
    first = runs[0]
    groups_meta = {g["id"]: g for g in first.groups}
    edges: dict[tuple[int, str, str], list] = {}
    for i, run in enumerate(runs):
        for u in run.units:
            if (u.get("details") or {}).get("edges") is not None:
                edges[(i, u["strategy"], u["group_id"])] = u["details"]["edges"]
    keys: dict[str, str] = {}
    templates, group_templates = [], []
    order_by_group: dict[str, list[str]] = {}
    for gid, qid in question_order:
        order_by_group.setdefault(gid, []).append(qid)
    info = {}
    for run in runs:
        for r in run.records:
            info.setdefault((r["group_id"], r["question_id"]), r)
    for gid, qids in order_by_group.items():
        key = keys.setdefault(gid, str(len(keys)))
        dags = []
        for (ri, strategy) in columns:
            e = edges.get((ri, strategy, gid))
            if e is None:
                continue
            qs = [r for r in runs[ri].records if r["group_id"] == gid and r["strategy"] == strategy]
            recs = {r["question_id"]: r for r in qs}
            label = strategy if len(runs) == 1 else f"{runs[ri].name}: {strategy}"
            dags.append(_dag(label, gid, qs, e, recs))
        group_templates.append(_group_template(key, groups_meta.get(gid), gid, dags))
        for qid in qids:
            base = info[(gid, qid)]
            rows, statuses = [], []
            for ri, strategy in columns:
                rec = by[ri].get((gid, qid, strategy))
                label = strategy if len(runs) == 1 else f"{runs[ri].name} · {strategy}"
                rows.append(_answer_row(label, rec, label))
                statuses.append((label.replace(" · ", "/").replace(" ", "_"), rec))
            templates.append(_question_template(f"{key}-{len(templates)}", key, base["question"],
                                                base.get("gold") or [], base.get("options"), rows, statuses, qid))
    labels = [label.replace(" · ", "/").replace(" ", "_") for label in
              ([s for _, s in columns] if len(runs) == 1 else [f"{runs[ri].name} · {s}" for ri, s in columns])]
    group_opts = [(k, gid) for gid, k in keys.items()]
    return ["<h2 id=\"questions\">Questions</h2>", _filters(labels, group_opts),
            f'<div id="view" data-page-size="{PAGE_SIZE}"></div>', *group_templates, *templates]


def render_run(run: Run) -> str:
    """The page of one run (see the module docstring)."""
    order, seen = [], set()
    for r in run.records:
        k = (r["group_id"], r["question_id"])
        if k not in seen:
            seen.add(k)
            order.append((r.get("group_index", 0), k))
    order = [k for _, k in sorted(order, key=lambda t: t[0])]  # stable: question order within a group
    strategies = [s for s in run.strategies if not run.summary[s].get("skipped")]
    body = [*_header(run), "<h2>Summary</h2>", summary_table(run.summary),
            "<h2>Quality against cost</h2>", frontiers(run.summary),
            *_questions_section([run], order, [(0, s) for s in strategies])]
    return _page(f"paralleldecode run {run.name}", body)


def write_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's page (``report.html`` in its folder unless ``out`` says where)."""
    run = load_run(folder)
    path = Path(out) if out is not None else run.folder / REPORT
    path.write_text(render_run(run), encoding="utf-8")
    return path


# -- several runs -----------------------------------------------------------------------


def _data_of(run: Run) -> dict[str, Any]:
    return dict(run.settings.get("settings", {}).get("data", {}))


def check_same_data(runs: list[Run]) -> None:
    """Refuse runs over different data, saying what differs.

    Raises:
        ReportError: the data settings or the questions asked differ.
    """
    first = runs[0]
    for other in runs[1:]:
        a, b = _data_of(first), _data_of(other)
        differ = sorted(k for k in set(a) | set(b) if not k.startswith("_") and a.get(k) != b.get(k))
        qa = {(r["group_id"], r["question_id"]) for r in first.records}
        qb = {(r["group_id"], r["question_id"]) for r in other.records}
        if differ or qa != qb:
            what = "; ".join(f"data.{k}: {json.dumps(a.get(k))} in {first.name}, {json.dumps(b.get(k))} in "
                             f"{other.name}" for k in differ)
            if qa != qb:
                what += ("; " if what else "") + (f"{len(qa & qb)} questions in common, {len(qa - qb)} only in "
                                                  f"{first.name}, {len(qb - qa)} only in {other.name}")
            raise ReportError(f"runs {first.name} and {other.name} are over different data ({what}); pass "
                              "--allow-different-data to compare the questions they share")


def render_comparison(runs: list[Run], allow_different_data: bool = False) -> str:
    """One page for several runs: their summaries side by side (the run as a column) and
    the per-question answers of every run for the questions they share."""
    if len(runs) < 2:
        raise ReportError("a comparison needs at least two run folders")
    if not allow_different_data:
        check_same_data(runs)
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # same folder names in different places: use the paths
        for r in runs:
            r.folder = r.folder.resolve()
        names = [str(r.folder) for r in runs]
    strategies = list(dict.fromkeys(s for r in runs for s in r.strategies))
    cols = _columns([r.summary for r in runs])
    head = ("<tr><th>strategy</th><th>figure</th>" + "".join(f'<th data-run="{_e(n)}">{_e(n)}</th>' for n in names)
            + "</tr>")
    rows = []
    for s in strategies:
        for k, h in cols:
            cells = []
            for r in runs:
                fig = r.summary.get(s)
                if fig is None:
                    cells.append('<td class="num" data-value="">(not run)</td>')
                elif fig.get("skipped"):
                    cells.append('<td class="skipped" data-value="">skipped</td>')
                else:
                    v = number(fig.get(k))
                    cells.append(f'<td class="num" data-value="{"" if v is None else v}">{_fmt(k, fig.get(k))}</td>')
            rows.append(f'<tr data-strategy="{_e(s)}" data-key="{k}"><td data-value="{_e(s)}">{_e(s)}</td>'
                        f'<td data-value="{_e(h)}">{_e(h)}</td>{"".join(cells)}</tr>')
    shared = set.intersection(*({(r["group_id"], r["question_id"]) for r in run.records} for run in runs))
    order, seen = [], set()
    for r in sorted(runs[0].records, key=lambda r: r.get("group_index", 0)):
        k = (r["group_id"], r["question_id"])
        if k in shared and k not in seen:
            seen.add(k)
            order.append(k)
    columns = [(i, s) for s in strategies for i, run in enumerate(runs)
               if s in run.summary and not run.summary[s].get("skipped")]
    body = [f"<h1>{_e('Comparison of ' + ', '.join(names))}</h1>", '<dl class="meta">']
    for r, n in zip(runs, names):
        body.append(f"<dt>{_e(n)}</dt><dd>{_e(r.settings.get('settings', {}).get('model', {}).get('model_name'))} · "
                    f"{_e(_data_label(_data_of(r)))} · {len(r.records)} answers</dd>")
    body.append("</dl>")
    body += ["<h2>Summaries</h2>", f'<table class="sortable" id="summary-table"><thead>{head}</thead><tbody>'
             + "".join(rows) + "</tbody></table>",
             f"<p>{len(order)} questions are in every run.</p>",
             *_questions_section(runs, order, columns)]
    return _page("paralleldecode comparison", body)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``paralleldecode-report`` (and ``python -m paralleldecode.report``)."""
    ap = argparse.ArgumentParser(prog="paralleldecode-report",
                                 description="Write the HTML page of a predict run, or one comparing several runs.")
    ap.add_argument("runs", nargs="+", help="run folders (each holding summary.json and predictions.jsonl)")
    ap.add_argument("--out", help="the page to write (default: RUN_DIR/report.html for one run; needed for several)")
    ap.add_argument("--allow-different-data", action="store_true",
                    help="compare runs over different data, on the questions they share")
    args = ap.parse_args(argv)
    try:
        if len(args.runs) == 1:
            path = write_report(args.runs[0], args.out)
        else:
            if not args.out:
                raise ReportError("comparing several runs needs --out FILE")
            page = render_comparison([load_run(r) for r in args.runs], args.allow_different_data)
            path = Path(args.out)
            path.write_text(page, encoding="utf-8")
    except (UserError, OSError) as err:
        print(f"paralleldecode-report: error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
