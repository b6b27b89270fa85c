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
    train = load_groups("squad", data_path=path, options={"articles": [0, 24]})
    held = load_groups("squad", data_path=path, options={"articles": [24, 48]})
    assert len(train) + len(held) == 2067
    assert not {g.background for g in train} & {g.background for g in held}
    assert not {g.metadata["title"] for g in train} & {g.metadata["title"] for g in held}


@pytest.mark.data
def test_fit_and_predict_configs_use_disjoint_articles(data_dir):
    """Through the real config parser (YAML would read 24:48 as a base-60 number)."""
    from pathlib import Path

    from paralleldecode.cli import build_cli

    root = Path(__file__).resolve().parents[2]
    path = str(data_dir / "squad/dev-v1.1.json")
    titles = {}
    for cfg in ("configs/fit/crossbatch_squad.yaml", "configs/predict/crossbatch_squad.yaml"):
        cli = build_cli(["--config", str(root / cfg), "--data.init_args.data_path", path], run=False)
        cli.datamodule.setup("fit")
        titles[cfg] = {g.metadata["title"] for g in cli.datamodule.groups}
    fit, predict = titles.values()
    assert len(fit) == 24 and predict and not fit & predict
