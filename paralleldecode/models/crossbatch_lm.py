"""A causal LM plus a cross-batch module, as trained by ``CrossBatchModule`` and decoded by
the engine's mixing hook.

Four training methods differ only in what is trained on top of the frozen base:

=================  ==========  ========  ===================
method             LM head     LoRA      cross-batch module
=================  ==========  ========  ===================
``baseline``       yes         no        no
``crossbatch``     yes         no        yes
``lora_lmhead``    yes         yes       no
``lora_crossbatch`` yes        yes       yes
=================  ==========  ========  ===================

The LM head is always trained, so it is untied from the input embedding first (see
:func:`~paralleldecode.models.training.untie_output_embeddings`): training it must not move
the embeddings the prompt is read with.

Teacher-forced training mixes exactly as decoding does: the hidden state that predicts the
``k``-th answer token of a sequence is mixed with the states that predict the ``k``-th answer
tokens of the other questions of its group that are still answering at step ``k`` (in the
engine, finished streams stop taking part). Mixing never crosses groups.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from paralleldecode.errors import CheckpointError
from paralleldecode.models.crossbatch import COMBINES, MODULES, CrossBatchMixer
from paralleldecode.models.training import (
    LoraSettings,
    add_lora,
    load_trained_state,
    read_checkpoint,
    set_trainable,
    untie_output_embeddings,
)

METHODS = ("baseline", "crossbatch", "lora_lmhead", "lora_crossbatch")


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; accepted: {', '.join(METHODS)}")


def uses_lora(method: str) -> bool:
    return method.startswith("lora_")


def uses_mixer(method: str) -> bool:
    return method.endswith("crossbatch")


@dataclass
class MixLoss:
    """Losses of one teacher-forced batch (mean cross-entropy over answer tokens).

    Attributes:
        mixed: with cross-batch mixing (equals ``plain`` when there is no mixer).
        plain: the same batch projected without mixing.
        tokens: answer tokens scored.
    """

    mixed: torch.Tensor
    plain: torch.Tensor
    tokens: int


class CrossBatchLM(nn.Module):
    """A causal LM (``lm``) and an optional cross-batch module (``mixer``).

    Args:
        lm: a Hugging Face causal LM (structure already prepared by :func:`prepare`).
        mixer: a :class:`~paralleldecode.models.crossbatch.CrossBatchMixer` or None.
        mix_layer: which layer's output is mixed (-1 = the last, after the final norm; an
            earlier one gets the final norm before the LM head), as in the engine.
    """

    def __init__(self, lm: nn.Module, mixer: CrossBatchMixer | None, mix_layer: int = -1) -> None:
        super().__init__()
        self.lm = lm
        self.mixer = mixer
        self.mix_layer = mix_layer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                answer_slots: torch.Tensor, answer_ids: torch.Tensor, step_groups: torch.Tensor,
                grad_through_base: bool = True) -> MixLoss:
        """Teacher-forced losses with and without mixing.

        Args:
            input_ids: ``(B, T)`` prompt + answer tokens, right-padded.
            attention_mask: ``(B, T)`` 1 for real tokens, 0 for padding.
            answer_slots: ``(N, 2)`` ``(row, slot)`` of every hidden state that predicts an
                answer token (slot ``P - 1 + k`` for answer token ``k`` of a prompt of ``P``).
            answer_ids: ``(N,)`` the answer token each of those states must predict.
            step_groups: ``(N,)`` mixing group of each state: equal ids mix (same question
                group and same answer step).
            grad_through_base: False runs the decoder without autograd (nothing below the
                head trains), which saves memory and time.

        Returns:
            :class:`MixLoss`.
        """
        with torch.set_grad_enabled(grad_through_base and torch.is_grad_enabled()):
            hidden = states_to_mix(self.lm, self.mix_layer, input_ids=input_ids,
                                   attention_mask=attention_mask, use_cache=False)
        states = hidden[answer_slots[:, 0], answer_slots[:, 1]]  # (N, D)
        head = self.lm.get_output_embeddings()
        plain = nn.functional.cross_entropy(head(states).float(), answer_ids)
        if self.mixer is None:
            return MixLoss(plain, plain, int(answer_ids.numel()))
        mixed_states = self.mixer(states.to(_dtype(self.mixer, states)), step_groups).to(states.dtype)
        mixed = nn.functional.cross_entropy(head(mixed_states).float(), answer_ids)
        return MixLoss(mixed, plain, int(answer_ids.numel()))


def states_to_mix(lm: nn.Module, mix_layer: int, **inputs) -> torch.Tensor:
    """The ``(B, T, D)`` hidden states a cross-batch module mixes, ready for the LM head.

    One rule for training (:class:`CrossBatchLM`) and decoding (the engine's mixing hook):
    ``mix_layer == -1`` takes the decoder's output (after its final norm); an earlier layer's
    output gets the final norm applied. ``inputs`` go to ``lm``'s decoder as they are.
    """
    decoder = lm.get_decoder()
    out = decoder(**inputs, output_hidden_states=mix_layer != -1)
    return out.last_hidden_state if mix_layer == -1 else decoder.norm(out.hidden_states[mix_layer])


def _dtype(module: nn.Module, fallback: torch.Tensor) -> torch.dtype:
    p = next(module.parameters(), None)
    return p.dtype if p is not None else fallback.dtype


def prepare(lm: nn.Module, method: str, *, mix_method: str = "attention", use_gate: bool = False,
            mix_layer: int = -1, num_heads: int = 4, lora: LoraSettings | None = None,
            freeze_base_model: bool = True) -> CrossBatchLM:
    """Give ``lm`` the structure of ``method`` and mark what trains.

    Untie the LM head, inject LoRA (``lora_*`` methods), build the cross-batch module
    (``*crossbatch``), then freeze the base (unless ``freeze_base_model`` is False): the
    head, the adapters and the module train. The module is created in the LM's dtype and
    on its device.

    Raises:
        ValueError: unknown ``method``, ``mix_method`` or an invalid LoRA target.
    """
    check_method(method)
    if mix_method not in MODULES:
        raise ValueError(f"unknown mix_method {mix_method!r}; accepted: {', '.join(MODULES)}")
    untie_output_embeddings(lm)
    if uses_lora(method):
        add_lora(lm, lora or LoraSettings())
    mixer = None
    if uses_mixer(method):
        hidden = lm.config.get_text_config().hidden_size
        kwargs: dict[str, Any] = {"num_heads": num_heads} if mix_method == "attention" else {}
        mixer = CrossBatchMixer(mix_method, hidden, combine=COMBINES[1] if use_gate else COMBINES[0],
                                **kwargs)
        p = next(lm.parameters())
        mixer.to(device=p.device, dtype=p.dtype)
    if freeze_base_model:
        head = [n for n, m in lm.named_modules() if m is lm.get_output_embeddings()]
        set_trainable(lm, head, lora=uses_lora(method))
    else:
        lm.requires_grad_(True)
    return CrossBatchLM(lm, mixer, mix_layer)


def read_crossbatch_checkpoint(path: str | os.PathLike,
                               expected_method: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoint and its hyperparameters, after checking it is a ``CrossBatchModule``
    checkpoint (of ``expected_method`` when given).

    Raises:
        MissingFileError: no such file.
        CheckpointError: unreadable, or not such a checkpoint, or of another method.
    """
    ckpt = read_checkpoint(path)
    hp = dict(ckpt.get("hyper_parameters") or {})
    method = hp.get("method")
    if method not in METHODS:
        raise CheckpointError(f"checkpoint {path} is not a CrossBatchModule checkpoint (method={method!r})")
    if expected_method is not None and method != expected_method:
        raise CheckpointError(f"checkpoint {path} was trained with method {method!r}, expected {expected_method!r}")
    return ckpt, hp


def load_crossbatch_checkpoint(path: str | os.PathLike, lm: nn.Module,
                               expected_method: str | None = None) -> tuple[CrossBatchLM, dict[str, Any]]:
    """Rebuild the trained structure on ``lm`` (a freshly loaded base model, modified in
    place) and load a ``CrossBatchModule`` checkpoint into it.

    Returns:
        the :class:`CrossBatchLM` ready for the engine (``.lm``, ``.mixer``, ``.mix_layer``)
        and the checkpoint's hyperparameters.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the checkpoint is of another method than ``expected_method``, or its
            tensors do not fit the model.
    """
    ckpt, hp = read_crossbatch_checkpoint(path, expected_method)
    method = hp["method"]
    lora = LoraSettings(r=hp.get("lora_r", 8), alpha=hp.get("lora_alpha", 16),
                        dropout=hp.get("lora_dropout", 0.05),
                        target_modules=hp.get("lora_target_modules") or LoraSettings().target_modules)
    net = prepare(lm, method, mix_method=hp.get("mix_method", "attention"),
                  use_gate=bool(hp.get("use_gate", False)), mix_layer=int(hp.get("mix_layer", -1)),
                  num_heads=int(hp.get("num_heads", 4)), lora=lora,
                  freeze_base_model=bool(hp.get("freeze_base_model", True)))
    prefix = "net."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise CheckpointError(f"checkpoint {path} holds no trained tensors")
    load_trained_state(net, state, path, trained_on=hp.get("model_name"))
    net.requires_grad_(False)
    net.eval()
    return net, hp
