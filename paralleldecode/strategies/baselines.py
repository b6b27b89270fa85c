"""The three baselines every other strategy is measured against.

* ``all_in_one``: one prompt holding the context and every question; one reply answers
  all of them.
* ``sequential``: a chat with one question per turn; earlier questions and the model's
  replies stay in the prompt, which is processed again each turn (history grows).
* ``batch``: every question as its own prompt (context repeated), all in one padded batch.
* ``one_sequence``: the same prompts as ``batch``, but in one sequence: their common prefix
  (instructions and context) is computed once and each question is a branch after it;
  every decoding step feeds one token per live branch in a single forward pass.

Two baselines do what a serving engine with prefix caching does, so the shared-prefix
strategies are measured against what users really run, not only against recomputation:

* ``batch_cached``: ``batch``'s prompts; their common prefix is prefilled once in one row,
  one row per question starts from its KV, then each row prefills the rest of its prompt and
  the rows decode as an ordinary batch (vLLM's automatic prefix caching, SGLang's ``fork``).
  The rows read one copy of the prefix's KV, as a serving engine's shared cache blocks are
  read, where the engine allows it (an sdpa model on the CPU); elsewhere each row holds a
  copy. Either way each row attends to the prefix on its own: ``G`` rows read it ``G``
  times per step, where ``one_sequence``'s branches read it once together.
* ``sequential_cached``: ``sequential``'s conversation, keeping the KV of everything
  processed so far from turn to turn; each turn computes only what is new (the last reply
  as the chat template writes it, and the next question), as a chat server with prefix
  caching does.

Under greedy decoding each gives its plain counterpart's answers token for token.
"""

from __future__ import annotations

from paralleldecode.data.records import QuestionGroup
from paralleldecode.prompts import (
    all_questions,
    answer_reply,
    answers_reply,
    conversation,
    one_question,
    parse_answers,
)
from paralleldecode.strategies.base import Cost, GroupRun, KVSession, RunContext, Strategy, Timer, register


@register
class AllInOne(Strategy):
    name = "all_in_one"

    def run(self, group: QuestionGroup, ctx: RunContext) -> GroupRun:
        clock, n = Timer(), len(group)
        # One reply carries n answers plus the JSON around them.
        budget = ctx.generation.max_new_tokens * n + 8 * n
        (reply,), res = ctx.generate(group, lambda g: [all_questions(g)], answers_reply(group.questions), budget)
        stream, wall = res.streams[0], clock()
        results = [
            self.result(group, q, reply, p, stream.finish_reason,
                        prompt_tokens=stream.prompt_tokens / n,
                        generated_tokens=stream.generated_tokens / n,
                        forward_passes=res.forward_passes, latency_s=wall, error=stream.error,
                        schema_fallback=stream.schema_fallback or None)
            for q, p in zip(group.questions, parse_answers(reply, n))
        ]
        cost = Cost(wall_seconds=wall)
        cost.add(res)
        return GroupRun(results, cost)


@register
class Sequential(Strategy):
    name = "sequential"
    cached = False

    def run(self, group: QuestionGroup, ctx: RunContext) -> GroupRun:
        clock, cost, results, asked = Timer(), Cost(), [], []
        session = KVSession() if self.cached else None
        for q in group.questions:
            (reply,), res = ctx.generate(group, lambda g, q=q: [conversation(g, asked, q)], answer_reply(q),
                                         session=session)
            results += self.single_answers(group, [q], [reply], res, clock())
            cost.add(res)
            asked.append((q, reply))
        cost.wall_seconds = clock()
        return GroupRun(results, cost)


@register
class Batch(Strategy):
    name = "batch"
    layout = "rows"

    def run(self, group: QuestionGroup, ctx: RunContext) -> GroupRun:
        clock = Timer()
        replies, res = ctx.generate(group, lambda g: [one_question(g, q) for q in g.questions],
                                    [answer_reply(q) for q in group.questions], layout=self.layout)
        wall = clock()
        results = self.single_answers(group, group.questions, replies, res, wall)
        cost = Cost(wall_seconds=wall)
        cost.add(res)
        return GroupRun(results, cost)


@register
class SequentialCached(Sequential):
    """``sequential`` with the conversation's KV kept across turns."""

    name = "sequential_cached"
    cached = True
    needs_local_model = True


@register
class BatchCached(Batch):
    """``batch`` with the prompts' common prefix prefilled once and read by every row."""

    name = "batch_cached"
    layout = "prefix_cached"
    needs_local_model = True


@register
class OneSequence(Batch):
    """``batch``'s prompts decoded as branches of one shared-prefix sequence; under greedy
    decoding it gives ``batch``'s answers token for token."""

    name = "one_sequence"
    layout = "shared_prefix"
    needs_local_model = True
