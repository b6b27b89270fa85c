"""The real SQuAD dev file, scored with its own gold answers."""

from __future__ import annotations

import pytest

from paralleldecode.data.registry import load_groups
from paralleldecode.metrics import F1, ExactMatch


@pytest.mark.data
def test_gold_answers_score_100_against_themselves(data_dir):
    groups = load_groups("squad", data_path=str(data_dir / "squad/dev-v1.1.json"))
    assert len(groups) == 2067
    questions = [q for g in groups for q in g.questions]
    assert len(questions) == 10570
    em, f1 = ExactMatch(), F1()
    preds = [q.answers[0] for q in questions]
    golds = [q.answers for q in questions]
    em.update(preds, golds)
    f1.update(preds, golds)
    assert float(em.compute()) == pytest.approx(100.0)
    assert float(f1.compute()) == pytest.approx(100.0)


@pytest.mark.data
def test_article_halves_share_no_paragraph(data_dir):
    path = str(data_dir / "squad/dev-v1.1.json")
    train = load_groups("squad", data_path=path, options={"articles": "0:24"})
    held = load_groups("squad", data_path=path, options={"articles": "24:48"})
    assert len(train) + len(held) == 2067
    assert not {g.background for g in train} & {g.background for g in held}
    assert not {g.metadata["title"] for g in train} & {g.metadata["title"] for g in held}
