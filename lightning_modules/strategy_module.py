"""`StrategyModule`: run the configured comparison strategies in ``predict``.

Thin wiring: the model is loaded in :meth:`configure_model` (so ``--help``, config checks
and ``run=False`` instantiation never load weights), each predict batch of groups goes
through every strategy in turn (A B C on one group, then the next group, so drift on a
shared machine hits all strategies alike), and per-strategy figures are accumulated in
torchmetrics metrics that sync across ranks.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import SumMetric

from paralleldecode.data.records import QuestionGroup
from paralleldecode.decoding import DecodingEngine, GenerationConfig
from paralleldecode.metrics import F1, ExactMatch, FormatRate, Lenient
from paralleldecode.models.loading import DEFAULT_MODEL, load_causal_lm
from paralleldecode.prompts import PromptRenderer
from paralleldecode.strategies import GroupRun, RunContext, get_strategy

from lightning_modules.writer import PredictionWriter

_COSTS = ("questions", "prompt_tokens", "generated_tokens", "forward_passes", "wall_seconds")


class StrategyFigures(nn.Module):
    """Per-strategy accumulators: answer quality (percent) and summed costs."""

    def __init__(self) -> None:
        super().__init__()
        self.quality = nn.ModuleDict(
            {"em": ExactMatch(), "f1": F1(), "lenient": Lenient(), "format_rate": FormatRate()}
        )
        self.costs = nn.ModuleDict({k: SumMetric() for k in _COSTS})

    def update(self, run: GroupRun) -> None:
        answers = [r.answer for r in run.results]
        golds = [r.gold for r in run.results]
        for key in ("em", "f1", "lenient"):
            self.quality[key].update(answers, golds)
        self.quality["format_rate"].update([r.format_ok for r in run.results])
        c = run.cost
        for key, value in zip(_COSTS, (len(run.results), c.prompt_tokens, c.generated_tokens,
                                       c.forward_passes, c.wall_seconds)):
            self.costs[key].update(torch.tensor(float(value), dtype=torch.float64))

    def compute(self) -> dict[str, float]:
        out = {k: float(m.compute()) for k, m in self.quality.items()}
        for k, m in self.costs.items():
            v = float(m.compute())
            out[k] = v if k == "wall_seconds" else int(round(v))
        return out

    def reset(self) -> None:
        for m in [*self.quality.values(), *self.costs.values()]:
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
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not strategies:
            raise ValueError("model.strategies is empty; name at least one strategy")
        if len(set(strategies)) != len(strategies):
            raise ValueError(f"model.strategies lists a strategy twice: {strategies}")
        # Fails here, before any weights load, on an unknown name.
        self.strategies = [get_strategy(name) for name in strategies]
        self.generation = GenerationConfig(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
            stop_strings=tuple(stop_strings or ()),
        )
        self.figures = nn.ModuleDict({name: StrategyFigures() for name in strategies})
        self.model = None
        self.tokenizer = None

    # -- model ----------------------------------------------------------------------------

    def configure_model(self) -> None:
        if self.model is not None:
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

    def context(self) -> RunContext:
        if self.model is None:
            self.configure_model()
        return RunContext(
            engine=DecodingEngine(self.model, self.tokenizer),
            renderer=PromptRenderer(self.tokenizer, self.hparams.use_chat_template),
            generation=self.generation,
            truncate_context=self.hparams.truncate_context,
        )

    # -- predict --------------------------------------------------------------------------

    def predict_step(self, batch: list[QuestionGroup], batch_idx: int) -> list[dict[str, Any]]:
        ctx = self.context()
        records: list[dict[str, Any]] = []
        for group in batch:
            for strategy in self.strategies:
                run = strategy.run(group, ctx)
                self.figures[strategy.name].update(run)
                records.extend(r.to_dict() for r in run.results)
        return records

    def on_predict_epoch_start(self) -> None:
        for f in self.figures.values():
            f.reset()

    def summary(self) -> dict[str, dict[str, float]]:
        """Per-strategy figures over everything predicted so far, synced across ranks
        (every rank must call it)."""
        return {name: fig.compute() for name, fig in self.figures.items()}

    def configure_callbacks(self):
        return [PredictionWriter(self.hparams.output_dir)]

