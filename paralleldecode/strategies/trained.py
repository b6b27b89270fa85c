"""Strategies that decode like ``batch`` with weights trained by ``CrossBatchModule``.

=====================  ==========================  ==========================================
strategy               checkpoint method           what decodes
=====================  ==========================  ==========================================
``finetuned``          ``baseline``                the base with its fine-tuned LM head
``collab_hidden``      ``crossbatch``              + the cross-batch module mixing the group
``lora_lmhead``        ``lora_lmhead``             LoRA adapters + head
``lora_crossbatch``    ``lora_crossbatch``         LoRA + head + cross-batch module
=====================  ==========================  ==========================================

Every question of a group is a stream of one batch (``batch``'s prompts); with a module, at
every step each stream's latest hidden state is mixed with those of the other questions of
its group (the engine's mixing hook) before the LM head.

Checkpoints: the ``checkpoint`` option names a file; without it the strategy looks for
``{checkpoint_dir}/{dataset}/{model}_{method}.ckpt`` (``dataset`` defaults to the group's
data set, ``model`` to the model being run), where ``paralleldecode fit`` writes it. When
none is found the strategy is skipped and the summary says where it looked. The trained
weights go onto a copy of the run's model, so the other strategies keep the base.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from pathlib import Path
from typing import ClassVar

from paralleldecode.data.records import QuestionGroup
from paralleldecode.decoding import DecodingEngine
from paralleldecode.models.crossbatch_lm import load_crossbatch_checkpoint, read_crossbatch_checkpoint
from paralleldecode.models.training import trained_checkpoint_path
from paralleldecode.strategies.base import GroupRun, RunContext, StrategyUnavailable, register
from paralleldecode.strategies.baselines import Batch


class TrainedBatch(Batch):
    """``batch`` decoded with a trained checkpoint of ``method``.

    Args:
        checkpoint: the checkpoint file; None discovers it (see the module docstring).
        checkpoint_dir: root of discovered checkpoints.
        dataset: data-set part of the discovered path; None uses each group's data set.
    """

    method: ClassVar[str]
    needs_local_model = True
    needs_checkpoint = True

    def __init__(self, checkpoint: str | None = None, checkpoint_dir: str = "checkpoints",
                 dataset: str | None = None) -> None:
        self.checkpoint = checkpoint
        self.checkpoint_dir = checkpoint_dir
        self.dataset = dataset
        self._engines: dict[tuple[int, Path], DecodingEngine] = {}
        self._lock = threading.Lock()  # packed groups ask for the engine from several threads
        if checkpoint is not None and Path(checkpoint).is_file():
            # A file that is there but wrong fails the config, not every group (a missing
            # one skips the strategy, saying where it looked).
            read_crossbatch_checkpoint(checkpoint, expected_method=self.method)

    def locate(self, group: QuestionGroup, ctx: RunContext) -> Path:
        """The checkpoint file for ``group``.

        Raises:
            StrategyUnavailable: no such file (the message names the path looked at).
        """
        if self.checkpoint is not None:
            path = Path(self.checkpoint)
            if not path.is_file():
                raise StrategyUnavailable(f"checkpoint {path} does not exist")
            return path
        if not ctx.model_name:
            raise StrategyUnavailable("no checkpoint given and no model name to discover one by")
        path = trained_checkpoint_path(self.checkpoint_dir, self.dataset or group.dataset,
                                       ctx.model_name, self.method)
        if not path.is_file():
            raise StrategyUnavailable(
                f"no {self.method!r} checkpoint at {path}; train one with paralleldecode fit "
                f"(CrossBatchModule, method: {self.method}) or set the strategy's checkpoint option"
            )
        return path

    def engine(self, group: QuestionGroup, ctx: RunContext) -> DecodingEngine:
        """An engine over a copy of the run's model with the trained weights (built once
        per model and checkpoint)."""
        path = self.locate(group, ctx)
        key = (id(ctx.engine.model), path.resolve())
        with self._lock:
            if key not in self._engines:
                net, _ = load_crossbatch_checkpoint(path, copy.deepcopy(ctx.engine.model),
                                                    expected_method=self.method)
                self._engines[key] = DecodingEngine(net.lm, ctx.engine.tokenizer, mixer=net.mixer,
                                                    mix_layer=net.mix_layer,
                                                    prefill_chunk=ctx.engine.prefill_chunk,
                                                    plain_chunk=ctx.engine.plain_chunk)
        return self._engines[key]

    def run(self, group: QuestionGroup, ctx: RunContext) -> GroupRun:
        return super().run(group, dataclasses.replace(ctx, engine=self.engine(group, ctx)))


@register
class Finetuned(TrainedBatch):
    name = "finetuned"
    method = "baseline"


@register
class CollabHidden(TrainedBatch):
    name = "collab_hidden"
    method = "crossbatch"
    needs_hidden_states = True


@register
class LoraLMHead(TrainedBatch):
    name = "lora_lmhead"
    method = "lora_lmhead"


@register
class LoraCrossBatch(TrainedBatch):
    name = "lora_crossbatch"
    method = "lora_crossbatch"
    needs_hidden_states = True
