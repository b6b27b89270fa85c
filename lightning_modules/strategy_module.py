"""`StrategyModule`: run the configured comparison strategies in ``predict``.

Thin wiring: the model is loaded in :meth:`configure_model` (so ``--help``, config checks
and ``run=False`` instantiation never load weights), each predict batch of groups goes
through every strategy in turn (A B C on one group, then the next group, so drift on a
shared machine hits all strategies alike), and per-strategy figures are accumulated in
torchmetrics metrics that sync across ranks.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.text import BLEUScore

from paralleldecode.data.records import QuestionGroup
from paralleldecode.backends.judge import CRITERIA, LLMJudge
from paralleldecode.backends.openai_api import OpenAIClient
from paralleldecode.backends.remote import RemoteContext
from paralleldecode.backends.vllm_client import VLLMClient
from paralleldecode.decoding import DecodingEngine, GenerationConfig
from paralleldecode.metrics import METRICS_BY_TYPE, FormatRate, MeanScore, spaced
from paralleldecode.models.loading import DEFAULT_MODEL, load_causal_lm
from paralleldecode.prompts import PromptRenderer
from paralleldecode.strategies import GroupRun, RunContext, StrategyUnavailable, get_strategy

from lightning_modules.writer import PredictionWriter

# Every per-answer score is averaged, except BLEU-4: that one is pooled over the corpus.
_MEAN_SCORES = tuple(k for keys in METRICS_BY_TYPE.values() for k in keys if k != "bleu4")
_COSTS = ("questions", "prompt_tokens", "generated_tokens", "forward_passes", "wall_seconds")


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
        for key, value in zip(_COSTS, (len(run.results), c.prompt_tokens, c.generated_tokens,
                                       c.forward_passes, c.wall_seconds)):
            self.costs[key].update(torch.tensor(float(value), dtype=torch.float64))

    def compute(self) -> dict[str, float]:
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
            out[k] = v if k == "wall_seconds" else int(round(v))
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
            ``OpenAIClient`` (any OpenAI-compatible HTTP API) or a ``VLLMClient``. Strategies
            needing a local model, hidden states or a checkpoint are refused.
        judge: an ``LLMJudge`` that scores long answers (1-5 on fluency, relevance,
            completeness, domain proficiency); its averages join the summary.
        strategy_options: per strategy name, its options, e.g.
            ``{collab_llm: {max_dependencies: 2, cost_weight: 0.001, html_dir: runs/html}}``;
            unknown names or options are refused with the accepted ones.
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
        dtype: str = "auto",
        attn_implementation: str | None = None,
        use_chat_template: str = "auto",
        truncate_context: bool = False,
        output_dir: str | None = None,
        backend: OpenAIClient | VLLMClient | None = None,
        judge: LLMJudge | None = None,
        strategy_options: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        # Clients are objects, not hyperparameters; LightningCLI's config.yaml records them.
        self.save_hyperparameters(ignore=["backend", "judge"])
        if not strategies:
            raise ValueError("model.strategies is empty; name at least one strategy")
        if len(set(strategies)) != len(strategies):
            raise ValueError(f"model.strategies lists a strategy twice: {strategies}")
        # Fails here, before any weights load, on an unknown name.
        options = strategy_options or {}
        stray = sorted(set(options) - set(strategies))
        if stray:
            raise ValueError(f"model.strategy_options names {stray}, which are not in model.strategies {strategies}")
        self.strategies = [get_strategy(name, options.get(name)) for name in strategies]
        self.backend = backend
        self.judge = judge
        if backend is not None:
            for strategy in self.strategies:
                if strategy.requirements():
                    raise ValueError(
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
        # Strategies that cannot run here (e.g. no trained checkpoint): name -> reason.
        self.skipped: dict[str, str] = {}

    # -- model ----------------------------------------------------------------------------

    def configure_model(self) -> None:
        if self.model is not None or self.backend is not None:
            return
        device = self.trainer.strategy.root_device if self._trainer is not None else None
        self.model, self.tokenizer = load_causal_lm(
            self.hparams.model_name, dtype=self._weights_dtype(), device=device,
            attn_implementation=self.hparams.attn_implementation,
        )
        self.model.requires_grad_(False)

    def _weights_dtype(self) -> str | torch.dtype:
        precision = str(self.trainer.precision) if self._trainer is not None else ""
        if self.hparams.dtype == "auto" and precision.startswith("bf16"):
            return torch.bfloat16
        if self.hparams.dtype == "auto" and precision.startswith("16"):
            return torch.float16
        return self.hparams.dtype

    def context(self) -> RunContext | RemoteContext:
        if self.backend is not None:
            return RemoteContext(self.backend, self.generation, name=type(self.backend).__name__)
        if self.model is None:
            self.configure_model()
        return RunContext(
            engine=DecodingEngine(self.model, self.tokenizer),
            renderer=PromptRenderer(self.tokenizer, self.hparams.use_chat_template),
            generation=self.generation,
            truncate_context=self.hparams.truncate_context,
            model_name=self.hparams.model_name,
        )

    # -- predict --------------------------------------------------------------------------

    def predict_step(self, batch: list[QuestionGroup], batch_idx: int) -> list[dict[str, Any]]:
        ctx = self.context()
        records: list[dict[str, Any]] = []
        for group in batch:
            for strategy in self.strategies:
                if strategy.name in self.skipped:
                    continue
                try:
                    run = strategy.run(group, ctx)
                except StrategyUnavailable as err:
                    self.skipped[strategy.name] = str(err)
                    print(f"skipping strategy {strategy.name!r}: {err}", flush=True)
                    continue
                if self.judge is not None:
                    self._judge(run)
                self.figures[strategy.name].update(run)
                records.extend(r.to_dict() for r in run.results)
        return records

    def _judge(self, run: GroupRun) -> None:
        """Score the run's long answers with the judge (cached, so reruns do not pay)."""
        todo = [r for r in run.results if r.answer_type == "long" and r.gold and not r.error]
        scores = self.judge.score_many([(r.question, r.gold[0], r.answer) for r in todo])
        for r, sc in zip(todo, scores):
            r.judge_error = sc.error
            for key in CRITERIA:
                setattr(r, f"judge_{key}", getattr(sc, key))

    def on_predict_epoch_start(self) -> None:
        self.skipped.clear()
        for f in self.figures.values():
            f.reset()

    def summary(self) -> dict[str, dict[str, float]]:
        """Per-strategy figures over everything predicted so far, synced across ranks
        (every rank must call it); a skipped strategy has only ``skipped``: the reason."""
        figures = {}
        for name, fig in self.figures.items():
            # compute() is collective, so skipped strategies compute too (with no updates).
            with warnings.catch_warnings():
                if name in self.skipped:
                    warnings.filterwarnings("ignore", message=".*compute.*before the ``update``")
                figures[name] = fig.compute()
        return {name: ({"skipped": self.skipped[name]} if name in self.skipped else fig)
                for name, fig in figures.items()}

    def configure_callbacks(self):
        return [PredictionWriter(self.hparams.output_dir)]

