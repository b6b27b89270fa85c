"""Multiple-choice and long-answer scores against hand-computed values."""

from __future__ import annotations

import pytest

from paralleldecode.metrics import choice_letters, long_scores, overlap_tokens, score

OPTIONS = ["Rome", "Paris", "Oslo", "Bern"]


@pytest.mark.parametrize("answer, letters", [
    ("B", "B"), ("b", "B"), ("(B) Paris", "B"), ("B. Paris", "B"), ("Paris", "B"),
    ("A, C", "AC"), ("CA", "AC"), ("E", ""), ("Because it is", ""), ("", ""),
])
def test_choice_letters(answer, letters):
    assert choice_letters(answer, OPTIONS) == letters


def test_option_text_wins_over_a_leading_article():
    options = ["A sailor", "Ida Voss", "The mayor"]
    assert choice_letters("A sailor", options) == "A"
    assert choice_letters("Ida Voss", options) == "B"
    assert choice_letters("The mayor", options) == "C"  # not the letter T, not a miss
    assert choice_letters("C) The mayor", options) == "C"


def test_choice_accuracy_needs_the_exact_letter_set():
    assert score("B", ["B"], "choice", OPTIONS) == {"accuracy": 1.0}
    assert score("A", ["B"], "choice", OPTIONS) == {"accuracy": 0.0}
    assert score("AC", ["CA"], "choice", OPTIONS) == {"accuracy": 1.0}
    assert score("A", ["AC"], "choice", OPTIONS) == {"accuracy": 0.0}  # half right is wrong


def test_overlap_tokens_use_characters_for_chinese():
    assert overlap_tokens("患者，应休息。") == ["患", "者", "应", "休", "息"]
    assert overlap_tokens("The cat, sat!") == ["the", "cat", "sat"]


def test_long_scores_by_hand():
    # pred "a b c d", gold "a b c e" (words): ROUGE-1 P=R=3/4 -> F=0.75; ROUGE-2 bigrams
    # {ab, bc, cd} vs {ab, bc, ce}: 2/3 -> 0.6667; ROUGE-L LCS "a b c" = 3 -> 0.75.
    # BLEU-4: the only 4-grams differ, so the unsmoothed sentence BLEU is 0.
    s = long_scores("a b c d", ["a b c e"])
    assert s["rouge1"] == pytest.approx(0.75, abs=1e-4)
    assert s["rouge2"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["rougeL"] == pytest.approx(0.75, abs=1e-4)
    assert s["bleu4"] == 0.0
    # Identical 4+ token answers score 1 everywhere.
    same = long_scores("the patient should rest", ["the patient should rest"])
    assert all(v == pytest.approx(1.0, abs=1e-4) for v in same.values())


def test_long_scores_chinese_by_characters_and_best_gold():
    # pred 患者休息 vs gold 患者需要休息: 4 of 4 pred chars in gold, 4 of 6 gold chars:
    # ROUGE-1 F = 2*1*(4/6)/(1+4/6) = 0.8.
    s = long_scores("患者休息", ["完全无关", "患者需要休息"])
    assert s["rouge1"] == pytest.approx(0.8, abs=1e-4)


def test_no_gold_gives_no_scores_and_short_is_the_default():
    assert score("x", [], "long") == {}
    assert set(score("Paris", ["Paris"])) == {"em", "f1", "lenient"}
