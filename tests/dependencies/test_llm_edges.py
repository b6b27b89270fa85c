"""Strict parsing of the LLM's JSON edges."""

from __future__ import annotations

import pytest

from paralleldecode.dependencies.graph import Edge
from paralleldecode.dependencies.llm import InvalidEdges, parse_edges


def test_valid_reply_gives_zero_based_edges():
    reply = '{"edges": [{"from": 1, "to": 3, "confidence": 0.8, "reason": "she"}, {"from": "2", "to": 3}]}'
    assert parse_edges(reply, 3) == [Edge(0, 2, 0.8, "she"), Edge(1, 2, 1.0, "")]
    assert parse_edges('Sure: {"edges": []}', 2) == []


@pytest.mark.parametrize("reply, problem", [
    ('{"edges": [{"from": 1, "to": 2, "confidence": 0.9}', "not complete JSON"),
    ("no json at all", "not complete JSON|no \"edges\""),
    ('{"deps": []}', 'no "edges" list'),
    ('{"edges": [{"from": 1, "to": 9}]}', r"edges\[0\].to is 9"),
    ('{"edges": [{"from": 2, "to": 2}]}', "to itself"),
    ('{"edges": [{"from": 1, "to": 2, "confidence": 3}]}', "confidence is 3"),
    ('{"edges": ["1->2"]}', "not an object"),
])
def test_invalid_or_partial_replies_are_refused(reply, problem):
    with pytest.raises(InvalidEdges, match=problem):
        parse_edges(reply, 3)
