"""The structure of a columnar model and the loading of its trained checkpoints.

A columnar model is a stock causal LM with a :class:`~paralleldecode.models.rope2d.Rotary2D`
in place of its rotary module, optionally an untied LM head and LoRA adapters. Training
(``ColumnarModule.configure_model``) and loading both build that structure with
:func:`prepare_columnar_model`, so a trainable-only checkpoint always finds the same
parameter names.

Checkpoint format (written by ``trainer.save_checkpoint(path, weights_only=True)``):

* ``state_dict``: only the trained tensors, keys prefixed ``model.`` (the module attribute
  holding the Hugging Face causal LM);
* ``hyper_parameters``: a plain dict with at least ``model_name``, ``pair_indices``
  (list[int]), ``isolate`` (bool), ``lora`` (None or a dict of
  :class:`~paralleldecode.models.training.LoraSettings` fields) and ``untie_lm_head`` (bool).
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from paralleldecode.errors import CheckpointError
from paralleldecode.models.rope2d import install_rope2d
from paralleldecode.models.training import (
    LoraSettings,
    add_lora,
    load_trained_state,
    read_checkpoint,
    untie_output_embeddings,
)

STATE_PREFIX = "model."
REQUIRED_HPARAMS = ("model_name", "pair_indices", "isolate", "lora", "untie_lm_head")


def prepare_columnar_model(model: nn.Module, pair_indices: list[int], lora: LoraSettings | None = None,
                           untie_lm_head: bool = False) -> nn.Module:
    """Give ``model`` (in place) the structure of a columnar model; returns it.

    Order: untie the LM head (when asked), inject LoRA (when given), install the 2D RoPE.
    The rotary module has no parameters, so the order only matters for the first two.

    Raises:
        ValueError: see :func:`~paralleldecode.models.rope2d.install_rope2d` and
            :func:`~paralleldecode.models.training.add_lora`.
    """
    if untie_lm_head:
        untie_output_embeddings(model)
    if lora is not None:
        model = add_lora(model, lora)
    return install_rope2d(model, list(pair_indices))


def columnar_hparams(ckpt: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """The checked ``hyper_parameters`` of a columnar checkpoint.

    Raises:
        ValueError: keys are missing (the checkpoint is not a columnar one).
    """
    hp = ckpt.get("hyper_parameters") or {}
    missing = [k for k in REQUIRED_HPARAMS if k not in hp]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is not a columnar checkpoint: hyper_parameters lack "
            f"{', '.join(missing)} (needs {', '.join(REQUIRED_HPARAMS)})"
        )
    return hp


def load_columnar_checkpoint(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Rebuild the trained structure on ``model`` (in place) and load the trained tensors.

    ``model`` must be the same base model the checkpoint was trained from (its
    ``hyper_parameters["model_name"]``); the saved tensors must all find their place.

    Returns:
        ``model``, with 2D RoPE, adapters and trained weights.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a columnar checkpoint, or its tensors do not fit ``model`` (another
            base model: the message names the one it was trained on).
    """
    ckpt = read_checkpoint(path)
    hp = columnar_hparams(ckpt, path)
    lora = LoraSettings(**hp["lora"]) if hp["lora"] else None
    model = prepare_columnar_model(model, hp["pair_indices"], lora, bool(hp["untie_lm_head"]))
    state = ckpt.get("state_dict") or {}
    foreign = [k for k in state if not k.startswith(STATE_PREFIX)]
    if foreign:
        raise CheckpointError(f"checkpoint {path}: state_dict keys must start with {STATE_PREFIX!r}; "
                         f"got e.g. {foreign[:3]}")
    load_trained_state(model, {k[len(STATE_PREFIX):]: v for k, v in state.items()}, path,
                       trained_on=hp["model_name"])
    return model
