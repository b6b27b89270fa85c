"""HeuristicGenerator on hand-written question groups."""

from __future__ import annotations

from paralleldecode.data.records import Question, QuestionGroup
from paralleldecode.dependencies import (
    DependencyGenerator,
    DependencyResult,
    HeuristicGenerator,
    select_edges,
)


def group(*texts: str) -> QuestionGroup:
    return QuestionGroup("g", "test", [Question(f"q{i}", t) for i, t in enumerate(texts)])


def edge_map(*texts: str) -> dict[tuple[int, int], float]:
    result = HeuristicGenerator().generate(group(*texts))
    return {(e.source, e.target): e.confidence for e in result.edges}


def test_is_a_dependency_generator_without_cost():
    gen = HeuristicGenerator()
    assert isinstance(gen, DependencyGenerator)
    assert gen.name == "heuristic"
    result = gen.generate(group("Who designed the bridge?"))
    assert isinstance(result, DependencyResult)
    assert result.edges == [] and result.tokens == 0 and not result.fallback


def test_determiner_with_matching_noun():
    edges = HeuristicGenerator().generate(
        group("Who designed the bridge?", "In what year did that designer die?")).edges
    assert [(e.source, e.target) for e in edges] == [(0, 1)]
    assert edges[0].confidence >= 0.5  # survives the default selection
    assert "designer" in edges[0].reason


def test_unrelated_questions_have_no_edges():
    assert edge_map(
        "What is the capital of France?",
        "How many legs does a spider have?",
        "Which element has the symbol Fe?",
    ) == {}


def test_person_pronoun_prefers_the_nearest_who_question():
    found = edge_map(
        "Who founded the company?",
        "Who wrote the novel?",
        "When did she die?",
    )
    assert found[(1, 2)] > found[(0, 2)] > 0
    assert select_edges(
        HeuristicGenerator().generate(group("Who founded the company?", "Who wrote the novel?",
                                            "When did she die?")).edges,
        3, max_dependencies=1,
    )[0].source == 1


def test_person_pronoun_skips_questions_without_a_person():
    found = edge_map("Who founded the company?", "How many staff does it employ?",
                     "Where was he born?")
    assert (0, 2) in found
    assert found[(0, 2)] > found.get((1, 2), 0.0)


def test_there_and_then_need_a_place_and_a_time():
    found = edge_map("Where did the treaty get signed?", "Who was the king then?",
                     "What else was built there?")
    assert found[(0, 2)] >= 0.5  # "there" -> the where-question
    assert (0, 1) not in found  # "then": no time asked or named before


def test_existential_there_is_not_a_reference():
    assert edge_map("What is the capital of France?", "Is there a river in the city?") == {}


def test_sequence_reference_links_to_the_previous_question():
    found = edge_map("Which river is the longest?", "What is the next longest?")
    assert found[(0, 1)] >= 0.5


def test_shared_entities_raise_confidence_but_do_not_decide_alone():
    alone = edge_map("When was Carrow Point built?", "Who lives on Carrow Point today?")
    assert 0 < alone[(0, 1)] < 0.5
    plain = edge_map("When was the lighthouse built?", "Who designed it?")
    shared = edge_map("When was the lighthouse at Carrow built?", "Who designed it for Carrow?")
    assert shared[(0, 1)] > plain[(0, 1)]


def test_edges_go_forward_with_valid_confidence():
    texts = ("Who founded Carrow Point?", "When did she die?", "Where was she born?",
             "What did she build there after that?", "Who built the second tower on Carrow Point?")
    for e in HeuristicGenerator().generate(group(*texts)).edges:
        assert e.source < e.target
        assert 0 < e.confidence <= 1
        assert e.reason


def test_deterministic():
    texts = ("Who founded Carrow Point?", "When did she die?", "What did she build there?",
             "Which of them is the oldest?", "Also, who inherited it?")
    first = HeuristicGenerator().generate(group(*texts))
    assert first.edges
    for _ in range(3):
        assert HeuristicGenerator().generate(group(*texts)).edges == first.edges
