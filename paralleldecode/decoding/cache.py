"""KV kept between engine calls: one row's cached tokens, and a batch cache built from them.

A prefix cache (``batch_cached``: the shared context computed once, read by every
question's row) and a conversation cache (``sequential_cached``: everything already
processed is kept from turn to turn) are both *rows that start from computed KV*. A
:class:`RowCache` holds that KV for one row: the token ids it was computed for, in order, at
positions ``0..n-1``, and one ``(H_kv, n, D)`` key and value tensor per layer. Rows that
all start from one row cache read it in place where the model allows it
(:class:`SharedPastLayer`: the cache holds it once, each row only what follows); otherwise
the engine left-pads the rows' caches to a common length and stacks them into the batch's
``DynamicCache`` (so ``G`` rows starting from one prefix hold ``G`` real copies of it, and
the engine's KV figures count them). It can hand each row's KV back at the end of a call.

The engine's batch cache is a transformers ``DynamicCache`` whose full-attention layers
are :class:`GrowingLayer`: the stock layer concatenates every step's keys onto the whole
cache (a copy of all of it, every step), which on long contexts costs more than the step's
compute; this one writes into a buffer reserved for the call and hands attention a view.

Shapes: ``B`` rows, ``H`` key/value heads, ``n`` cached tokens, ``P`` the longest row cache,
``D`` head dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicLayer

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


# On CUDA a call's buffers hold a multiple of this many slots: inductor specialises compiled
# CUDA kernels on whether a size is divisible by 16 bytes, so a step compiled for one buffer
# length was compiled again (about 20 s on an H200's host) for a call whose length differed in
# that. The CPU's compiled step is not specialised so, and aligned buffers measured slower
# there (the embedded model, fp32, 2-core Intel Xeon: 54.7 against 52.0 ms per step for five
# rows, 52.6 against 49.8 for five branches, medians of one A/B run): they are not rounded.
ROOM_MULTIPLE = 16


def reserved_slots(tokens: int, device: torch.device) -> int:
    """The slots per row to reserve for ``tokens`` tokens on ``device``: on CUDA rounded up to
    a multiple of :data:`ROOM_MULTIPLE`, elsewhere ``tokens``."""
    if device.type != "cuda":
        return tokens
    return -(-tokens // ROOM_MULTIPLE) * ROOM_MULTIPLE


def new_cache(config, tokens: int = 0):
    """An empty ``DynamicCache`` for a model whose full-attention layers are
    :class:`GrowingLayer`, with room reserved for ``tokens`` tokens per row."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer(tokens) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


class GrowingLayer(DynamicLayer):
    """A full-attention cache layer that appends into a buffer reserved ahead (for a whole
    call: prompt and answers), so a step copies only its own tokens, not the whole cache;
    ``keys`` and ``values`` are views of the buffer's first ``n`` slots.

    Args:
        reserve: tokens per row to allocate room for on the first write.
    """

    def __init__(self, reserve: int = 0) -> None:
        super().__init__()
        self.reserve = reserve
        self.buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        old = self.keys.shape[-2] if self.keys.numel() else 0
        new = old + key_states.shape[-2]
        buf = self.buffers
        if buf is None or new > buf[0].shape[-2] or buf[0].shape[:2] != key_states.shape[:2] \
                or self.keys.data_ptr() != buf[0].data_ptr():
            room = max(new, self.reserve, int(new * 1.25) + 16 if buf is not None else 0)
            buf = tuple(t.new_empty((*t.shape[:2], room, t.shape[-1])) for t in (key_states, value_states))
            if old:
                buf[0][..., :old, :] = self.keys
                buf[1][..., :old, :] = self.values
            self.buffers = buf
        buf[0][..., old:new, :] = key_states
        buf[1][..., old:new, :] = value_states
        self.keys, self.values = buf[0][..., :new, :], buf[1][..., :new, :]
        return self.keys, self.values

    def start(self, like: torch.Tensor, rows: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Begin an empty layer with ``length`` slots per row to be filled in place (row
        caches stacked straight into the buffer, with no intermediate copy).

        Args:
            like: a ``(H, n, D)`` key tensor giving heads, head size, dtype and device.

        Returns:
            the ``(rows, H, length, D)`` key and value views to fill.
        """
        h, _, d = like.shape
        room = max(length, self.reserve)
        self.buffers = (like.new_empty((rows, h, room, d)), like.new_empty((rows, h, room, d)))
        self.lazy_initialization(self.buffers[0], self.buffers[1])
        self.keys, self.values = self.buffers[0][..., :length, :], self.buffers[1][..., :length, :]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.buffers is None or self.get_seq_length() == 0:
            return super().batch_select_indices(indices)
        n = self.keys.shape[-2]
        self.buffers = tuple(t[indices, ...] for t in self.buffers)
        self.keys, self.values = self.buffers[0][..., :n, :], self.buffers[1][..., :n, :]

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.buffers = None
        super().batch_repeat_interleave(repeats)

    def reset(self) -> None:
        self.buffers = None
        super().reset()

    @property
    def held_bytes(self) -> int:
        """Memory the layer holds: its whole buffer, not only the slots in use."""
        tensors = self.buffers if self.buffers is not None else (self.keys, self.values)
        return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


class SharedPastLayer(GrowingLayer):
    """A :class:`GrowingLayer` whose rows all start from one past, held once.

    ``G`` rows that start from the same prefix (``batch_cached``: the context prefilled once,
    then one row per question) need not hold ``G`` copies of its KV: this layer keeps the
    past's ``(H, P, D)`` keys and values as they are (no copy) and grows, per row, only what
    follows them (``keys``/``values``: ``(B, H, n, D)``, the rows' own slots). Attention then
    reads the past from that one copy for every row
    (:func:`~paralleldecode.decoding.attention.shared_past_attention`), as a serving engine's
    prefix cache reads shared blocks. Sequence lengths count the past.

    Args:
        reserve: own slots per row to allocate room for on the first write.
        past_keys: ``(H, P, D)``.
        past_values: ``(H, P, D)``.
    """

    def __init__(self, reserve: int, past_keys: torch.Tensor, past_values: torch.Tensor) -> None:
        super().__init__(reserve)
        self.past_keys, self.past_values = past_keys, past_values

    @property
    def past_length(self) -> int:
        return self.past_keys.shape[-2]

    def get_seq_length(self) -> int:
        return self.past_length + super().get_seq_length()

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    @property
    def held_bytes(self) -> int:
        past = sum(t.numel() * t.element_size() for t in (self.past_keys, self.past_values))
        return super().held_bytes + past


def shared_past_cache(config, past: RowCache, tokens: int):
    """An empty batch cache whose rows all start from ``past`` without copying it (see
    :class:`SharedPastLayer`), with room for ``tokens`` own tokens per row; None when a layer
    of the model is not a full-attention one (the rows then take copies)."""
    cache = new_cache(config, tokens)
    if len(cache.layers) != len(past.keys) or any(type(layer) is not GrowingLayer for layer in cache.layers):
        return None
    cache.layers = [SharedPastLayer(tokens, k, v) for k, v in zip(past.keys, past.values)]
    return cache


def shares_past(cache) -> bool:
    """Whether ``cache`` is one of :func:`shared_past_cache`'s."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and isinstance(layers[0], SharedPastLayer)


def cache_layers(cache) -> list:
    """The per-layer objects of a transformers cache, refusing layers that drop tokens."""
    layers = list(getattr(cache, "layers", []))
    if any(getattr(layer, "is_sliding", False) for layer in layers):
        raise ValueError("row caches need full-attention KV layers; this model has sliding-window "
                         "layers, whose cache drops old tokens")
    return layers


def fill_left_padded(cache, length: int, blocks) -> None:
    """Fill the empty transformers ``cache`` with rows of ``length`` slots, each block of
    rows left-padded (pad slots hold zeros: masked, but never NaN).

    Args:
        length: slots per row.
        blocks: ``blocks(i)`` gives layer ``i``'s rows in order, as ``(b, keys, values)``
            blocks of ``(b, H, n, D)`` tensors with ``n <= length`` (None, None for ``b``
            rows that hold nothing).
    """
    for i, layer in enumerate(cache.layers):
        parts = blocks(i)
        like = next(k for _, k, _ in parts if k is not None)[0]
        rows = sum(b for b, _, _ in parts)
        if isinstance(layer, GrowingLayer):
            outs = layer.start(like, rows, length)
        else:
            outs = (like.new_empty((rows, like.shape[0], length, like.shape[-1])),
                    like.new_empty((rows, like.shape[0], length, like.shape[-1])))
        for j, out in enumerate(outs):
            r = 0
            for b, *kv in parts:
                src = kv[j]
                n = src.shape[-2] if src is not None else 0
                if n < length:
                    out[r:r + b, :, : length - n].zero_()
                if n:
                    out[r:r + b, :, length - n:] = src
                r += b
        if not isinstance(layer, GrowingLayer):
            cache.update(outs[0], outs[1], i)


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
    fill_left_padded(cache, longest, lambda i: [
        (1, p.keys[i][None], p.values[i][None]) if p is not None and len(p) else (1, None, None) for p in pasts])
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
