"""Turning selected edges into an execution plan: topological layers of questions.

Every layer is one batch: its questions have all their parents in earlier layers, so
their prompts can carry the parents' answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from paralleldecode.dependencies.graph import Edge


def _checked(n_questions: int, edges: Iterable[Edge]) -> list[Edge]:
    """Returns ``edges`` as a list after checking their indices against ``n_questions``."""
    if n_questions < 0:
        raise ValueError(f"n_questions must be >= 0, got {n_questions}")
    edges = list(edges)
    for e in edges:
        if e.source >= n_questions or e.target >= n_questions:
            raise ValueError(
                f"edge {e.source}->{e.target} refers to a question outside 0..{n_questions - 1}"
            )
    return edges


def parents(n_questions: int, edges: Iterable[Edge]) -> dict[int, list[int]]:
    """Maps every question to the questions it depends on.

    Args:
        n_questions: number of questions in the group.
        edges: dependency edges (parent ``source`` -> child ``target``).

    Returns:
        ``{index: sorted parent indices}`` with a key for each of the ``n_questions``
        indices (an empty list for questions without parents); duplicate edges count once.

    Raises:
        ValueError: an edge refers to an index >= ``n_questions``.
    """
    found: dict[int, set[int]] = {i: set() for i in range(n_questions)}
    for e in _checked(n_questions, edges):
        found[e.target].add(e.source)
    return {i: sorted(ps) for i, ps in found.items()}


def _find_cycle(unresolved: set[int], parent_map: Mapping[int, Sequence[int]]) -> list[int]:
    """Returns one cycle among ``unresolved`` questions, in dependency order from its lowest index.

    Every unresolved question has at least one unresolved parent (otherwise it would have
    been placed in a layer), so walking from parent to unresolved parent must revisit a
    question; the walk from that first revisit on is a cycle.
    """
    node = min(unresolved)
    seen_at: dict[int, int] = {}
    path: list[int] = []
    while node not in seen_at:
        seen_at[node] = len(path)
        path.append(node)
        node = min(p for p in parent_map[node] if p in unresolved)
    # The walk went child -> parent; reverse so the cycle reads parent -> child, and start
    # it at its lowest index so the message does not depend on where the walk began.
    cycle = path[seen_at[node]:][::-1]
    first = cycle.index(min(cycle))
    return cycle[first:] + cycle[:first]


def layers(n_questions: int, edges: Iterable[Edge]) -> list[list[int]]:
    """Groups questions into topological layers.

    A question's layer is 0 without parents, else 1 + the largest layer of its parents, so
    each layer is as early as its dependencies allow.

    Args:
        n_questions: number of questions in the group.
        edges: dependency edges (parent ``source`` -> child ``target``).

    Returns:
        A list of layers, each a non-empty ascending list of question indices; together
        they hold every index in ``range(n_questions)`` exactly once. ``[]`` when
        ``n_questions`` is 0.

    Raises:
        ValueError: an edge is out of range, or the edges form a cycle (the message names
            the questions on one cycle).
    """
    parent_map = parents(n_questions, edges)
    children: dict[int, list[int]] = {i: [] for i in range(n_questions)}
    for child, ps in parent_map.items():
        for p in ps:
            children[p].append(child)
    missing = {i: len(ps) for i, ps in parent_map.items()}
    layer_of: dict[int, int] = {}
    ready = [i for i in range(n_questions) if missing[i] == 0]
    for i in ready:
        layer_of[i] = 0
    # Kahn's algorithm; a child's layer is final once its last parent has been placed.
    while ready:
        node = ready.pop()
        for child in children[node]:
            missing[child] -= 1
            if missing[child] == 0:
                layer_of[child] = 1 + max(layer_of[p] for p in parent_map[child])
                ready.append(child)
    if len(layer_of) < n_questions:
        unresolved = set(range(n_questions)) - set(layer_of)
        cycle = _find_cycle(unresolved, parent_map)
        chain = " -> ".join(str(i) for i in cycle + cycle[:1])
        raise ValueError(f"dependency edges are cyclic: questions {chain} form a cycle")
    out: list[list[int]] = [[] for _ in range(max(layer_of.values(), default=-1) + 1)]
    for i in range(n_questions):
        out[layer_of[i]].append(i)
    return out


def ideal_latency(layers: Sequence[Sequence[int]], latency_of: Mapping[int, float]) -> float:
    """Latency of an infinitely parallel executor that runs the layers one after another.

    Each layer takes as long as its slowest question; layers run back to back.

    Args:
        layers: the plan from :func:`layers` (lists of question indices).
        latency_of: seconds (or any unit) each question takes on its own, by index.

    Returns:
        The sum over layers of the largest ``latency_of`` in the layer (0.0 for no layers).

    Raises:
        KeyError: a question of a layer has no entry in ``latency_of``.
    """
    return float(sum(max(latency_of[q] for q in layer) for layer in layers if layer))
