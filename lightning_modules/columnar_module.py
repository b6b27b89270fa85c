"""`ColumnarModule`: train a causal LM to decode several branches side by side (2D RoPE).

``paralleldecode fit --config configs/fit/columnar_pretrain.yaml`` then
``paralleldecode fit --config configs/fit/columnar_finetune.yaml``. The model gets the
columnar structure of :func:`~paralleldecode.models.columnar.prepare_columnar_model` (2D
rotary embedding, optionally an untied LM head and LoRA adapters) and learns on batches in
the columnar layout of :func:`~paralleldecode.decoding.columnar.columnar_batch`: one shared
background, branches that start at the same column, column-synchronous attention (or the
isolating variant). Two modes:

* ``pretrain``: batches of :class:`~datamodules.text_branches.TextBranchesDataModule`
  (a background and ``branch_count`` text segments per sample); every branch token after a
  branch's first is a target. The background gets no loss: it is an ordinary causal prefix,
  and a branch's first token follows a slot shared by all branches, so it has no single
  target either (see ``columnar_batch``).
* ``finetune``: batches of question groups (:class:`~datamodules.qa_groups.QAGroupsDataModule`,
  e.g. SQuAD). Exactly as the ``columnar`` strategy decodes them
  (:func:`~paralleldecode.decoding.columnar.columnar_segments`): the background is the
  prompts' common prefix (instructions and context), each branch one question's prompt
  primed with ``{"answer": "``, followed by the tokens of its first gold answer and ``"}``;
  only those answer tokens are targets.

Each step logs ``train/loss`` and ``train/lr`` (TensorBoard with the Trainer's default
logger); ``finetune`` also logs the cumulative ``train/skipped_questions`` and
``train/split_groups`` (see ``max_length``). Gradient accumulation is the Trainer's
``accumulate_grad_batches``; the learning-rate schedule counts optimizer steps
(``trainer.estimated_stepping_batches``), so it already accounts for accumulation.

At the end of fit the trained tensors alone (adapters, named modules; never the frozen base)
are written with ``trainer.save_checkpoint(..., weights_only=True)`` to
``{checkpoint_dir}/{dataset}/{model}_columnar_{mode}.ckpt``. Its ``hyper_parameters`` are
plain values (``lora`` a dict or None), so it loads with ``torch.load(weights_only=True)``
and :func:`~paralleldecode.models.columnar.load_columnar_checkpoint` rebuilds the model
from it. Fit refuses to start when that file exists, unless ``force``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_modules.trained import TrainedWeightsModule
from paralleldecode.config_check import check_literals
from paralleldecode.data.grouping import even_chunks
from paralleldecode.data.records import QuestionGroup
from paralleldecode.decoding.columnar import columnar_batch, columnar_loss, columnar_segments
from paralleldecode.models.columnar import (
    columnar_hparams,
    load_columnar_checkpoint,
    prepare_columnar_model,
)
from paralleldecode.models.loading import DEFAULT_MODEL, load_causal_lm
from paralleldecode.models.training import (
    LoraSettings,
    read_checkpoint,
    set_trainable,
)
from paralleldecode.prompts import ONE_ANSWER, PromptRenderer

# Frequency pairs (1-based) that rotate with the branch id by default. Measured on the
# embedded SmolLM2-135M (head size 64, rope theta 1e5; untrained, WikiText-2 columnar
# batches, 4 branches): pairs 5 and 6 turn 0.24 and 0.17 rad per branch, so branches 1..5
# stay distinguishable, and taking them off the column axis costs least. The usual
# suggestion, the lowest-frequency pairs (31, 32), turns ~1e-5 rad per branch: branches
# cannot be told apart at all (loss 5.062, identical to no branch pairs), while the fastest
# pairs (1, 2) break fine column positions (5.589); pairs 5, 6 gave 5.023 with the
# column-synchronous mask and 4.176 (vs 4.146 stock) with the isolating one.
DEFAULT_PAIR_INDICES = (5, 6)


class ColumnarModule(TrainedWeightsModule):
    """Pretrain or fine-tune a causal LM for columnar (2D RoPE) branch decoding.

    Args:
        mode: ``pretrain`` (text branches, loss on every branch token) or ``finetune``
            (question groups, loss on answer tokens only).
        model_name: Hugging Face id, local folder, ``.gguf`` file or ``smollm2-135m-instruct``.
        init_checkpoint: a columnar checkpoint (e.g. the pretrain one) to start from: its
            structure and trained tensors are loaded, and training continues on them. Its
            ``model_name``, ``pair_indices``, ``lora`` and ``untie_lm_head`` must equal these.
        pair_indices: 1-based frequency pairs that rotate with the branch id (see
            ``DEFAULT_PAIR_INDICES`` for why 5 and 6); must exist in the model's heads.
        isolate: the isolating mask (a branch sees the background and itself only) instead
            of the column-synchronous one.
        learning_rate: peak AdamW learning rate.
        warmup_ratio: fraction of the optimizer steps with a linear warmup from 0.
        lr_schedule: after warmup, ``cosine`` or ``linear`` decay to 0 at the last step, or
            ``constant``.
        weight_decay: AdamW weight decay on matrices (not on biases or norms).
        lora: LoRA settings (``r``, ``alpha``, ``dropout``, ``target_modules``); null trains
            without adapters.
        trainable_modules: module prefixes trained in full besides the adapters (e.g.
            ``[lm_head]``; needs ``untie_lm_head`` on a model that ties it).
        freeze_base_model: True trains only the adapters and ``trainable_modules``; False
            trains every weight.
        untie_lm_head: give the LM head its own weight (tied models such as SmolLM2).
        dtype: weights dtype: ``auto`` (bf16/fp16 only under ``bf16-true``/``16-true``
            precision, else fp32), ``float32``, ``bfloat16``, ``float16``.
        attn_implementation: ``sdpa`` or ``eager``.
        max_branches: ``finetune``: a larger group is split into nearly equal chunks of at
            most this many questions (each chunk is one sample with the same background).
        min_questions: ``finetune``: groups with fewer questions (with a gold answer) are
            left out.
        max_length: ``finetune``: longest sample in slots (background + branches padded to
            the longest, as laid out). A longer chunk is halved until it fits; a single
            question that still does not fit is skipped. Both are counted, logged and
            reported, never silent.
        use_chat_template: ``auto``, ``always`` or ``never`` (as for predict).
        checkpoint_dir: root of the trained checkpoints.
        checkpoint_every_n_steps: optimizer steps between two resumable checkpoints
            (``{default_root_dir}/checkpoints/last.ckpt``, also written at the end and on
            SIGTERM); null turns them off.
        force: overwrite an existing trained checkpoint.
    """

    def __init__(
        self,
        mode: Literal["pretrain", "finetune"] = "pretrain",
        model_name: str = DEFAULT_MODEL,
        init_checkpoint: str | None = None,
        pair_indices: list[int] = list(DEFAULT_PAIR_INDICES),  # noqa: B006 - CLI default
        isolate: bool = False,
        learning_rate: float = 4e-4,
        warmup_ratio: float = 0.05,
        lr_schedule: Literal["cosine", "linear", "constant"] = "cosine",
        weight_decay: float = 0.0,
        lora: LoraSettings | None = LoraSettings(),  # noqa: B008 - immutable use, CLI default
        trainable_modules: list[str] | None = None,
        freeze_base_model: bool = True,
        untie_lm_head: bool = False,
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
        attn_implementation: Literal["sdpa", "eager"] | None = "sdpa",
        max_branches: int = 5,
        min_questions: int = 1,
        max_length: int = 1024,
        use_chat_template: Literal["auto", "always", "never"] = "auto",
        checkpoint_dir: str = "checkpoints",
        checkpoint_every_n_steps: int | None = 50,
        force: bool = False,
    ) -> None:
        super().__init__()
        check_literals(ColumnarModule.__init__, locals())
        if learning_rate <= 0:
            raise ValueError(f"model.learning_rate must be > 0, got {learning_rate}")
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"model.warmup_ratio must be in [0, 1), got {warmup_ratio}")
        if weight_decay < 0:
            raise ValueError(f"model.weight_decay must be >= 0, got {weight_decay}")
        if max_branches < 1 or min_questions < 1 or max_length < 2:
            raise ValueError(f"model.max_branches and model.min_questions must be >= 1 and model.max_length "
                             f">= 2; got {max_branches}, {min_questions}, {max_length}")
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 1 for i in pair_indices):
            raise ValueError(f"model.pair_indices must be 1-based integers; got {pair_indices}")
        if freeze_base_model and lora is None and not trainable_modules:
            raise ValueError("nothing to train: model.freeze_base_model is true, model.lora is null and "
                             "model.trainable_modules is empty; set one of them")
        if isinstance(lora, dict):  # a checkpoint's hyper_parameters give a dict
            lora = LoraSettings(**lora)
        self.lora_settings = lora
        self.save_hyperparameters()
        # Checkpoints must load with torch.load(weights_only=True): plain values only. Set
        # after saving, as LightningCLI hands save_hyperparameters the raw config values.
        self.hparams.update(lora=lora.as_dict() if lora is not None else None,
                            pair_indices=sorted(int(i) for i in pair_indices),
                            trainable_modules=list(trainable_modules or []))
        self.model = None
        self.tokenizer = None
        self.renderer: PromptRenderer | None = None
        self.skipped_questions = 0
        self.split_groups = 0

    # -- setup ----------------------------------------------------------------------------

    def checkpoint_method(self) -> str:
        return f"columnar_{self.hparams.mode}"

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        from datamodules.qa_groups import QAGroupsDataModule
        from datamodules.text_branches import TextBranchesDataModule

        dm = self.trainer.datamodule
        wanted = TextBranchesDataModule if self.hparams.mode == "pretrain" else QAGroupsDataModule
        if dm is not None and isinstance(dm, (TextBranchesDataModule, QAGroupsDataModule)) \
                and not isinstance(dm, wanted):
            raise ValueError(f"model.mode {self.hparams.mode!r} trains on datamodules.{wanted.__name__}, "
                             f"but data is {type(dm).__name__}; change model.mode or data.class_path")
        self.refuse_existing()

    def configure_model(self) -> None:
        if self.model is not None:
            return
        h = self.hparams
        if h.init_checkpoint:  # before loading weights: a mismatch fails at once
            self._check_init_checkpoint(h.init_checkpoint)
        device = self.trainer.strategy.root_device if self._trainer is not None else None
        model, self.tokenizer = load_causal_lm(h.model_name, dtype=self._weights_dtype(), device=device,
                                               attn_implementation=h.attn_implementation)
        if h.init_checkpoint:
            model = load_columnar_checkpoint(h.init_checkpoint, model)
        else:
            model = prepare_columnar_model(model, h.pair_indices, self.lora_settings, h.untie_lm_head)
        if h.freeze_base_model:
            try:
                set_trainable(model, h.trainable_modules, lora=self.lora_settings is not None)
            except ValueError as err:
                tied = model.get_output_embeddings() is not None and \
                    model.get_output_embeddings().weight is model.get_input_embeddings().weight
                hint = ("; this model ties its LM head to the input embeddings: set model.untie_lm_head: "
                        "true to train lm_head" if tied and "lm_head" in h.trainable_modules else "")
                raise ValueError(f"model.trainable_modules: {err}{hint}") from err
        else:
            model.requires_grad_(True)
        model.config.use_cache = False
        # from_pretrained returns eval mode; LoRA dropout belongs to training.
        model.train()
        self.model = model
        self.renderer = PromptRenderer(self.tokenizer, h.use_chat_template)

    def _check_init_checkpoint(self, path: str) -> None:
        """The starting checkpoint must have this run's structure (or its tensors would not
        fit, or would silently sit in a differently built model)."""
        hp = columnar_hparams(read_checkpoint(path), path)
        ours = {k: self.hparams[k] for k in ("model_name", "pair_indices", "lora", "untie_lm_head")}
        theirs = {k: hp[k] for k in ours}
        if theirs["pair_indices"] is not None:
            theirs["pair_indices"] = sorted(theirs["pair_indices"])
        diff = {k: (theirs[k], ours[k]) for k in ours if theirs[k] != ours[k]}
        if diff:
            lines = "; ".join(f"{k}: checkpoint {a!r}, this run {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"model.init_checkpoint {path} was trained with other settings ({lines}); "
                             "set the same model options to continue from it")

    def _weights_dtype(self) -> str | torch.dtype:
        precision = str(self.trainer.precision) if self._trainer is not None else ""
        if self.hparams.dtype == "auto":
            # Mixed precision keeps fp32 master weights; only "-true" precisions want them low.
            return {"bf16-true": torch.bfloat16, "16-true": torch.float16}.get(precision, torch.float32)
        return self.hparams.dtype

    # -- optimisation ---------------------------------------------------------------------

    def configure_optimizers(self):
        h = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": h.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=h.learning_rate)
        total = self.trainer.estimated_stepping_batches
        schedule = lr_factor(h.lr_schedule, h.warmup_ratio, total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- batches --------------------------------------------------------------------------

    def samples(self, batch: list) -> list[tuple[list[int], list[list[int]], list[list[bool]]]]:
        """``(background, branches, loss_masks)`` triples for ``columnar_batch``.

        Raises:
            ValueError: the batch is not what ``mode`` trains on.
        """
        if not batch:
            return []
        if self.hparams.mode == "pretrain":
            if not isinstance(batch[0], dict) or "branches" not in batch[0]:
                raise ValueError(f"model.mode 'pretrain' needs text-branch samples (datamodules."
                                 f"TextBranchesDataModule); the batch holds {type(batch[0]).__name__}")
            return [(s["background"], s["branches"], [[True] * len(b) for b in s["branches"]]) for s in batch]
        if not isinstance(batch[0], QuestionGroup):
            raise ValueError(f"model.mode 'finetune' needs question groups (datamodules.QAGroupsDataModule); "
                             f"the batch holds {type(batch[0]).__name__}")
        out = []
        for group in batch:
            out.extend(self.group_samples(group))
        return out

    def group_samples(self, group: QuestionGroup) -> list[tuple[list[int], list[list[int]], list[list[bool]]]]:
        """One group's samples: chunks of at most ``max_branches`` questions, each within
        ``max_length`` slots (see the class docstring); updates the skip/split counters."""
        h = self.hparams
        answered = [q for q in group.questions if q.answers]
        self._skip(len(group.questions) - len(answered), group, "no gold answer")
        if not answered or len(answered) < h.min_questions:
            return []
        out = []
        todo = even_chunks(answered, h.max_branches)
        while todo:
            chunk = todo.pop(0)
            sample = self.question_sample(replace(group, questions=chunk))
            if slots(sample) <= h.max_length:
                out.append(sample)
            elif len(chunk) > 1:
                self.split_groups += 1
                todo[:0] = even_chunks(chunk, (len(chunk) + 1) // 2)
            else:
                self._skip(1, group, f"{slots(sample)} slots even alone, over model.max_length {h.max_length}")
        return out

    def question_sample(self, group: QuestionGroup) -> tuple[list[int], list[list[int]], list[list[bool]]]:
        """``(background, branches, loss_masks)`` of a group, every question a branch
        ending with the tokens of ``first gold answer + "}`` (the targets)."""
        background, prompts = columnar_segments(self.renderer, group)
        branches, masks = [], []
        for prompt, q in zip(prompts, group.questions):
            answer = self.tokenizer(q.answers[0] + ONE_ANSWER.close, add_special_tokens=False)["input_ids"]
            branches.append(list(prompt) + answer)
            masks.append([False] * len(prompt) + [True] * len(answer))
        return list(background), branches, masks

    def _skip(self, count: int, group: QuestionGroup, why: str) -> None:
        if count <= 0:
            return
        if self.skipped_questions == 0:
            rank_zero_warn(f"columnar finetune: skipping {count} question(s) of group {group.id!r}: {why} "
                           "(counted in train/skipped_questions; more are not warned about)")
        self.skipped_questions += count

    # -- training -------------------------------------------------------------------------

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``(B, T, V)`` of a ``columnar_batch``."""
        return self.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                          attention_mask=batch["attention_mask"], use_cache=False).logits

    def encode(self, batch: list) -> dict[str, torch.Tensor] | None:
        """The columnar tensors of a data-loader batch, on this module's device (None when
        no sample of the batch is usable)."""
        samples = self.samples(batch)
        self.batch_samples = len(samples)
        self.batch_tokens = sum(len(bg) + sum(len(b) for b in branches) for bg, branches, _ in samples)
        if not samples:
            return None
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        tensors = columnar_batch(samples, pad, isolate=self.hparams.isolate, dtype=self.model.dtype)
        return {k: v.to(self.device) for k, v in tensors.items()}

    def training_step(self, batch: list, batch_idx: int) -> torch.Tensor:
        tensors = self.encode(batch)
        if tensors is None:
            # Every rank must still take part in the gradient all-reduce under DDP: a zero
            # loss attached to every trained tensor.
            loss = sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
            targets = 0
        else:
            loss = columnar_loss(self(tensors), tensors["labels"])
            targets = int((tensors["labels"] != -100).sum())
        size = max(1, len(batch))
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=size, sync_dist=True)
        self.log("train/targets", float(targets), on_step=True, batch_size=size)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, batch_size=size)
        if self.hparams.mode == "finetune":
            self.log("train/skipped_questions", float(self.skipped_questions), on_step=True, batch_size=size,
                     reduce_fx="max")
            self.log("train/split_groups", float(self.split_groups), on_step=True, batch_size=size,
                     reduce_fx="max")
        return loss

    # -- checkpoints ----------------------------------------------------------------------

    def on_fit_end(self) -> None:
        self.save_trained()
        if self.hparams.mode == "finetune" and (self.skipped_questions or self.split_groups):
            rank_zero_info(f"columnar finetune: {self.skipped_questions} question(s) skipped, "
                           f"{self.split_groups} chunk(s) split to fit model.max_length "
                           f"{self.hparams.max_length} (this rank)")


def slots(sample: tuple[list[int], list[list[int]], Any]) -> int:
    """Slots a sample takes in the columnar layout: the background, then every branch padded
    to the longest (``linearise``'s branch-major order)."""
    background, branches = sample[0], sample[1]
    return len(background) + len(branches) * max(len(b) for b in branches)


def lr_factor(schedule: str, warmup_ratio: float, total_steps: float):
    """The multiplier of the peak learning rate at each optimizer step: a linear warmup over
    ``warmup_ratio * total_steps`` steps, then ``schedule`` down to 0 at ``total_steps``
    (``constant`` when the number of steps is unknown, i.e. infinite)."""
    finite = math.isfinite(total_steps) and total_steps > 0
    total = int(total_steps) if finite else 0
    warm = max(1, math.ceil(warmup_ratio * total)) if finite and warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if not finite or schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


__all__ = ["ColumnarModule", "DEFAULT_PAIR_INDICES", "lr_factor", "slots"]
