"""Answer scores and their torchmetrics averages, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest

from paralleldecode.metrics import (
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


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("The Cat", "cat"),
        ("  Paris,   France! ", "paris france"),
        ("an apple a day", "apple day"),
        # Articles only go as whole words: "theory" and "Ana" keep their letters.
        ("theory of Ana", "theory of ana"),
        # Punctuation is removed before articles, so "the," is still an article.
        ("the, end", "end"),
        ("U.S.A.", "usa"),
        ("the a an", ""),
        ("", ""),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_exact_match_ignores_case_punctuation_and_articles() -> None:
    assert exact_match("The Eiffel Tower.", ["eiffel tower"]) == 1.0
    assert exact_match("Eiffel", ["eiffel tower"]) == 0.0


def test_exact_match_takes_the_best_gold() -> None:
    assert exact_match("1900", ["nineteen hundred", "1900"]) == 1.0


def test_f1_hand_computed() -> None:
    # "the cat sat" -> [cat, sat]; "a cat sat down" -> [cat, sat, down].
    # Shared tokens 2: precision 2/2 = 1, recall 2/3, F1 = 2 * 1 * 2/3 / (1 + 2/3) = 0.8.
    assert f1_score("the cat sat", ["a cat sat down"]) == pytest.approx(0.8)


def test_f1_counts_repeated_tokens_once_per_occurrence() -> None:
    # [cat, cat] vs [cat]: one shared token, precision 1/2, recall 1/1, F1 = 2/3.
    assert f1_score("cat cat", ["cat"]) == pytest.approx(2 / 3)


def test_f1_takes_the_best_gold() -> None:
    # Against "dog" F1 is 0; against "a cat sat down" it is 0.8 (see above).
    assert f1_score("the cat sat", ["dog", "a cat sat down"]) == pytest.approx(0.8)


def test_f1_no_overlap_is_zero() -> None:
    assert f1_score("dog", ["cat"]) == 0.0


@pytest.mark.parametrize(
    ("prediction", "golds", "expected"),
    [
        ("It was Paris in 1900.", ["Paris"], 1.0),  # prediction contains the gold
        ("Paris", ["the city of Paris"], 1.0),  # gold contains the prediction
        ("London", ["Paris"], 0.0),
        ("category", ["cat"], 0.0),  # whole words only
        ("London", ["Rome", "Paris", "London"], 1.0),  # any gold counts
        ("the", ["the cat"], 0.0),  # normalises to empty: never a match
        ("cat", ["the"], 0.0),  # an empty gold is contained in everything; ignored
    ],
)
def test_lenient_match(prediction: str, golds: list[str], expected: float) -> None:
    assert lenient_match(prediction, golds) == expected


def test_empty_prediction_scores_zero() -> None:
    assert score_answer("", ["cat"]) == {"em": 0.0, "f1": 0.0, "lenient": 0.0}


@pytest.mark.parametrize("scorer", [exact_match, f1_score, lenient_match, score_answer])
def test_empty_golds_raise(scorer) -> None:
    with pytest.raises(ValueError, match="gold"):
        scorer("cat", [])


def test_score_answer_combines_all_three() -> None:
    scores = score_answer("the cat sat", ["a cat sat down"])
    assert scores == {"em": 0.0, "f1": pytest.approx(0.8), "lenient": 1.0}


def test_metrics_accumulate_over_updates_and_skip_questions_without_gold() -> None:
    em, f1, lenient = ExactMatch(), F1(), Lenient()
    batches = [
        (["cat", "the cat sat"], [["cat"], ["a cat sat down"]]),
        (["anything", "dog"], [[], ["cat"]]),  # the first question has no gold
    ]
    for preds, targets in batches:
        for metric in (em, f1, lenient):
            metric.update(preds, targets)
    # Three scored questions: EM 1, 0, 0; F1 1, 0.8, 0; lenient 1, 1, 0.
    assert em.compute().item() == pytest.approx(100 / 3)
    assert f1.compute().item() == pytest.approx(180 / 3)
    assert lenient.compute().item() == pytest.approx(200 / 3)


def test_metric_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1"):
        ExactMatch().update(["a", "b"], [["a"]])


def test_format_rate_in_percent() -> None:
    rate = FormatRate()
    rate.update([True, False, True])
    rate.update([True])
    assert rate.compute().item() == pytest.approx(75.0)


def test_compute_without_scored_questions_is_nan() -> None:
    metric = ExactMatch()
    metric.update(["cat"], [[]])
    assert math.isnan(metric.compute().item())


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_compute_before_any_update_is_nan() -> None:
    assert math.isnan(FormatRate().compute().item())


def test_reset_clears_the_states() -> None:
    metric = F1()
    metric.update(["cat"], [["cat"]])
    assert metric.compute().item() == pytest.approx(100.0)
    metric.reset()
    metric.update(["dog"], [["cat"]])
    assert metric.compute().item() == 0.0


def test_merging_ranks_weights_by_question_count() -> None:
    # merge_state applies each state's dist_reduce_fx, as a cross-rank sync would.
    # One rank got 1 of 1 right, the other 0 of 3: 1 of 4 is 25%, not the 50% that
    # averaging the two ranks' means would give.
    rank0, rank1 = ExactMatch(), ExactMatch()
    rank0.update(["cat"], [["cat"]])
    rank1.update(["a", "b", "c"], [["x"], ["y"], ["z"]])
    rank0.merge_state(rank1)
    assert rank0.compute().item() == pytest.approx(25.0)
