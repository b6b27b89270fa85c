"""The offline dependency experiment: what does BERT attention say about a data set's groups?

Loads groups with :func:`paralleldecode.data.registry.load_groups`, runs only the BERT
attention generator (:mod:`paralleldecode.dependencies.bert`) on each, and prints per group
its questions, the edges found with their confidences and, with ``--matrix``, the
question-by-question score matrix; then a summary over all groups. Nothing is generated, so
it runs in seconds on a CPU and is the place to tune the two thresholds before a run.

Example::

    python -m paralleldecode.dependencies.experiment --dataset demo --context-count 3 \\
        --matrix --json /tmp/bert_deps.json

Options:

* ``--dataset`` (default ``demo``), ``--data-path``, ``--split``: what to load;
* ``--context-count`` (default 5; 0 = all groups), ``--min-questions`` (default 2: a
  single question has nobody to depend on), ``--seed``: which groups;
* ``--model`` (default: the embedded all-MiniLM-L6-v2), ``--include-context``,
  ``--attention-threshold``, ``--dependency-threshold``, ``--max-length``: the generator;
* ``--matrix``: also print each group's score matrix;
* ``--json PATH``: write every group's edges, scores and spans, and the summary.

Groups whose questions do not fit in one encoder input are reported and skipped. The
summary's mean and max score are over all earlier-to-later question pairs ``S[j, i]``,
``i < j``, whether or not they became edges.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from paralleldecode.data.records import DataError, QuestionGroup
from paralleldecode.data.registry import load_groups
from paralleldecode.dependencies.bert import BertAttentionGenerator, GroupTooLongError
from paralleldecode.dependencies.graph import DependencyResult
from paralleldecode.models.loading import ModelNotFoundError

_QUESTION_WIDTH = 72


def build_parser() -> argparse.ArgumentParser:
    """The command's options (see the module docstring)."""
    p = argparse.ArgumentParser(
        prog="python -m paralleldecode.dependencies.experiment",
        description="Question dependencies from BERT attention, per group, with a summary.")
    p.add_argument("--dataset", default="demo", help="registered data set name")
    p.add_argument("--data-path", default=None, help="local file or hub id of the data set")
    p.add_argument("--split", default="validation", help="split, where the data set has them")
    p.add_argument("--context-count", type=int, default=5,
                   help="groups sampled (seeded); 0 for all")
    p.add_argument("--min-questions", type=int, default=2,
                   help="leave out groups with fewer questions")
    p.add_argument("--seed", type=int, default=0, help="seed of the group sample")
    p.add_argument("--model", default=None,
                   help="encoder folder or hub id (default: embedded all-MiniLM-L6-v2)")
    p.add_argument("--include-context", action="store_true",
                   help="put the group's background before the questions")
    p.add_argument("--attention-threshold", type=float, default=0.05,
                   help="zero mean attention entries below this")
    p.add_argument("--dependency-threshold", type=float, default=0.15,
                   help="least score for an edge")
    p.add_argument("--max-length", type=int, default=512, help="most encoder tokens per group")
    p.add_argument("--matrix", action="store_true", help="print each group's score matrix")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="write all groups' edges and matrices here")
    return p


def _shorten(text: str, width: int = _QUESTION_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def format_matrix(scores: list[list[float]]) -> str:
    """Renders an (n, n) lower-triangular score matrix with 1-based question numbers.

    Row ``Qj`` holds ``S[j, i]`` for columns ``i <= j``; entries above the diagonal (later
    questions, never scored) are shown as ``.``.
    """
    n = len(scores)
    label = max(len(f"Q{n}"), 2)
    head = " " * (label + 3) + " ".join(f"{f'Q{i + 1}':>5}" for i in range(n))
    rows = [head]
    for j, row in enumerate(scores):
        cells = [f"{row[i]:5.3f}" if i <= j else f"{'.':>5}" for i in range(n)]
        rows.append(f"{f'Q{j + 1}':>{label}} | " + " ".join(cells))
    return "\n".join(rows)


def format_group(group: QuestionGroup, result: DependencyResult, matrix: bool) -> str:
    """One group's block of the report: id, numbered questions, edges, optional matrix."""
    lines = [f"== {group.id} ({len(group)} questions, {result.tokens} encoder tokens"
             + (", background truncated" if result.details.get("context_truncated") else "")
             + ")"]
    lines += [f"  Q{k + 1}. {_shorten(q.text)}" for k, q in enumerate(group.questions)]
    if result.edges:
        lines.append("  edges:")
        lines += [f"    Q{e.source + 1} -> Q{e.target + 1}  {e.confidence:.3f}"
                  for e in sorted(result.edges, key=lambda e: (e.target, e.source))]
    else:
        lines.append("  edges: none")
    if matrix:
        lines.append("  scores (row depends on column):")
        lines += ["    " + line for line in format_matrix(result.details["scores"]).splitlines()]
    return "\n".join(lines)


def summarize(results: list[tuple[QuestionGroup, DependencyResult]],
              skipped: int) -> dict[str, Any]:
    """Totals over the processed groups.

    Returns:
        ``groups``, ``skipped``, ``questions``, ``edges``, ``mean_edges_per_group``,
        ``share_with_parent`` (questions that are the target of at least one edge, over
        all questions), ``mean_score`` and ``max_score`` (over all pairs ``S[j, i]``,
        ``i < j``; None when no group has two questions) and ``encoder_tokens``.
    """
    questions = sum(len(g) for g, _ in results)
    edges = sum(len(r.edges) for _, r in results)
    with_parent = sum(len({e.target for e in r.edges}) for _, r in results)
    pairs = [row[i] for _, r in results for j, row in enumerate(r.details["scores"])
             for i in range(j)]
    return {
        "groups": len(results),
        "skipped": skipped,
        "questions": questions,
        "edges": edges,
        "mean_edges_per_group": edges / len(results) if results else 0.0,
        "share_with_parent": with_parent / questions if questions else 0.0,
        "mean_score": sum(pairs) / len(pairs) if pairs else None,
        "max_score": max(pairs) if pairs else None,
        "encoder_tokens": sum(r.tokens for _, r in results),
    }


def format_summary(summary: dict[str, Any], seconds: float) -> str:
    """The closing block of the report."""
    def score(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    return "\n".join([
        "== summary",
        f"  groups: {summary['groups']}" + (f" ({summary['skipped']} skipped: too long)"
                                            if summary["skipped"] else ""),
        f"  questions: {summary['questions']}",
        f"  edges: {summary['edges']}",
        f"  mean edges per group: {summary['mean_edges_per_group']:.2f}",
        f"  questions with a parent: {summary['share_with_parent']:.1%}",
        f"  pair score mean / max: {score(summary['mean_score'])} / "
        f"{score(summary['max_score'])}",
        f"  encoder tokens: {summary['encoder_tokens']} in {seconds:.1f} s",
    ])


def main(argv: list[str] | None = None) -> int:
    """Runs the experiment.

    Args:
        argv: the command-line arguments without the program name; None reads
            ``sys.argv``.

    Returns:
        0 on success; 1 when the data or the encoder cannot be loaded (the reason is
        printed on stderr).
    """
    args = build_parser().parse_args(argv)
    try:
        groups = load_groups(args.dataset, args.data_path, args.split,
                             min_questions=args.min_questions,
                             context_count=args.context_count or None, seed=args.seed)
        generator = BertAttentionGenerator(
            args.model, include_context=args.include_context,
            attention_threshold=args.attention_threshold,
            dependency_threshold=args.dependency_threshold, max_length=args.max_length)
        generator.load()
    except (DataError, ModelNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    start = time.perf_counter()
    results: list[tuple[QuestionGroup, DependencyResult]] = []
    skipped = 0
    for group in groups:
        try:
            result = generator.generate(group)
        except GroupTooLongError as err:
            skipped += 1
            print(f"== {group.id}: skipped: {err}")
            continue
        results.append((group, result))
        print(format_group(group, result, args.matrix))
    seconds = time.perf_counter() - start
    summary = summarize(results, skipped)
    print(format_summary(summary, seconds))

    if args.json is not None:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        document = {
            "settings": settings,
            "groups": [{
                "id": group.id,
                "questions": [q.text for q in group.questions],
                "edges": [{"source": e.source, "target": e.target,
                           "confidence": e.confidence, "reason": e.reason}
                          for e in result.edges],
                "tokens": result.tokens,
                **result.details,
            } for group, result in results],
            "summary": summary,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
