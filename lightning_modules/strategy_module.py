"""`StrategyModule`: run the configured comparison strategies in ``predict``.

Thin wiring: the model is loaded in :meth:`configure_model` (so ``--help``, config checks
and ``run=False`` instantiation never load weights), each predict batch of groups goes
through every strategy in turn (A B C on one group, then the next group, so drift on a
shared machine hits all strategies alike; with ``pack_groups`` each strategy takes the whole
batch at once), and per-strategy figures are accumulated in torchmetrics metrics that sync
across ranks.

Each strategy on each group is a *unit*: when it finishes it is counted and handed to the
prediction writer, which puts it on disk at once (:mod:`paralleldecode.run_folder`). A unit
that fails is recorded as failed questions and the run goes on; a unit a resumed run
already holds is restored instead of computed; SIGTERM stops the run between units.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.text import BLEUScore

from lightning_modules.writer import PredictionWriter
from paralleldecode.backends.judge import CRITERIA, LLMJudge
from paralleldecode.backends.openai_api import OpenAIClient, one_line
from paralleldecode.backends.remote import RemoteContext
from paralleldecode.cli import SIGTERM_STATUS
from paralleldecode.config_check import check_literals, check_strategy_choice
from paralleldecode.data.records import QuestionGroup
from paralleldecode.decoding import DecodingEngine, GenerationConfig
from paralleldecode.decoding.constraints import Grammars
from paralleldecode.errors import OptionError
from paralleldecode.metrics import METRICS_BY_TYPE, FormatRate, MeanScore, spaced
from paralleldecode.models.loading import DEFAULT_MODEL, load_causal_lm
from paralleldecode.prompts import PromptRenderer
from paralleldecode.run_folder import refuse_overwrite, run_of, unit_of
from paralleldecode.strategies import GroupRun, RunContext, StrategyUnavailable, get_strategy
from paralleldecode.strategies.base import Timer, strategy_names
from paralleldecode.strategies.base import strategy_options as strategy_option_names
from paralleldecode.strategies.packing import Packer

# Every per-answer score is averaged, except BLEU-4: that one is pooled over the corpus.
_MEAN_SCORES = tuple(k for keys in METRICS_BY_TYPE.values() for k in keys if k != "bleu4")
_COSTS = ("questions", "prompt_tokens", "generated_tokens", "forward_passes", "wall_seconds",
          "failed_questions", "constraint_seconds", "schema_fallbacks")
_SECONDS = ("wall_seconds", "constraint_seconds")


class StrategyFigures(nn.Module):
    """Per-strategy accumulators, synced across ranks: answer quality in percent (each
    metric over the questions it applies to) and summed costs."""

    def __init__(self, extra_figures: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.quality = nn.ModuleDict({k: MeanScore() for k in _MEAN_SCORES})
        # Strategy-specific figures (layers, edges, ...), summed over groups.
        self.extras = nn.ModuleDict({k: SumMetric() for k in extra_figures})
        self.quality["format_rate"] = FormatRate()
        # Corpus BLEU pools n-gram counts over all long answers (torchmetrics' states sum
        # across ranks); a mean of sentence BLEU would be dominated by zeros.
        self.bleu = BLEUScore(n_gram=4)
        self.long_answers = SumMetric()
        self.judged = nn.ModuleDict({k: MeanMetric(nan_strategy="ignore") for k in CRITERIA})
        self.judge_failures = SumMetric()
        self.costs = nn.ModuleDict({k: SumMetric() for k in _COSTS})

    def update(self, run: GroupRun) -> None:
        for key in _MEAN_SCORES:
            self.quality[key].update([v for r in run.results if (v := getattr(r, key)) is not None])
        self.quality["format_rate"].update([r.format_ok for r in run.results])
        long = [r for r in run.results if r.answer_type == "long" and r.gold]
        if long:
            self.bleu.update([spaced(r.answer) for r in long], [[spaced(g) for g in r.gold] for r in long])
        self.long_answers.update(torch.tensor(float(len(long)), dtype=torch.float64))
        for key in CRITERIA:
            vals = [v for r in run.results if (v := getattr(r, f"judge_{key}")) is not None]
            if vals:
                self.judged[key].update(torch.tensor(vals, dtype=torch.float64))
        for key, m in self.extras.items():
            m.update(torch.tensor(float(run.extras.get(key, 0.0)), dtype=torch.float64))
        failures = sum(1 for r in run.results if r.judge_error)
        self.judge_failures.update(torch.tensor(float(failures), dtype=torch.float64))
        c = run.cost
        failed = sum(1 for r in run.results if r.finish_reason == "error")
        for key, value in zip(_COSTS, (len(run.results), c.prompt_tokens, c.generated_tokens,
                                       c.forward_passes, c.wall_seconds, failed, c.constraint_seconds,
                                       c.schema_fallbacks)):
            self.costs[key].update(torch.tensor(float(value), dtype=torch.float64))

    def compute(self) -> dict[str, float]:
        # A figure nothing updated on this rank (BLEU of a short-answer set, judge scores
        # without a judge, a strategy that was skipped) computes to its empty value:
        # expected here, so torchmetrics' warning about it is not shown.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*compute.*before the ``update``")
            return self._compute()

    def _compute(self) -> dict[str, float]:
        out = {k: float(m.compute()) for k, m in self.quality.items()}
        # Every rank computes both (compute is collective); BLEU of no answers is undefined.
        has_long = float(self.long_answers.compute()) > 0
        bleu = 100.0 * float(self.bleu.compute())
        out["bleu4"] = bleu if has_long else float("nan")
        for key, m in self.judged.items():
            out[f"judge_{key}"] = float(m.compute())
        out["judge_failures"] = int(round(float(self.judge_failures.compute())))
        for key, m in self.extras.items():
            v = float(m.compute())
            out[key] = v if key.endswith("_s") else int(round(v))
        for k, m in self.costs.items():
            v = float(m.compute())
            out[k] = v if k in _SECONDS else int(round(v))
        seconds = out["wall_seconds"]
        out["questions_per_second"] = out["questions"] / seconds if seconds > 0 else float("nan")
        return out

    def reset(self) -> None:
        for m in [*self.quality.values(), *self.costs.values(), *self.judged.values(), *self.extras.values(),
                  self.bleu, self.long_answers, self.judge_failures]:
            m.reset()


class StrategyModule(L.LightningModule):
    """Compare answering strategies on groups of questions with one causal LM.

    Args:
        model_name: Hugging Face id, local folder, ``.gguf`` file, or
            ``smollm2-135m-instruct`` (the embedded default).
        strategies: registered strategy names, run in this order on every group.
        max_new_tokens: per answer (``all_in_one`` gets this much per question).
        temperature: 0 for greedy decoding.
        top_p: nucleus sampling threshold (with ``temperature > 0``).
        seed: sampling seed.
        stop_strings: extra strings that end an answer.
        dtype: ``auto`` (bf16 on an accelerator that supports it, else fp32, unless the
            Trainer's precision says bf16/16), or ``float32``/``bfloat16``/``float16``.
        attn_implementation: ``sdpa`` or ``eager``; None keeps the model's default.
        use_chat_template: ``auto``, ``always`` or ``never``.
        truncate_context: cut a too-long background to fit the context window instead of
            failing with an error naming the group.
        output_dir: where predictions/summary/plot go; None = the run's log directory.
        backend: run the text-only strategies elsewhere instead of on ``model_name``: an
            ``OpenAIClient`` (any OpenAI-compatible HTTP API) or a ``VLLMServerClient`` (a vLLM
            server it starts from ``.venv-vllm`` for the run). Strategies
            needing a local model, hidden states or a checkpoint are refused.
        judge: an ``LLMJudge`` that scores long answers (1-5 on fluency, relevance,
            completeness, domain proficiency); its averages join the summary.
        strategy_options: per strategy name, its options, e.g.
            ``{collab_llm: {max_dependencies: 2, cost_weight: 0.001, html_dir: runs/html}}``;
            unknown names or options are refused with the accepted ones.
        pack_groups: decode the groups of a predict batch (``data.batch_size``) together:
            every engine call of a strategy serves all of them (see
            :mod:`paralleldecode.strategies.packing`); answers are those of an unpacked run.
            A no-op with batch size 1 and on API back-ends.
        prefill_chunk: most prompt tokens per row in one prefill forward pass.
        plain_chunk: most tokens of the one prefill pass that needs no mask (a single row's
            plain causal start over an empty cache: a shared context, a lone prompt), which
            torch's causal kernel computes without keeping attention scores.
        share_past: rows that start from one long prefix (``batch_cached`` over a context
            of 512 tokens or more) read its KV in place, held once, on an sdpa model on the
            CPU (:class:`~paralleldecode.decoding.cache.SharedPastLayer`); False gives every
            row a copy. Answers do not change.
        compile: ``auto``, ``on`` or ``off``: decode with compiled steps
            (:mod:`paralleldecode.decoding.compiled`; ``auto`` compiles a model of 50M
            parameters or more on a CPU; where steps compile, the prefill's linears run on
            packed oneDNN weights, :mod:`paralleldecode.decoding.packed`, and its masked
            attention as blocked oneDNN matmuls, :mod:`paralleldecode.decoding.attention`).
            The graphs compile before the first group; the seconds that took are
            ``compile_seconds`` in every strategy's summary, never part of a group's time.
            Answers do not change.
        resume: continue the run whose outputs ``output_dir`` holds: every strategy and
            group already answered there is kept as it was, only the rest is computed.
        on_error: ``record`` (a strategy failing on one group records that group's
            questions with ``finish_reason: error`` and the message, and the run goes on) or
            ``raise`` (stop at the first failure, for debugging).
        structured_output: constrain every reply to its JSON schema (xgrammar on the local
            engine: one answer, the group's numbered answers, an option letter, dependency
            edges); on an API back-end, send the schema as ``response_format`` (a server
            that refuses it gets the request again without, counted as
            ``schema_fallbacks``). False decodes unconstrained.
    """

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        strategies: list[str] = ["all_in_one", "sequential", "batch"],  # noqa: B006 - CLI default
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        stop_strings: list[str] | None = None,
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
        attn_implementation: Literal["sdpa", "eager"] | None = None,
        use_chat_template: Literal["auto", "always", "never"] = "auto",
        truncate_context: bool = False,
        output_dir: str | None = None,
        backend: OpenAIClient | None = None,
        judge: LLMJudge | None = None,
        strategy_options: dict[str, dict[str, Any]] | None = None,
        pack_groups: bool = False,
        prefill_chunk: int = 512,
        plain_chunk: int = 8192,
        share_past: bool = True,
        compile: Literal["auto", "on", "off"] = "auto",
        resume: bool = False,
        on_error: Literal["record", "raise"] = "record",
        structured_output: bool = True,
    ) -> None:
        super().__init__()
        # Clients are objects, not hyperparameters; LightningCLI's config.yaml records them.
        self.save_hyperparameters(ignore=["backend", "judge"])
        check_literals(StrategyModule.__init__, locals())
        check_strategy_choice(strategies, strategy_options,
                              {name: tuple(strategy_option_names(name)) for name in strategy_names()}, "model")
        for name, value in (("prefill_chunk", prefill_chunk), ("plain_chunk", plain_chunk)):
            if value < 1:
                raise OptionError(f"model.{name} must be >= 1, got {value}")
        # Fails here, before any weights load, on an unknown name or a folder in the way.
        refuse_overwrite(output_dir, resume)
        options = strategy_options or {}
        self.strategies = [get_strategy(name, options.get(name)) for name in strategies]
        self.backend = backend
        self.judge = judge
        if backend is not None:
            for strategy in self.strategies:
                if strategy.requirements():
                    raise OptionError(
                        f"strategy {strategy.name!r} needs {' and '.join(strategy.requirements())}; it "
                        f"cannot run on the {type(backend).__name__} back-end. Remove it from "
                        "model.strategies or run it on a local model (model.model_name)"
                    )
        self.generation = GenerationConfig(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
            stop_strings=tuple(stop_strings or ()),
        )
        self.figures = nn.ModuleDict({s.name: StrategyFigures(s.extra_figures) for s in self.strategies})
        self.model = None
        self.tokenizer = None
        self.grammars = None
        # Strategies that cannot run here (e.g. no trained checkpoint): name -> reason.
        self.skipped: dict[str, str] = {}
        # The prediction writer: where finished units go and restored ones come from.
        self.sink = None
        # Seconds the decoding steps took to compile (before the first group).
        self.compile_seconds = 0.0

    # -- model ----------------------------------------------------------------------------

    def configure_model(self) -> None:
        if self.backend is not None:
            # A back-end with a server of its own (VLLMServerClient) starts it now, so that no
            # group's latency pays for the start-up.
            start = getattr(self.backend, "start", None)
            if callable(start):
                start()
            return
        if self.model is not None:
            return
        device = self.trainer.strategy.root_device if self._trainer is not None else None
        self.model, self.tokenizer = load_causal_lm(
            self.hparams.model_name, dtype=self._weights_dtype(), device=device,
            attn_implementation=self.hparams.attn_implementation,
        )
        self.model.requires_grad_(False)
        if self.hparams.structured_output:
            # Here, before the first group: a tokenizer xgrammar cannot read fails the run now.
            engine = self._engine()
            self.grammars = Grammars(self.tokenizer, self.model.get_output_embeddings().weight.shape[0],
                                     sorted(engine.eos_ids(self.generation)), self.hparams.model_name)

    def _weights_dtype(self) -> str | torch.dtype:
        precision = str(self.trainer.precision) if self._trainer is not None else ""
        if self.hparams.dtype == "auto" and precision.startswith("bf16"):
            return torch.bfloat16
        if self.hparams.dtype == "auto" and precision.startswith("16"):
            return torch.float16
        return self.hparams.dtype

    def context(self) -> RunContext | RemoteContext:
        if self.backend is not None:
            return RemoteContext(self.backend, self.generation, name=type(self.backend).__name__,
                                 structured=self.hparams.structured_output)
        if self.model is None:
            self.configure_model()
        return RunContext(
            engine=self._engine(),
            renderer=PromptRenderer(self.tokenizer, self.hparams.use_chat_template),
            generation=self.generation,
            truncate_context=self.hparams.truncate_context,
            model_name=self.hparams.model_name,
            grammars=self.grammars,
        )

    def _engine(self) -> DecodingEngine:
        """An engine over the loaded model (engines over one model share compiled steps)."""
        return DecodingEngine(self.model, self.tokenizer, prefill_chunk=self.hparams.prefill_chunk,
                              plain_chunk=self.hparams.plain_chunk, compile=self.hparams.compile,
                              share_past=self.hparams.share_past)

    def answer_settings(self) -> dict[str, Any]:
        """The options that decide the answers (a resumed run must use the same): all but
        the strategy list (a resumed run may add strategies) and how the work is run."""
        how = {"strategies", "output_dir", "resume", "on_error", "pack_groups", "prefill_chunk", "plain_chunk",
               "share_past", "compile"}
        settings = {k: v for k, v in self.hparams.items() if k not in how}
        settings["backend"] = repr(self.backend) if self.backend is not None else None
        return settings

    # -- predict --------------------------------------------------------------------------

    def predict_step(self, batch: list[QuestionGroup], batch_idx: int) -> list[dict[str, Any]]:
        ctx = self.context()
        index = self.sink.group_indices(batch, batch_idx) if self.sink is not None else \
            [batch_idx * len(batch) + i for i in range(len(batch))]
        units: list[dict[str, Any]] = []
        packed = self.hparams.pack_groups and len(batch) > 1 and isinstance(ctx, RunContext)
        if packed:
            for strategy in self.strategies:
                units += self._run_packed(strategy, batch, index, ctx)
        else:
            # A B C on one group, then the next: drift on a shared machine hits all alike.
            for group, gi in zip(batch, index):
                for strategy in self.strategies:
                    restored = self._restore(strategy, group, gi)
                    if restored is not None:
                        units.append(restored)
                        continue
                    self._check_stop()
                    unit = self._finish(strategy, group, gi, self._attempt(strategy, group, ctx))
                    if unit is not None:
                        units.append(unit)
        return [rec for unit in units for rec in unit["records"]]

    def _run_packed(self, strategy, batch, index, ctx: RunContext) -> list[dict[str, Any]]:
        """One strategy on all groups of the batch, their engine calls stacked."""
        units, todo = [], []
        for group, gi in zip(batch, index):
            restored = self._restore(strategy, group, gi)
            if restored is not None:
                units.append(restored)
            else:
                todo.append((group, gi))
        if not todo or strategy.name in self.skipped:
            return units
        self._check_stop()
        packer = Packer()
        packed_ctx = dataclasses.replace(ctx, packer=packer)
        clock = Timer()
        outcomes = packer.run([lambda g=g: self._attempt(strategy, g, packed_ctx) for g, _ in todo],
                              between=self._check_stop)
        wall = clock()
        for (group, gi), outcome in zip(todo, outcomes):
            if isinstance(outcome, GroupRun):
                # The groups ran side by side: each gets its share of the batch's time.
                outcome.cost.wall_seconds = wall / len(todo)
            unit = self._finish(strategy, group, gi, outcome)
            if unit is not None:
                units.append(unit)
        return units

    def _attempt(self, strategy, group: QuestionGroup, ctx) -> GroupRun | Exception:
        """The strategy's run on the group, or the exception it raised (``on_error: raise``
        lets it through)."""
        if strategy.name in self.skipped:
            return StrategyUnavailable(self.skipped[strategy.name])
        try:
            return strategy.run(group, ctx)
        except StrategyUnavailable as err:
            return err
        except Exception as err:  # noqa: BLE001 - recorded per group (on_error: record)
            if self.hparams.on_error == "raise":
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # after an out-of-memory error, give the memory back
            return err

    def _finish(self, strategy, group: QuestionGroup, gi: int, outcome) -> dict[str, Any] | None:
        """Count a finished unit (or a failed one) and hand it to the writer."""
        if isinstance(outcome, StrategyUnavailable):
            if strategy.name not in self.skipped:
                self.skipped[strategy.name] = str(outcome)
                print(f"skipping strategy {strategy.name!r}: {outcome}", flush=True)
            return None
        if isinstance(outcome, BaseException):
            msg = f"{type(outcome).__name__}: {one_line(str(outcome))}"
            print(f"strategy {strategy.name!r} failed on group {group.id!r}: {msg}", flush=True)
            outcome = strategy.failed(group, msg)
        elif self.judge is not None:
            self._judge(outcome)
        self.figures[strategy.name].update(outcome)
        unit = unit_of(strategy.name, group, gi, outcome)
        if self.sink is not None:
            self.sink.write(unit)
        return unit

    def _restore(self, strategy, group: QuestionGroup, gi: int) -> dict[str, Any] | None:
        """The unit a resumed run already holds for this strategy and group, counted again
        as if computed now (its measured figures kept), or None."""
        unit = self.sink.restored(strategy.name, group) if self.sink is not None else None
        if unit is None:
            return None
        unit = {**unit, "group_index": gi,
                "records": [{**rec, "group_index": gi} for rec in unit["records"]]}
        self.figures[strategy.name].update(run_of(unit))
        self.sink.write(unit)
        return unit

    def _check_stop(self) -> None:
        """Stop between units when the process was asked to (SIGTERM): every finished unit
        is on disk already, and ``resume: true`` continues after them."""
        if self._trainer is not None and self.trainer.received_sigterm:
            raise SIGTERMException(SIGTERM_STATUS)

    def _judge(self, run: GroupRun) -> None:
        """Score the run's long answers with the judge (cached, so reruns do not pay)."""
        todo = [r for r in run.results if r.answer_type == "long" and r.gold and not r.error]
        scores = self.judge.score_many([(r.question, r.gold[0], r.answer) for r in todo])
        for r, sc in zip(todo, scores):
            r.judge_error = sc.error
            for key in CRITERIA:
                setattr(r, f"judge_{key}", getattr(sc, key))

    def on_predict_start(self) -> None:
        """Compile the decoding steps before the first group, so that no group's time pays
        for it. Not in :meth:`configure_model`: Lightning runs that under its tensor-init
        context, whose torch function mode the compiled graphs would be guarded on, so the
        first steps of the predict loop would compile them again."""
        if self.model is None or self.compile_seconds:
            return
        engine = self._engine()
        if engine.steps is not None:
            self.compile_seconds = engine.warm_up(packed=bool(self.hparams.pack_groups))
            how = "eagerly: compiling failed" if engine.steps.fallback else f"compiled in {self.compile_seconds:.1f} s"
            print(f"paralleldecode: decoding steps {how} ({engine.compile_note})", file=sys.stderr, flush=True)

    def on_predict_epoch_start(self) -> None:
        self.skipped.clear()
        for f in self.figures.values():
            f.reset()

    def summary(self) -> dict[str, dict[str, float]]:
        """Per-strategy figures over everything predicted so far, synced across ranks
        (every rank must call it); a skipped strategy has only ``skipped``: the reason."""
        # compute() is collective, so skipped strategies compute too (with no updates).
        figures = {name: {**fig.compute(), "structured_output": bool(self.hparams.structured_output),
                          "compile_seconds": round(self.compile_seconds, 3)}
                   for name, fig in self.figures.items()}
        return {name: ({"skipped": self.skipped[name]} if name in self.skipped else fig)
                for name, fig in figures.items()}

    def configure_callbacks(self):
        return [PredictionWriter(self.hparams.output_dir, resume=self.hparams.resume)]


