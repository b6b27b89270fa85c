"""HotpotQA adapter: every layout and container gives the same questions; grouping is seeded."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from data_helpers import containers, json_lines, write

from paralleldecode.data import hotpot
from paralleldecode.data.records import DataError
from paralleldecode.data.registry import load_groups

HOTPOT_FILE = "hotpotqa/hotpot_dev_distractor_500.jsonl"


def _record(n: int, **changes) -> dict:
    """An original-layout record with two paragraphs; sentences carry their leading spaces."""
    record = {
        "_id": f"q{n}", "question": f"Which river flows past town {n}?", "answer": f"River {n}",
        "type": "bridge" if n % 2 else "comparison", "level": "medium",
        "supporting_facts": [[f"Town {n}", 1], [f"River {n}", 0]],
        "context": [[f"Town {n}", [f"Town {n} is small.", f" It lies on River {n}."]],
                    [f"River {n}", [f"River {n} is long."]]],
    }
    return {**record, **changes}


ORIGINAL = [_record(n) for n in range(5)]


def _row(record: dict) -> dict:
    """The same question as a Hugging Face row."""
    return {
        "id": record["_id"], "question": record["question"], "answer": record["answer"],
        "type": record["type"], "level": record["level"],
        "supporting_facts": {"title": [t for t, _ in record["supporting_facts"]],
                             "sent_id": [i for _, i in record["supporting_facts"]]},
        "context": {"title": [t for t, _ in record["context"]],
                    "sentences": [s for _, s in record["context"]]},
    }


def _essence(groups) -> list[tuple]:
    """What must agree across layouts (the source naturally differs)."""
    return [(g.id, g.background, {k: v for k, v in g.metadata.items() if k != "source"},
             g.questions) for g in groups]


def test_question_keeps_its_own_paragraphs(tmp_path):
    path = write(tmp_path / "dev.jsonl", json_lines(ORIGINAL[:1]))
    [group] = hotpot.load_hotpot(path)
    assert group.id == "hotpot/0" and group.dataset == "hotpot" and group.background is None
    assert group.metadata == {"source": f"hotpot file {path}", "grouping": "random",
                              "group_size": 4, "seed": 0}
    [q] = group.questions
    assert (q.id, q.text, q.answers) == ("q0", "Which river flows past town 0?", ["River 0"])
    assert q.context == "Town 0: Town 0 is small. It lies on River 0.\n\nRiver 0: River 0 is long."
    assert q.metadata == {"type": "comparison", "level": "medium",
                          "supporting_facts": [["Town 0", 1], ["River 0", 0]]}


def _sources(tmp_path: Path) -> dict[str, object]:
    # Extensions deliberately mislead: the layout must be read from the content.
    return {
        "original list": write(tmp_path / "orig.jsonl", json.dumps(ORIGINAL)),
        "original lines": write(tmp_path / "orig.json", json_lines(ORIGINAL)),
        **{f"rows {name}": source
           for name, source in containers(tmp_path, [_row(r) for r in ORIGINAL]).items()},
    }


def test_all_layouts_and_containers_give_equal_groups(tmp_path):
    sources = _sources(tmp_path)
    expected = _essence(hotpot.load_hotpot(sources.pop("original list"), group_size=2, seed=5))
    assert [len(questions) for *_, questions in expected] == [2, 2, 1]
    for name, source in sources.items():
        assert _essence(hotpot.load_hotpot(source, group_size=2, seed=5)) == expected, name


def test_single_record_json_lines_file(tmp_path):
    for record in (ORIGINAL[3], _row(ORIGINAL[3])):
        [group] = hotpot.load_hotpot(write(tmp_path / "one.jsonl", json.dumps(record) + "\n"))
        assert [q.id for q in group.questions] == ["q3"]


def test_grouping_is_seeded_and_covers_every_question(tmp_path):
    path = write(tmp_path / "dev.jsonl", json_lines(ORIGINAL))

    def order(seed: int) -> list[list[str]]:
        return [[q.id for q in g.questions] for g in hotpot.load_hotpot(path, group_size=2, seed=seed)]

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert sorted(q for group in order(1) for q in group) == [f"q{n}" for n in range(5)]
    groups = hotpot.load_hotpot(path, group_size=2, seed=1)
    assert [g.id for g in groups] == ["hotpot/0", "hotpot/1", "hotpot/2"]
    assert [len(g) for g in groups] == [2, 2, 1]
    assert [len(g) for g in hotpot.load_hotpot(path, group_size=1)] == [1] * 5
    assert [len(g) for g in hotpot.load_hotpot(path, group_size=9)] == [5]


def test_registry_passes_options_and_run_seed(tmp_path):
    path = write(tmp_path / "dev.jsonl", json_lines(ORIGINAL))
    groups = load_groups("hotpot", path, seed=3, options={"group_size": 2})
    assert groups == hotpot.load_hotpot(path, group_size=2, seed=3)


@pytest.mark.parametrize("size", [0, -2, 2.5, True, "4"])
def test_group_size_below_one_or_not_an_integer_is_refused(tmp_path, size):
    path = write(tmp_path / "dev.jsonl", json_lines(ORIGINAL))
    with pytest.raises(DataError, match="group_size must be an integer of at least 1"):
        load_groups("hotpot", path, options={"group_size": size})


def test_unknown_option_is_refused(tmp_path):
    path = write(tmp_path / "dev.jsonl", json_lines(ORIGINAL))
    with pytest.raises(DataError, match="no option 'groups'; accepted: group_size"):
        load_groups("hotpot", path, options={"groups": 2})


def test_empty_context_and_empty_answer_keep_the_question(tmp_path):
    records = [_record(0, context=[], supporting_facts=[]), _record(1, answer="")]
    for source in (records, [_row(r) for r in records]):
        questions = {q.id: q for g in hotpot.load_hotpot(source) for q in g.questions}
        assert questions["q0"].context is None and questions["q0"].answers == ["River 0"]
        assert questions["q1"].answers == [] and questions["q1"].context


def _broken(layout: str, mutate) -> list[dict]:
    records = json.loads(json.dumps(ORIGINAL))
    if layout == "rows":
        records = [_row(r) for r in records]
    mutate(records[2])
    return records


@pytest.mark.parametrize("layout, mutate, expected", [
    ("original", lambda r: r.pop("question"), "line 3 (id 'q2') has no 'question' key"),
    ("original", lambda r: r.update(answer=7), "line 3 (id 'q2'): 'answer' should be str"),
    ("original", lambda r: r.update(_id=2), "line 3: '_id' should be str"),
    ("original", lambda r: r["context"][1].pop(),
     "line 3 (id 'q2'): 'context[1]' should be [title"),
    ("original", lambda r: r["context"][0][1].append(3),
     "line 3 (id 'q2'): 'context[0][1]' should be a list of strings"),
    ("original", lambda r: r["supporting_facts"][0].__setitem__(1, "0"),
     "'supporting_facts[0]' should be [title, sentence index]"),
    ("original", lambda r: r.update(question=" "),
     "line 3 (id 'q2'): question 'q2': the question text is empty"),
    ("original", lambda r: r.update(_id="q0"),
     "line 3: question id 'q0' was already used by line 1"),
    ("rows", lambda r: r.pop("id"), "line 3 has no '_id' key (original layout) or 'id' key"),
    ("rows", lambda r: r.pop("level"), "line 3 (id 'q2') has no 'level' key"),
    ("rows", lambda r: r.update(context=[]), "line 3 (id 'q2'): 'context' should be Mapping"),
    ("rows", lambda r: r["context"].pop("sentences"),
     "line 3 (id 'q2') context has no 'sentences' key"),
    ("rows", lambda r: r["context"]["title"].pop(),
     "'context.title' has 1 entries but 'context.sentences' has 2"),
    ("rows", lambda r: r["supporting_facts"].update(sent_id=[0, -1]),
     "'supporting_facts.sent_id' should hold sentence indices"),
])
def test_malformed_record_names_file_location_id_and_key(tmp_path, layout, mutate, expected):
    path = write(tmp_path / "dev.jsonl", json_lines(_broken(layout, mutate)))
    with pytest.raises(DataError) as err:
        hotpot.load_hotpot(path)
    assert str(err.value).startswith(f"hotpot file {path}: ")
    assert expected in str(err.value)


def test_malformed_row_in_a_json_list_names_the_item(tmp_path):
    path = write(tmp_path / "rows.json", json.dumps(_broken("rows", lambda r: r.pop("answer"))))
    with pytest.raises(DataError, match=r"rows\.json: item\[2\] \(id 'q2'\) has no 'answer' key"):
        hotpot.load_hotpot(path)


def test_bad_json_line_names_the_line(tmp_path):
    path = write(tmp_path / "dev.jsonl", json_lines(ORIGINAL[:2]) + "{not json\n")
    with pytest.raises(DataError, match=r"dev\.jsonl: line 3 is not valid JSON"):
        hotpot.load_hotpot(path)


def test_missing_file_and_empty_rows(tmp_path):
    with pytest.raises(DataError, match=r"hotpot file .*nothing\.jsonl does not exist"):
        hotpot.load_hotpot(tmp_path / "nothing.jsonl")
    with pytest.raises(DataError, match=r"rows\.json holds no questions"):
        hotpot.load_hotpot(write(tmp_path / "rows.json", "[]"))


def test_default_source_is_the_distractor_config_on_the_hub(monkeypatch):
    calls = []

    def fake_load(hub_id, config, split):
        calls.append((hub_id, config, split))
        return datasets.Dataset.from_list([_row(r) for r in ORIGINAL])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    groups = load_groups("hotpot", split="train")
    assert calls == [("hotpotqa/hotpot_qa", "distractor", "train")]
    assert sum(len(g) for g in groups) == 5


@pytest.mark.data
def test_real_hotpot_dev_sample(data_dir):
    groups = load_groups("hotpot", str(data_dir / HOTPOT_FILE), options={"group_size": 4})
    questions = {q.id: q for g in groups for q in g.questions}
    assert len(groups) == 125 and all(len(g) == 4 for g in groups)
    assert len(questions) == 500
    assert sum(q.metadata["type"] == "bridge" for q in questions.values()) == 371
    # The two records without paragraphs are kept, with no context but with their answers.
    empty = [q for q in questions.values() if q.context is None]
    assert sorted(q.id for q in empty) == ["5a83ed9b55429933447460b8", "5ab69f13554299710c8d1ef3"]
    assert all(q.answers for q in empty)
