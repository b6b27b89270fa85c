"""What a strategy is, the registry of them, and the records they return.

A strategy is a thin plan: it decides which prompts to send and how they share a batch,
hands them to the one :class:`~paralleldecode.decoding.DecodingEngine`, and parses the
replies. Everything else (rendering, fitting the context window, scoring, costs) lives
here so strategies stay a few lines each.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from paralleldecode.data.records import Question, QuestionGroup
from paralleldecode.decoding import (
    DecodingEngine,
    GenerationConfig,
    GenerationResult,
    Layout,
    independent_rows,
    shared_prefix,
    split_common_prefix,
)
from paralleldecode.decoding.cache import RowCache
from paralleldecode.decoding.columnar import columnar_prompts
from paralleldecode.decoding.constraints import Grammars
from paralleldecode.errors import OptionError, UserError
from paralleldecode.metrics import score
from paralleldecode.prompts import Message, Parsed, PromptRenderer, ReplyFormat, parse_answer

LAYOUTS = {
    "rows": independent_rows,
    "shared_prefix": shared_prefix,
    "columnar": lambda ids, pad: columnar_prompts(ids, pad, isolate=False),
    "columnar_isolated": lambda ids, pad: columnar_prompts(ids, pad, isolate=True),
}


class UnknownStrategyError(OptionError):
    """A strategy name that is not registered; the message lists the registered ones."""


class StrategyUnavailable(RuntimeError):
    """A strategy cannot run in this setting (e.g. its trained checkpoint is missing); the
    runner skips it and puts the message in the summary instead of failing the whole run."""


class ContextTooLongError(UserError, ValueError):
    """A prompt does not fit the model's context window; the message names the group."""


@dataclass
class Cost:
    """What answering one group cost.

    Attributes:
        prompt_tokens: prompt tokens the model actually processed (after any sharing).
        generated_tokens: tokens generated, stop tokens included.
        forward_passes: model calls (a group's share of calls it shared with other groups).
        decode_passes: the part of them that were decoding steps, not prefill passes (a
            chunked prefill is several calls).
        wall_seconds: wall time of the strategy on the group (its share of a packed batch's).
        decode_seconds: the part of it spent in decoding steps after prefills.
        peak_cache_bytes: the largest KV cache any of its generate calls held.
        constraint_seconds: the part spent masking logits to reply schemas.
        schema_fallbacks: API requests that a server refused with their reply schema and
            that were sent again without it.
    """

    prompt_tokens: int = 0
    generated_tokens: int = 0
    forward_passes: float = 0
    decode_passes: float = 0
    wall_seconds: float = 0.0
    decode_seconds: float = 0.0
    peak_cache_bytes: int = 0
    constraint_seconds: float = 0.0
    schema_fallbacks: int = 0

    def add(self, res: GenerationResult) -> None:
        """Count one generate call; a call shared by several groups (packing) counts its
        passes and decoding time by the group's ``share`` of it."""
        self.prompt_tokens += res.prompt_tokens_processed
        self.generated_tokens += res.generated_tokens
        self.forward_passes += res.forward_passes * res.share
        self.decode_passes += (res.forward_passes - res.prefill_passes) * res.share
        self.decode_seconds += (res.wall_seconds - res.prefill_seconds) * res.share
        self.peak_cache_bytes = max(self.peak_cache_bytes, res.peak_cache_bytes)
        self.constraint_seconds += res.constraint_seconds
        self.schema_fallbacks += sum(s.schema_fallback for s in res.streams)


@dataclass
class QuestionResult:
    """One answered question: one line of ``predictions.jsonl``.

    Quality scores (0..1) are those of the question's ``answer_type`` (EM/F1/lenient for
    short answers, accuracy for multiple choice, BLEU-4/ROUGE for long answers); the others
    stay None, as do all of them for a question without gold. Token and pass figures are
    those of the generate call that produced the answer; where one call answers several
    questions in one stream (``all_in_one``) its tokens are shared equally among them.
    ``latency_s`` is the time from the group's start until this answer was available.
    ``schema_fallback`` is True when an API server refused the reply schema and the request
    went again without it; ``dependency_fallback`` is True when a
    dependency-aware strategy's edges for this group came from the heuristic fallback.
    """

    strategy: str
    dataset: str
    group_id: str
    question_id: str
    question: str
    answer: str
    raw: str
    gold: list[str]
    format_ok: bool
    finish_reason: str
    prompt_tokens: float
    generated_tokens: float
    forward_passes: int
    latency_s: float
    answer_type: str = "short"
    options: list[str] | None = None
    error: str | None = None
    em: float | None = None
    f1: float | None = None
    lenient: float | None = None
    accuracy: float | None = None
    bleu4: float | None = None
    rouge1: float | None = None
    rouge2: float | None = None
    rougeL: float | None = None  # noqa: N815 - the metric's usual name
    judge_fluency: float | None = None
    judge_relevance: float | None = None
    judge_completeness: float | None = None
    judge_proficiency: float | None = None
    judge_error: str | None = None
    schema_fallback: bool | None = None
    dependency_fallback: bool | None = None

    def __post_init__(self) -> None:
        for key, value in score(self.answer, self.gold, self.answer_type, self.options).items():
            setattr(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class GroupRun:
    """A strategy's output for one group: per-question results, the group's cost,
    strategy-specific figures for the summary (``extras``, summed over groups) and what
    else the run's report shows for the group (``details``: e.g. the dependency edges the
    plan used, as ``[source, target, confidence, reason]`` lists)."""

    results: list[QuestionResult]
    cost: Cost
    extras: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class KVSession:
    """The KV a strategy keeps from one call to the next (``sequential_cached``): after each
    :meth:`RunContext.generate` with this session, ``cache`` holds the stream's prompt and
    reply; the next call computes only what its prompt adds to it."""

    cache: RowCache | None = None


@dataclass
class RunContext:
    """What a strategy runs with.

    Attributes:
        engine: the decoding engine over the local model.
        renderer: messages -> token ids.
        generation: per-answer generation settings (``max_new_tokens`` is per answer).
        truncate_context: cut a group's background to fit the context window instead of
            raising :class:`ContextTooLongError`.
        model_name: what the local model was loaded from (trained strategies look for
            checkpoints by it).
        packer: when set, the engine calls of several groups' strategy runs are stacked
            into one (see :mod:`paralleldecode.strategies.packing`); strategies never see it.
        grammars: when set (structured output on), every reply that carries a schema is
            decoded under it (see :mod:`paralleldecode.decoding.constraints`).
    """

    engine: DecodingEngine
    renderer: PromptRenderer
    generation: GenerationConfig
    truncate_context: bool = False
    model_name: str | None = None
    packer: Any = None
    grammars: Grammars | None = None

    def generate(
        self,
        group: QuestionGroup,
        build: Callable[[QuestionGroup], list[list[Message]]],
        reply: ReplyFormat | list[ReplyFormat],
        max_new_tokens: int | None = None,
        layout: str = "rows",
        session: KVSession | None = None,
    ) -> tuple[list[str], GenerationResult]:
        """Render ``build(group)`` (one message list per stream) primed with ``reply``, fit
        the window, and generate the streams together.

        Args:
            reply: the reply format of every stream, or one per stream (they share their
                opening and close; their schemas may differ, e.g. each question's letters).
            layout: ``"rows"`` (each stream its own padded row), ``"prefix_cached"`` (rows
                whose common prefix is prefilled once and its KV read by every row),
                ``"shared_prefix"`` (one row: the streams' common prefix once, then one
                branch per stream), or ``"columnar"`` / ``"columnar_isolated"`` (the common
                prefix as background, branches decoded column by column under 2D
                positions; needs the 2D RoPE).
            session: one stream in rows that continues from the session's KV (the tokens
                its prompt shares with it are not computed again) and leaves its own KV
                there for the next call.

        Returns:
            each stream's whole reply (see :meth:`ReplyFormat.complete`), and the result
            (for ``prefix_cached``, the prefix's prefill and the generation together).
        """
        gen = self.generation.budget(max_new_tokens)
        first = reply[0] if isinstance(reply, list) else reply
        gen = dataclasses.replace(gen, stop_strings=(first.close, *gen.stop_strings))
        ids = self.fit(group, build, gen.max_new_tokens, first.prefix)
        replies = reply if isinstance(reply, list) else [reply] * len(ids)
        if len(replies) != len(ids) or any((r.prefix, r.close) != (first.prefix, first.close) for r in replies):
            raise ValueError("one reply format per stream, all with the same opening and close")
        constraint = None
        if self.grammars is not None:
            constraint = self.grammars.constraint([r.schema for r in replies], [r.prefix for r in replies])
        pad = self.engine.pad_id
        if session is not None:
            if len(ids) != 1 or layout != "rows":
                raise ValueError("a KV session carries one stream in rows")
            res = self.run_engine(independent_rows(ids, pad, past=[session.cache]), gen, keep_cache=True,
                                  constraint=constraint)
            session.cache = res.caches[0]
        elif layout == "prefix_cached":
            res = self._prefix_cached(ids, gen, constraint)
        else:
            res = self.run_engine(LAYOUTS[layout](ids, pad), gen, constraint=constraint)
        return [r.complete(s.text, s.finish_reason) for r, s in zip(replies, res.streams)], res

    def _prefix_cached(self, ids: list[list[int]], gen: GenerationConfig, constraint=None) -> GenerationResult:
        """Prefill the prompts' common prefix once in one row, then decode rows that each
        start from its KV (read in place where the engine can, else a copy per row; see
        ``DecodingEngine(share_past=...)``); without a common prefix this is ``rows``."""
        prefix, _ = split_common_prefix(ids)
        if not prefix:
            return self.run_engine(independent_rows(ids, self.engine.pad_id), gen, constraint=constraint)
        pre = self.run_engine(independent_rows([prefix], self.engine.pad_id), None)
        res = self.run_engine(independent_rows(ids, self.engine.pad_id, past=pre.caches * len(ids)), gen,
                              constraint=constraint)
        return dataclasses.replace(
            res, forward_passes=res.forward_passes + pre.forward_passes,
            prompt_tokens_processed=res.prompt_tokens_processed + pre.prompt_tokens_processed,
            wall_seconds=res.wall_seconds + pre.wall_seconds,
            prefill_seconds=res.prefill_seconds + pre.prefill_seconds,
            prefill_passes=res.prefill_passes + pre.prefill_passes,
            peak_cache_bytes=max(res.peak_cache_bytes, pre.peak_cache_bytes),
            # Each view's share of the calls it took part in (see Cost.add).
            share=(res.forward_passes * res.share + pre.forward_passes * pre.share)
            / (res.forward_passes + pre.forward_passes))

    def run_engine(self, layout: Layout, gen: GenerationConfig | None, keep_cache: bool = False,
                   constraint=None) -> GenerationResult:
        """One engine call (``gen`` None: a prefill only), through the packer when set."""
        if self.packer is not None:
            return self.packer.call(self.engine, layout, gen, keep_cache, constraint)
        if gen is None:
            return self.engine.prefill(layout)
        return self.engine.generate(layout, gen, keep_cache=keep_cache, constraint=constraint)

    def fit(
        self,
        group: QuestionGroup,
        build: Callable[[QuestionGroup], list[list[Message]]],
        max_new_tokens: int,
        reply_prefix: str = "",
    ) -> list[list[int]]:
        """Token ids of ``build(group)``, cutting the background from its end if allowed."""
        limit = self.engine.max_positions
        for _ in range(4):
            ids = [self.renderer.ids(m, reply_prefix) for m in build(group)]
            longest = max(len(i) for i in ids)
            if limit is None or longest + max_new_tokens <= limit:
                return ids
            if not self.truncate_context or not group.background:
                raise ContextTooLongError(
                    f"group {group.id!r}: a prompt of {longest} tokens plus max_new_tokens="
                    f"{max_new_tokens} exceeds the model's context window of {limit} tokens; "
                    "lower max_new_tokens, use smaller groups, or set truncate_context: true"
                )
            group = _cut_background(group, self.renderer.tokenizer, longest + max_new_tokens - limit)
        raise ContextTooLongError(f"group {group.id!r}: the prompt still does not fit after cutting")


def _cut_background(group: QuestionGroup, tokenizer, excess: int) -> QuestionGroup:
    bg = tokenizer(group.background, add_special_tokens=False)["input_ids"]
    keep = max(0, len(bg) - excess - 8)  # a small margin: re-tokenising may merge differently
    text = tokenizer.decode(bg[:keep], skip_special_tokens=True)
    meta = dict(group.metadata, truncated_background_tokens=len(bg) - keep)
    return dataclasses.replace(group, background=text, metadata=meta)


class Strategy:
    """Base class: subclasses set ``name`` and implement :meth:`run`.

    Class attributes say what a strategy needs, so runners can refuse early with a clear
    message: ``needs_local_model`` (token-level access to a local model: custom layouts,
    the KV cache), ``needs_hidden_states``, ``needs_checkpoint``. Strategies needing none
    of these are text-only and also run on remote back-ends.
    """

    def requirements(self) -> list[str]:
        """What this strategy needs beyond a text-in/text-out model, in words."""
        needs = [("needs_local_model", "token-level access to a local model"),
                 ("needs_hidden_states", "hidden states"), ("needs_checkpoint", "a trained checkpoint")]
        return [words for attr, words in needs if getattr(self, attr)]

    name: ClassVar[str]
    # Strategy-specific figures its GroupRun.extras carry, summed over groups in summaries.
    extra_figures: ClassVar[tuple[str, ...]] = ()
    needs_local_model: ClassVar[bool] = False
    needs_hidden_states: ClassVar[bool] = False
    needs_checkpoint: ClassVar[bool] = False

    def run(self, group: QuestionGroup, ctx: RunContext) -> GroupRun:  # pragma: no cover
        raise NotImplementedError

    def result(
        self, group: QuestionGroup, q: Question, raw: str, parsed: Parsed, finish_reason: str,
        prompt_tokens: float, generated_tokens: float, forward_passes: int, latency_s: float,
        error: str | None = None, schema_fallback: bool | None = None,
    ) -> QuestionResult:
        return QuestionResult(
            strategy=self.name, dataset=group.dataset, group_id=group.id, question_id=q.id,
            question=q.text, answer=parsed.answer, raw=raw, gold=list(q.answers),
            format_ok=parsed.format_ok, finish_reason=finish_reason,
            prompt_tokens=prompt_tokens, generated_tokens=generated_tokens,
            forward_passes=forward_passes, latency_s=latency_s,
            answer_type=q.answer_type, options=q.options, error=error, schema_fallback=schema_fallback,
        )

    def failed(self, group: QuestionGroup, error: str) -> GroupRun:
        """The run of a group this strategy failed on: every question recorded with
        ``finish_reason: error`` and the message, an empty answer, and no cost."""
        results = [self.result(group, q, "", Parsed("", False), "error", prompt_tokens=0,
                               generated_tokens=0, forward_passes=0, latency_s=0.0, error=error)
                   for q in group.questions]
        return GroupRun(results, Cost())

    def single_answers(
        self, group: QuestionGroup, questions: list[Question], replies: list[str],
        res: GenerationResult, latency_s: float,
    ) -> list[QuestionResult]:
        """Results of streams that each answered one question (``ONE_ANSWER`` replies):
        ``questions[k]`` was answered by ``replies[k]``, stream ``k`` of ``res``."""
        return [
            self.result(group, q, reply, parse_answer(reply), s.finish_reason,
                        prompt_tokens=s.prompt_tokens, generated_tokens=s.generated_tokens,
                        forward_passes=res.forward_passes, latency_s=latency_s, error=s.error,
                        schema_fallback=s.schema_fallback or None)
            for q, s, reply in zip(questions, res.streams, replies)
        ]


_REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator adding a strategy to the registry under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"strategy {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def strategy_names() -> list[str]:
    return sorted(_REGISTRY)


def strategy_options(name: str) -> list[str]:
    """The options (constructor parameters) of the strategy registered as ``name``."""
    params = inspect.signature(_REGISTRY[name].__init__).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.name != "self" and p.kind in kinds]


def get_strategy(name: str, options: dict[str, Any] | None = None) -> Strategy:
    """A new instance of the strategy registered as ``name``, built with ``options``."""
    if name not in _REGISTRY:
        raise UnknownStrategyError(
            f"unknown strategy {name!r}; registered strategies: {', '.join(strategy_names())}"
        )
    unknown = sorted(set(options or {}) - set(strategy_options(name)))
    if unknown:
        raise OptionError(
            f"strategy {name!r} has no option {', '.join(map(repr, unknown))}; accepted: "
            f"{', '.join(strategy_options(name)) or 'none'}"
        )
    return _REGISTRY[name](**(options or {}))


class Timer:
    """Wall time since construction, for latencies measured inside a strategy."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start
