"""Dependency-aware strategies: infer which question depends on which, keep the edges worth
their cost, then answer the DAG layer by layer, each layer as one batch, with the answers of
a question's parents placed in its prompt.

* ``collab_llm``: the answering model itself proposes edges as JSON (invalid JSON falls back
  to the heuristic generator; fallbacks are counted). Its tokens count into the cost.
* ``collab_bert``: an encoder's attention between the packed questions proposes edges.
* ``collab_llm_ideal`` / ``collab_bert_ideal``: the same runs, also reporting the latency
  of an infinitely parallel executor: the dependency step plus, for every layer, the time
  of its slowest question on its own (each stream's own finish time in the batch, or each
  request's own latency on an API), beside the measured wall time.

Summaries carry per strategy: ``layers``, ``edges_kept``, ``edges_proposed``,
``dependency_tokens``, ``dependency_fallbacks`` (and ``ideal_latency_s``), summed over
groups.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

from paralleldecode.data.records import QuestionGroup
from paralleldecode.dependencies.graph import DependencyResult
from paralleldecode.dependencies.html_view import write_group_html
from paralleldecode.dependencies.llm import LLMDependencyGenerator
from paralleldecode.dependencies.scheduler import ideal_latency, layers, parents
from paralleldecode.dependencies.selection import select_edges
from paralleldecode.prompts import answer_reply, one_question
from paralleldecode.strategies.base import Cost, GroupRun, RunContext, Strategy, Timer, register

_FIGURES = ("layers", "edges_kept", "edges_proposed", "dependency_tokens", "dependency_fallbacks")


class _Collab(Strategy):
    """Shared plan of the dependency-aware strategies (subclasses pick the generator).

    Args:
        max_dependencies: most parents a question may have.
        min_confidence: edges below this confidence are dropped.
        cost_weight: an edge's benefit is its confidence minus ``cost_weight`` times the
            prompt tokens it adds (the parent's question and answer budget); edges with no
            benefit are dropped.
        html_dir: when set, one self-contained HTML view per group is written to
            ``html_dir/<strategy>/<group id>.html``.
    """

    ideal: ClassVar[bool] = False
    extra_figures = _FIGURES

    def __init__(self, max_dependencies: int = 2, min_confidence: float = 0.5,
                 cost_weight: float = 0.0, html_dir: str | None = None) -> None:
        self.max_dependencies = max_dependencies
        self.min_confidence = min_confidence
        self.cost_weight = cost_weight
        self.html_dir = html_dir
        # Checked now rather than on the first group: a bad option should fail the config.
        select_edges([], 1, max_dependencies=max_dependencies, min_confidence=min_confidence,
                     cost_weight=cost_weight)

    def dependencies(self, group: QuestionGroup, ctx: RunContext) -> DependencyResult:
        raise NotImplementedError  # pragma: no cover

    def run(self, group: QuestionGroup, ctx: RunContext) -> GroupRun:
        clock, cost, n = Timer(), Cost(), len(group)
        dep = self.dependencies(group, ctx)
        if "generation" in dep.details:  # the LLM step ran on the answering model
            cost.add(dep.details.pop("generation"))
        dep_seconds = clock()
        budget = ctx.generation.max_new_tokens
        added = [len(q.text.split()) * 4 // 3 + budget for q in group.questions]
        edges = select_edges(dep.edges, n, max_dependencies=self.max_dependencies,
                             min_confidence=self.min_confidence, cost_weight=self.cost_weight,
                             edge_cost=lambda e: added[e.source])
        plan, par = layers(n, edges), parents(n, edges)
        results, own_seconds = [None] * n, {}
        for layer in plan:
            def build(g: QuestionGroup, layer=layer):
                return [one_question(g, g.questions[i],
                                     parents=[(g.questions[p], results[p].answer) for p in par[i]])
                        for i in layer]
            replies, res = ctx.generate(group, build, [answer_reply(group.questions[i]) for i in layer])
            cost.add(res)
            done = self.single_answers(group, [group.questions[i] for i in layer], replies, res, clock())
            for i, s, r in zip(layer, res.streams, done):
                results[i], own_seconds[i] = r, s.finish_seconds
        cost.wall_seconds = clock()
        for r in results:
            r.dependency_fallback = bool(dep.fallback)
        extras = {"layers": len(plan), "edges_kept": len(edges), "edges_proposed": len(dep.edges),
                  "dependency_tokens": dep.tokens, "dependency_fallbacks": int(dep.fallback)}
        if self.ideal:
            extras["ideal_latency_s"] = dep_seconds + ideal_latency(plan, own_seconds)
        if self.html_dir:
            self._write_html(group, edges, results, cost, extras)
        details = {"edges": [[e.source, e.target, e.confidence, e.reason] for e in edges]}
        return GroupRun(results, cost, extras, details)

    def _write_html(self, group, edges, results, cost, extras) -> None:
        # The page lays the questions out by the layers of `edges`, the plan that ran.
        rows = [r.to_dict() for r in results]
        costs = {"prompt tokens": cost.prompt_tokens, "generated tokens": cost.generated_tokens,
                 "forward passes": cost.forward_passes, "wall seconds": round(cost.wall_seconds, 3),
                 **extras}
        safe = re.sub(r"[^\w.-]+", "_", group.id)
        write_group_html(Path(self.html_dir) / self.name / f"{safe}.html", group, edges, rows, costs,
                         title=f"{self.name}: {group.id}")


class _CollabLLM(_Collab):
    """Args (besides the shared ones): ``dependency_max_new_tokens``: budget of the JSON
    edge reply."""

    def __init__(self, max_dependencies: int = 2, min_confidence: float = 0.5,
                 cost_weight: float = 0.0, html_dir: str | None = None,
                 dependency_max_new_tokens: int = 160) -> None:
        super().__init__(max_dependencies, min_confidence, cost_weight, html_dir)
        self.dependency_max_new_tokens = dependency_max_new_tokens

    def dependencies(self, group: QuestionGroup, ctx: RunContext) -> DependencyResult:
        return LLMDependencyGenerator(ctx, self.dependency_max_new_tokens,
                                      max_parents=self.max_dependencies).generate(group)


class _CollabBERT(_Collab):
    """Args (besides the shared ones): ``encoder`` (a Hugging Face encoder name or folder;
    None = the embedded all-MiniLM-L6-v2), ``include_context``, ``attention_threshold``,
    ``dependency_threshold`` (see :class:`BertAttentionGenerator`)."""

    def __init__(self, max_dependencies: int = 2, min_confidence: float = 0.0,
                 cost_weight: float = 0.0, html_dir: str | None = None,
                 encoder: str | None = None, include_context: bool = False,
                 attention_threshold: float = 0.05, dependency_threshold: float = 0.15) -> None:
        from paralleldecode.dependencies.bert import BertAttentionGenerator

        super().__init__(max_dependencies, min_confidence, cost_weight, html_dir)
        # The encoder loads on first use, so building the strategy stays cheap.
        self.generator = BertAttentionGenerator(
            encoder, include_context=include_context, attention_threshold=attention_threshold,
            dependency_threshold=dependency_threshold,
        )

    def dependencies(self, group: QuestionGroup, ctx: RunContext) -> DependencyResult:
        return self.generator.generate(group)


@register
class CollabLLM(_CollabLLM):
    name = "collab_llm"


@register
class CollabLLMIdeal(_CollabLLM):
    name = "collab_llm_ideal"
    ideal = True
    extra_figures = (*_FIGURES, "ideal_latency_s")


@register
class CollabBERT(_CollabBERT):
    name = "collab_bert"


@register
class CollabBERTIdeal(_CollabBERT):
    name = "collab_bert_ideal"
    ideal = True
    extra_figures = (*_FIGURES, "ideal_latency_s")
