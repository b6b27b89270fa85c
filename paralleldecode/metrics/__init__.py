"""Answer-quality metrics: per-answer scores and rank-synchronised torchmetrics averages."""

from paralleldecode.metrics.qa import (
    F1,
    ExactMatch,
    FormatRate,
    Lenient,
    exact_match,
    f1_score,
    lenient_match,
    normalize_answer,
    score_answer,
)

__all__ = [
    "F1",
    "ExactMatch",
    "FormatRate",
    "Lenient",
    "exact_match",
    "f1_score",
    "lenient_match",
    "normalize_answer",
    "score_answer",
]
