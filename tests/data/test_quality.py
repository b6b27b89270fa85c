"""QuALITY adapter: rows and the original release give the same groups; hard_only; bad records."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow
import pyarrow.parquet as pq
import pytest
from data_helpers import containers, json_lines, write

import paralleldecode.data.quality  # noqa: F401 - registers "quality"
from paralleldecode.data.records import DataError
from paralleldecode.data.registry import load_groups

ARTICLE_A = "The Gift of Ranna\n\nRanna sailed to the outer moons in the spring of 3012 ..."
ARTICLE_B = "Lost in Transit\n\nThe freighter had been silent for nine days when ..."

# The original release: one line per article and writer; article A has two question sets.
ORIGINAL = [
    {"article_id": "20001", "set_unique_id": "20001_W1", "title": "The Gift of Ranna",
     "article": ARTICLE_A, "questions": [
         {"question": "Where did Ranna sail?", "question_unique_id": "20001_W1_1",
          "options": ["Mars", "The outer moons", "Earth", "Venus"], "gold_label": 2,
          "difficult": 0},
         {"question": "When did she sail?", "question_unique_id": "20001_W1_2",
          "options": ["Spring", "Summer", "Autumn", "Winter"], "gold_label": 1, "difficult": 1},
     ]},
    {"article_id": "20002", "set_unique_id": "20002_W1", "title": "Lost in Transit",
     "article": ARTICLE_B, "questions": [
         {"question": "How long was the freighter silent?", "question_unique_id": "20002_W1_1",
          "options": ["A day", "A week", "Nine days", "A month"], "gold_label": 3,
          "difficult": 0},
     ]},
    {"article_id": "20001", "set_unique_id": "20001_W2", "title": "The Gift of Ranna",
     "article": ARTICLE_A, "questions": [
         {"question": "In which year?", "question_unique_id": "20001_W2_1",
          "options": ["3012", "2012", "3120", "1302"], "gold_label": 1, "difficult": 1},
     ]},
]


def _rows() -> list[dict]:
    """The same questions as emozilla/quality rows: one per question, 0-based answers."""
    return [{"article": record["article"], "question": q["question"], "options": q["options"],
             "answer": q["gold_label"] - 1, "hard": bool(q["difficult"])}
            for record in ORIGINAL for q in record["questions"]]


def _essence(groups) -> list[tuple]:
    """What must agree across layouts: the rows carry no titles or original ids."""
    return [(g.id, g.dataset, g.background,
             [(q.id, q.text, q.options, q.answers, q.answer_type, q.metadata["hard"])
              for q in g.questions]) for g in groups]


def _load(data_path, **options):
    return load_groups("quality", data_path=data_path, options=options)


def _lines(path: Path, records: list[dict]) -> str:
    return write(path, json_lines(records))


def test_original_layout_groups_by_article(tmp_path):
    path = _lines(tmp_path / "QuALITY.v1.0.1.dev", ORIGINAL)
    groups = _load(path)
    assert [(g.id, g.background, len(g)) for g in groups] == [
        ("quality/0", ARTICLE_A, 3), ("quality/1", ARTICLE_B, 1)]
    assert groups[0].metadata == {"title": "The Gift of Ranna", "article_id": "20001",
                                  "source": f"quality file {path}"}
    first, _, third = groups[0].questions
    assert (first.id, first.options, first.answers, first.answer_type) == (
        "0-0", ["Mars", "The outer moons", "Earth", "Venus"], ["B"], "choice")
    assert first.metadata == {"hard": False, "set_unique_id": "20001_W1",
                              "question_unique_id": "20001_W1_1"}
    # The second question set of article A joins its group, after the first set.
    assert (third.id, third.text, third.answers) == ("0-2", "In which year?", ["A"])
    assert third.metadata["set_unique_id"] == "20001_W2"


def test_all_layouts_and_containers_give_equal_groups(tmp_path):
    expected = _essence(_load(_lines(tmp_path / "original.txt", ORIGINAL)))
    original_parquet = tmp_path / "original.parquet"
    pq.write_table(pyarrow.Table.from_pylist(ORIGINAL), original_parquet)
    sources = {**{f"rows {name}": source for name, source in containers(tmp_path, _rows()).items()},
               "original parquet": str(original_parquet),
               "original datasets.Dataset": datasets.Dataset.from_list(ORIGINAL)}
    for name, source in sources.items():
        assert _essence(_load(source)) == expected, name


def test_rows_have_no_titles():
    groups = _load(_rows())
    assert groups[0].metadata == {"source": "quality list"}
    assert groups[0].questions[0].metadata == {"hard": False}


def test_hard_only_keeps_hard_questions_and_their_articles():
    for source in (_rows(), ORIGINAL):
        groups = _load(source, hard_only=True)
        # Article B has no hard question, so it is left out; ids do not shift.
        assert [(g.id, [q.id for q in g.questions]) for g in groups] == [
            ("quality/0", ["0-1", "0-2"])]
        assert all(q.metadata["hard"] for g in groups for q in g.questions)


def test_hard_only_with_no_hard_question():
    easy = [{**row, "hard": False} for row in _rows()]
    with pytest.raises(DataError, match="hard_only leaves no question"):
        _load(easy, hard_only=True)


def test_original_without_labels_loads_without_gold(tmp_path):
    # The test release withholds gold_label (and may lack difficulty flags).
    record = json.loads(json.dumps(ORIGINAL[1]))
    del record["questions"][0]["gold_label"], record["questions"][0]["difficult"]
    path = _lines(tmp_path / "test.jsonl", [record])
    [group] = _load(path)
    assert group.questions[0].answers == [] and group.questions[0].metadata["hard"] is None
    with pytest.raises(DataError, match=r"test\.jsonl: the single record \(article_id '20002'\) "
                                        r"questions\[0\].* does not say whether .* hard"):
        _load(path, hard_only=True)


def test_default_hub_and_split(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load(hub_id, config, split):
        calls.append((hub_id, config, split))
        return datasets.Dataset.from_list(_rows())

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    groups = load_groups("quality")
    assert calls == [("emozilla/quality", None, "validation")]
    assert groups[0].metadata["source"] == "quality hub emozilla/quality[validation]"


@pytest.mark.parametrize("change, message", [
    ({"answer": 4}, r"'answer' 4 does not name one of the 4 options \(counted from 0\)"),
    ({"answer": True}, "'answer' True does not name one of the 4 options"),
    ({"answer": "B"}, "'answer' should be int, got str"),
    ({"options": "A) Mars"}, "'options' should be list, got str"),
    ({"options": ["Mars"]}, "'options' should be a list of 2 to 26 strings"),
    ({"options": ["Mars", 3]}, "'options' should be a list of 2 to 26 strings"),
    ({"hard": 1}, "'hard' should be bool, got int"),
    ({"article": " "}, "'article' is empty"),
])
def test_malformed_row_names_file_line_and_key(tmp_path, change, message):
    rows = _rows()
    rows[2].update(change)
    path = _lines(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataError, match=r"quality file .*rows\.jsonl: line 3: " + message):
        _load(path)


@pytest.mark.parametrize("change, message", [
    ({"gold_label": 0}, r"'gold_label' 0 does not name one of the 4 options \(counted from 1\)"),
    ({"gold_label": 5}, "'gold_label' 5 does not name one of the 4 options"),
    ({"difficult": 2}, "'difficult' should be 0 or 1, got 2"),
    ({"question": None}, "'question' should be str, got NoneType"),
])
def test_malformed_original_question_names_file_record_and_key(tmp_path, change, message):
    records = json.loads(json.dumps(ORIGINAL))
    records[2]["questions"][0].update(change)
    path = _lines(tmp_path / "dev.txt", records)
    where = r"quality file .*dev\.txt: line 3 \(article_id '20001'\) questions\[0\] " \
            r"\(question_unique_id '20001_W2_1'\): "
    with pytest.raises(DataError, match=where + message):
        _load(path)


def test_original_record_without_title_names_the_key(tmp_path):
    records = json.loads(json.dumps(ORIGINAL))
    del records[1]["title"]
    with pytest.raises(DataError, match=r"line 2 \(article_id '20002'\) has no 'title' key"):
        _load(_lines(tmp_path / "dev.txt", records))


@pytest.mark.parametrize("text", ['[{"foo": 1}]', "[]", '"just a string"'])
def test_unknown_layout_or_no_records(tmp_path, text):
    path = tmp_path / "odd.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=r"quality file .*odd\.json"):
        _load(str(path))
