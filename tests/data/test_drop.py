"""DROP adapter: original JSON and Hugging Face rows in every container give the same groups."""

from __future__ import annotations

import json

import datasets
import pytest
from data_helpers import containers, json_lines, write

from paralleldecode.data import drop
from paralleldecode.data.records import DataError
from paralleldecode.data.registry import load_groups

PASSAGE_A = "The Hawks kicked 3 field goals. Ada Lind scored first, Bo Reyes scored last."
PASSAGE_B = "The treaty of Vell was signed on 3 March 1878 and broken in 1880."
NO_DATE = {"day": "", "month": "", "year": ""}


def _answer(number: str = "", date: dict | None = None, spans: list[str] | None = None) -> dict:
    return {"number": number, "date": date or NO_DATE, "spans": spans or []}


def _qa(qid: str, question: str, answer: dict, validated: list[dict] | None = None) -> dict:
    return {"question": question, "query_id": qid, "answer": answer,
            "validated_answers": validated or []}


# Each answer has one rendering and no validated answers, so the rows below say the same.
ORIGINAL = {
    "nfl_1": {"passage": PASSAGE_A, "qa_pairs": [
        _qa("d1", "How many field goals were kicked?", _answer(number="3")),
        _qa("d2", "Who scored first?", _answer(spans=["Ada Lind"])),
    ]},
    "history_2": {"passage": PASSAGE_B, "qa_pairs": [
        _qa("d3", "When was the treaty signed?",
            _answer(date={"day": "3", "month": "March", "year": "1878"})),
    ]},
}
ROWS = [
    {"section_id": "nfl_1", "query_id": "d1", "passage": PASSAGE_A,
     "question": "How many field goals were kicked?",
     "answers_spans": {"spans": ["3"], "types": ["number"]}},
    {"section_id": "nfl_1", "query_id": "d2", "passage": PASSAGE_A, "question": "Who scored first?",
     "answers_spans": {"spans": ["Ada Lind"], "types": ["span"]}},
    {"section_id": "history_2", "query_id": "d3", "passage": PASSAGE_B,
     "question": "When was the treaty signed?",
     "answers_spans": {"spans": ["3 March 1878"], "types": ["date"]}},
]


def _essence(groups) -> list[tuple]:
    """What must agree across layouts (the source naturally differs)."""
    return [(g.id, g.background, g.questions) for g in groups]


def test_original_layout_one_group_per_passage(tmp_path):
    path = write(tmp_path / "drop_dataset_dev.json", json.dumps(ORIGINAL))
    groups = drop.load_drop(path)
    assert [g.id for g in groups] == ["drop/nfl_1", "drop/history_2"]
    assert [g.background for g in groups] == [PASSAGE_A, PASSAGE_B]
    assert groups[0].metadata == {"source": f"drop file {path}"}
    assert [(q.id, q.answers, q.metadata) for g in groups for q in g.questions] == [
        ("d1", ["3"], {"types": ["number"]}),
        ("d2", ["Ada Lind"], {"types": ["span"]}),
        ("d3", ["3 March 1878"], {"types": ["date"]}),
    ]


def test_all_layouts_and_containers_give_equal_groups(tmp_path):
    # Extensions deliberately mislead: the layout must be read from the content.
    expected = _essence(drop.load_drop(write(tmp_path / "orig.jsonl", json.dumps(ORIGINAL))))
    for name, source in containers(tmp_path, ROWS).items():
        assert _essence(drop.load_drop(source)) == expected, name


def test_gold_answers_from_numbers_dates_spans_and_validated_answers(tmp_path):
    qa_pairs = [
        _qa("n", "How many?", _answer(number="12"),
            [_answer(number="12"), _answer(spans=["twelve"])]),
        _qa("y", "Which year?", _answer(date={"day": "", "month": "May", "year": "1880"})),
        _qa("s", "Who scored?", _answer(spans=["Ada Lind", "Bo Reyes"]),
            [_answer(spans=["Bo Reyes", "Ada Lind"])]),
        # The number wins over anything else an answer also fills in.
        _qa("p", "Which first?", _answer(number="4", spans=["four"])),
        _qa("e", "No gold?", _answer()),
    ]
    path = write(tmp_path / "dev.json", json.dumps({"p": {"passage": PASSAGE_A, "qa_pairs": qa_pairs}}))
    questions = {q.id: q for q in drop.load_drop(path)[0].questions}
    assert questions["n"].answers == ["12", "twelve"]
    assert questions["n"].metadata == {"types": ["number", "number", "span"]}
    assert questions["y"].answers == ["May 1880"]
    assert questions["s"].answers == ["Ada Lind, Bo Reyes", "Ada Lind", "Bo Reyes",
                                      "Bo Reyes, Ada Lind"]
    assert questions["p"].answers == ["4"]
    assert questions["e"].answers == [] and questions["e"].metadata == {"types": []}


def test_training_file_without_validated_answers(tmp_path):
    doc = json.loads(json.dumps(ORIGINAL))
    for entry in doc.values():
        for qa in entry["qa_pairs"]:
            del qa["validated_answers"]
    train = drop.load_drop(write(tmp_path / "train.json", json.dumps(doc)))
    dev = drop.load_drop(write(tmp_path / "dev.json", json.dumps(ORIGINAL)))
    assert _essence(train) == _essence(dev)


def test_rows_group_by_section_in_first_appearance_order(tmp_path):
    rows = [ROWS[2], ROWS[0], ROWS[1]]
    groups = drop.load_drop(rows)
    assert [g.id for g in groups] == ["drop/history_2", "drop/nfl_1"]
    assert [q.id for q in groups[1].questions] == ["d1", "d2"]
    one = drop.load_drop(write(tmp_path / "one.jsonl", json.dumps(ROWS[0]) + "\n"))
    assert [q.id for g in one for q in g.questions] == ["d1"]


def test_default_source_is_the_hub(monkeypatch):
    calls = []

    def fake_load(hub_id, config, split):
        calls.append((hub_id, config, split))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    groups = load_groups("drop")
    assert calls == [("ucinlp/drop", None, "validation")]
    assert groups[0].metadata == {"source": "drop hub ucinlp/drop[validation]"}


def test_unknown_option_is_refused(tmp_path):
    with pytest.raises(DataError, match="no option 'group_size'; accepted: none"):
        load_groups("drop", write(tmp_path / "rows.json", json.dumps(ROWS)),
                    options={"group_size": 2})


def _broken_original(mutate) -> dict:
    doc = json.loads(json.dumps(ORIGINAL))
    mutate(doc)
    return doc


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["nfl_1"]["qa_pairs"][1].pop("question"),
     "passage 'nfl_1' qa_pairs[1] (id 'd2') has no 'question' key"),
    (lambda d: d["nfl_1"]["qa_pairs"][0]["answer"].pop("number"),
     "passage 'nfl_1' qa_pairs[0] (id 'd1') answer has no 'number' key"),
    (lambda d: d["history_2"]["qa_pairs"][0]["answer"]["date"].update(year=1878),
     "passage 'history_2' qa_pairs[0] (id 'd3') answer date: 'year' should be str"),
    (lambda d: d["nfl_1"]["qa_pairs"][1]["validated_answers"].append({"number": "1"}),
     "passage 'nfl_1' qa_pairs[1] (id 'd2') validated_answers[0] has no 'date' key"),
    (lambda d: d["nfl_1"]["qa_pairs"][1]["answer"].update(spans=["a", 2]),
     "qa_pairs[1] (id 'd2') answer: 'spans' should be a list of strings"),
    (lambda d: d["nfl_1"]["qa_pairs"][1].update(query_id=["d2"]),
     "passage 'nfl_1' qa_pairs[1]: 'query_id' should be str"),
    (lambda d: d["history_2"]["qa_pairs"][0].update(query_id="d1"),
     "passage 'history_2' qa_pairs[0] (id 'd1'): query id 'd1' was already used by "
     "passage 'nfl_1' qa_pairs[0] (id 'd1')"),
    (lambda d: d["history_2"].update(passage=None), "passage 'history_2': 'passage' should be str"),
    (lambda d: d["history_2"].update(qa_pairs=[]), "passage 'history_2': 'qa_pairs' is empty"),
])
def test_malformed_original_names_file_passage_question_and_key(tmp_path, mutate, expected):
    path = write(tmp_path / "dev.json", json.dumps(_broken_original(mutate)))
    with pytest.raises(DataError) as err:
        drop.load_drop(path)
    assert str(err.value).startswith(f"drop file {path}: ")
    assert expected in str(err.value)


def _broken_rows(mutate) -> list[dict]:
    rows = json.loads(json.dumps(ROWS))
    mutate(rows)
    return rows


@pytest.mark.parametrize("mutate, expected", [
    (lambda r: r[1].pop("passage"), "line 2 (id 'd2') has no 'passage' key"),
    (lambda r: r[0].pop("query_id"), "line 1 has no 'query_id' key"),
    (lambda r: r[2]["answers_spans"].pop("types"),
     "line 3 (id 'd3') answers_spans has no 'types' key"),
    (lambda r: r[2].update(answers_spans=["3 March 1878"]),
     "line 3 (id 'd3'): 'answers_spans' should be Mapping"),
    (lambda r: r[1].update(passage="Another text."),
     "line 2 (id 'd2'): section 'nfl_1' has another 'passage' than in"),
    (lambda r: r[1].update(question=""),
     "line 2 (id 'd2'): question 'd2': the question text is empty"),
])
def test_malformed_row_names_file_line_id_and_key(tmp_path, mutate, expected):
    path = write(tmp_path / "rows.jsonl", json_lines(_broken_rows(mutate)))
    with pytest.raises(DataError) as err:
        drop.load_drop(path)
    assert str(err.value).startswith(f"drop file {path}: ")
    assert expected in str(err.value)


def test_bad_json_line_and_missing_file(tmp_path):
    path = write(tmp_path / "rows.jsonl", json_lines(ROWS[:1]) + "not json\n")
    with pytest.raises(DataError, match=r"rows\.jsonl: line 2 is not valid JSON"):
        drop.load_drop(path)
    with pytest.raises(DataError, match=r"drop file .*nothing\.json does not exist"):
        drop.load_drop(tmp_path / "nothing.json")
    with pytest.raises(DataError, match=r"empty\.json holds no questions"):
        drop.load_drop(write(tmp_path / "empty.json", "{}"))
