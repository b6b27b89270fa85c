"""Dependencies proposed by a causal LM asked for JSON edges.

The same model that answers (the local engine or an API back-end, through the strategy's
run context) gets the numbered questions and replies with
``{"edges": [{"from": 1, "to": 2, "confidence": 0.9, "reason": "..."}]}`` ("to" depends on
"from", numbered from 1). Only a reply that parses completely and whose every edge is valid
is used; invalid or partial JSON falls back to the heuristic generator, and the result
says so (``fallback=True``, with the reason in ``details``) so runs can count fallbacks.
With structured output the reply is constrained to its schema (question numbers 1..N, no
edge from a question to itself, confidence in [0, 1], at most the selection's cap of edges),
so it always parses; when the budget cuts it short, the edges completed before the cut
are kept.
The tokens of this step (prompt and reply) are the step's cost; ``details["generation"]``
holds the call's figures so a strategy can add them to its own cost.
"""

from __future__ import annotations

import json
import re
from typing import Any

from paralleldecode.data.records import QuestionGroup
from paralleldecode.dependencies.graph import DependencyResult, Edge
from paralleldecode.dependencies.heuristic import HeuristicGenerator
from paralleldecode.prompts import dependency_request, edges_reply


class InvalidEdges(ValueError):
    """The reply was not the requested JSON; the message says what was wrong."""


def complete_edges(reply: str) -> str:
    """A reply cut short inside its ``edges`` list, closed after its last complete edge.

    Constrained decoding keeps every reply a start of valid JSON, so when the budget runs
    out mid-edge, the edges already closed are valid: this keeps them (and only them).
    """
    depth, in_string, escaped, last = 0, False, False, -1
    for i, ch in enumerate(reply):
        if in_string:
            escaped, in_string = (False, in_string) if escaped else (ch == "\\", ch != '"')
            continue
        if ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 2 and ch == "}":  # an edge object inside {"edges": [...]} closed
                last = i
    start = reply.find("[")
    if start < 0:
        return reply
    return (reply[: last + 1] if last >= 0 else reply[: start + 1]) + "]}"


def parse_edges(reply: str, n_questions: int) -> list[Edge]:
    """Strictly parse a reply into 0-based edges.

    Raises:
        InvalidEdges: no complete JSON object with an ``edges`` list, or an edge with a
            missing/invalid ``from``, ``to`` or ``confidence``.
    """
    start = reply.find("{")
    try:
        obj, _ = json.JSONDecoder().raw_decode(reply, start) if start >= 0 else (None, 0)
    except json.JSONDecodeError as err:
        raise InvalidEdges(f"not complete JSON ({err.msg})") from err
    if not isinstance(obj, dict) or not isinstance(obj.get("edges"), list):
        raise InvalidEdges('no "edges" list')
    return [_edge(item, i, n_questions) for i, item in enumerate(obj["edges"])]


def _edge(item: Any, i: int, n: int) -> Edge:
    if not isinstance(item, dict):
        raise InvalidEdges(f"edges[{i}] is not an object")
    ends = []
    for key in ("from", "to"):
        v = item.get(key)
        if isinstance(v, str) and re.fullmatch(r"\d+", v.strip()):
            v = int(v)
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= n:
            raise InvalidEdges(f"edges[{i}].{key} is {v!r}, not a question number 1..{n}")
        ends.append(v - 1)
    if ends[0] == ends[1]:
        raise InvalidEdges(f"edges[{i}] links question {ends[0] + 1} to itself")
    conf = item.get("confidence", 1.0)
    if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0 <= conf <= 1:
        raise InvalidEdges(f"edges[{i}].confidence is {conf!r}, not a number in [0, 1]")
    return Edge(ends[0], ends[1], float(conf), str(item.get("reason", ""))[:200])


class LLMDependencyGenerator:
    """Asks the run's model for dependency edges.

    Args:
        ctx: the strategy's run context (local engine or remote back-end).
        max_new_tokens: budget of the reply.
        fallback: used when the reply is not valid JSON edges.
        max_parents: the selection's cap of parents per question; the reply schema allows
            at most this many edges per question, and no more than fit the budget.
    """

    name = "llm"

    def __init__(self, ctx, max_new_tokens: int = 160, fallback: HeuristicGenerator | None = None,
                 max_parents: int = 2) -> None:
        self.ctx = ctx
        self.max_new_tokens = max_new_tokens
        self.fallback = fallback or HeuristicGenerator()
        self.max_parents = max_parents

    def generate(self, group: QuestionGroup) -> DependencyResult:
        # At most the selection's cap of parents for every question.
        reply_format = edges_reply(len(group), self.max_parents * len(group))
        (reply,), res = self.ctx.generate(group, lambda g: [dependency_request(g)], reply_format,
                                          max_new_tokens=self.max_new_tokens)
        tokens = res.prompt_tokens_processed + res.generated_tokens
        constrained = getattr(self.ctx, "grammars", None) is not None
        if constrained and res.streams[0].finish_reason == "length":
            # A constrained reply the budget cut: its complete edges are valid; keep those.
            reply = complete_edges(reply)
        try:
            edges = parse_edges(reply, len(group))
        except InvalidEdges as err:
            backup = self.fallback.generate(group)
            return DependencyResult(backup.edges, tokens=tokens + backup.tokens, fallback=True,
                                    details={"reply": reply, "fallback_reason": str(err),
                                             "generation": res})
        return DependencyResult(edges, tokens=tokens, details={"reply": reply, "generation": res})
