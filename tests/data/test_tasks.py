"""Generated task families (retrieval, multidoc, planning) and their JSON-lines files."""

from __future__ import annotations

import json

import pytest

from paralleldecode.data import (
    DataError,
    generate_multidoc,
    generate_planning,
    generate_retrieval,
    load_groups_jsonl,
    matching_records,
    write_groups_jsonl,
)
from paralleldecode.data.registry import dataset_names, load_groups
from paralleldecode.data.tasks import MAX_CRITERIA

GENERATORS = {"retrieval": generate_retrieval, "multidoc": generate_multidoc,
              "planning": generate_planning}


@pytest.mark.parametrize("name", GENERATORS)
def test_same_seed_same_groups_other_seed_other_groups(name):
    generate = GENERATORS[name]
    assert generate(5, seed=3) == generate(5, seed=3)
    assert [g.background for g in generate(5, seed=3)] != [g.background for g in generate(5, 4)]
    # A group does not depend on how many are generated.
    assert generate(3, seed=3) == generate(5, seed=3)[:3]


@pytest.mark.parametrize("name", GENERATORS)
def test_ids_and_shared_background(name):
    groups = GENERATORS[name]()
    assert [g.id for g in groups] == [f"{name}/{i:04d}" for i in range(20)]
    for g in groups:
        assert g.dataset == name and g.background
        assert [q.id for q in g.questions] == [f"{g.id}/q{j}" for j in range(1, len(g) + 1)]
        assert all(q.context is None and q.options is None for q in g.questions)


def test_retrieval_sizes_and_each_criterion_matches_one_record():
    for records, criteria in [(12, 4), (5, 5), (60, MAX_CRITERIA)]:
        for g in generate_retrieval(10, seed=1, records=records, criteria=criteria):
            people = g.metadata["records"]
            assert len(people) == records and len(g) == criteria
            assert len({p["name"] for p in people}) == records
            lines = g.background.splitlines()[1:]
            assert len(lines) == records
            assert all(line.startswith(p["name"] + ";") for line, p in zip(lines, people))
            targets = set()
            for q in g.questions:
                criteria_asked = q.metadata["criteria"]
                assert len(criteria_asked) == 2
                assert all(str(v) in q.text for v in criteria_asked.values())
                [match] = matching_records(people, criteria_asked)
                assert q.answers == [match["name"]]
                targets.add(match["name"])
            assert len(targets) == criteria


def test_multidoc_gold_occurs_in_its_document_and_the_background():
    for documents in (1, 4, 7):
        for g in generate_multidoc(10, seed=2, documents=documents):
            docs = g.metadata["documents"]
            assert len(docs) == len(g) == documents
            assert g.background.splitlines() == [f"Document {j}: {d['text']}"
                                                 for j, d in enumerate(docs, start=1)]
            assert len({d["name"] for d in docs}) == documents
            for j, (q, doc) in enumerate(zip(g.questions, docs), start=1):
                [gold] = q.answers
                assert q.metadata["document"] == j
                assert gold == doc["facts"][q.metadata["fact"]]
                assert gold in doc["text"] and gold in g.background
                assert 2 <= doc["text"].count(". ") + 1 <= 3


def test_planning_has_no_gold_and_uses_many_goals():
    groups = generate_planning()
    assert len({g.metadata["goal"].split(" in ")[0] for g in groups}) >= 8
    for g in groups:
        assert 3 <= len(g) <= 5
        assert g.background.startswith("Goal: ") and "\nConstraints:\n- " in g.background
        for q in g.questions:
            assert q.answers == []
            assert q.text == f"Write a short plan for the sub-task: {q.metadata['subtask']}"
    assert {len(g) for g in generate_planning(10, subtasks=3)} == {3}


@pytest.mark.parametrize("call", [
    lambda: generate_retrieval(records=3, criteria=4),
    lambda: generate_retrieval(criteria=MAX_CRITERIA + 1),
    lambda: generate_multidoc(documents=0),
    lambda: generate_planning(subtasks=6),
    lambda: generate_planning(count=-1),
])
def test_sizes_out_of_range(call):
    with pytest.raises(DataError, match="must be an integer (from|of at least)"):
        call()


@pytest.mark.parametrize("name", GENERATORS)
def test_jsonl_round_trip(tmp_path, name):
    groups = GENERATORS[name](4, seed=7)
    path = tmp_path / "sub" / f"{name}.jsonl"
    write_groups_jsonl(groups, path)
    assert len(path.read_text(encoding="utf-8").splitlines()) == 4
    assert load_groups_jsonl(path, name) == groups
    [first] = load_groups(name, data_path=str(path), context_count=1, seed=0)
    assert first in groups


def _write_lines(tmp_path, lines):
    path = tmp_path / "groups.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = {"id": "g1", "background": "Kiri lives in Oslo.",
        "questions": [{"id": "g1/q1", "question": "Where does Kiri live?", "answers": ["Oslo"]}]}


def _with(**changes):
    return json.dumps({**GOOD, **changes})


def _question(**changes):
    return {**GOOD["questions"][0], **changes}


def test_user_file_minimal(tmp_path):
    path = _write_lines(tmp_path, ["", json.dumps(GOOD), ""])
    [group] = load_groups("multidoc", data_path=str(path))
    assert (group.id, group.dataset, group.metadata) == ("g1", "multidoc", {})
    assert group.questions[0].answers == ["Oslo"]
    # The file is read like every data set's, so a JSON list of groups reads the same.
    path.write_text(json.dumps([GOOD]), encoding="utf-8")
    assert load_groups_jsonl(path, "multidoc") == [group]


@pytest.mark.parametrize("line2, message", [
    ('{"id": "g2", ', r"line 2 is not valid JSON"),
    ("[1, 2]", r"line 2 is not an object"),
    (json.dumps({"id": "g2", "questions": []}), r"line 2 \(id 'g2'\) has no 'background' key"),
    (_with(id=7), r"line 2 \(id 7\): 'id' should be str, got int"),
    (_with(id="g2", background=["x"]), r"line 2 \(id 'g2'\): 'background' should be str, got list"),
    (_with(id="g2", questions=[]), r"line 2 \(id 'g2'\): 'questions' is empty"),
    (_with(id="g2", metadata=[]), r"line 2 \(id 'g2'\): 'metadata' should be dict, got list"),
    (_with(id="g2", questions=[_question(id="g2/q1", answers="Oslo")]),
     r"line 2 \(id 'g2'\): questions\[0\] \(id 'g2/q1'\): 'answers' should be list, got str"),
    (_with(id="g2", questions=[_question(id="g2/q1", answers=[1])]),
     r"line 2 \(id 'g2'\): questions\[0\] \(id 'g2/q1'\): 'answers' must be a list of strings"),
    (_with(id="g2", questions=[{"id": "g2/q1", "answers": []}]),
     r"line 2 \(id 'g2'\): questions\[0\] \(id 'g2/q1'\) has no 'question' key"),
    (_with(id="g2", questions=[_question(id="g2/q1", question=" ")]),
     r"line 2 \(id 'g2'\): questions\[0\] \(id 'g2/q1'\): question 'g2/q1': the question text"),
    (_with(), r"line 2 \(id 'g1'\): group id 'g1' was already used on line 1"),
    (_with(id="g2"), r"line 2 \(id 'g2'\): question id 'g1/q1' was already used on line 1"),
])
def test_malformed_lines_name_file_line_id_and_key(tmp_path, line2, message):
    path = _write_lines(tmp_path, [json.dumps(GOOD), line2])
    with pytest.raises(DataError, match=r"retrieval file .*groups\.jsonl: " + message):
        load_groups_jsonl(path, "retrieval")


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match=r"planning file .*absent\.jsonl does not exist"):
        load_groups("planning", data_path=str(tmp_path / "absent.jsonl"))
    with pytest.raises(DataError, match=r"planning file .*groups\.jsonl holds no groups"):
        load_groups_jsonl(_write_lines(tmp_path, [" "]), "planning")
    with pytest.raises(DataError, match=r"planning file .* cannot be read"):
        load_groups_jsonl(tmp_path, "planning")


def test_writer_refuses_groups_the_layout_cannot_hold(tmp_path):
    [group] = generate_retrieval(1)
    group.background = None
    with pytest.raises(DataError, match="has no background"):
        write_groups_jsonl([group], tmp_path / "out.jsonl")


@pytest.mark.parametrize("name", GENERATORS)
def test_registered_and_selectable_by_name(name):
    assert name in dataset_names()
    groups = load_groups(name, context_count=3)
    assert len(groups) == 3 and all(g.dataset == name for g in groups)
    assert load_groups(name, context_count=3) == groups
    assert all(len(g) <= 2 for g in load_groups(name, max_questions=2))
