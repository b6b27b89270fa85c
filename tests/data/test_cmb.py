"""CMB adapter: every layout and container gives the same groups; exam groupings; bad records."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from data_helpers import containers

import paralleldecode.data.cmb  # noqa: F401 - registers "cmb"
from paralleldecode.data.records import DataError
from paralleldecode.data.registry import load_groups

CLIN = [
    {"id": "7", "title": "案例分析-阑尾炎", "description": "病人，女，30岁，转移性右下腹痛一天。",
     "QA_pairs": [{"question": "简述诊断。", "answer": "急性阑尾炎。"},
                  {"question": "简述治疗原则。", "answer": "阑尾切除术。"}]},
    {"id": "8", "title": "案例分析-肺炎", "description": "病人，男，60岁，发热咳嗽三天。",
     "QA_pairs": [{"question": "需做哪些检查？", "answer": "胸片、血常规。"}]},
]


def _exam_row(n: int, subject: str, exam_class: str = "执业医师", answer: str = "B",
              option: dict | None = None) -> dict:
    return {"exam_type": "医师考试", "exam_class": exam_class, "exam_subject": subject,
            "question": f"第{n}题：下列哪项正确？", "answer": answer, "question_type": "单项选择题",
            "option": option or {"A": f"甲{n}", "B": f"乙{n}", "C": f"丙{n}", "D": f"丁{n}",
                                 "E": ""}}


# 13 questions: 6 internal medicine, 4 surgery, 3 without subject (grouped by their class).
EXAM = ([_exam_row(n, "内科") for n in range(6)] + [_exam_row(n, "外科") for n in range(6, 10)]
        + [_exam_row(n, "", exam_class="中医执业医师") for n in range(10, 13)])
EXAM[1] = _exam_row(1, "内科", answer="acd", option={"A": "a", "B": "b", "C": "c", "D": "d"})

# Rows keep one key set: pyarrow's Table.from_pylist takes its columns from the first row.
GROUPED = [
    {"context": "高血压病人的管理要点如下……", "questions": EXAM[:2]},
    {"context": "糖尿病的诊断标准如下……", "questions": EXAM[6:9]},
]


def _essence(groups) -> list[tuple]:
    """What must agree across containers (the source naturally differs)."""
    return [(g.id, g.dataset, g.background,
             {k: v for k, v in g.metadata.items() if k != "source"},
             [(q.id, q.text, q.options, q.answers, q.answer_type, q.metadata) for q in g.questions])
            for g in groups]


def _load(data_path, **options):
    return load_groups("cmb", data_path=data_path, options=options)


def _write(path: Path, rows: list) -> str:
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return str(path)


def test_clin_case_is_one_group_with_long_answers(tmp_path):
    groups = _load(_write(tmp_path / "clin.json", CLIN))
    assert [g.id for g in groups] == ["cmb/clin/7", "cmb/clin/8"]
    first = groups[0]
    assert first.background == CLIN[0]["description"] and first.dataset == "cmb"
    assert first.metadata["title"] == "案例分析-阑尾炎" and first.metadata["subset"] == "clin"
    assert [(q.id, q.text, q.answers, q.answer_type, q.options) for q in first.questions] == [
        ("7-0", "简述诊断。", ["急性阑尾炎。"], "long", None),
        ("7-1", "简述治疗原则。", ["阑尾切除术。"], "long", None),
    ]


@pytest.mark.parametrize("rows, options", [
    (CLIN, {}),
    (EXAM, {"grouping": "random", "group_size": 4}),
    (EXAM, {"grouping": "subdomain", "group_size": 4}),
    (GROUPED, {"grouping": "context"}),
], ids=["clin", "exam-random", "exam-subdomain", "exam-context"])
def test_all_containers_give_equal_groups(tmp_path, rows, options):
    expected = None
    for name, source in containers(tmp_path, rows).items():
        got = _essence(_load(source, **options))
        expected = expected or got
        assert got == expected, name
    assert expected


def test_single_record_json_lines_file(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(CLIN[1], ensure_ascii=False) + "\n", encoding="utf-8")
    [group] = _load(str(path))
    assert group.id == "cmb/clin/8" and len(group) == 1


def test_subset_detected_from_keys(tmp_path):
    clin = _load(_write(tmp_path / "a.json", CLIN))
    exam = _load(_write(tmp_path / "b.json", EXAM))
    assert {g.metadata["subset"] for g in clin} == {"clin"}
    assert {q.answer_type for g in clin for q in g.questions} == {"long"}
    assert {g.metadata["subset"] for g in exam} == {"exam"}
    assert {q.answer_type for g in exam for q in g.questions} == {"choice"}
    assert _essence(_load(_write(tmp_path / "c.json", CLIN), subset="clin")) == _essence(clin)


@pytest.mark.parametrize("rows, options, message", [
    (CLIN, {"subset": "exam"}, "holds CMB-Clin records, but .* ask for CMB-Exam"),
    (EXAM, {"subset": "clin"}, "holds CMB-Exam records, but .* ask for CMB-Clin"),
    (CLIN, {"grouping": "subdomain"}, "holds CMB-Clin records, but .* ask for CMB-Exam"),
    (EXAM, {"grouping": "context"}, "grouping 'context' needs grouped CMB-Exam rows"),
    (GROUPED, {"grouping": "random"}, "load them with grouping 'context', not 'random'"),
])
def test_options_contradicting_the_records(tmp_path, rows, options, message):
    with pytest.raises(DataError, match=r"cmb file .*rows\.json.*" + message):
        _load(_write(tmp_path / "rows.json", rows), **options)


@pytest.mark.parametrize("options, message", [
    ({"subset": "clinical"}, "subset 'clinical' is not accepted; accepted: clin, exam"),
    ({"grouping": "topic"},
     "grouping 'topic' is not accepted; accepted: random, subdomain, context"),
    ({"subset": "clin", "grouping": "context"}, "grouping 'context' applies to CMB-Exam only"),
    ({"group_size": 0}, "group_size must be a positive integer"),
])
def test_bad_option_values(tmp_path, options, message):
    with pytest.raises(DataError, match=message):
        _load(_write(tmp_path / "clin.json", CLIN), **options)


def test_hub_needs_a_subset():
    with pytest.raises(DataError, match="FreedomIntelligence/CMB needs subset"):
        _load(None)


@pytest.mark.parametrize("options, expected", [
    ({"subset": "clin"}, ("FreedomIntelligence/CMB", "CMB-Clin", "test")),
    ({"subset": "exam"}, ("FreedomIntelligence/CMB", "CMB-Exam", "test")),
    ({"grouping": "subdomain"}, ("FreedomIntelligence/CMB", "CMB-Exam", "test")),
    ({"grouping": "context"}, ("fzkuji/CMB-Exam-Grouped", None, "test")),
])
def test_hub_defaults(monkeypatch, options, expected):
    datasets = pytest.importorskip("datasets")
    calls = []
    rows = {"CMB-Clin": CLIN, "CMB-Exam": EXAM, None: GROUPED}

    def fake_load(hub_id, config, split):
        calls.append((hub_id, config, split))
        return datasets.Dataset.from_list(rows[config])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    groups = load_groups("cmb", split="test", options=options)
    assert calls == [expected]
    assert groups and all("hub" in g.metadata["source"] for g in groups)


def _exam_groups(tmp_path, grouping, seed=0, group_size=5):
    return _load(_write(tmp_path / "exam.json", EXAM), grouping=grouping, group_size=group_size,
                 seed=seed)


def test_random_grouping_sizes_and_determinism(tmp_path):
    groups = _exam_groups(tmp_path, "random")
    assert [len(g) for g in groups] == [5, 5, 3]
    assert [g.id for g in groups] == ["cmb/exam/random/0", "cmb/exam/random/1", "cmb/exam/random/2"]
    assert all(g.background is None and g.metadata["grouping"] == "random" for g in groups)
    ids = [q.id for g in groups for q in g.questions]
    assert sorted(ids, key=int) == [str(n) for n in range(13)]
    assert _essence(_exam_groups(tmp_path, "random")) == _essence(groups)
    assert ids != [q.id for g in _exam_groups(tmp_path, "random", seed=1) for q in g.questions]


def test_seed_comes_from_the_run(tmp_path):
    path = _write(tmp_path / "exam.json", EXAM)
    by_run_seed = load_groups("cmb", data_path=path, seed=3)
    assert _essence(by_run_seed) == _essence(_exam_groups(tmp_path, "random", seed=3))


def test_subdomain_grouping_is_pure_and_falls_back_to_class(tmp_path):
    groups = _exam_groups(tmp_path, "subdomain", group_size=4)
    sizes = [(g.metadata["subdomain"], len(g)) for g in groups]
    assert sizes == [("内科", 4), ("内科", 2), ("外科", 4), ("中医执业医师", 3)]
    for g in groups:
        domains = {q.metadata["exam_subject"] or q.metadata["exam_class"] for q in g.questions}
        assert domains == {g.metadata["subdomain"]}
    assert groups[0].id == "cmb/exam/内科/0" and groups[0].background is None
    assert Counter(q.id for g in groups for q in g.questions) == Counter(map(str, range(13)))
    assert _essence(_exam_groups(tmp_path, "subdomain", group_size=4)) == _essence(groups)
    reseeded = _exam_groups(tmp_path, "subdomain", group_size=4, seed=5)
    assert [q.id for q in reseeded[0].questions] != [q.id for q in groups[0].questions]


def test_subdomain_needs_subject_or_class(tmp_path):
    rows = [_exam_row(0, "内科"), _exam_row(1, "", exam_class=" ")]
    with pytest.raises(DataError, match=r"item\[1\]: both 'exam_subject' and 'exam_class'"):
        _load(_write(tmp_path / "exam.json", rows), grouping="subdomain")


def test_context_grouping_one_record_one_group(tmp_path):
    # The background may also be spelt "background".
    rows = [GROUPED[0], {"background": GROUPED[1]["context"], "questions": GROUPED[1]["questions"]}]
    groups = _load(_write(tmp_path / "grouped.json", rows), grouping="context")
    assert [(g.id, g.background, len(g)) for g in groups] == [
        ("cmb/exam/context/0", "高血压病人的管理要点如下……", 2),
        ("cmb/exam/context/1", "糖尿病的诊断标准如下……", 3),
    ]
    assert [q.id for q in groups[1].questions] == ["1-0", "1-1", "1-2"]
    assert groups[0].questions[0].metadata == {
        "exam_type": "医师考试", "exam_class": "执业医师", "exam_subject": "内科",
        "question_type": "单项选择题"}


def test_option_letters(tmp_path):
    [group] = _load(_write(tmp_path / "exam.json", EXAM[:2]), group_size=5)
    by_text = {q.text: q for q in group.questions}
    single, multi = by_text[EXAM[0]["question"]], by_text[EXAM[1]["question"]]
    # The unused option E is dropped; the letters of A..D stay where they were.
    assert single.options == ["甲0", "乙0", "丙0", "丁0"] and single.answers == ["B"]
    assert single.answer_type == "choice"
    assert multi.options == ["a", "b", "c", "d"] and multi.answers == ["ACD"]


@pytest.mark.parametrize("row, message", [
    ({"option": {"A": "a", "B": "", "C": "c"}},
     r"'option' 'C' follows the empty option 'B'; options must fill A, B, \.\.\. without gaps"),
    ({"option": {"A": "", "B": "b"}}, r"'option' 'B' follows the empty option 'A'"),
    ({"option": {"A": "", "B": None}}, "'option' has no option text"),
    ({"option": {"a": "x", "b": "y"}}, "'option' keys should be capital letters"),
    ({"option": {"A": "x", "B": 2}}, "'option' 'B' should be str, got int"),
    ({"option": "A. x B. y"}, "'option' should be Mapping, got str"),
    ({"answer": "F"}, r"'answer' 'F' names a letter outside the options ABCD"),
    ({"answer": 2}, "'answer' should be str, got int"),
    ({"question": "  "}, "'question' is empty"),
    ({"exam_subject": None}, "'exam_subject' should be str, got NoneType"),
])
def test_malformed_exam_row_names_file_line_and_key(tmp_path, row, message):
    rows = [_exam_row(0, "内科"), {**_exam_row(1, "内科"), **row}]
    path = tmp_path / "exam.txt"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match=r"cmb file .*exam\.txt: line 2: " + message):
        _load(str(path))


def test_missing_exam_key_is_named(tmp_path):
    rows = [_exam_row(0, "内科"), {k: v for k, v in _exam_row(1, "内科").items() if k != "answer"}]
    with pytest.raises(DataError, match=r"exam\.json: item\[1\] has no 'answer' key"):
        _load(_write(tmp_path / "exam.json", rows))


def test_empty_answer_means_no_gold(tmp_path):
    [group] = _load(_write(tmp_path / "exam.json", [_exam_row(0, "内科", answer="")]))
    assert group.questions[0].answers == []


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.pop("description"), r"item\[1\] \(id '8'\) has no 'description' key"),
    (lambda c: c.update(description=""), r"item\[1\] \(id '8'\): 'description' is empty"),
    (lambda c: c.update(QA_pairs=[]), r"item\[1\] \(id '8'\): 'QA_pairs' is empty"),
    (lambda c: c["QA_pairs"][0].pop("answer"),
     r"item\[1\] \(id '8'\) QA_pairs\[0\] has no 'answer' key"),
    (lambda c: c.update(id="7"),
     r"item\[1\] \(id '7'\): case id '7' was already used by .*item\[0\]"),
    (lambda c: c.update(id=None), r"item\[1\] \(id None\): 'id' should be str or int"),
])
def test_malformed_clin_case_names_file_record_and_key(tmp_path, mutate, message):
    cases = json.loads(json.dumps(CLIN))
    mutate(cases[1])
    with pytest.raises(DataError, match=r"cmb file .*clin\.json: " + message):
        _load(_write(tmp_path / "clin.json", cases))


def test_grouped_record_errors_name_the_question(tmp_path):
    rows = json.loads(json.dumps(GROUPED))
    rows[1]["questions"][2]["option"] = {"A": "x", "C": "z"}
    with pytest.raises(DataError, match=r"item\[1\] questions\[2\]: 'option' 'C' follows the "
                                        r"empty option 'B'"):
        _load(_write(tmp_path / "grouped.json", rows), grouping="context")


@pytest.mark.parametrize("text", ['[{"foo": 1}]', '"just a string"', "[]"])
def test_unknown_layout_or_no_records(tmp_path, text):
    path = tmp_path / "odd.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=r"cmb file .*odd\.json"):
        _load(str(path))


@pytest.mark.data
def test_real_cmb_clin_file(data_dir):
    groups = _load(str(data_dir / "cmb" / "CMB-Clin-test.json"))
    assert len(groups) == 74
    assert sum(len(g) for g in groups) == 208
    assert {q.answer_type for g in groups for q in g.questions} == {"long"}
    assert all(g.background.strip() and g.metadata["title"] for g in groups)
    assert all(q.answers and q.answers[0].strip() for g in groups for q in g.questions)
