"""A 2D rotary position embedding for Hugging Face Llama/Qwen2/Qwen3 causal LMs.

Every token of a columnar layout has a 2D position ``(column, branch)``. The stock rotary
module turns one position per token into ``(cos, sin)``; :class:`Rotary2D` replaces it and
lets a chosen set of frequency pairs rotate with the branch id while all other pairs rotate
with the column, the way Qwen2-VL splits its frequencies between axes. Attention code is
untouched: the decoder layers receive ``(cos, sin)`` exactly as before, so one attention
path serves 1D and 2D positions.

Frequency pairs: with head size ``D`` there are ``D/2`` pairs; pair ``i`` (1-based) rotates
dimensions ``i-1`` and ``i-1+D/2`` (the half-split convention of ``rotate_half``) at
``inv_freq[i-1]``. Low indices turn fast (fine position), high indices turn slowly.

How it departs from the stock module:

* it keeps the stock module's ``inv_freq`` values and ``attention_scaling`` (so linear,
  llama3 or yarn scaled frequencies carry over) but not its dynamic-update machinery:
  rope types that recompute frequencies per call (``dynamic``, ``longrope``) are refused;
* it is deliberately *not* named ``*RotaryEmbedding`` and has no ``original_inv_freq``
  buffer: transformers' weight init matches that pair and would overwrite ``inv_freq``.

Plain ``(B, T)`` position ids are accepted and read as branch 0, so every existing layout
keeps working on a model with the module installed; with no branch pairs the output equals
the stock module's bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn

# Rope types whose frequencies change with the sequence length at call time.
_DYNAMIC_ROPE_TYPES = ("dynamic", "longrope")


class Rotary2D(nn.Module):
    """``(cos, sin)`` from ``(column, branch)`` positions.

    Args:
        inv_freq: ``(D/2,)`` inverse frequencies (taken from the stock module).
        attention_scaling: factor on cos and sin (the stock module's, 1.0 for default RoPE).
        pair_indices: 1-based indices of the frequency pairs that rotate with the branch id;
            the others rotate with the column. Empty = the stock RoPE.

    Shapes: ``B`` batch, ``T`` tokens, ``D`` head size.
    """

    def __init__(self, inv_freq: torch.Tensor, attention_scaling: float, pair_indices: list[int],
                 rope_type: str = "default") -> None:
        super().__init__()
        half = int(inv_freq.numel())
        self.pair_indices = validate_pair_indices(pair_indices, half)
        self.attention_scaling = float(attention_scaling)
        self.rope_type = rope_type
        self.inv_freq = nn.Buffer(inv_freq.detach().clone().float(), persistent=False)
        on_branch = torch.zeros(half, dtype=torch.bool, device=inv_freq.device)
        on_branch[[i - 1 for i in self.pair_indices]] = True
        self.on_branch = nn.Buffer(on_branch, persistent=False)

    @property
    def num_pairs(self) -> int:
        return int(self.inv_freq.numel())

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary tables for the tokens of ``x``.

        Args:
            x: any tensor whose dtype and device the output takes (the hidden states).
            position_ids: ``(B, T, 2)`` (column, branch), or ``(B, T)`` columns (branch 0).

        Returns:
            ``(cos, sin)``, each ``(B, T, D)``.
        """
        if position_ids.dim() == 3 and position_ids.shape[-1] == 2:
            column, branch = position_ids[..., 0], position_ids[..., 1]
        elif position_ids.dim() == 2:
            column, branch = position_ids, None
        else:
            raise ValueError(
                f"Rotary2D takes position_ids of shape (B, T) or (B, T, 2) = (column, branch); "
                f"got {tuple(position_ids.shape)}"
            )
        inv_freq = self.inv_freq.to(device=x.device, dtype=torch.float)
        # Same expression as the stock module, so with no branch pairs the result is identical.
        freqs = column[..., None].float() * inv_freq  # (B, T, D/2)
        if self.pair_indices:
            b = branch if branch is not None else torch.zeros_like(column)
            on_branch = self.on_branch.to(x.device)
            freqs = torch.where(on_branch, b[..., None].float() * inv_freq, freqs)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)

    def extra_repr(self) -> str:
        return f"pairs={self.num_pairs}, pair_indices={self.pair_indices}, rope_type={self.rope_type!r}"


def validate_pair_indices(pair_indices, num_pairs: int) -> list[int]:
    """``pair_indices`` as a sorted list of ints, checked against ``num_pairs`` (= D/2).

    Raises:
        ValueError: an index outside ``1..num_pairs``, a repeated index, or a non-integer.
    """
    out = []
    for i in pair_indices or []:
        if isinstance(i, bool) or not isinstance(i, int):
            raise ValueError(f"pair_indices must be integers in 1..{num_pairs}; got {i!r}")
        if not 1 <= i <= num_pairs:
            raise ValueError(
                f"pair_indices entry {i} is out of range: this model's heads have {num_pairs} "
                f"frequency pairs, so indices must be in 1..{num_pairs} (1-based)"
            )
        out.append(i)
    if len(set(out)) != len(out):
        raise ValueError(f"pair_indices has repeated entries: {list(pair_indices)}; give each pair once")
    return sorted(out)


def _decoder(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_decoder", None)
    decoder = get() if callable(get) else None
    return decoder if decoder is not None else model


def _model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) or type(model).__name__


def has_rope2d(model: nn.Module) -> bool:
    """Whether ``model``'s decoder carries a :class:`Rotary2D`."""
    return isinstance(getattr(_decoder(model), "rotary_emb", None), Rotary2D)


def pair_indices_of(model: nn.Module) -> list[int]:
    """The branch-axis pair indices of ``model``'s :class:`Rotary2D`.

    Raises:
        ValueError: the model has no 2D rotary module.
    """
    rotary = getattr(_decoder(model), "rotary_emb", None)
    if not isinstance(rotary, Rotary2D):
        raise ValueError(f"model type {_model_type(model)!r} has no 2D rotary module; "
                         "call install_rope2d(model, pair_indices) first")
    return list(rotary.pair_indices)


def install_rope2d(model: nn.Module, pair_indices: list[int]) -> nn.Module:
    """Swap ``model``'s rotary module for a :class:`Rotary2D` (in place; returns ``model``).

    Idempotent: on a model that already has one, the module is rebuilt from its own
    frequencies with the new ``pair_indices`` (a no-op when they are the same). The decoder
    is found through ``model.get_decoder()``, so this also works after peft's
    ``inject_adapter_in_model``.

    Raises:
        ValueError: the model has no rotary module with ``inv_freq`` at ``rotary_emb``
            (GPT-2 and other absolute-position models), uses a rope type that recomputes
            its frequencies per call, or ``pair_indices`` is invalid (see
            :func:`validate_pair_indices`).
    """
    decoder = _decoder(model)
    stock = getattr(decoder, "rotary_emb", None)
    inv_freq = getattr(stock, "inv_freq", None)
    if stock is None or not isinstance(inv_freq, torch.Tensor):
        raise ValueError(
            f"install_rope2d needs a causal LM with rotary position embeddings at "
            f"decoder.rotary_emb (Llama, Qwen2, Qwen3, ...); model type {_model_type(model)!r} "
            "has none"
        )
    if isinstance(stock, Rotary2D):
        if stock.pair_indices == validate_pair_indices(pair_indices, stock.num_pairs):
            return model
        rope_type, scaling = stock.rope_type, stock.attention_scaling
    else:
        rope_type = getattr(stock, "rope_type", "default")
        if not isinstance(rope_type, str):
            raise ValueError(f"model type {_model_type(model)!r} has per-layer rope types "
                             f"{rope_type!r}; Rotary2D supports one rope type")
        if rope_type in _DYNAMIC_ROPE_TYPES:
            raise ValueError(
                f"rope type {rope_type!r} recomputes its frequencies per call, which Rotary2D "
                f"does not do; supported: rope types with fixed frequencies (default, linear, "
                f"llama3, yarn, ...), not {', '.join(_DYNAMIC_ROPE_TYPES)}"
            )
        scaling = getattr(stock, "attention_scaling", 1.0)
    decoder.rotary_emb = Rotary2D(inv_freq, scaling, pair_indices, rope_type)
    return model
