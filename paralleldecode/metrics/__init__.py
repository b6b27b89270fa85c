"""Answer-quality metrics: per-answer scores and rank-synchronised torchmetrics averages."""

from paralleldecode.metrics.answers import (
    METRICS_BY_TYPE,
    choice_accuracy,
    choice_letters,
    long_scores,
    overlap_tokens,
    score,
    spaced,
)
from paralleldecode.metrics.qa import (
    F1,
    ExactMatch,
    FormatRate,
    Lenient,
    MeanScore,
    exact_match,
    f1_score,
    lenient_match,
    normalize_answer,
    score_answer,
)

__all__ = [
    "METRICS_BY_TYPE",
    "MeanScore",
    "choice_accuracy",
    "choice_letters",
    "long_scores",
    "overlap_tokens",
    "score",
    "spaced",
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
