"""select_groups: splitting, the minimum filter, seeded sampling, and option errors."""

from __future__ import annotations

import pytest

from paralleldecode.data import DataError, Question, QuestionGroup, select_groups
from paralleldecode.data.registry import dataset_names, load_groups


def _group(gid: str, n: int) -> QuestionGroup:
    return QuestionGroup(id=gid, dataset="toy", background="ctx", metadata={"title": gid},
                         questions=[Question(id=f"{gid}-{i}", text=f"q{i}?") for i in range(n)])


def test_large_group_is_split_into_nearly_equal_consecutive_chunks():
    chunks = select_groups([_group("g", 7)], max_questions=5)
    assert [c.id for c in chunks] == ["g#1", "g#2"]
    assert [[q.id for q in c.questions] for c in chunks] == [
        ["g-0", "g-1", "g-2", "g-3"], ["g-4", "g-5", "g-6"]]
    assert chunks[0].metadata == {"title": "g", "chunk": 1, "chunks": 2}


@pytest.mark.parametrize("n, max_q, sizes", [
    (10, 5, [5, 5]), (11, 5, [4, 4, 3]), (5, 5, [5]), (3, 1, [1, 1, 1])])
def test_chunk_sizes(n, max_q, sizes):
    assert [len(c) for c in select_groups([_group("g", n)], max_questions=max_q)] == sizes


def test_min_questions_drops_small_groups_after_splitting():
    groups = [_group("a", 2), _group("b", 4), _group("c", 6)]
    kept = select_groups(groups, min_questions=3, max_questions=4)
    assert [g.id for g in kept] == ["b", "c#1", "c#2"]


def test_seeded_sample_is_reproducible_ordered_and_seed_dependent():
    groups = [_group(f"g{i:02d}", 3) for i in range(40)]
    first = [g.id for g in select_groups(groups, context_count=10, seed=1)]
    assert first == [g.id for g in select_groups(groups, context_count=10, seed=1)]
    assert first == sorted(first)
    assert first != [g.id for g in select_groups(groups, context_count=10, seed=2)]


def test_asking_for_more_contexts_than_exist_warns_and_returns_all():
    groups = [_group("a", 1), _group("b", 1)]
    with pytest.warns(UserWarning, match="only 2 groups"):
        assert select_groups(groups, context_count=5) == groups


@pytest.mark.parametrize("options, message", [
    ({"min_questions": 4, "max_questions": 3},
     r"max_questions \(3\) must be at least min_questions \(4\)"),
    ({"min_questions": 0}, "min_questions must be at least 1, got 0"),
    ({"context_count": 0}, "context_count must be at least 1, got 0"),
])
def test_bad_options(options, message):
    with pytest.raises(DataError, match=message):
        select_groups([_group("a", 3)], **options)


def test_nothing_left_names_the_option_and_the_count():
    with pytest.raises(DataError, match=r"all 2 groups have fewer than min_questions=5"):
        select_groups([_group("a", 3), _group("b", 4)], min_questions=5)
    # Splitting 6 by at most 5 gives 3 + 3, so min_questions=4 removes every chunk.
    split = r"all 2 groups \(split by max_questions=5 into 4\)"
    with pytest.raises(DataError, match=split + " have fewer than min_questions=4"):
        select_groups([_group("a", 6), _group("b", 6)], min_questions=4, max_questions=5)
    with pytest.raises(DataError, match="gave 0 groups"):
        select_groups([])


def test_load_groups_applies_selection_and_rejects_unknown_names():
    assert [g.id for g in load_groups("demo", min_questions=5, context_count=3, seed=0)] == \
        [g.id for g in load_groups("demo", min_questions=5, context_count=3, seed=0)]
    assert all(len(g) == 5 for g in load_groups("demo", min_questions=5))
    with pytest.raises(DataError, match="unknown data set 'nope'; registered: ") as err:
        load_groups("nope")
    for name in dataset_names():
        assert name in str(err.value)
