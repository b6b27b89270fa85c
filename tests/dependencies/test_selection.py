"""select_edges: invariants on random edge sets, cycle breaking, option checks."""

from __future__ import annotations

import random

import pytest

from paralleldecode.dependencies import Edge, layers, parents, select_edges


def random_edges(rng: random.Random, n: int, m: int) -> list[Edge]:
    """``m`` random edges (cycles and repeated pairs likely) among ``n`` questions."""
    out = []
    for _ in range(m):
        s, t = rng.sample(range(n), 2)
        out.append(Edge(s, t, round(rng.random(), 2)))
    return out


CASES = [(seed, rng.randint(2, 9)) for seed, rng in ((s, random.Random(s)) for s in range(200))]


@pytest.mark.parametrize("max_deps", [0, 1, 2, 3])
def test_random_sets_keep_the_invariants(max_deps):
    for seed, n in CASES:
        rng = random.Random(seed)
        edges = random_edges(rng, n, rng.randint(0, 3 * n))
        min_conf = rng.choice([0.0, 0.3, 0.5, 0.8])
        kept = select_edges(edges, n, max_dependencies=max_deps, min_confidence=min_conf)
        layers(n, kept)  # raises when the kept edges are cyclic
        assert all(len(ps) <= max_deps for ps in parents(n, kept).values())
        assert all(e.confidence >= min_conf for e in kept)
        assert all(e in edges for e in kept)
        pairs = [(e.source, e.target) for e in kept]
        assert len(pairs) == len(set(pairs))
        assert kept == sorted(kept, key=lambda e: (e.target, e.source))


def test_selection_is_deterministic_under_input_order():
    rng = random.Random(7)
    edges = random_edges(rng, 8, 30)
    kept = select_edges(edges, 8)
    for _ in range(10):
        rng.shuffle(edges)
        assert select_edges(edges, 8) == kept


def test_raising_cost_weight_never_adds_edges():
    for seed, n in CASES:
        rng = random.Random(seed)
        edges = random_edges(rng, n, rng.randint(0, 3 * n))
        cost = rng.choice([0.01, 0.05, 0.2])  # the same cost for every edge

        def kept_at(w: float, edges=edges, n=n, cost=cost) -> set[Edge]:
            return set(select_edges(edges, n, min_confidence=0.0, cost_weight=w,
                                    edge_cost=lambda e: cost))

        previous = kept_at(0.0)
        for w in (0.5, 1.0, 2.0, 4.0, 10.0):
            now = kept_at(w)
            assert now <= previous
            previous = now


def test_cost_drops_edges_whose_benefit_is_not_positive():
    edges = [Edge(0, 1, 0.9), Edge(0, 2, 0.6)]
    cost = {(0, 1): 10, (0, 2): 10}
    kept = select_edges(edges, 3, cost_weight=0.07, edge_cost=lambda e: cost[e.source, e.target])
    assert kept == [Edge(0, 1, 0.9)]  # 0.9 - 0.7 > 0, 0.6 - 0.7 < 0


def test_two_cycle_keeps_the_more_confident_edge():
    kept = select_edges([Edge(0, 1, 0.6), Edge(1, 0, 0.9)], 2)
    assert kept == [Edge(1, 0, 0.9)]


def test_longer_cycle_is_broken_at_its_weakest_edge():
    edges = [Edge(0, 1, 0.9), Edge(1, 2, 0.8), Edge(2, 0, 0.7)]
    assert select_edges(edges, 3) == [Edge(0, 1, 0.9), Edge(1, 2, 0.8)]


def test_parent_limit_keeps_the_best_parents():
    edges = [Edge(0, 3, 0.6), Edge(1, 3, 0.9), Edge(2, 3, 0.8)]
    assert select_edges(edges, 4, max_dependencies=2) == [Edge(1, 3, 0.9), Edge(2, 3, 0.8)]


def test_ties_prefer_lower_source():
    edges = [Edge(1, 2, 0.7), Edge(0, 2, 0.7)]
    assert select_edges(edges, 3, max_dependencies=1) == [Edge(0, 2, 0.7)]


def test_duplicate_pairs_keep_the_best():
    edges = [Edge(0, 1, 0.6, "weak"), Edge(0, 1, 0.8, "strong")]
    assert select_edges(edges, 2) == [Edge(0, 1, 0.8, "strong")]


def test_min_confidence_is_inclusive():
    assert select_edges([Edge(0, 1, 0.5)], 2, min_confidence=0.5) == [Edge(0, 1, 0.5)]


@pytest.mark.parametrize("options, name", [
    ({"max_dependencies": -1}, "max_dependencies"),
    ({"max_dependencies": 1.5}, "max_dependencies"),
    ({"min_confidence": 1.1}, "min_confidence"),
    ({"min_confidence": -0.1}, "min_confidence"),
    ({"cost_weight": -1.0}, "cost_weight"),
    ({"cost_weight": float("nan")}, "cost_weight"),
])
def test_bad_options_name_the_option(options, name):
    with pytest.raises(ValueError, match=name):
        select_edges([Edge(0, 1, 0.9)], 2, **options)


def test_edge_outside_the_group_is_rejected():
    with pytest.raises(ValueError, match="outside"):
        select_edges([Edge(0, 5, 0.9)], 3)


@pytest.mark.parametrize("kwargs", [
    {"source": 1, "target": 1, "confidence": 0.5},
    {"source": -1, "target": 1, "confidence": 0.5},
    {"source": 0, "target": 1, "confidence": 1.5},
    {"source": 0, "target": 1, "confidence": float("nan")},
])
def test_edge_validation(kwargs):
    with pytest.raises(ValueError):
        Edge(**kwargs)
