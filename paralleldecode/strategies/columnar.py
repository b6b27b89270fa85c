"""``columnar``: the group's questions as branches of one columnar sequence.

The prompts are ``batch``'s (one ``one_question`` prompt per question, primed with
``{"answer": "``); their common prefix (instructions and context) is the background, each
question the start of a branch. Decoding is column-synchronous: each step appends one token
to every live branch in one forward pass, under 2D ``(column, branch)`` positions and the
column mask of :mod:`paralleldecode.decoding.columnar`, as the model was trained
(``ColumnarModule``).

It is ``batch``'s plan with the ``columnar`` layout. The trained weights (a
``ColumnarModule`` checkpoint, given or discovered, and/or a peft LoRA adapter folder) are
loaded once per strategy instance onto a deep copy of the shared model, which other
strategies keep using untouched; LoRA adapters are merged into the copy's weights, so
decoding costs what the base model costs. Without trained weights the strategy runs the
base model with the 2D RoPE installed, says so in a warning, and counts the group in the
summary figure ``untrained_groups``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
from pathlib import Path

from torch import nn

from paralleldecode.data.records import QuestionGroup
from paralleldecode.decoding import DecodingEngine
from paralleldecode.errors import MissingFileError, OptionError
from paralleldecode.models.columnar import columnar_hparams, load_columnar_checkpoint
from paralleldecode.models.rope2d import install_rope2d, pair_indices_of
from paralleldecode.models.training import read_checkpoint, trained_checkpoint_path
from paralleldecode.strategies.base import GroupRun, RunContext, register
from paralleldecode.strategies.baselines import Batch

log = logging.getLogger(__name__)


def load_lora_adapter(model: nn.Module, folder: str | Path, adapter_name: str = "columnar_adapter") -> nn.Module:
    """Add a peft LoRA adapter saved with ``save_pretrained`` to ``model`` (in place).

    Raises:
        FileNotFoundError: ``folder`` has no ``adapter_config.json``.
        ValueError: the adapter's weights do not fit ``model``.
    """
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise MissingFileError(f"adapter {folder} is not a peft adapter folder (no adapter_config.json); "
                                "give the folder written by save_pretrained")
    info = model.load_adapter(str(folder), adapter_name=adapter_name)
    unexpected = getattr(info, "unexpected_keys", None) or []
    if unexpected:
        raise ValueError(f"adapter {folder}: {len(unexpected)} tensors do not fit this model "
                         f"(e.g. {sorted(unexpected)[:3]}); was it trained on another base model?")
    return model


def merge_lora(model: nn.Module) -> int:
    """Merge every LoRA adapter of ``model`` into its base weights; returns how many layers."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and module.lora_A:
            module.merge(adapter_names=list(module.lora_A.keys()))
            merged += 1
    return merged


def build_columnar_model(model: nn.Module, checkpoint: str | Path | None = None,
                         adapter: str | Path | None = None,
                         pair_indices: list[int] | None = None) -> nn.Module:
    """Turn ``model`` (in place) into the model ``columnar`` decodes with.

    With a checkpoint: its structure and weights (:func:`load_columnar_checkpoint`); else
    :func:`install_rope2d` with ``pair_indices`` (default none). Then the adapter, if any;
    every LoRA adapter is merged into the base weights; eval mode.
    """
    if checkpoint is not None:
        load_columnar_checkpoint(checkpoint, model)
    else:
        install_rope2d(model, list(pair_indices or []))
    if adapter is not None:
        load_lora_adapter(model, adapter)
    merge_lora(model)
    return model.eval()


@register
class Columnar(Batch):
    """Questions as branches of one columnar sequence (see the module docstring).

    Args:
        checkpoint: a ``ColumnarModule`` checkpoint (``trainer.save_checkpoint(...,
            weights_only=True)``); its ``pair_indices`` and ``isolate`` are the defaults.
            None looks for ``{checkpoint_dir}/{dataset}/{model}_columnar_finetune.ckpt``
            (where ``paralleldecode fit --config configs/fit/columnar_finetune.yaml``
            writes it), unless an ``adapter`` is given.
        adapter: a peft LoRA adapter folder (``save_pretrained``), applied after the
            checkpoint when both are given.
        pair_indices: 1-based frequency pairs on the branch axis; without a checkpoint
            the default is none (= the stock RoPE); with one it must match the checkpoint's.
        isolate: branches see only the background and themselves; default: the
            checkpoint's setting, else False.
        checkpoint_dir: root of discovered checkpoints.
        dataset: data-set part of the discovered path; None uses the group's data set.
    """

    name = "columnar"
    needs_local_model = True
    extra_figures = ("untrained_groups",)
    checkpoint_method = "columnar_finetune"

    def __init__(self, checkpoint: str | None = None, adapter: str | None = None,
                 pair_indices: list[int] | None = None, isolate: bool | None = None,
                 checkpoint_dir: str = "checkpoints", dataset: str | None = None) -> None:
        self.checkpoint = checkpoint
        self.adapter = adapter
        self.pair_indices = None if pair_indices is None else list(pair_indices)
        self.isolate = isolate
        self.checkpoint_dir = checkpoint_dir
        self.dataset = dataset
        if checkpoint is not None:
            # Read now so a wrong path or a foreign checkpoint fails the config, not a group.
            self._check_checkpoint(checkpoint)
        if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
            raise MissingFileError(f"strategy 'columnar': adapter {adapter} is not a peft adapter "
                                    "folder (no adapter_config.json)")
        self._engines: dict[tuple[int, str | None], tuple[DecodingEngine, bool, bool]] = {}
        self._lock = threading.Lock()  # packed groups ask for the engine from several threads

    def _check_checkpoint(self, checkpoint: str | Path) -> bool:
        """The checkpoint's ``isolate``, after checking its ``pair_indices`` agree."""
        hp = columnar_hparams(read_checkpoint(checkpoint), checkpoint)
        if self.pair_indices is not None and sorted(self.pair_indices) != sorted(hp["pair_indices"]):
            raise OptionError(
                f"strategy 'columnar': pair_indices={self.pair_indices} differ from the "
                f"checkpoint's {hp['pair_indices']} ({checkpoint}); leave pair_indices unset"
            )
        return bool(hp["isolate"])

    def locate(self, group: QuestionGroup, ctx: RunContext) -> str | None:
        """The checkpoint to load for ``group``: the given one, a discovered one, or None."""
        if self.checkpoint is not None or self.adapter is not None or not ctx.model_name:
            return self.checkpoint
        path = trained_checkpoint_path(self.checkpoint_dir, self.dataset or group.dataset,
                                       ctx.model_name, self.checkpoint_method)
        return str(path) if path.is_file() else None

    def engine(self, group: QuestionGroup, ctx: RunContext) -> tuple[DecodingEngine, bool, bool]:
        """This strategy's engine over its own copy of ``ctx``'s model (built once per
        model and checkpoint), whether it is trained, and whether branches are isolated."""
        checkpoint = self.locate(group, ctx)
        key = (id(ctx.engine.model), checkpoint)
        with self._lock:
            return self._engine(key, checkpoint, ctx)

    def _engine(self, key, checkpoint, ctx) -> tuple[DecodingEngine, bool, bool]:
        if key not in self._engines:
            ctx.engine.require_branch_support()
            trained_isolate = self._check_checkpoint(checkpoint) if checkpoint else False
            model = build_columnar_model(copy.deepcopy(ctx.engine.model), checkpoint,
                                         self.adapter, self.pair_indices)
            trained = checkpoint is not None or self.adapter is not None
            if not trained:
                log.warning("strategy 'columnar' runs the base model with 2D RoPE (pair_indices=%s): "
                            "no checkpoint given or found under %s; expect base-model quality",
                            pair_indices_of(model), self.checkpoint_dir)
            isolate = trained_isolate if self.isolate is None else bool(self.isolate)
            self._engines[key] = (DecodingEngine(model, ctx.engine.tokenizer, prefill_chunk=ctx.engine.prefill_chunk,
                                                 plain_chunk=ctx.engine.plain_chunk),
                                  trained, isolate)
        return self._engines[key]

    def run(self, group: QuestionGroup, ctx: RunContext) -> GroupRun:
        engine, trained, isolate = self.engine(group, ctx)
        self.layout = "columnar_isolated" if isolate else "columnar"
        run = super().run(group, dataclasses.replace(ctx, engine=engine))
        run.extras["untrained_groups"] = 0.0 if trained else 1.0
        return run
