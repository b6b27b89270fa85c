"""Topological layers, parent maps and the ideal latency of a plan."""

from __future__ import annotations

import pytest

from paralleldecode.dependencies import Edge, ideal_latency, layers, parents


def edges(*pairs: tuple[int, int]) -> list[Edge]:
    return [Edge(s, t, 0.9) for s, t in pairs]


def test_chain():
    assert layers(3, edges((0, 1), (1, 2))) == [[0], [1], [2]]


def test_diamond():
    dag = edges((0, 1), (0, 2), (1, 3), (2, 3))
    assert layers(4, dag) == [[0], [1, 2], [3]]
    assert parents(4, dag) == {0: [], 1: [0], 2: [0], 3: [1, 2]}


def test_layer_is_one_past_the_deepest_parent():
    # 3 has parents in layers 0 and 1: it goes to layer 2.
    assert layers(4, edges((2, 1), (1, 3), (0, 3))) == [[0, 2], [1], [3]]


def test_independent_questions_share_one_layer():
    assert layers(4, []) == [[0, 1, 2, 3]]
    assert parents(2, []) == {0: [], 1: []}


def test_empty_group():
    assert layers(0, []) == []
    assert parents(0, []) == {}


def test_duplicate_edges_count_once():
    assert parents(2, edges((0, 1), (0, 1))) == {0: [], 1: [0]}
    assert layers(2, edges((0, 1), (0, 1))) == [[0], [1]]


def test_cycle_error_names_the_cycle():
    with pytest.raises(ValueError, match=r"cyclic.*1 -> 2 -> 3 -> 1") as err:
        layers(5, edges((0, 1), (1, 2), (2, 3), (3, 1), (3, 4)))
    assert "0 ->" not in str(err.value)  # 0 only feeds the cycle


def test_two_cycle_error():
    with pytest.raises(ValueError, match=r"0 -> 1 -> 0"):
        layers(2, edges((0, 1), (1, 0)))


def test_out_of_range_edge():
    with pytest.raises(ValueError, match="outside"):
        layers(2, edges((0, 2)))


def test_ideal_latency_takes_the_slowest_question_of_each_layer():
    plan = [[0, 2], [1], [3, 4]]
    latency = {0: 1.0, 1: 0.5, 2: 2.0, 3: 0.25, 4: 0.75}
    assert ideal_latency(plan, latency) == pytest.approx(2.0 + 0.5 + 0.75)


def test_ideal_latency_of_no_layers_is_zero():
    assert ideal_latency([], {}) == 0.0
