"""Answer-quality scores for extractive and short-form QA.

The string functions score one answer; the torchmetrics classes average those scores over
a run and sum across ranks, so every strategy is judged by the same code on one process or
many.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

import torch
from torchmetrics import Metric

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(s: str) -> str:
    """Normalises an answer the way the SQuAD v1.1 evaluation script does.

    Lower-cases, deletes ASCII punctuation, deletes the articles "a", "an" and "the" and
    collapses runs of whitespace into single spaces.

    Args:
        s: the raw answer.

    Returns:
        The normalised answer; empty when nothing but punctuation, articles and spaces.
    """
    # Punctuation goes before articles so that "the," still counts as the article "the".
    s = s.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _require_golds(golds: Sequence[str]) -> None:
    if not golds:
        raise ValueError("no gold answers to score against; skip questions without gold")


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """Whether the normalised prediction equals any normalised gold answer.

    Args:
        prediction: the model's answer.
        golds: gold answers; any one of them counts as correct.

    Returns:
        1.0 on a match, else 0.0.

    Raises:
        ValueError: if ``golds`` is empty.
    """
    _require_golds(golds)
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(gold) for gold in golds))


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    # As in SQuAD v1.1, no shared token (which includes either side being empty) scores 0.
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred_tokens)
    recall = common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, golds: Sequence[str]) -> float:
    """Token-level F1 between the normalised prediction and the best gold answer.

    Args:
        prediction: the model's answer.
        golds: gold answers; the best-scoring one counts.

    Returns:
        The largest F1 over the golds, between 0 and 1.

    Raises:
        ValueError: if ``golds`` is empty.
    """
    _require_golds(golds)
    pred_tokens = normalize_answer(prediction).split()
    return max(_token_f1(pred_tokens, normalize_answer(gold).split()) for gold in golds)


def lenient_match(prediction: str, golds: Sequence[str]) -> float:
    """Whether the prediction contains a gold answer or a gold answer contains it.

    Containment is checked on normalised text at word boundaries, so a verbose answer such
    as "it was Paris in 1900" matches "Paris" while "cat" does not match "category". An
    empty normalised prediction never matches, and neither does a gold that normalises to
    nothing: both would otherwise be contained in every string.

    Args:
        prediction: the model's answer.
        golds: gold answers; any one of them counts as correct.

    Returns:
        1.0 on a match, else 0.0.

    Raises:
        ValueError: if ``golds`` is empty.
    """
    _require_golds(golds)
    pred = normalize_answer(prediction)
    if not pred:
        return 0.0
    # Padding with spaces turns substring tests into whole-word containment.
    padded_pred = f" {pred} "
    for gold in golds:
        norm_gold = normalize_answer(gold)
        if norm_gold and (f" {norm_gold} " in padded_pred or padded_pred in f" {norm_gold} "):
            return 1.0
    return 0.0


def score_answer(prediction: str, golds: Sequence[str]) -> dict[str, float]:
    """All three answer scores for one question.

    Args:
        prediction: the model's answer.
        golds: gold answers.

    Returns:
        ``{"em": ..., "f1": ..., "lenient": ...}``, each between 0 and 1.

    Raises:
        ValueError: if ``golds`` is empty.
    """
    return {
        "em": exact_match(prediction, golds),
        "f1": f1_score(prediction, golds),
        "lenient": lenient_match(prediction, golds),
    }


class _PercentMean(Metric):
    """Mean of per-item scores in percent, summed across ranks before dividing.

    Keeping a sum and a count (rather than a mean) keeps the cross-rank reduction right
    when ranks scored different numbers of items.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    total: torch.Tensor
    count: torch.Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _add(self, scores: Sequence[float]) -> None:
        self.total += float(sum(scores))
        self.count += len(scores)

    def compute(self) -> torch.Tensor:
        """The mean score in percent (0 to 100), or NaN when nothing was scored."""
        if self.count == 0:
            # A strategy may have answered no question with gold; that is not an error.
            return torch.full_like(self.total, float("nan"))
        return 100.0 * self.total / self.count


class _AnswerMetric(_PercentMean):
    """Averages one answer score over questions, skipping those without gold."""

    # Subclasses set this with staticmethod so the plain function does not bind to self.
    _score: Callable[[str, Sequence[str]], float]

    def update(self, preds: Sequence[str], targets: Sequence[Sequence[str]]) -> None:
        """Scores a batch of answers.

        Args:
            preds: one predicted answer per question.
            targets: the gold answers of each question; an empty list skips the question.

        Raises:
            ValueError: if ``preds`` and ``targets`` differ in length.
        """
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions but {len(targets)} gold lists")
        self._add([self._score(pred, golds) for pred, golds in zip(preds, targets) if golds])


class ExactMatch(_AnswerMetric):
    """Exact match in percent (see `exact_match`)."""

    _score = staticmethod(exact_match)


class F1(_AnswerMetric):
    """Token F1 in percent (see `f1_score`)."""

    _score = staticmethod(f1_score)


class Lenient(_AnswerMetric):
    """Lenient containment match in percent (see `lenient_match`)."""

    _score = staticmethod(lenient_match)


class MeanScore(_PercentMean):
    """Mean of per-question scores (0..1) computed elsewhere, in percent."""

    def update(self, scores: Sequence[float]) -> None:
        """Adds a batch of scores, each between 0 and 1."""
        self._add([float(s) for s in scores])


class FormatRate(_PercentMean):
    """Percentage of outputs that followed the requested answer format."""

    def update(self, ok: Sequence[bool]) -> None:
        """Counts a batch of format checks.

        Args:
            ok: whether each output could be parsed as asked.
        """
        self._add([float(flag) for flag in ok])
