"""The run report: the page of real tiny runs, parsed back and checked against the run's
files; the comparison of two runs; refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from paralleldecode.cli import build_cli
from paralleldecode.report import ReportError, load_run, pareto, render_comparison, status

# Real LightningCLI runs of tiny models: seconds each, left out of the fast suite.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


class Node:
    def __init__(self, tag: str, attrs: dict, parent: Node | None) -> None:
        self.tag, self.attrs, self.parent, self.children, self.text = tag, attrs, parent, [], ""

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        out = []
        for c in self.children:
            if (tag is None or c.tag == tag) and (cls is None or cls in c.attrs.get("class", "").split()):
                out.append(c)
            out += c.find_all(tag, cls)
        return out

    def all_text(self) -> str:
        return self.text + "".join(c.all_text() for c in self.children)


class Tree(HTMLParser):
    """A small DOM: every element with its attributes, children and text (template
    contents included: the parser reads them as ordinary markup)."""

    VOID = {"meta", "br", "input", "img", "hr", "link", "circle", "line", "polyline", "path", "rect"}

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.root = self.cur = Node("#root", {}, None)
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs}, self.cur)
        self.cur.children.append(node)
        if tag not in self.VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.cur))

    def handle_endtag(self, tag):
        node = self.cur
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.cur = node.parent

    def handle_data(self, data):
        self.cur.text += data


def _data_file(path: Path) -> Path:
    groups = [{"id": f"g{i}", "title": f"Tower {i}", "context": f"The tower number {i} stands by the river Lune.",
               "questions": [{"id": f"g{i}q{j}", "question": q, "answers": a}
                             for j, (q, a) in enumerate([("Where does it stand?", ["by the river Lune"]),
                                                         ("Which number is it?", [str(i)]),
                                                         ("What stands there?", ["the tower"])])]}
              for i in range(4)]
    groups[2]["context"] = "The river runs on and on. " * 200  # beyond the tiny model's window: fails
    path.write_text(json.dumps({"version": 1, "groups": groups}))
    return path


def _run(model: Path, out: Path, data: Path, *extra: str) -> Path:
    build_cli(["predict", "--config", str(ROOT / "configs/predict/demo.yaml"),
               "--model.init_args.model_name", str(model), "--model.init_args.max_new_tokens", "5",
               "--model.init_args.strategies", "[batch, one_sequence, collab_llm, finetuned]",
               "--model.init_args.strategy_options",
               json.dumps({"collab_llm": {"min_confidence": 0.0, "dependency_max_new_tokens": 48},
                           "finetuned": {"checkpoint_dir": str(out.parent / "no-checkpoints")}}),
               "--model.init_args.output_dir", str(out), "--data.init_args.data_path", str(data),
               "--trainer.default_root_dir", str(out.parent / "logs"), "--trainer.enable_progress_bar", "false",
               *extra])
    return out


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    data = _data_file(root / "data.json")
    on = _run(tiny_models["llama"], root / "structured", data)
    off = _run(tiny_models["llama"], root / "unstructured", data, "--model.init_args.structured_output", "false")
    return on, off, data


def test_the_run_writes_a_self_contained_report(runs):
    out, _, _ = runs
    text = (out / "report.html").read_text(encoding="utf-8")
    tree = Tree(text).root
    assert not tree.find_all("link") and all("src" not in s.attrs for s in tree.find_all("script"))
    assert "http://" not in text and "https://" not in text
    assert [h.all_text() for h in tree.find_all("h2")] == ["Summary", "Quality against cost", "Questions"]
    meta = {dt.all_text(): dd.all_text() for dt, dd in zip(tree.find_all("dt"), tree.find_all("dd"))}
    assert meta["strategies"] == "batch, one_sequence, collab_llm, finetuned"
    assert "max_new_tokens=5" in meta["decoding"] and meta["structured output"] == "on"
    assert meta["command"].startswith("paralleldecode ") and meta["package version"]


def test_summary_table_has_every_strategy_and_the_figures_of_summary_json(runs):
    out, _, _ = runs
    tree = Tree((out / "report.html").read_text(encoding="utf-8")).root
    summary = json.loads((out / "summary.json").read_text())
    (table,) = [t for t in tree.find_all("table") if t.attrs.get("id") == "summary-table"]
    assert "sortable" in table.attrs["class"]
    rows = {r.attrs["data-strategy"]: r for r in table.find_all("tr") if "data-strategy" in r.attrs}
    assert list(rows) == list(summary)
    keys = [th.attrs.get("data-key") for th in table.find_all("th")][1:]
    for name, row in rows.items():
        cells = row.find_all("td")[1:]
        if summary[name].get("skipped"):
            assert "skipped" in row.all_text() and "no-checkpoints" in row.all_text()
            continue
        for key, cell in zip(keys, cells):
            if summary[name].get(key) is not None:
                assert float(cell.attrs["data-value"]) == pytest.approx(summary[name][key])


def test_skipped_and_failed_strategies_are_named(runs):
    out, _, _ = runs
    tree = Tree((out / "report.html").read_text(encoding="utf-8")).root
    skipped = [p for p in tree.find_all("p", "skipped")]
    assert [p.attrs["data-skipped"] for p in skipped] == ["finetuned"]
    assert "no 'baseline' checkpoint" in skipped[0].all_text()
    failed = {s.attrs["data-failed"]: s.all_text() for s in tree.find_all("span") if "data-failed" in s.attrs}
    assert set(failed) == {"batch", "one_sequence", "collab_llm"} and all(t.endswith(" 3") for t in failed.values())


def test_one_template_per_question_with_every_strategys_answer(runs):
    out, _, _ = runs
    tree = Tree((out / "report.html").read_text(encoding="utf-8")).root
    records = [json.loads(line) for line in (out / "predictions.jsonl").open()]
    templates = tree.find_all("template", "q")
    assert [t.attrs["data-question-id"] for t in templates] == [r["question_id"] for r in records
                                                                 if r["strategy"] == "batch"]
    by = {(r["strategy"], r["question_id"]): r for r in records}
    for t in templates:
        qid = t.attrs["data-question-id"]
        assert {"data-group", "data-disagree", "data-wrong", "data-status"} <= set(t.attrs)
        rows = {r.attrs["data-strategy"]: r for r in t.find_all("tr", "answer")}
        assert list(rows) == ["batch", "one_sequence", "collab_llm"]
        for name, row in rows.items():
            rec = by[(name, qid)]
            assert row.attrs["data-status"] == status(rec)
            text = row.find_all("td", "text")[0].all_text()
            expected = rec["error"] if rec["finish_reason"] == "error" else rec["answer"]
            assert text.startswith(expected)
        answers = {by[(n, qid)]["answer"] for n in rows if by[(n, qid)]["finish_reason"] != "error"}
        assert t.attrs["data-disagree"] == ("1" if len({a.lower().strip() for a in answers}) > 1 else "0")
        wrong = {n for n in rows if by[(n, qid)]["em"] == 0.0 or by[(n, qid)]["finish_reason"] == "error"}
        assert set(t.attrs["data-wrong"].split()) == wrong
    # The failed group's questions show the error.
    failed = [t for t in templates if t.attrs["data-question-id"].startswith("g2")]
    assert all(r.attrs["data-status"] == "failed" for t in failed for r in t.find_all("tr", "answer"))


def test_groups_carry_their_context_and_the_dependency_dags(runs):
    out, _, data = runs
    tree = Tree((out / "report.html").read_text(encoding="utf-8")).root
    heads = {t.attrs["data-group"]: t for t in tree.find_all("template", "g")}
    assert len(heads) == 4
    contexts = {g["id"]: g["context"] for g in json.loads(data.read_text())["groups"]}
    for t in heads.values():
        gid = t.find_all("div", "group-head")[0].attrs["data-group-id"]
        assert contexts[gid] in t.find_all("pre")[0].all_text()
    dags = [t for t in heads.values() if t.find_all("svg")]
    assert len(dags) == 3  # collab_llm on the three groups that did not fail


def test_frontier_plots_mark_the_pareto_optimal_strategies(runs):
    out, _, _ = runs
    tree = Tree((out / "report.html").read_text(encoding="utf-8")).root
    plots = tree.find_all("svg", "frontier")
    assert {(p.attrs["data-quality"], p.attrs["data-cost"]) for p in plots} >= {("em", "wall_seconds"),
                                                                               ("f1", "tokens")}
    for p in plots:
        names = [g.attrs["data-strategy"] for g in p.find_all("g", "point")]
        assert names == ["batch", "one_sequence", "collab_llm"]
        assert p.find_all("g", "pareto")


def test_pareto_keeps_the_points_nothing_beats():
    pts = [("a", 1.0, 50.0), ("b", 2.0, 60.0), ("c", 3.0, 55.0), ("d", 1.0, 40.0)]
    assert pareto(pts) == {"a", "b"}


def test_two_runs_compare_side_by_side(runs, tmp_path):
    on, off, _ = runs
    out = tmp_path / "cmp.html"
    proc = subprocess.run([sys.executable, "-m", "paralleldecode.report", str(on), str(off), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    tree = Tree(out.read_text(encoding="utf-8")).root
    (table,) = [t for t in tree.find_all("table") if t.attrs.get("id") == "summary-table"]
    assert [th.attrs["data-run"] for th in table.find_all("th") if "data-run" in th.attrs] == ["structured",
                                                                                             "unstructured"]
    templates = tree.find_all("template", "q")
    assert len(templates) == 12
    labels = [r.attrs["data-strategy"] for r in templates[0].find_all("tr", "answer")]
    assert labels[:2] == ["structured · batch", "unstructured · batch"]
    recs = {(r["question_id"], r["strategy"]): r for r in load_run(off).records}
    row = templates[0].find_all("tr", "answer")[1]
    answer = recs[(templates[0].attrs["data-question-id"], "batch")]["answer"]
    assert row.find_all("td", "text")[0].all_text().startswith(answer)


def test_runs_over_different_data_are_refused_unless_allowed(runs, tiny_models, tmp_path):
    on, _, data = runs
    other = _run(tiny_models["llama"], tmp_path / "fewer", data, "--data.init_args.context_count", "2")
    with pytest.raises(ReportError, match="different data.*context_count.*--allow-different-data"):
        render_comparison([load_run(on), load_run(other)])
    page = render_comparison([load_run(on), load_run(other)], allow_different_data=True)
    shared = {(r["group_id"], r["question_id"]) for r in load_run(other).records}
    assert len(Tree(page).root.find_all("template", "q")) == len(shared)


def test_a_folder_without_a_finished_run_is_refused(tmp_path):
    (tmp_path / "predictions.rank0.x.jsonl").write_text("")
    proc = subprocess.run([sys.executable, "-m", "paralleldecode.report", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert str(tmp_path) in proc.stderr and "resume" in proc.stderr and "Traceback" not in proc.stderr


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")

# Run in the page after its own script: sort the summary by a column (a skipped strategy's
# row has one wide cell), filter by group and by "some answer not right", and write what the
# page shows into a <pre> that --dump-dom prints.
PROBE = """<script>
(function () {
  var errors = [], out = {};
  window.addEventListener("error", function (e) { errors.push(String(e.message)); });
  function count() { return document.getElementById("count").textContent; }
  function change(id) { document.getElementById(id).dispatchEvent(new Event("change")); }
  try {
    var view = document.getElementById("view");
    out.initial = count();
    out.shown = view.querySelectorAll(".question").length;
    out.heads = view.querySelectorAll(".group-head").length;
    document.querySelectorAll("#summary-table th")[2].click();
    out.sorted = Array.prototype.map.call(document.querySelectorAll("#summary-table tbody tr"),
                                          function (r) { return r.dataset.strategy; });
    var group = document.getElementById("f-group");
    group.value = group.options[2].value; change("f-group");
    out.group = group.value; out.group_count = count();
    out.group_shown = Array.prototype.map.call(view.querySelectorAll(".question"),
                                               function (q) { return q.dataset.questionId; });
    group.value = ""; change("f-group");
    document.getElementById("f-wrong").checked = true; change("f-wrong");
    out.wrong_count = count();
  } catch (e) { errors.push(String(e)); }
  out.errors = errors;
  var pre = document.createElement("pre"); pre.id = "browser-test";
  pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
})();
</script>"""


def test_the_page_works_in_a_real_browser(runs, tmp_path):
    """Headless Chromium runs the page's own script: first page rendered, sorting with a
    skipped strategy, the group and wrong-answer filters, no script error."""
    import shutil

    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        pytest.skip(f"no headless browser on PATH (looked for {', '.join(BROWSERS)})")
    out, _, _ = runs
    page = tmp_path / "probe.html"
    page.write_text((out / "report.html").read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"),
                    encoding="utf-8")
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    (pre,) = [p for p in Tree(proc.stdout).root.find_all("pre") if p.attrs.get("id") == "browser-test"]
    seen = json.loads(pre.all_text())
    assert seen["errors"] == []
    tree = Tree((out / "report.html").read_text(encoding="utf-8")).root
    templates = tree.find_all("template", "q")
    n = len(templates)
    assert seen["initial"] == f"{n} of {n} questions · page 1 of 1"
    assert seen["shown"] == n and seen["heads"] == 4
    assert seen["sorted"][-1] == "finetuned"  # the skipped row stays last
    in_group = [t.attrs["data-question-id"] for t in templates if t.attrs["data-group"] == seen["group"]]
    assert seen["group_shown"] == in_group and seen["group_count"].startswith(f"{len(in_group)} of {n} ")
    wrong = sum(1 for t in templates if t.attrs["data-wrong"])
    assert seen["wrong_count"].startswith(f"{wrong} of {n} ")
