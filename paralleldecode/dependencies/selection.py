"""Keeping the dependency edges worth their cost, as an acyclic graph.

An edge serialises two questions (the child waits for the parent's answer) and lengthens
the child's prompt, so only confident, cheap edges are kept, and never so many that a
question waits on more than a few others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from paralleldecode.dependencies.graph import Edge


def _reaches(start: int, goal: int, children: dict[int, set[int]]) -> bool:
    """True when ``goal`` can be reached from ``start`` along ``children`` links."""
    stack, seen = [start], {start}
    while stack:
        node = stack.pop()
        if node == goal:
            return True
        for nxt in children.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return False


def select_edges(
    edges: Iterable[Edge],
    n_questions: int,
    *,
    max_dependencies: int = 2,
    min_confidence: float = 0.5,
    cost_weight: float = 0.0,
    edge_cost: Callable[[Edge], float] | None = None,
) -> list[Edge]:
    """Picks an acyclic set of edges, greedily by benefit.

    The benefit of an edge is ``confidence - cost_weight * edge_cost(edge)``, where
    ``edge_cost`` is what the edge adds to the child's prompt (e.g. the parent's question
    and answer length in tokens). Edges with ``confidence >= min_confidence`` and
    ``benefit > 0`` are considered in descending benefit (ties: higher confidence, then
    lower source, then lower target); each is kept unless its target already has
    ``max_dependencies`` parents or it would close a cycle. A cycle is therefore broken at
    its lowest-ranked edge. Of several edges with the same (source, target), only the best
    ranked one is considered.

    Raising ``cost_weight`` never adds edges when every edge costs the same (the ranking
    is then unchanged and only its tail is cut); with unequal costs it can re-rank edges, so
    a cheaper edge may replace a dearer one that the parent limit or a cycle used to block.

    Args:
        edges: candidate edges, in any order; may be cyclic or repeat pairs.
        n_questions: number of questions in the group; every index must be below it.
        max_dependencies: most parents a question may keep (0 keeps no edges).
        min_confidence: edges below this confidence are dropped, in [0, 1].
        cost_weight: weight of ``edge_cost`` in the benefit, >= 0.
        edge_cost: cost of an edge (e.g. the prompt tokens it adds); 0 for all when None.

    Returns:
        The kept edges sorted by (target, source); acyclic, at most ``max_dependencies``
        per target.

    Raises:
        ValueError: an option is out of range (the message names it) or an edge refers to
            an index >= ``n_questions``.
    """
    if isinstance(max_dependencies, bool) or not isinstance(max_dependencies, int) \
            or max_dependencies < 0:
        raise ValueError(f"max_dependencies must be an int >= 0, got {max_dependencies!r}")
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence!r}")
    if not cost_weight >= 0.0:  # also rejects NaN
        raise ValueError(f"cost_weight must be >= 0, got {cost_weight!r}")
    if n_questions < 0:
        raise ValueError(f"n_questions must be >= 0, got {n_questions}")

    def rank(item: tuple[float, Edge]) -> tuple[float, float, int, int]:
        benefit, e = item
        return (-benefit, -e.confidence, e.source, e.target)

    best: dict[tuple[int, int], tuple[float, Edge]] = {}
    for e in edges:
        if e.source >= n_questions or e.target >= n_questions:
            raise ValueError(
                f"edge {e.source}->{e.target} refers to a question outside 0..{n_questions - 1}"
            )
        cost = edge_cost(e) if edge_cost is not None else 0.0
        item = (e.confidence - cost_weight * cost, e)
        key = (e.source, e.target)
        if key not in best or rank(item) < rank(best[key]):
            best[key] = item

    candidates = sorted(
        (item for item in best.values() if item[1].confidence >= min_confidence and item[0] > 0),
        key=rank,
    )
    kept: list[Edge] = []
    n_parents: dict[int, int] = {}
    children: dict[int, set[int]] = {}
    for _, e in candidates:
        if n_parents.get(e.target, 0) >= max_dependencies:
            continue
        # source -> target closes a cycle exactly when source is already reachable from target.
        if _reaches(e.target, e.source, children):
            continue
        kept.append(e)
        n_parents[e.target] = n_parents.get(e.target, 0) + 1
        children.setdefault(e.source, set()).add(e.target)
    return sorted(kept, key=lambda e: (e.target, e.source))
