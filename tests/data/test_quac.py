"""QuAC adapter: one group per dialogue, the same from the release JSON and from hub rows."""

from __future__ import annotations

import json

import datasets
import pytest
from data_helpers import containers, json_lines, write

from paralleldecode.data import quac
from paralleldecode.data.records import DataError
from paralleldecode.data.registry import load_groups

CONTEXT_1 = "Holt was born in Tarnby in 1950. She painted boats. CANNOTANSWER"
CONTEXT_2 = "Port Elm was a fishing town until the mill opened in 1888. CANNOTANSWER"


def _turn(tid: str, question: str, texts: list[str], orig: str, followup: str = "y",
          yesno: str = "x") -> dict:
    return {"question": question, "id": tid,
            "answers": [{"text": t, "answer_start": 0} for t in texts],
            "orig_answer": {"text": orig, "answer_start": 0}, "followup": followup, "yesno": yesno}


ORIGINAL = {"data": [
    {"title": "Mira Holt", "background": "Mira Holt is an invented painter.",
     "section_title": "Early life", "paragraphs": [{"context": CONTEXT_1, "id": "C_1", "qas": [
         _turn("C_1_q#0", "Where was she born?", ["in Tarnby", "Tarnby", "in Tarnby"], "in Tarnby"),
         _turn("C_1_q#1", "What did she paint?", ["She painted boats."], "She painted boats.", "m"),
         _turn("C_1_q#2", "Did she marry?", ["CANNOTANSWER"], "CANNOTANSWER", "n"),
     ]}]},
    # No article background: the header then stands alone.
    {"title": "Port Elm", "section_title": "History", "paragraphs": [
        {"context": CONTEXT_2, "id": "C_2", "qas": [
            _turn("C_2_q#0", "Was it a fishing town?", ["Port Elm was a fishing town"],
                  "Port Elm was a fishing town", yesno="y"),
        ]}]},
]}


def _rows(document: dict) -> list[dict]:
    """The same dialogues as hub rows, dialogue acts as the hub's class indices."""
    rows = []
    for article in document["data"]:
        for paragraph in article["paragraphs"]:
            turns = paragraph["qas"]
            rows.append({
                "dialogue_id": paragraph["id"], "wikipedia_page_title": article["title"],
                "background": article.get("background", ""),
                "section_title": article["section_title"], "context": paragraph["context"],
                "turn_ids": [t["id"] for t in turns], "questions": [t["question"] for t in turns],
                "followups": [quac.FOLLOWUPS.index(t["followup"]) for t in turns],
                "yesnos": [quac.YESNOS.index(t["yesno"]) for t in turns],
                "answers": {"texts": [[a["text"] for a in t["answers"]] for t in turns],
                            "answer_starts": [[a["answer_start"] for a in t["answers"]]
                                              for t in turns]},
                "orig_answers": {"texts": [t["orig_answer"]["text"] for t in turns],
                                 "answer_starts": [t["orig_answer"]["answer_start"] for t in turns]},
            })
    return rows


ROWS = _rows(ORIGINAL)


def _essence(groups) -> list[tuple]:
    """What must agree across layouts (the source naturally differs)."""
    return [(g.id, g.background, {k: v for k, v in g.metadata.items() if k != "source"},
             g.questions) for g in groups]


def test_original_layout_one_group_per_dialogue(tmp_path):
    path = write(tmp_path / "val_v0.2.json", json.dumps(ORIGINAL))
    first, second = quac.load_quac(path)
    assert (first.id, second.id) == ("quac/C_1", "quac/C_2")
    assert first.background == ("Wikipedia article: Mira Holt | Section: Early life\n"
                                 f"Mira Holt is an invented painter.\n\n{CONTEXT_1}")
    assert second.background == f"Wikipedia article: Port Elm | Section: History\n\n{CONTEXT_2}"
    assert first.metadata == {"source": f"quac file {path}", "title": "Mira Holt",
                              "section_title": "Early life"}
    assert [(q.id, q.answers, q.metadata) for q in first.questions] == [
        ("C_1_q#0", ["in Tarnby", "Tarnby"], {"turn": 1, "followup": "y", "yesno": "x"}),
        ("C_1_q#1", ["She painted boats."], {"turn": 2, "followup": "m", "yesno": "x"}),
        ("C_1_q#2", ["CANNOTANSWER"], {"turn": 3, "followup": "n", "yesno": "x"}),
    ]
    assert second.questions[0].metadata == {"turn": 1, "followup": "y", "yesno": "y"}


def test_all_layouts_and_containers_give_equal_groups(tmp_path):
    # Extensions deliberately mislead: the layout must be read from the content.
    expected = _essence(quac.load_quac(write(tmp_path / "orig.jsonl", json.dumps(ORIGINAL))))
    for name, source in containers(tmp_path, ROWS).items():
        assert _essence(quac.load_quac(source)) == expected, name


def test_rows_with_letters_and_unstripped_answers(tmp_path):
    rows = json.loads(json.dumps(ROWS))
    rows[0]["followups"] = ["y", "m", "n"]
    rows[0]["yesnos"] = ["x", "x", "x"]
    rows[0]["answers"]["texts"][0] = [" in Tarnby ", "Tarnby", ""]
    assert _essence(quac.load_quac(rows)) == _essence(quac.load_quac(ROWS))
    one = quac.load_quac(write(tmp_path / "one.jsonl", json.dumps(ROWS[1]) + "\n"))
    assert [g.id for g in one] == ["quac/C_2"]


def test_default_source_is_the_hub(monkeypatch):
    calls = []

    def fake_load(hub_id, config, split):
        calls.append((hub_id, config, split))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    groups = load_groups("quac", split="train")
    assert calls == [("quac", None, "train")]
    assert [g.id for g in groups] == ["quac/C_1", "quac/C_2"]


def test_unknown_option_is_refused(tmp_path):
    with pytest.raises(DataError, match="no option 'group_size'; accepted: none"):
        load_groups("quac", write(tmp_path / "rows.json", json.dumps(ROWS)),
                    options={"group_size": 2})


def _broken_original(mutate) -> dict:
    doc = json.loads(json.dumps(ORIGINAL))
    mutate(doc)
    return doc


def _qas(doc: dict, article: int = 0) -> list[dict]:
    return doc["data"][article]["paragraphs"][0]["qas"]


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: _qas(d)[1].pop("question"),
     "data[0].paragraphs[0] (id 'C_1') qas[1] (id 'C_1_q#1') has no 'question' key"),
    (lambda d: _qas(d)[0]["answers"][1].pop("text"),
     "qas[0] (id 'C_1_q#0') answers[1] has no 'text' key"),
    (lambda d: _qas(d)[2].pop("orig_answer"), "qas[2] (id 'C_1_q#2') has no 'orig_answer' key"),
    (lambda d: _qas(d)[2].update(followup="q"),
     "qas[2] (id 'C_1_q#2'): 'followup' should be one of y, n, m"),
    (lambda d: d["data"][1]["paragraphs"][0].update(id=2),
     "data[1].paragraphs[0]: 'id' should be str"),
    (lambda d: d["data"][1].pop("section_title"), "data[1] has no 'section_title' key"),
    (lambda d: d["data"][1]["paragraphs"][0].update(qas=[]),
     "data[1].paragraphs[0] (id 'C_2'): the dialogue has no turns"),
    (lambda d: _qas(d, 1)[0].update(id="C_1_q#0"),
     "data[1].paragraphs[0] (id 'C_2'): turn id 'C_1_q#0' was already used by data[0]"),
    (lambda d: _qas(d)[1].update(question="  "),
     "(id 'C_1'): turn 2: question 'C_1_q#1': the question text is empty"),
])
def test_malformed_original_names_file_dialogue_turn_and_key(tmp_path, mutate, expected):
    path = write(tmp_path / "val.json", json.dumps(_broken_original(mutate)))
    with pytest.raises(DataError) as err:
        quac.load_quac(path)
    assert str(err.value).startswith(f"quac file {path}: ")
    assert expected in str(err.value)


def _broken_rows(mutate) -> list[dict]:
    rows = json.loads(json.dumps(ROWS))
    mutate(rows)
    return rows


@pytest.mark.parametrize("mutate, expected", [
    (lambda r: r[0].pop("dialogue_id"), "line 1 has no 'dialogue_id' key"),
    (lambda r: r[0]["questions"].pop(),
     "line 1 (id 'C_1'): 'questions' has 2 entries but 'turn_ids' has 3"),
    (lambda r: r[0]["answers"]["texts"].__setitem__(1, "boats"),
     "line 1 (id 'C_1'): 'answers.texts[1]' should be a list of strings"),
    (lambda r: r[0]["yesnos"].__setitem__(2, 5),
     "line 1 (id 'C_1'): 'yesnos[2]' should be one of y, n, x"),
    (lambda r: r[1]["orig_answers"].pop("texts"),
     "line 2 (id 'C_2') orig_answers has no 'texts' key"),
    (lambda r: r[1].update(context=None), "line 2 (id 'C_2'): 'context' should be str"),
    (lambda r: r[1].update(dialogue_id="C_1"),
     "line 2 (id 'C_1'): group id 'quac/C_1' was already used by line 1 (id 'C_1')"),
])
def test_malformed_row_names_file_line_id_and_key(tmp_path, mutate, expected):
    path = write(tmp_path / "rows.jsonl", json_lines(_broken_rows(mutate)))
    with pytest.raises(DataError) as err:
        quac.load_quac(path)
    assert str(err.value).startswith(f"quac file {path}: ")
    assert expected in str(err.value)


def test_bad_json_line_missing_file_and_no_dialogues(tmp_path):
    path = write(tmp_path / "rows.jsonl", json_lines(ROWS[:1]) + "{oops\n")
    with pytest.raises(DataError, match=r"rows\.jsonl: line 2 is not valid JSON"):
        quac.load_quac(path)
    with pytest.raises(DataError, match=r"quac file .*nothing\.json does not exist"):
        quac.load_quac(tmp_path / "nothing.json")
    with pytest.raises(DataError, match=r"empty\.json holds no dialogues"):
        quac.load_quac(write(tmp_path / "empty.json", '{"data": []}'))
