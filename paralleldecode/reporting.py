"""Turns per-strategy summaries into a printed table and a quality-versus-cost plot.

A summary maps each strategy name to its figures: ``em``, ``f1``, ``lenient`` and
``format_rate`` (percents), ``questions``, ``prompt_tokens``, ``generated_tokens`` and
``forward_passes`` (counts), ``wall_seconds``, ``questions_per_second`` and
``failed_questions`` (questions whose strategy failed on their group). A strategy that did not run carries a
``skipped`` reason instead, and its other figures may be missing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping

# Figure and FigureCanvasAgg render off-screen without pyplot, so writing a plot never
# switches the process-wide backend that a caller (a notebook, say) may rely on.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

Figures = Mapping[str, float | int | str]
Summary = Mapping[str, Figures]

_MISSING = "-"


def _finite(value: object) -> float | None:
    """The value as a float, or None when it is absent, not a number or not finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _formatter(spec: str) -> Callable[[object], str]:
    def fmt(value: object) -> str:
        number = _finite(value)
        return _MISSING if number is None else format(number, spec)

    return fmt


_PERCENT = _formatter(".1f")
_COUNT = _formatter(".0f")
_SECONDS = _formatter(".2f")

# (header, summary key, formatter) for every column after the strategy name. Quality
# columns only appear when some strategy has a value for them (a multiple-choice set has
# no EM, a short-answer set no ROUGE); EM and F1 always show, as the common case.
# Shown only when some strategy has a non-zero value (a run without failures has no column).
_NONZERO = {"failed_questions"}
_OPTIONAL = {"questions_per_second", "failed_questions", "lenient", "accuracy", "bleu4", "rouge1", "rouge2", "rougeL",
             "judge_fluency", "judge_relevance", "judge_completeness", "judge_proficiency",
             "layers", "edges_kept", "dependency_tokens", "dependency_fallbacks", "ideal_latency_s"}
_COLUMNS: tuple[tuple[str, str, Callable[[object], str]], ...] = (
    ("EM", "em", _PERCENT),
    ("F1", "f1", _PERCENT),
    ("lenient", "lenient", _PERCENT),
    ("acc", "accuracy", _PERCENT),
    ("BLEU-4", "bleu4", _PERCENT),
    ("R-1", "rouge1", _PERCENT),
    ("R-2", "rouge2", _PERCENT),
    ("R-L", "rougeL", _PERCENT),
    ("fluency", "judge_fluency", _formatter(".2f")),
    ("relevance", "judge_relevance", _formatter(".2f")),
    ("complete", "judge_completeness", _formatter(".2f")),
    ("domain", "judge_proficiency", _formatter(".2f")),
    ("format%", "format_rate", _PERCENT),
    ("questions", "questions", _COUNT),
    ("prompt tok", "prompt_tokens", _COUNT),
    ("gen tok", "generated_tokens", _COUNT),
    ("fwd passes", "forward_passes", _COUNT),
    ("wall s", "wall_seconds", _SECONDS),
    ("q/s", "questions_per_second", _SECONDS),
    ("failed", "failed_questions", _COUNT),
    ("ideal s", "ideal_latency_s", _SECONDS),
    ("layers", "layers", _COUNT),
    ("edges", "edges_kept", _COUNT),
    ("dep tok", "dependency_tokens", _COUNT),
    ("fallbacks", "dependency_fallbacks", _COUNT),
)

_SEPARATOR = " | "


def format_table(summary: Summary) -> str:
    """Renders a summary as a fixed-width text table, one row per strategy.

    Percents get one decimal, counts none and seconds two; NaN or missing figures show as
    ``-``. A skipped strategy shows ``skipped: <reason>`` in place of its figures.

    Args:
        summary: strategy name -> figures, as described in the module docstring.

    Returns:
        The table as lines joined by newlines, without a trailing newline.
    """
    columns = [
        col for col in _COLUMNS
        if (col[1] not in _OPTIONAL or any(_finite(f.get(col[1])) is not None for f in summary.values()))
        and (col[1] not in _NONZERO or any(_finite(f.get(col[1])) for f in summary.values()))
    ]
    header = ["strategy", *(title for title, _, _ in columns)]
    rows: list[tuple[str, list[str] | str]] = []
    for name, figures in summary.items():
        reason = figures.get("skipped")
        if reason:
            rows.append((name, f"skipped: {reason}"))
        else:
            rows.append((name, [fmt(figures.get(key)) for _, key, fmt in columns]))

    widths = [len(title) for title in header]
    for name, cells in rows:
        widths[0] = max(widths[0], len(name))
        if isinstance(cells, list):
            for i, cell in enumerate(cells, start=1):
                widths[i] = max(widths[i], len(cell))

    # Names read left to right; numbers line up on their last digit.
    def render(name: str, cells: list[str]) -> str:
        numbers = (cell.rjust(width) for cell, width in zip(cells, widths[1:]))
        return _SEPARATOR.join([name.ljust(widths[0]), *numbers])

    lines = [
        render(header[0], header[1:]),
        "-+-".join("-" * width for width in widths),
    ]
    for name, cells in rows:
        if isinstance(cells, list):
            lines.append(render(name, cells))
        else:
            lines.append(name.ljust(widths[0]) + _SEPARATOR + cells)
    return "\n".join(lines)


# (summary key, legend label, marker) for the quality figures plotted on the y axis.
_QUALITY = (("em", "EM", "o"), ("f1", "F1", "^"), ("accuracy", "accuracy", "s"),
            ("rougeL", "ROUGE-L", "D"))
# (summary key, axis label) for the cost figure of each panel.
_COSTS = (("wall_seconds", "wall-clock seconds"), ("generated_tokens", "generated tokens"))


def write_plot(summary: Summary, path: str | os.PathLike[str]) -> None:
    """Plots quality against cost for every strategy that ran and saves it as a PNG.

    The left panel puts EM, F1, accuracy and ROUGE-L (those present) against wall-clock seconds, the right panel against
    generated tokens; each point is labelled with its strategy. Skipped strategies and
    points with a NaN or missing coordinate are left out.

    Args:
        summary: strategy name -> figures, as described in the module docstring.
        path: where to write the PNG (written as PNG whatever the suffix).
    """
    fig = Figure(figsize=(12, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ran = {name: figures for name, figures in summary.items() if not figures.get("skipped")}
    for ax, (cost_key, cost_label) in zip(fig.subplots(1, 2), _COSTS):
        for quality_key, quality_label, marker in _QUALITY:
            points = [
                (name, x, y)
                for name, figures in ran.items()
                if (x := _finite(figures.get(cost_key))) is not None
                and (y := _finite(figures.get(quality_key))) is not None
            ]
            if not points:
                continue
            _, xs, ys = zip(*points)
            ax.scatter(xs, ys, marker=marker, label=quality_label)
            for name, x, y in points:
                ax.annotate(
                    name, (x, y), xytext=(4, 4), textcoords="offset points", fontsize=8
                )
        # Annotations are not counted by autoscaling; wide margins keep labels in view.
        ax.margins(x=0.2, y=0.1)
        ax.set_title(f"Quality vs {cost_label}")
        ax.set_xlabel(cost_label)
        ax.set_ylabel("score (%)")
        # legend() warns when nothing was plotted, e.g. when every strategy was skipped.
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.savefig(path, format="png", dpi=100)
