"""The one specification of a run's summary figures: their keys, headers, number formats and
when a column is shown. The printed table (:mod:`~paralleldecode.report.table`) and the HTML
page (:mod:`~paralleldecode.report.page`) both read it, so they cannot drift apart.

A summary maps each strategy name to its figures (``summary.json``): quality in percent
(``em``, ``f1``, ...; null where no question has that answer type), counts, seconds, and
strategy figures such as ``layers``. A strategy that did not run carries ``skipped`` (the
reason) instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Summary = Mapping[str, Mapping[str, Any]]
MISSING = "-"


@dataclass(frozen=True)
class Figure:
    """One summary figure as a column.

    Attributes:
        key: its key in ``summary.json``.
        header: the column's header.
        kind: how it is written: ``percent`` (one decimal), ``score`` and ``seconds`` (two),
            ``count`` (none).
        shown: ``always``; ``some`` (when some strategy has a value for it: a multiple-choice
            set has no EM column, a short-answer set no ROUGE); ``nonzero`` (when some
            strategy's value is not zero: a run without failures has no ``failed`` column).
    """

    key: str
    header: str
    kind: Literal["percent", "score", "seconds", "count"]
    shown: Literal["always", "some", "nonzero"] = "some"


FIGURES: tuple[Figure, ...] = (
    Figure("em", "EM", "percent", "always"),
    Figure("f1", "F1", "percent", "always"),
    Figure("lenient", "lenient", "percent"),
    Figure("accuracy", "acc", "percent"),
    Figure("bleu4", "BLEU-4", "percent"),
    Figure("rouge1", "R-1", "percent"),
    Figure("rouge2", "R-2", "percent"),
    Figure("rougeL", "R-L", "percent"),
    Figure("judge_fluency", "fluency", "score"),
    Figure("judge_relevance", "relevance", "score"),
    Figure("judge_completeness", "complete", "score"),
    Figure("judge_proficiency", "domain", "score"),
    Figure("format_rate", "format%", "percent", "always"),
    Figure("questions", "questions", "count", "always"),
    Figure("prompt_tokens", "prompt tok", "count", "always"),
    Figure("generated_tokens", "gen tok", "count", "always"),
    Figure("forward_passes", "fwd passes", "count", "always"),
    Figure("wall_seconds", "wall s", "seconds", "always"),
    Figure("questions_per_second", "q/s", "seconds"),
    Figure("failed_questions", "failed", "count", "nonzero"),
    Figure("ideal_latency_s", "ideal s", "seconds"),
    Figure("layers", "layers", "count"),
    Figure("edges_kept", "edges", "count"),
    Figure("dependency_tokens", "dep tok", "count"),
    Figure("dependency_fallbacks", "dep fallbacks", "count"),
    Figure("schema_fallbacks", "schema fallbacks", "count", "nonzero"),
    Figure("constraint_seconds", "constraint s", "seconds", "nonzero"),
)
BY_KEY = {f.key: f for f in FIGURES}
_DECIMALS = {"percent": 1, "score": 2, "seconds": 2, "count": 0}


def number(value: object) -> float | None:
    """The value as a float, or None when it is absent, not a number or not finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def formatted(key: str, value: object, thousands: bool = False) -> str:
    """``value`` written as its figure's kind says (``-`` when it is no number); a key that
    is no known figure is written as a count. ``thousands`` groups digits (``12,345``)."""
    v = number(value)
    if v is None:
        return MISSING
    figure = BY_KEY.get(key)
    decimals = _DECIMALS[figure.kind] if figure is not None else 0
    return format(v, f"{',' if thousands else ''}.{decimals}f")


def shown(summaries: Iterable[Summary]) -> list[Figure]:
    """The figures that are columns for these summaries (one run's, or several)."""
    rows = [fig for summary in summaries for fig in summary.values() if not fig.get("skipped")]

    def wanted(f: Figure) -> bool:
        if f.shown == "always":
            return True
        values = [number(fig.get(f.key)) for fig in rows]
        if f.shown == "nonzero":
            return any(v for v in values)
        return any(v is not None for v in values)

    return [f for f in FIGURES if wanted(f)]


__all__ = ["BY_KEY", "FIGURES", "Figure", "MISSING", "Summary", "formatted", "number", "shown"]
