"""SQuAD adapter: every accepted layout gives the same groups; bad input names file and record."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from data_helpers import containers, write

from paralleldecode.data import DataError, load_squad
from paralleldecode.data.registry import load_groups

CONTEXT_A = "Ada Park opened in 1901 beside the river Lune. Its gardener was Tom Reed."
CONTEXT_B = "The ferry to Holm runs twice a day and takes 40 minutes."

# Original SQuAD layout; the gold span is repeated as SQuAD does for several annotators.
ORIGINAL = {
    "version": "1.1",
    "data": [
        {"title": "Ada_Park", "paragraphs": [{"context": CONTEXT_A, "qas": [
            {"id": "a1", "question": "When did Ada Park open?",
             "answers": [{"text": "1901", "answer_start": 19}, {"text": "1901", "answer_start": 19}]},
            {"id": "a2", "question": "Who was its gardener?",
             "answers": [{"text": "Tom Reed", "answer_start": 64}, {"text": "Reed", "answer_start": 68}]},
        ]}]},
        {"title": "Holm", "paragraphs": [{"context": CONTEXT_B, "qas": [
            {"id": "b1", "question": "How long does the ferry take?",
             "answers": [{"text": "40 minutes", "answer_start": 45}]},
        ]}]},
    ],
}


def _rows() -> list[dict]:
    """The same questions as Hugging Face rows, one per question."""
    rows = []
    for article in ORIGINAL["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                rows.append({"id": qa["id"], "title": article["title"], "context": paragraph["context"],
                             "question": qa["question"],
                             "answers": {"text": [a["text"] for a in qa["answers"]],
                                         "answer_start": [a["answer_start"] for a in qa["answers"]]}})
    return rows


def _essence(groups) -> list[tuple]:
    """What must agree across layouts (the source naturally differs)."""
    return [(g.id, g.dataset, g.background, g.metadata["title"],
             [(q.id, q.text, q.answers, q.metadata) for q in g.questions]) for g in groups]


def test_original_layout_groups_by_context(tmp_path):
    groups = load_squad(write(tmp_path / "dev.json", json.dumps(ORIGINAL)))
    assert [g.id for g in groups] == ["squad/a1", "squad/b1"]
    assert groups[0].background == CONTEXT_A
    assert groups[0].metadata == {"title": "Ada_Park", "source": str(tmp_path / "dev.json")}
    first, second = groups[0].questions
    assert first.answers == ["1901"] and first.metadata == {"answer_start": [19]}
    assert second.answers == ["Tom Reed", "Reed"]
    assert second.metadata == {"answer_start": [64, 68]}
    assert all(CONTEXT_A[s:s + len(a)] == a for a, s in zip(second.answers, second.metadata["answer_start"]))


def test_all_layouts_give_identical_groups(tmp_path):
    expected = _essence(load_squad(write(tmp_path / "original.json", json.dumps(ORIGINAL))))
    for name, source in containers(tmp_path, _rows()).items():
        assert _essence(load_squad(source)) == expected, name


def test_rows_sharing_a_context_are_grouped_in_first_appearance_order(tmp_path):
    rows = _rows()
    shuffled = [rows[2], rows[0], rows[1]]
    groups = load_squad(write(tmp_path / "rows.json", json.dumps(shuffled)))
    assert [g.id for g in groups] == ["squad/b1", "squad/a1"]
    assert [q.id for q in groups[1].questions] == ["a1", "a2"]


def test_single_row_json_lines_file(tmp_path):
    groups = load_squad(write(tmp_path / "one.jsonl", json.dumps(_rows()[2]) + "\n"))
    assert [g.id for g in groups] == ["squad/b1"]


def _break_original(mutate) -> dict:
    doc = json.loads(json.dumps(ORIGINAL))
    mutate(doc)
    return doc


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["data"][1]["paragraphs"][0]["qas"][0].pop("question"),
     "data[1].paragraphs[0].qas[0] (id 'b1') has no 'question' key"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][1]["answers"][0].pop("answer_start"),
     "data[0].paragraphs[0].qas[1] (id 'a2') answers[0] has no 'answer_start' key"),
    (lambda d: d["data"][0]["paragraphs"][0].update(context=["not", "text"]),
     "data[0].paragraphs[0]: 'context' should be str, got list"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].update(id=7),
     "data[0].paragraphs[0].qas[0] (id 7): 'id' should be str, got int"),
    (lambda d: d["data"][1]["paragraphs"][0]["qas"][0].update(question="  "),
     "data[1].paragraphs[0].qas[0] (id 'b1'): question 'b1': the question text is empty"),
    (lambda d: d["data"][1]["paragraphs"][0]["qas"][0].update(id="a1"),
     "data[1].paragraphs[0].qas[0] (id 'a1'): question id 'a1' was already used by"),
])
def test_malformed_original_record_names_file_and_record(tmp_path, mutate, expected):
    path = write(tmp_path / "dev.json", json.dumps(_break_original(mutate)))
    with pytest.raises(DataError) as err:
        load_squad(path)
    assert str(err.value).startswith(f"squad file {path}: ")
    assert expected in str(err.value)


def test_malformed_row_names_file_line_and_key(tmp_path):
    rows = _rows()
    del rows[1]["answers"]["answer_start"]
    path = write(tmp_path / "rows.jsonl", "\n".join(json.dumps(r) for r in rows))
    expected = r"rows\.jsonl: line 2 \(id 'a2'\) answers has no 'answer_start' key"
    with pytest.raises(DataError, match=expected):
        load_squad(path)


def test_row_answers_of_unequal_length(tmp_path):
    rows = _rows()
    rows[0]["answers"]["answer_start"].pop()
    path = write(tmp_path / "rows.json", json.dumps(rows))
    with pytest.raises(DataError, match=r"rows\.json: row 0 \(id 'a1'\): 'answers' needs equally long"):
        load_squad(path)


def test_missing_file_names_path(tmp_path):
    with pytest.raises(DataError, match=r"squad file .*nothing\.json does not exist"):
        load_squad(tmp_path / "nothing.json")


@pytest.mark.parametrize("text", ['{"foo": 1}', '"just a string"', "not json at all\n"])
def test_unknown_layout_lists_accepted_layouts(tmp_path, text):
    path = write(tmp_path / "odd.json", text)
    accepted = "original SQuAD JSON.*JSON list of Hugging Face rows.*JSON lines"
    with pytest.raises(DataError, match=accepted) as err:
        load_squad(path)
    assert path in str(err.value)


def test_empty_file_has_no_questions(tmp_path):
    with pytest.raises(DataError, match="holds no questions"):
        load_squad(write(tmp_path / "empty.json", ""))


def test_unreachable_hub_suggests_a_local_file(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'rajpurkar/squad' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="hub could not be reached.*local file path"):
        load_groups("squad")


def test_hub_rows_are_loaded_with_the_split(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load(hub_id, config=None, split=None):  # load_dataset's (path, name, split)
        calls.append((hub_id, split))
        return datasets.Dataset.from_list(_rows())

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    groups = load_squad("rajpurkar/squad", split="train")
    assert calls == [("rajpurkar/squad", "train")]
    assert groups[0].metadata == {"title": "Ada_Park", "source": "rajpurkar/squad", "split": "train"}


def test_local_file_has_no_split_whatever_its_path(tmp_path):
    # Only hub rows come from a split; a folder named like "my hub files" changes nothing.
    folder = tmp_path / "my hub files"
    folder.mkdir()
    [group, _] = load_squad(write(folder / "dev.json", json.dumps(ORIGINAL)), split="train")
    assert "split" not in group.metadata


@pytest.mark.data
def test_real_squad_dev_file():
    data_dir = os.environ.get("PARALLELDECODE_DATA_DIR")
    if not data_dir:
        pytest.skip("PARALLELDECODE_DATA_DIR is not set")
    groups = load_squad(Path(data_dir) / "squad" / "dev-v1.1.json")
    assert len(groups) == 2067
    assert sum(len(g) for g in groups) == 10570
    assert all(g.background[s:s + len(a)] == a for g in groups for q in g.questions
               for a, s in zip(q.answers, q.metadata["answer_start"]))


def test_articles_option_keeps_a_slice_of_articles(tmp_path):
    path = write(tmp_path / "dev.json", json.dumps(ORIGINAL))
    first = load_groups("squad", data_path=path, options={"articles": "0:1"})
    rest = load_groups("squad", data_path=path, options={"articles": "1:"})
    assert [g.id for g in load_groups("squad", data_path=path, options={"articles": [1, None]})] == \
        [g.id for g in rest]
    assert [g.metadata["title"] for g in first] == ["Ada_Park"]
    assert [g.metadata["title"] for g in rest] == ["Holm"]
    with pytest.raises(DataError, match=r"expected \[start, stop\]"):
        load_groups("squad", data_path=path, options={"articles": "first half"})
    with pytest.raises(DataError, match="base-60 number 1488"):
        load_groups("squad", data_path=path, options={"articles": 1488})
    with pytest.raises(DataError, match="selects no article; the source has 2 articles"):
        load_groups("squad", data_path=path, options={"articles": "5:9"})


def _article_file(tmp_path):
    data = {"version": "1.1", "data": [
        {"title": f"Art{a}", "paragraphs": [
            {"context": f"Paragraph {p} of article {a}.", "qas": [
                {"id": f"a{a}p{p}q{q}", "question": f"Question {q} on paragraph {p}?",
                 "answers": [{"text": "article", "answer_start": 15}]} for q in range(3)]}
            for p in range(4)]} for a in range(2)]}
    return write(tmp_path / "dev.json", json.dumps(data))


def test_group_by_article_samples_questions_from_the_whole_article(tmp_path):
    path = _article_file(tmp_path)
    groups = load_groups("squad", data_path=str(path), seed=3,
                         options={"group_by": "article", "article_questions": 5})
    assert [g.id for g in groups] == ["squad/article/Art0", "squad/article/Art1"]
    first = groups[0]
    assert first.background == "\n\n".join(f"Paragraph {p} of article 0." for p in range(4))
    assert len(first) == 5 and first.metadata["paragraphs"] == 4 and first.metadata["article_questions"] == 12
    ids = [q.id for q in first.questions]
    assert ids == sorted(ids, key=lambda i: (int(i[3]), int(i[5])))  # reading order
    assert len({i[:4] for i in ids}) > 1  # drawn from several paragraphs
    again = load_groups("squad", data_path=str(path), seed=3, options={"group_by": "article", "article_questions": 5})
    other = load_groups("squad", data_path=str(path), seed=4, options={"group_by": "article", "article_questions": 5})
    assert [q.id for q in again[0].questions] == ids
    assert any([q.id for q in a.questions] != [q.id for q in b.questions] for a, b in zip(groups, other))


def test_group_by_article_can_keep_the_first_paragraphs(tmp_path):
    groups = load_groups("squad", data_path=str(_article_file(tmp_path)),
                         options={"group_by": "article", "article_questions": 20, "article_paragraphs": 2})
    assert all(len(g) == 6 and g.background.count("Paragraph") == 2 for g in groups)


def test_group_by_refuses_unknown_values(tmp_path):
    with pytest.raises(DataError, match="group_by='articles'; accepted: paragraph, article"):
        load_groups("squad", data_path=str(_article_file(tmp_path)), options={"group_by": "articles"})


def test_real_squad_articles_are_long_contexts(data_dir):
    groups = load_groups("squad", data_path=str(data_dir / "squad/dev-v1.1.json"),
                         options={"group_by": "article", "article_questions": 20})
    assert len(groups) == 48 and all(len(g) == 20 for g in groups)
    assert min(len(g.background) for g in groups) > 10_000
