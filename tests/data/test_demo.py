"""The bundled demo set and loading a user file of its layout."""

from __future__ import annotations

import json

import pytest

from paralleldecode.data import DataError, load_demo
from paralleldecode.data.registry import dataset_names, load_groups


def test_bundled_demo_shape():
    groups = load_demo()
    assert len(groups) == 12
    assert len({g.id for g in groups}) == 12
    assert len({q.id for g in groups for q in g.questions}) == sum(len(g) for g in groups)
    for g in groups:
        assert g.dataset == "demo" and g.metadata["title"]
        assert 3 <= len(g) <= 5, g.id
        assert 60 <= len(g.background.split()) <= 120, g.id


def test_every_gold_answer_occurs_verbatim_in_its_context():
    for g in load_demo():
        for q in g.questions:
            assert 1 <= len(q.answers) <= 2, q.id
            for answer in q.answers:
                assert answer in g.background, (q.id, answer)
                assert 1 <= len(answer.split()) <= 4, (q.id, answer)


def test_registered_and_loadable_by_name():
    assert {"demo", "squad"} <= set(dataset_names())
    assert [g.id for g in load_groups("demo")] == [g.id for g in load_demo()]


def _user_file(tmp_path, questions):
    doc = {"version": 1, "groups": [{"id": "u-1", "title": "T", "context": "Kiri lives in Oslo.",
                                     "questions": questions}]}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_user_file(tmp_path):
    question = {"id": "u-1-q1", "question": "Where does Kiri live?", "answers": ["Oslo"]}
    path = _user_file(tmp_path, [question])
    [group] = load_groups("demo", data_path=str(path))
    assert group.id == "u-1" and group.background == "Kiri lives in Oslo."
    assert group.metadata == {"title": "T", "source": str(path)}


def test_user_file_errors_name_file_and_record(tmp_path):
    path = _user_file(tmp_path, [{"id": "u-1-q1", "question": "Where?"}])
    where = r"mine\.json: groups\[0\] \(id 'u-1'\)\.questions\[0\] \(id 'u-1-q1'\)"
    with pytest.raises(DataError, match=where + " has no 'answers' key"):
        load_demo(path)
    with pytest.raises(DataError, match=r"demo file .*absent\.json does not exist"):
        load_demo(tmp_path / "absent.json")
