"""The records of the dependency step: edges between questions and a generator's result.

A dependency edge says that one question of a group (the child, ``target``) is best
answered after another (the parent, ``source``), with the parent's answer in the child's
prompt. Indices are positions in ``group.questions``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from paralleldecode.data.records import QuestionGroup


@dataclass(frozen=True)
class Edge:
    """``target`` depends on ``source``.

    Attributes:
        source: index in ``group.questions`` of the question depended on (the parent).
        target: index of the dependent question (the child).
        confidence: how sure the generator is that the dependency is real, in [0, 1].
        reason: a short human-readable note on why (the cue or model output behind it).

    Raises:
        ValueError: an index is negative or not an int, ``source == target``, or the
            confidence is outside [0, 1].
    """

    source: int
    target: int
    confidence: float
    reason: str = ""

    def __post_init__(self) -> None:
        for name in ("source", "target"):
            value = getattr(self, name)
            # bool is an int subclass; True as an index is almost certainly a bug.
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"edge {name} must be a question index >= 0, got {value!r}")
        if self.source == self.target:
            raise ValueError(f"edge from question {self.source} to itself")
        conf = self.confidence
        if isinstance(conf, bool) or not isinstance(conf, (int, float)) or math.isnan(conf) \
                or not 0.0 <= conf <= 1.0:
            raise ValueError(
                f"edge {self.source}->{self.target}: confidence must be in [0, 1], got {conf!r}"
            )


@dataclass
class DependencyResult:
    """What a dependency generator returns for one group.

    Attributes:
        edges: the inferred edges, before selection (any order, possibly cyclic).
        tokens: tokens spent on the dependency step (prompt plus generated); counted into
            the strategy's cost. 0 for model-free generators.
        fallback: True when the generator could not use its model and fell back to the
            heuristic.
        details: anything else worth logging (raw model output, timings, ...).
    """

    edges: list[Edge]
    tokens: int = 0
    fallback: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            raise ValueError(f"dependency tokens must be >= 0, got {self.tokens}")


@runtime_checkable
class DependencyGenerator(Protocol):
    """Infers which questions of a group depend on which.

    Attributes:
        name: short registered name (``"heuristic"``, ``"bert"``, ...).
    """

    name: str

    def generate(self, group: QuestionGroup) -> DependencyResult:
        """Returns the edges between ``group.questions`` (indices into that list)."""
        ...
