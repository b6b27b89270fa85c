"""KV kept between engine calls: one row's cached tokens, and a batch cache built from them.

A prefix cache (``batch_cached``: the shared context computed once, copied into every
question's row) and a conversation cache (``sequential_cached``: everything already
processed is kept from turn to turn) are both *rows that start from computed KV*. A
:class:`RowCache` holds that KV for one row: the token ids it was computed for, in order, at
positions ``0..n-1``, and one ``(H_kv, n, D)`` key and value tensor per layer. The engine
left-pads the rows' caches to a common length and stacks them into the batch's
``DynamicCache`` (so ``G`` rows starting from one prefix hold ``G`` real copies of it, and
the engine's KV figures count them), and can hand each row's KV back at the end of a call.

Shapes: ``B`` rows, ``H`` key/value heads, ``n`` cached tokens, ``P`` the longest row cache,
``D`` head dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from paralleldecode.decoding.layout import PAD, SHARED


@dataclass
class RowCache:
    """The KV of one row's tokens (see the module docstring).

    Attributes:
        tokens: the ``n`` token ids whose KV this is, in order (positions ``0..n-1``).
        keys: per layer, ``(H, n, D)``.
        values: per layer, ``(H, n, D)``.
    """

    tokens: list[int]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def prefix(self, n: int) -> RowCache:
        """The cache of the first ``n`` tokens (views, no copy)."""
        if not 0 <= n <= len(self):
            raise ValueError(f"RowCache.prefix({n}) of a cache of {len(self)} tokens")
        return RowCache(self.tokens[:n], [k[:, :n] for k in self.keys], [v[:, :n] for v in self.values])

    def reusable(self, tokens: list[int]) -> int:
        """How many leading tokens of ``tokens`` this cache already holds: their common
        prefix, at most ``len(tokens) - 1`` so that at least one token is left to compute
        (its logits give the next token)."""
        n, limit = 0, min(len(self), len(tokens) - 1)
        while n < limit and self.tokens[n] == tokens[n]:
            n += 1
        return n


def cache_layers(cache) -> list:
    """The per-layer objects of a transformers cache, refusing layers that drop tokens."""
    layers = list(getattr(cache, "layers", []))
    if any(getattr(layer, "is_sliding", False) for layer in layers):
        raise ValueError("row caches need full-attention KV layers; this model has sliding-window "
                         "layers, whose cache drops old tokens")
    return layers


def stack_row_caches(pasts: list[RowCache | None], cache) -> torch.Tensor:
    """Fill the empty transformers ``cache`` with the rows' caches, left-padded to ``P``.

    Args:
        pasts: per row, its :class:`RowCache` or None (nothing cached).
        cache: an empty ``DynamicCache`` for the model.

    Returns:
        ``(B, P)`` owner of every cached slot: ``SHARED`` (seen by every stream of its row)
        or ``PAD`` (left padding, zeros that nobody sees).
    """
    b = len(pasts)
    longest = max((len(p) for p in pasts if p is not None), default=0)
    sample = next(p for p in pasts if p is not None and len(p))
    owner = torch.full((b, longest), PAD, dtype=torch.long, device=sample.keys[0].device)
    for r, p in enumerate(pasts):
        if p is not None and len(p):
            owner[r, longest - len(p):] = SHARED
    for layer in range(len(sample.keys)):
        for name in ("keys", "values"):
            ref = getattr(sample, name)[layer]
            h, _, d = ref.shape
            out = ref.new_zeros((b, h, longest, d))
            for r, p in enumerate(pasts):
                if p is not None and len(p):
                    out[r, :, longest - len(p):] = getattr(p, name)[layer]
            if name == "keys":
                keys = out
            else:
                cache.update(keys, out, layer)
    return owner


def row_cache(cache, owner: torch.Tensor, ids: torch.Tensor, row: int) -> RowCache:
    """Row ``row`` of a batch cache as a :class:`RowCache`: its non-pad slots, in order.

    Args:
        cache: the batch's transformers cache.
        owner: ``(B, L)`` owners of its slots.
        ids: ``(B, L)`` token ids of its slots.
    """
    keep = (owner[row] != PAD).nonzero().flatten()
    layers = cache_layers(cache)
    return RowCache(ids[row, keep].tolist(), [layer.keys[row][:, keep] for layer in layers],
                    [layer.values[row][:, keep] for layer in layers])
