"""What every trainable module of the package shares: LoRA, freezing, and checkpoints that
hold only the trained weights.

A trained checkpoint is a Lightning checkpoint whose ``state_dict`` keeps only tensors that
had ``requires_grad`` (LoRA adapters, an untied LM head, a cross-batch module, ...): a few
MB instead of the whole base model. Loading one therefore needs the same base model and the
same structure (adapters, extra modules) rebuilt first, then ``load_state_dict(...,
strict=False)``; :func:`load_trained_state` checks that every saved tensor found its place.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from paralleldecode.errors import CheckpointError, MissingFileError

DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class LoraSettings:
    """LoRA adapter settings (``peft``'s ``LoraConfig`` subset the package exposes).

    Attributes:
        r: adapter rank.
        alpha: scaling numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the adapter input.
        target_modules: names of the linear layers that get adapters (matched on the last
            name component, e.g. ``q_proj``).
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("lora target_modules is empty; name at least one linear layer")
        self.target_modules = list(self.target_modules)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def add_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Inject LoRA adapters into ``model`` in place (no wrapper class: the model keeps its
    type, forward signature and parameter names, plus ``...lora_A.default.weight`` etc.).

    Raises:
        ValueError: none of ``settings.target_modules`` names a layer of the model; the
            message lists the linear layer names it has.
    """
    from peft import LoraConfig, inject_adapter_in_model

    linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                     if isinstance(m, nn.Linear)})
    missing = [t for t in settings.target_modules if t not in linear]
    if missing:
        raise ValueError(
            f"lora target_modules {missing} are not layers of this model; its linear layers: "
            f"{', '.join(linear)}"
        )
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), bias="none")
    return inject_adapter_in_model(config, model)


def is_lora_parameter(name: str) -> bool:
    return ".lora_" in name or name.startswith("lora_")


def untie_output_embeddings(model: nn.Module) -> None:
    """Give the LM head its own weight when it shares the input embedding's.

    Small models (SmolLM2, Qwen2-0.5B, ...) tie the two: training "the LM head" would then
    also change every input embedding. After this call they are separate tensors with equal
    values, so the model's outputs are unchanged.
    """
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or emb is None or head.weight is not emb.weight:
        return
    head.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=emb.weight.requires_grad)
    model.config.tie_word_embeddings = False
    text_config = getattr(model.config, "get_text_config", None)
    if callable(text_config):
        text_config().tie_word_embeddings = False


def set_trainable(model: nn.Module, trainable: Iterable[str] = (), lora: bool = False) -> list[str]:
    """Freeze everything except parameters whose name starts with one of ``trainable`` (module
    prefixes such as ``lm_head``) and, with ``lora``, the LoRA adapters.

    Returns:
        the names of the trainable parameters.

    Raises:
        ValueError: a prefix in ``trainable`` matches no parameter.
    """
    prefixes = tuple(trainable)
    names = []
    matched = set()
    for name, p in model.named_parameters():
        hit = [pre for pre in prefixes if name == pre or name.startswith(pre + ".")]
        matched.update(hit)
        p.requires_grad_(bool(hit) or (lora and is_lora_parameter(name)))
        if p.requires_grad:
            names.append(name)
    unknown = [pre for pre in prefixes if pre not in matched]
    if unknown:
        raise ValueError(f"no parameters under {unknown}; the model's top-level modules: "
                         f"{', '.join(n for n, _ in model.named_children())}")
    return names


def trainable_state(module: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of ``state_dict`` (``module``'s, possibly gathered from shards) that belong
    to parameters with ``requires_grad``."""
    keep = {name for name, p in module.named_parameters() if p.requires_grad}
    return {k: v for k, v in state_dict.items() if k in keep}


def load_trained_state(module: nn.Module, state_dict: dict[str, torch.Tensor], path: str | os.PathLike,
                       trained_on: str | None = None) -> None:
    """Load a trainable-only state dict into an already rebuilt ``module``.

    Args:
        trained_on: the base model the checkpoint was trained on (its ``model_name``), named
            when the tensors do not fit.

    Raises:
        ValueError: a saved tensor has no place in ``module`` (a different method, base model
            or adapter setting), naming the checkpoint and the first unmatched keys; or a
            tensor's shape differs (another base model), naming the one it was trained on.
    """
    try:
        result = module.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:  # shape mismatches: another base model
        origin = repr(trained_on) if trained_on else "another base model"
        raise CheckpointError(
            f"checkpoint {path} was trained on {origin}; its tensors do not fit this model: "
            f"{str(err).strip().splitlines()[-1].strip()}"
        ) from err
    if result.unexpected_keys:
        raise CheckpointError(
            f"checkpoint {path}: {len(result.unexpected_keys)} saved tensors do not fit this model "
            f"(e.g. {result.unexpected_keys[:3]}); was it trained with another base model or method?"
        )


def path_safe(name: str) -> str:
    """A model id or path as one file-name component: ``HuggingFaceTB/SmolLM2-135M`` ->
    ``HuggingFaceTB--SmolLM2-135M``; a local folder or file keeps only its last part."""
    text = str(name).rstrip("/\\")
    if os.path.sep in text and (os.path.exists(text) or text.startswith((".", "/", "~"))):
        text = Path(text).name
    text = text.replace("/", "--")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def trained_checkpoint_path(root: str | os.PathLike, dataset: str, model_name: str, method: str) -> Path:
    """Where a trained checkpoint lives: ``{root}/{dataset}/{model}_{method}.ckpt``."""
    return Path(root) / path_safe(dataset) / f"{path_safe(model_name)}_{method}.ckpt"


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a trained checkpoint safely (``weights_only``).

    Raises:
        MissingFileError: no such file.
        CheckpointError: the file is not a checkpoint this package wrote (truncated, of
            another format, or holding objects a safe load refuses), naming it and why.
    """
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"checkpoint {p} does not exist")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a bad file
        why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            why = ("it holds Python objects beyond tensors and plain values, which a safe load refuses "
                   "(not a checkpoint written by paralleldecode fit)")
        raise CheckpointError(f"checkpoint {p} cannot be read: {why}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {p} is not a Lightning checkpoint (no state_dict); "
                              "give a file written by paralleldecode fit")
    return ckpt
