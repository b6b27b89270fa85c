"""`CrossBatchModule`: train cross-batch interaction (and its baselines) on question groups.

``paralleldecode fit --config configs/fit/crossbatch_squad.yaml`` trains one of four methods
(see :mod:`paralleldecode.models.crossbatch_lm`) with the base model frozen. A training batch
is a list of question groups; every question becomes one sequence ``prompt + answer`` (the
prompt is exactly what ``batch`` decodes with, primed with ``{"answer": "``; the target is
the first gold answer and the closing ``"}``) and the next-token loss is taken on the answer
tokens only, with teacher forcing. The questions of one group mix with each other, answer
step by answer step, exactly as the engine mixes streams while decoding.

Each step logs ``train/loss`` (what is optimised), ``train/loss_mixed``, ``train/loss_plain``
(the same batch projected without mixing) and ``train/mixing_gain`` (plain minus mixed: > 0
when reading the other questions helps) to the Trainer's logger (TensorBoard by default).

At the end of fit the trained tensors alone (head, adapters, module; a few MB to ~100 MB,
never the base) are written to ``{checkpoint_dir}/{dataset}/{model}_{method}.ckpt``, where
the predict strategies ``finetuned``, ``collab_hidden``, ``lora_lmhead`` and
``lora_crossbatch`` find them. An existing file is kept (fit refuses to start) unless
``force`` is set.

Distributed: under DDP each rank mixes within its own batches (groups are never split
across ranks: a batch is whole groups). Under FSDP2 (Lightning's ``ModelParallelStrategy``)
:meth:`configure_model` shards every decoder layer and the whole network; gradients of the
trained tensors are reduced across ranks by FSDP.
"""

from __future__ import annotations

from typing import Literal

import torch

from lightning_modules.trained import TrainedWeightsModule
from paralleldecode.config_check import check_literals
from paralleldecode.data.records import QuestionGroup
from paralleldecode.models.crossbatch_lm import (
    METHODS,
    CrossBatchLM,
    check_method,
    prepare,
    uses_lora,
    uses_mixer,
)
from paralleldecode.models.loading import DEFAULT_MODEL, load_causal_lm
from paralleldecode.models.training import LoraSettings
from paralleldecode.prompts import ONE_ANSWER, PromptRenderer, one_question


class CrossBatchModule(TrainedWeightsModule):
    """Fit a trained method on question groups.

    Args:
        model_name: Hugging Face id, local folder, ``.gguf`` file or ``smollm2-135m-instruct``.
        method: ``baseline`` (LM head), ``crossbatch`` (head + cross-batch module),
            ``lora_lmhead`` (LoRA + head) or ``lora_crossbatch`` (LoRA + head + module).
        freeze_base_model: True trains only the head, adapters and module; False trains
            every weight of the model as well.
        mix_method: ``attention`` (learned multi-head attention across the group) or
            ``mixer`` (cosine-similarity average of the other states).
        use_gate: combine with the question-aware gate ``H + g(H, info) * info`` instead of
            the module's learnable scale.
        mix_layer: which layer's output is mixed (-1 = last).
        num_heads: heads of the attention module.
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        lora_r, lora_alpha, lora_dropout, lora_target_modules: LoRA settings (``lora_*``
            methods).
        max_length: longest ``prompt + answer`` sequence in tokens; a longer one fails with
            an error naming the group (None: the model's window).
        dtype: weights dtype (``float32``, ``bfloat16``, ``auto``).
        attn_implementation: ``sdpa`` or ``eager``; None keeps the model's default.
        use_chat_template: ``auto``, ``always`` or ``never`` (as for predict).
        checkpoint_dir: root of the trained checkpoints.
        checkpoint_every_n_steps: optimizer steps between two resumable checkpoints
            (``{default_root_dir}/checkpoints/last.ckpt``, also written at the end and on
            SIGTERM); null turns them off.
        checkpoint_dataset: data-set part of the checkpoint path; None takes the data
            module's ``dataset``.
        force: overwrite an existing trained checkpoint.
    """

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        method: str = "crossbatch",
        freeze_base_model: bool = True,
        mix_method: Literal["attention", "mixer"] = "attention",
        use_gate: bool = False,
        mix_layer: int = -1,
        num_heads: int = 4,
        learning_rate: float = 1e-4,
        weight_decay: float = 0.0,
        lora_r: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.05,
        lora_target_modules: list[str] | None = None,
        max_length: int | None = None,
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32",
        attn_implementation: Literal["sdpa", "eager"] | None = None,
        use_chat_template: Literal["auto", "always", "never"] = "auto",
        checkpoint_dir: str = "checkpoints",
        checkpoint_every_n_steps: int | None = 50,
        checkpoint_dataset: str | None = None,
        force: bool = False,
    ) -> None:
        super().__init__()
        check_method(method)
        check_literals(CrossBatchModule.__init__, locals())
        self.lora = LoraSettings(lora_r, lora_alpha, lora_dropout,
                                 lora_target_modules or LoraSettings().target_modules)
        if learning_rate <= 0:
            raise ValueError(f"model.learning_rate must be > 0, got {learning_rate}")
        self.save_hyperparameters()
        self.net: CrossBatchLM | None = None
        self.renderer: PromptRenderer | None = None
        self.skipped_questions = 0

    # -- setup ----------------------------------------------------------------------------

    def checkpoint_method(self) -> str:
        return self.hparams.method

    def configure_model(self) -> None:
        if self.net is not None:
            return
        h = self.hparams
        device = self.trainer.strategy.root_device if self._trainer is not None else None
        lm, tokenizer = load_causal_lm(h.model_name, dtype=h.dtype, device=device,
                                       attn_implementation=h.attn_implementation)
        self.net = prepare(lm, h.method, mix_method=h.mix_method, use_gate=h.use_gate,
                           mix_layer=h.mix_layer, num_heads=h.num_heads, lora=self.lora,
                           freeze_base_model=h.freeze_base_model)
        # from_pretrained returns eval mode; LoRA dropout belongs to training.
        self.net.train()
        self.renderer = PromptRenderer(tokenizer, h.use_chat_template)
        if self.device_mesh is not None:
            self._shard(self.device_mesh)

    def _shard(self, mesh) -> None:
        """FSDP2: shard each decoder layer, then the whole network (head, norms, module)."""
        from torch.distributed.fsdp import fully_shard

        dp = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
        for layer in self.net.lm.get_decoder().layers:
            fully_shard(layer, mesh=dp)
        fully_shard(self.net, mesh=dp)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.hparams.learning_rate,
                                 weight_decay=self.hparams.weight_decay)

    # -- training -------------------------------------------------------------------------

    def encode(self, groups: list[QuestionGroup]) -> dict[str, torch.Tensor]:
        """Teacher-forcing inputs for a batch of groups (see :meth:`CrossBatchLM.forward`).

        Returns:
            ``input_ids (B, T)``, ``attention_mask (B, T)``, ``answer_slots (N, 2)``,
            ``answer_ids (N,)``, ``step_groups (N,)``, where ``B`` counts questions with a
            gold answer and ``N`` their answer tokens.

        Raises:
            ValueError: a sequence exceeds ``max_length`` (naming the group), or no question
                of the batch has a gold answer.
        """
        tok = self.renderer.tokenizer
        limit = self.hparams.max_length or getattr(self.net.lm.config, "max_position_embeddings", None)
        rows, slots, targets, step_groups = [], [], [], []
        for gi, group in enumerate(groups):
            for q in group.questions:
                if not q.answers:
                    self.skipped_questions += 1
                    continue
                prompt = self.renderer.ids(one_question(group, q), ONE_ANSWER.prefix)
                answer = tok(q.answers[0] + ONE_ANSWER.close, add_special_tokens=False)["input_ids"]
                if limit is not None and len(prompt) + len(answer) > limit:
                    raise ValueError(
                        f"group {group.id!r}, question {q.id!r}: {len(prompt) + len(answer)} tokens "
                        f"exceed max_length {limit}; raise model.max_length or use shorter contexts"
                    )
                r = len(rows)
                for k, token in enumerate(answer):
                    slots.append((r, len(prompt) - 1 + k))
                    targets.append(token)
                    step_groups.append((k, gi))
                rows.append(prompt + answer)
        if not rows:
            raise ValueError(f"no question with a gold answer in groups {[g.id for g in groups]}")
        width = max(len(r) for r in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        self.batch_samples = len(rows)
        self.batch_tokens = sum(len(r) for r in rows)
        steps = torch.tensor(step_groups)
        group_ids = steps[:, 0] * len(groups) + steps[:, 1]
        dev = self.device
        return {"input_ids": ids.to(dev), "attention_mask": mask.to(dev),
                "answer_slots": torch.tensor(slots).to(dev), "answer_ids": torch.tensor(targets).to(dev),
                "step_groups": group_ids.to(dev)}

    def forward(self, groups: list[QuestionGroup]):
        """Teacher-forced :class:`~paralleldecode.models.crossbatch_lm.MixLoss` of a batch."""
        trains_below_head = uses_lora(self.hparams.method) or not self.hparams.freeze_base_model
        return self.net(**self.encode(groups), grad_through_base=trains_below_head)

    def training_step(self, batch: list[QuestionGroup], batch_idx: int) -> torch.Tensor:
        loss = self(batch)
        size = sum(len(g) for g in batch)
        log = dict(on_step=True, on_epoch=True, batch_size=size, sync_dist=True)
        self.log("train/loss", loss.mixed, prog_bar=True, **log)
        if uses_mixer(self.hparams.method):
            self.log("train/loss_mixed", loss.mixed, **log)
            self.log("train/loss_plain", loss.plain, **log)
            self.log("train/mixing_gain", loss.plain - loss.mixed, **log)
        self.log("train/skipped_questions", float(self.skipped_questions), on_step=True,
                 batch_size=size, reduce_fx="max")
        return loss.mixed


__all__ = ["METHODS", "CrossBatchModule"]
