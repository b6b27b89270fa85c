"""Scores for multiple-choice and long answers, and the dispatch by answer type.

* ``choice``: accuracy on the option letter(s). A reply may name the letter (``"B"``,
  ``"(b) Paris"``, ``"B."``), several letters for multi-answer questions (``"ACD"``), or
  repeat an option's text; all map to letters.
* ``long``: BLEU-4 and ROUGE-1/2/L from torchmetrics. Text with CJK characters is scored
  by characters (Chinese has no spaces between words); other text by lower-cased words.
  Per-question BLEU is the unsmoothed sentence score (0 when some n-gram order has no
  match, as torchmetrics computes it); summaries use corpus BLEU, which pools n-gram
  counts over all answers.
* ``short``: EM, F1 and lenient (see :mod:`paralleldecode.metrics.qa`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from paralleldecode.metrics.qa import normalize_answer, score_answer
from paralleldecode.prompts import LETTERS  # the letters the options were shown with

METRICS_BY_TYPE = {
    "short": ("em", "f1", "lenient"),
    "choice": ("accuracy",),
    "long": ("bleu4", "rouge1", "rouge2", "rougeL"),
}
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]")
_WORD = re.compile(r"\w+")


def overlap_tokens(text: str) -> list[str]:
    """Tokens for BLEU/ROUGE: characters for CJK text, lower-cased words otherwise."""
    if _CJK.search(text):
        return [ch for ch in text if not ch.isspace() and not _is_punct(ch)]
    return _WORD.findall(text.lower())


def _is_punct(ch: str) -> bool:
    # Unicode punctuation and symbols, full-width ones (，。！) included.
    return unicodedata.category(ch)[0] in "PS"


def spaced(text: str) -> str:
    """``text`` as space-separated overlap tokens, the form torchmetrics' BLEU/ROUGE split."""
    return " ".join(overlap_tokens(text))


def choice_letters(answer: str, options: Sequence[str]) -> str:
    """The option letters an answer names, sorted (``""`` when it names none)."""
    valid = LETTERS[: len(options)]
    text = answer.strip()
    compact = re.sub(r"[\s,、，;/和及]+", "", text.upper())
    if compact and all(c in valid for c in compact):
        return "".join(sorted(set(compact)))
    # An option's own text first: "A sailor" may be an option, not the letter A.
    norm = normalize_answer(text)
    hits = [LETTERS[i] for i, opt in enumerate(options) if norm and normalize_answer(opt) == norm]
    if hits:
        return hits[0]
    m = re.match(r"^\W*([A-Za-z])(?![A-Za-z])", text)
    if m and m.group(1).upper() in valid:
        return m.group(1).upper()
    return ""


def choice_accuracy(answer: str, golds: Sequence[str], options: Sequence[str]) -> float:
    """1.0 when the named letters equal a gold letter set (e.g. ``"ACD"``), else 0.0."""
    named = choice_letters(answer, options)
    return float(any(named == "".join(sorted(set(g.upper()))) for g in golds))


def long_scores(answer: str, golds: Sequence[str]) -> dict[str, float]:
    """BLEU-4 and ROUGE-1/2/L F-measure (0..1) against the best gold answer."""
    from torchmetrics.functional.text import bleu_score, rouge_score

    pred = spaced(answer)
    refs = [spaced(g) for g in golds]
    out = {"bleu4": float(bleu_score([pred], [refs], n_gram=4)) if pred else 0.0}
    keys = ("rouge1", "rouge2", "rougeL")
    best = {k: 0.0 for k in keys}
    for ref in refs:
        if not pred or not ref:
            continue
        r = rouge_score(pred, ref, rouge_keys=keys, normalizer=lambda s: s, tokenizer=str.split)
        for k in keys:
            best[k] = max(best[k], float(r[f"{k}_fmeasure"]))
    return {**out, **best}


def score(answer: str, golds: Sequence[str], answer_type: str = "short",
          options: Sequence[str] | None = None) -> dict[str, float]:
    """Every applicable score of one answer (0..1); empty when there is no gold."""
    if not golds:
        return {}
    if answer_type == "choice":
        return {"accuracy": choice_accuracy(answer, golds, options or [])}
    if answer_type == "long":
        return long_scores(answer, golds)
    return score_answer(answer, golds)
