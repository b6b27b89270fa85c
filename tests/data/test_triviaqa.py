"""TriviaQA adapter: layouts and containers agree, bad records are named, and both groupings
(random and by embedding similarity) keep every question exactly once."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from data_helpers import containers, json_lines, write

import paralleldecode.data.triviaqa as triviaqa
from paralleldecode.data import DataError
from paralleldecode.data.registry import dataset_names, dataset_options, load_groups
from paralleldecode.data.sources import Source
from paralleldecode.data.triviaqa import group_at_random, group_by_similarity, load_questions
from paralleldecode.models.encoders import EMBEDDED_ENCODER, EMBEDDED_ENCODER_PACKAGE, embedded_encoder_path

# The original release layout. The first answer repeats its value among the aliases and the
# second question has a trailing space: the hub rows are stripped, so must the loader be.
ORIGINAL = {
    "Domain": "Wikipedia", "Version": 1.0, "VerifiedEval": False,
    "Data": [
        {"Question": "Which planet is called the Red Planet?", "QuestionId": "tc_1",
         "QuestionSource": "http://quiz.example/tc_1",
         "Answer": {"Value": "Mars", "Aliases": ["Planet Mars", "Mars", "The Red Planet"],
                    "NormalizedAliases": ["planet mars", "mars", "red planet"],
                    "NormalizedValue": "mars", "Type": "WikipediaEntity"},
         "EntityPages": [{"DocSource": "TagMe", "Filename": "Mars.txt", "Title": "Mars"}],
         "SearchResults": []},
        {"Question": "Who wrote the novel Emma? ", "QuestionId": "bt_2",
         "QuestionSource": "http://quiz.example/bt_2",
         "Answer": {"Value": "Jane Austen", "Aliases": ["Austen", "Jane Austen"],
                    "NormalizedAliases": ["austen", "jane austen"],
                    "NormalizedValue": "jane austen", "Type": "WikipediaEntity"},
         "EntityPages": [], "SearchResults": []},
        {"Question": "In which year did the Titanic sink?", "QuestionId": "qb_3",
         "QuestionSource": "http://quiz.example/qb_3",
         "Answer": {"Value": "1912", "Aliases": ["1912", "nineteen twelve"],
                    "NormalizedAliases": ["1912", "nineteen twelve"],
                    "NormalizedValue": "1912", "Type": "Numerical"},
         "EntityPages": [], "SearchResults": [{"Title": "Titanic", "Filename": "t.txt",
                                               "Rank": 0, "Url": "http://x.example",
                                               "Description": "ship"}]},
    ],
}
EXPECTED = [
    ("tc_1", "Which planet is called the Red Planet?", ["Mars", "Planet Mars", "The Red Planet"]),
    ("bt_2", "Who wrote the novel Emma?", ["Jane Austen", "Austen"]),
    ("qb_3", "In which year did the Titanic sink?", ["1912", "nineteen twelve"]),
]


def _row(record: dict) -> dict:
    """One original record as a Hugging Face ``trivia_qa`` row (keys snake-cased, evidence
    lists transposed into columns, strings stripped)."""
    answer = record["Answer"]
    return {
        "question": record["Question"].strip(), "question_id": record["QuestionId"],
        "question_source": record["QuestionSource"],
        "entity_pages": {"doc_source": [p["DocSource"] for p in record["EntityPages"]],
                         "filename": [p["Filename"] for p in record["EntityPages"]],
                         "title": [p["Title"] for p in record["EntityPages"]],
                         "wiki_context": ["..." for _ in record["EntityPages"]]},
        "search_results": {"title": [r["Title"] for r in record["SearchResults"]],
                           "rank": [r["Rank"] for r in record["SearchResults"]]},
        "answer": {"aliases": answer["Aliases"], "normalized_aliases": answer["NormalizedAliases"],
                   "matched_wiki_entity_name": "", "normalized_matched_wiki_entity_name": "",
                   "normalized_value": answer["NormalizedValue"], "type": answer["Type"],
                   "value": answer["Value"]},
    }


ROWS = [_row(r) for r in ORIGINAL["Data"]]


def _essence(questions) -> list[tuple]:
    return [(q.id, q.text, q.answers) for q in questions]


# --------------------------------------------------------------------------- layouts


def test_original_layout(tmp_path):
    path = write(tmp_path / "wikipedia-dev.json", json.dumps(ORIGINAL))
    questions, origin = load_questions(path)
    assert _essence(questions) == EXPECTED
    assert str(path) in origin
    assert all(q.context is None and q.answer_type == "short" for q in questions)
    assert questions[0].metadata == {"question_source": "http://quiz.example/tc_1"}


def test_every_layout_and_container_gives_the_same_questions(tmp_path):
    sources = {
        "original": write(tmp_path / "orig.json", json.dumps(ORIGINAL)),
        **{f"rows as {name}": source for name, source in containers(tmp_path, ROWS).items()},
        # Extensions deliberately mislead: the layout is read from the content.
        "original records as JSON lines": write(tmp_path / "orig.jsonl", json_lines(ORIGINAL["Data"])),
        "original records as a JSON list": write(tmp_path / "orig-list.json",
                                                  json.dumps(ORIGINAL["Data"])),
    }
    for name, source in sources.items():
        assert _essence(load_questions(source)[0]) == EXPECTED, name


def test_a_single_row_file_is_read(tmp_path):
    path = write(tmp_path / "one.jsonl", json.dumps(ROWS[0]) + "\n")
    assert _essence(load_questions(path)[0]) == EXPECTED[:1]


def test_questions_without_gold_have_no_answers(tmp_path):
    # The original test files leave out "Answer"; the hub's test rows hold "<unk>".
    original = {"Data": [{"Question": "Who painted the Mona Lisa?", "QuestionId": "t_1"}]}
    hub_test_row = {**ROWS[0], "answer": {**ROWS[0]["answer"], "value": "<unk>", "aliases": []}}
    assert load_questions(write(tmp_path / "test.json", json.dumps(original)))[0][0].answers == []
    assert load_questions([hub_test_row])[0][0].answers == []


def test_default_source_is_the_hub_rc_validation_split(monkeypatch):
    calls = []

    def fake_read_source(source, dataset, split, hub_config=None):
        calls.append((source, dataset, split, hub_config))
        return Source("fake hub", records=[(f"row {i}", r) for i, r in enumerate(ROWS)])

    monkeypatch.setattr(triviaqa, "read_source", fake_read_source)
    groups = load_groups("triviaqa")
    assert calls == [("trivia_qa", "triviaqa", "validation", "rc")]
    assert sorted(q.id for g in groups for q in g.questions) == sorted(e[0] for e in EXPECTED)


def test_repeated_question_is_kept_once_with_a_warning():
    # The hub's rc configuration lists a question once per evidence domain.
    with pytest.warns(UserWarning, match="1 rows repeat an earlier question id"):
        questions, _ = load_questions(ROWS + ROWS[:1])
    assert _essence(questions) == EXPECTED


def test_reused_id_for_another_question_is_an_error():
    clash = {**ROWS[1], "question_id": "tc_1"}
    with pytest.raises(DataError, match=r"row 3 \(question_id 'tc_1'\).*already used by .*row 0"):
        load_questions(ROWS + [clash])


def _broken_row(**changes) -> dict:
    row = json.loads(json.dumps(ROWS[1]))
    for key, value in changes.items():
        if value is None:
            row.pop(key)
        else:
            row[key] = value
    return row


@pytest.mark.parametrize("row, key", [
    (_broken_row(question=None), "'question'"),
    (_broken_row(question_id=None), "'question_id'"),
    (_broken_row(answer=None), "'answer'"),
    (_broken_row(answer="Austen"), "'answer'"),
    (_broken_row(answer={"aliases": ["Austen"]}), "'value'"),
    (_broken_row(answer={"value": "Jane Austen", "aliases": ["Austen", 7]}), "'aliases'"),
    (_broken_row(question_source=3), "'question_source'"),
    (_broken_row(question="   "), "empty"),
])
def test_malformed_row_names_file_location_id_and_key(tmp_path, row, key):
    path = write(tmp_path / "rows.jsonl", json_lines([ROWS[0], row]))
    with pytest.raises(DataError) as err:
        load_questions(path)
    message = str(err.value)
    assert str(path) in message and "line 2" in message and key in message
    if "question_id" in row:
        assert "'bt_2'" in message


@pytest.mark.parametrize("change, key", [
    (lambda r: r.pop("QuestionId"), "'QuestionId'"),
    (lambda r: r.pop("Question"), "'Question'"),
    (lambda r: r["Answer"].pop("Value"), "'Value'"),
    (lambda r: r["Answer"].update(Aliases="Austen"), "'Aliases'"),
])
def test_malformed_original_record_names_file_location_id_and_key(tmp_path, change, key):
    doc = json.loads(json.dumps(ORIGINAL))
    change(doc["Data"][1])
    path = write(tmp_path / "dev.json", json.dumps(doc))
    with pytest.raises(DataError) as err:
        load_questions(path)
    message = str(err.value)
    assert str(path) in message and "Data[1]" in message and key in message
    if key != "'QuestionId'":
        assert "'bt_2'" in message


@pytest.mark.parametrize("doc, expected", [
    ({"questions": []}, "no accepted layout"),
    ({"Data": {"Question": "x"}}, "'Data'"),
    ({"Data": []}, "holds no questions"),
    (["not an object"], "item[0] is not an object"),
])
def test_unusable_documents(tmp_path, doc, expected):
    path = write(tmp_path / "bad.json", json.dumps(doc))
    with pytest.raises(DataError) as err:
        load_questions(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_both_data_sets_are_registered_with_their_options():
    assert {"triviaqa", "triviaqa_sim"} <= set(dataset_names())
    assert dataset_options("triviaqa") == ["group_size", "seed"]
    assert dataset_options("triviaqa_sim") == [
        "group_size", "similarity_threshold", "embedding_model", "seed"]


# --------------------------------------------------------------------------- random grouping


def _many_rows(n: int) -> list[dict]:
    return [{**ROWS[0], "question_id": f"q{i}", "question": f"Question number {i}?"}
            for i in range(n)]


def test_random_groups_cover_every_question_once():
    groups = load_groups("triviaqa", data_path=_many_rows(12), options={"group_size": 5})
    assert [len(g) for g in groups] == [5, 5, 2]
    assert [g.id for g in groups] == ["triviaqa/0", "triviaqa/1", "triviaqa/2"]
    ids = [q.id for g in groups for q in g.questions]
    assert sorted(ids) == sorted(f"q{i}" for i in range(12))
    assert all(g.background is None and g.dataset == "triviaqa" for g in groups)
    assert groups[0].metadata == {"grouping": "random", "source": "triviaqa list"}


def test_random_groups_depend_on_the_seed_only():
    def ids(seed: int) -> list[list[str]]:
        groups = load_groups("triviaqa", data_path=_many_rows(20), seed=seed,
                             options={"group_size": 4})
        return [[q.id for q in g.questions] for g in groups]

    assert ids(1) == ids(1)
    assert ids(1) != ids(2)
    assert group_at_random(7, 3, seed=5) == group_at_random(7, 3, seed=5)


@pytest.mark.parametrize("size", [0, -2, 2.5, True])
def test_bad_group_size_is_refused(size):
    with pytest.raises(DataError, match="group_size"):
        load_groups("triviaqa", data_path=ROWS, options={"group_size": size})


# --------------------------------------------------------------------------- similarity grouping


def _clusters(sizes: list[int], dim: int = 8, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """Tight clusters around orthogonal axes: item i of cluster c is axis c plus noise."""
    rng = np.random.default_rng(seed)
    rows = [np.eye(dim)[c] + noise * rng.standard_normal(dim)
            for c, size in enumerate(sizes) for _ in range(size)]
    return np.stack(rows)


def _cluster_of(sizes: list[int]) -> list[int]:
    return [c for c, size in enumerate(sizes) for _ in range(size)]


def _covers_once(groups: list[list[int]], n: int) -> bool:
    return sorted(i for g in groups for i in g) == list(range(n))


@pytest.mark.parametrize("seed", range(5))
def test_clusters_come_out_together(seed):
    sizes = [4, 4, 4]
    cluster = _cluster_of(sizes)
    groups = group_by_similarity(_clusters(sizes), group_size=4, threshold=0.5, seed=seed)
    assert sorted(sorted(cluster[i] for i in g) for g in groups) == [[0] * 4, [1] * 4, [2] * 4]


def test_group_size_is_respected():
    groups = group_by_similarity(_clusters([7]), group_size=3, threshold=0.5, seed=0)
    assert sorted(len(g) for g in groups) == [1, 3, 3]
    assert _covers_once(groups, 7)


def test_threshold_is_respected_against_the_anchor():
    emb = torch.randn(60, 16, generator=torch.Generator().manual_seed(0))
    unit = torch.nn.functional.normalize(emb, dim=1)
    for threshold in (-0.2, 0.0, 0.3):
        groups = group_by_similarity(emb, group_size=5, threshold=threshold, seed=1)
        assert _covers_once(groups, 60)
        for anchor, *others in groups:
            assert all(float(unit[anchor] @ unit[o]) >= threshold for o in others)
            # Members are ranked by similarity to the anchor.
            sims = [float(unit[anchor] @ unit[o]) for o in others]
            assert sims == sorted(sims, reverse=True)


def test_items_without_a_close_neighbour_become_singletons():
    emb = np.vstack([_clusters([3], dim=6), np.eye(6)[4], np.eye(6)[5]])
    groups = group_by_similarity(emb, group_size=5, threshold=0.5, seed=0)
    assert sorted(map(sorted, groups)) == [[0, 1, 2], [3], [4]]
    # Nothing is similar enough at 0.999: every item is its own group.
    assert sorted(map(len, group_by_similarity(emb, 5, 0.999, seed=0))) == [1] * 5


def test_similarity_grouping_is_deterministic_and_independent_of_blocking(monkeypatch):
    emb = np.random.default_rng(3).standard_normal((50, 8))
    reference = group_by_similarity(emb, 4, 0.2, seed=7)
    assert group_by_similarity(torch.from_numpy(emb), 4, 0.2, seed=7) == reference
    assert group_by_similarity(emb, 4, 0.2, seed=8) != reference
    # Similarity rows are computed in blocks; the block size must not change the result.
    monkeypatch.setattr(triviaqa, "_SIMILARITY_BLOCK", 3)
    assert group_by_similarity(emb, 4, 0.2, seed=7) == reference


@pytest.mark.parametrize("emb, size, threshold, expected", [
    (np.ones(4), 2, 0.5, "2-D"),
    (np.ones((3, 4)), 0, 0.5, "group_size"),
    (np.ones((3, 4)), 2, 1.5, "similarity_threshold"),
    (np.ones((3, 4)), 2, True, "similarity_threshold"),
])
def test_similarity_grouping_option_errors(emb, size, threshold, expected):
    with pytest.raises(DataError, match=expected):
        group_by_similarity(emb, size, threshold, seed=0)


def test_empty_matrix_gives_no_groups():
    assert group_by_similarity(np.zeros((0, 4)), 3, 0.5, seed=0) == []


# --------------------------------------------------------------------------- with the real encoder

TOPICS = {
    "planets": ["Which planet in our solar system is closest to the Sun?",
                "Which planet in the solar system is the largest?",
                "Which planet in the solar system has a Great Red Spot?",
                "Which planet in the solar system is known as the Red Planet?"],
    "football": ["Which country won the football World Cup in 1966?",
                 "Which country hosted the 2014 football World Cup?",
                 "Who scored the winning goal in the 2010 football World Cup final?",
                 "Which country has won the football World Cup five times?"],
    "cooking": ["How long should you roast a chicken in the oven?",
                "At what oven temperature should you bake a cake?",
                "How long should you bake bread in the oven?",
                "Which dish is baked in the oven with layers of pasta and cheese?"],
}


def _topic_rows() -> list[dict]:
    # Interleaved, so that source order alone would mix the topics.
    items = [(topic, i, text) for topic, texts in TOPICS.items() for i, text in enumerate(texts)]
    items.sort(key=lambda item: item[1])
    return [{"question_id": f"{topic}-{i}", "question": text,
             "answer": {"value": "x", "aliases": []}} for topic, i, text in items]


@pytest.fixture(scope="module")
def embedded_encoder():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip(EMBEDDED_ENCODER_PACKAGE)
    assert embedded_encoder_path() is not None


def test_similarity_groups_follow_topics_with_the_embedded_encoder(embedded_encoder):
    # Measured with all-MiniLM-L6-v2: same-topic pairs >= 0.34, cross-topic pairs <= 0.19,
    # so 0.27 separates the topics with a wide margin and every anchor takes its whole topic.
    started = time.perf_counter()
    for seed in (0, 1):
        groups = load_groups("triviaqa_sim", data_path=_topic_rows(), seed=seed,
                             options={"group_size": 4, "similarity_threshold": 0.27})
        topics = [sorted({q.id.split("-")[0] for q in g.questions}) for g in groups]
        assert sorted(topics) == [["cooking"], ["football"], ["planets"]]
        assert all(len(g) == 4 and g.background is None for g in groups)
        meta = groups[0].metadata
        assert meta["grouping"] == "similarity" and meta["similarity_threshold"] == 0.27
        assert meta["embedding_model"] == EMBEDDED_ENCODER
        assert all(g.metadata["mean_similarity"] >= 0.27 for g in groups)
    # Smaller groups split a topic but never mix two.
    groups = load_groups("triviaqa_sim", data_path=_topic_rows(),
                         options={"group_size": 3, "similarity_threshold": 0.27})
    assert all(len({q.id.split("-")[0] for q in g.questions}) == 1 for g in groups)
    assert sorted(q.id for g in groups for q in g.questions) == sorted(
        r["question_id"] for r in _topic_rows())
    singletons = [g for g in groups if len(g) == 1]
    assert singletons and all(g.metadata["mean_similarity"] is None for g in singletons)
    print(f"\nthree triviaqa_sim loads with the embedded encoder: "
          f"{time.perf_counter() - started:.2f} s")


@pytest.mark.parametrize("name, expected", [
    ("/no/such/encoder-folder", "folder /no/such/encoder-folder: does not exist"),
    ("no-such-owner/no-such-encoder", "no-such-owner/no-such-encoder: "),
])
def test_unloadable_embedding_model_is_a_clear_error(name, expected):
    pytest.importorskip("sentence_transformers")
    with pytest.raises(DataError) as err:
        load_groups("triviaqa_sim", data_path=ROWS, options={"embedding_model": name})
    message = str(err.value)
    assert f"could not load embedding model {name!r}" in message and expected in message


def test_similarity_options_are_checked_before_anything_is_loaded():
    with pytest.raises(DataError, match="similarity_threshold"):
        load_groups("triviaqa_sim", data_path="/no/such/file.json",
                    options={"similarity_threshold": 2})
