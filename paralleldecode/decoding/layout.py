"""How token sequences are laid out in a batch, and who may attend to whom.

The engine decodes *streams* (one answer each). Streams live in *rows* of the batch; a row
may hold one stream (independent rows, as in ``batch``) or several streams that share
tokens (shared-prefix branches). Every cache slot carries an *owner*:

* a stream index ``s >= 0``: only stream ``s`` sees the slot;
* ``SHARED`` (-1): every stream of the row sees it (a common prefix);
* ``PAD`` (-2): nobody sees it (padding).

Masks are built from owners and slot order alone (or, for columnar layouts, owners and
columns: see :mod:`paralleldecode.decoding.columnar`), as an explicit 4D tensor: with custom
positions, transformers must never be left to guess a mask (it would guess packed
sequences). A padding query sees only itself so that no attention row is fully masked
(an all-masked row turns into NaN under sdpa, and a NaN key poisons every real query).

A row may also start from KV computed earlier (``Layout.past``, one
:class:`~paralleldecode.decoding.cache.RowCache` per row): those slots come before the
layout's own, are seen by every stream of the row, and are not computed again.

Shapes: ``B`` rows, ``T`` prompt length, ``L`` cached slots, ``K`` tokens fed per row in a
step, ``S`` streams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from paralleldecode.decoding.cache import RowCache

SHARED = -1
PAD = -2


@dataclass
class Layout:
    """A batch ready for prefill.

    Attributes:
        input_ids: ``(B, T)`` token ids (pad id where ``owner == PAD``).
        position_ids: ``(B, T)`` positions (each stream counts as if it were alone), or
            ``(B, T, 2)`` (column, branch) for a columnar layout, which then masks by
            column (:func:`~paralleldecode.decoding.columnar.column_mask`) instead of
            slot order and needs a model with :class:`~paralleldecode.models.rope2d.Rotary2D`.
        owner: ``(B, T)`` owner of each slot (see the module docstring).
        stream_row: ``(S,)`` row of each stream.
        last_slot: ``(S,)`` column of each stream's last prompt token in its row: the
            logits there give the stream's first generated token.
        next_position: ``(S,)`` position (column) of each stream's first generated token;
            positions count each stream's prompt from 0, so this is also its prompt length
            (:attr:`prompt_tokens`).
        stream_group: ``(S,)`` which streams belong together for cross-batch mixing (the
            engine's ``mixer`` mixes only within a group); by default all streams are one
            group.
        isolate: columnar layouts only: a branch sees the shared slots and its own, not the
            other branches'.
        pending: per stream, prompt tokens that are not in the prefill but fed one per
            decoding step before the stream starts generating (columnar layouts keep every
            step's tokens in one column); None = none.
        past: per row, KV already computed for tokens that precede the row's slots (or
            None for a row without): positions then continue after it, and every stream of
            the row sees it. None = no row has any.
        parts: for a layout stacked from others (:func:`stack_layouts`), those layouts in
            order; the engine prefills them apart or, short ones, side by side in one row
            (:func:`side_by_side`, :func:`~paralleldecode.decoding.engine.part_batches`)
            and decodes them together.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    owner: torch.Tensor
    stream_row: torch.Tensor
    last_slot: torch.Tensor
    next_position: torch.Tensor
    stream_group: torch.Tensor | None = None
    isolate: bool = False
    pending: list[list[int]] | None = None
    past: list[RowCache | None] | None = None
    parts: list[Layout] | None = None

    def __post_init__(self) -> None:
        if self.stream_group is None:
            self.stream_group = torch.zeros(self.stream_row.numel(), dtype=torch.long)
        if self.pending is None:
            self.pending = [[] for _ in range(self.num_streams)]
        if self.past is not None and len(self.past) != self.input_ids.shape[0]:
            raise ValueError(f"Layout.past has {len(self.past)} entries for {self.input_ids.shape[0]} rows")
        if self.past is not None and self.columnar:
            raise ValueError("columnar layouts cannot start from a row cache (Layout.past)")

    @property
    def past_tokens(self) -> int:
        """Tokens held in the rows' caches (``past``), over all rows."""
        return sum(len(p) for p in self.past or () if p is not None)

    @property
    def columnar(self) -> bool:
        """Whether positions are 2D (column, branch) and masks follow columns."""
        return self.position_ids.dim() == 3

    @property
    def columns(self) -> torch.Tensor | None:
        """``(B, T)`` column of each slot for a columnar layout, else None."""
        return self.position_ids[..., 0] if self.columnar else None

    @property
    def stream_branch(self) -> torch.Tensor | None:
        """``(S,)`` branch id of each stream (the second coordinate of its 2D positions, read
        at its last prompt slot) for a columnar layout, else None."""
        if not self.columnar:
            return None
        return self.position_ids[self.stream_row, self.last_slot, 1]

    @property
    def prompt_tokens(self) -> torch.Tensor:
        """``(S,)`` tokens of each stream's own prompt (shared ones included)."""
        return self.next_position

    @property
    def num_streams(self) -> int:
        return int(self.stream_row.numel())

    @property
    def processed_tokens(self) -> int:
        """Prompt tokens the model computes, padding excluded: the prefill's, plus pending
        ones (fed during the decoding steps); tokens of ``past`` were computed before."""
        return int((self.owner != PAD).sum()) + sum(len(p) for p in self.pending)


def independent_rows(sequences: list[list[int]], pad_id: int,
                     past: list[RowCache | None] | None = None) -> Layout:
    """One stream per row, left-padded to the longest sequence.

    Args:
        sequences: ``S`` non-empty lists of token ids (whole prompts).
        pad_id: id written into padding slots (never attended to).
        past: per sequence, a row cache to start from (or None): the leading tokens it
            already holds (see :meth:`RowCache.reusable`) are not computed again; the row
            holds the rest, at positions continuing after them.
    """
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("independent_rows needs at least one sequence, none of them empty")
    n = len(sequences)
    past = list(past) if past is not None else [None] * n
    if len(past) != n:
        raise ValueError(f"independent_rows: {len(past)} row caches for {n} sequences")
    reuse = [p.reusable(s) if p is not None else 0 for p, s in zip(past, sequences)]
    past = [p.prefix(k) if p is not None and k else None for p, k in zip(past, reuse)]
    rest = [s[k:] for s, k in zip(sequences, reuse)]
    t = max(len(s) for s in rest)
    input_ids = torch.full((n, t), pad_id, dtype=torch.long)
    owner = torch.full((n, t), PAD, dtype=torch.long)
    position_ids = torch.zeros((n, t), dtype=torch.long)
    for i, (seq, k) in enumerate(zip(rest, reuse)):
        m = len(seq)
        input_ids[i, t - m:] = torch.tensor(seq, dtype=torch.long)
        owner[i, t - m:] = i
        position_ids[i, t - m:] = torch.arange(k, k + m)
    return Layout(
        input_ids=input_ids,
        position_ids=position_ids,
        owner=owner,
        stream_row=torch.arange(n),
        last_slot=torch.full((n,), t - 1, dtype=torch.long),
        next_position=torch.tensor([len(s) for s in sequences]),
        past=past if any(p is not None for p in past) else None,
    )


def visibility(query_owner: torch.Tensor, key_owner: torch.Tensor) -> torch.Tensor:
    """Which keys each query may see, ignoring slot order.

    Args:
        query_owner: ``(B, Q)``.
        key_owner: ``(B, L)``.

    Returns:
        ``(B, Q, L)`` bool: the key is the query's own stream's or shared, and not padding.
    """
    q = query_owner[:, :, None]
    k = key_owner[:, None, :]
    return ((k == q) | (k == SHARED)) & (k != PAD)


def prefill_mask(owner: torch.Tensor, start: int = 0, segment: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, T - start, T)`` bool mask for the prompt slots ``start..T-1`` (a chunk of a
    prefill, whose keys are every slot up to it): visible, causal by slot order; pads see
    themselves. ``start=0`` is a whole prompt. ``segment``: ``(B, T)``, for layouts laid
    side by side in a row (:func:`side_by_side`): a slot sees only its own segment's."""
    t = owner.shape[1]
    q = torch.arange(start, t, device=owner.device)[:, None]
    causal = torch.arange(t, device=owner.device)[None, :] <= q
    mask = visibility(owner[:, start:], owner) & causal
    if segment is not None:
        mask &= segment[:, start:t, None] == segment[:, None, :t]
    return mask | _pad_self(owner[:, start:], t, start)


def step_mask(cache_owner: torch.Tensor, step_owner: torch.Tensor) -> torch.Tensor:
    """``(B, K, L + K)`` bool mask for one decoding step.

    Tokens fed in the same step belong to different streams and never see each other; each
    sees itself and the cached slots its stream may see.
    """
    past = visibility(step_owner, cache_owner)
    k = step_owner.shape[1]
    own = torch.eye(k, dtype=torch.bool, device=step_owner.device).expand(step_owner.shape[0], k, k)
    return torch.cat([past, own], dim=2)


def layout_mask(
    query_owner: torch.Tensor,
    key_owner: torch.Tensor,
    query_column: torch.Tensor | None = None,
    key_column: torch.Tensor | None = None,
    isolate: bool = False,
) -> torch.Tensor:
    """The one mask rule the engine uses; the queries are the last ``Q`` of the ``L`` keys.

    Without columns, slot order rules: ``Q == L`` is a prompt (:func:`prefill_mask`),
    ``Q < L`` a decoding step whose tokens run in parallel after the cache
    (:func:`step_mask`). With columns, the column-synchronous rule of
    :func:`~paralleldecode.decoding.columnar.column_mask` serves both.

    Args:
        query_owner: ``(B, Q)``.
        key_owner: ``(B, L)``.
        query_column: ``(B, Q)`` or None.
        key_column: ``(B, L)`` or None.
        isolate: columnar rule only (see ``column_mask``).

    Returns:
        ``(B, Q, L)`` bool.
    """
    if query_column is not None:
        from paralleldecode.decoding.columnar import column_mask

        return column_mask(query_owner, query_column, key_owner, key_column, isolate)
    q, length = query_owner.shape[1], key_owner.shape[1]
    if q == length:
        return prefill_mask(key_owner)
    return step_mask(key_owner[:, : length - q], query_owner)


def _pad_self(query_owner: torch.Tensor, kv_len: int, offset: int) -> torch.Tensor:
    """``(B, Q, kv_len)``: True where a padding query meets its own slot (at ``offset + q``)."""
    b, q = query_owner.shape
    eye = torch.zeros(q, kv_len, dtype=torch.bool, device=query_owner.device)
    eye[torch.arange(q), offset + torch.arange(q)] = True
    return eye.expand(b, q, kv_len) & (query_owner == PAD)[:, :, None]


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool ``(B, Q, L)`` -> float ``(B, 1, Q, L)``: 0 where allowed, dtype-min where not.

    Eager attention adds the mask to the scores, so a bool mask there is silently wrong;
    sdpa takes either. The float form works for both.
    """
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    out.masked_fill_(~mask, torch.finfo(dtype).min)
    return out[:, None]


def split_common_prefix(sequences: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Split token sequences into their longest common prefix and the remainders.

    The split is made on token ids, not text, so ``prefix + suffix_i == sequences[i]``
    exactly: sharing the prefix can never change how a prompt was tokenised. The prefix
    stops one token short of the shortest sequence, so every suffix is non-empty (its last
    token yields the stream's first generated token).
    """
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("split_common_prefix needs at least one sequence, none of them empty")
    n = min(len(s) for s in sequences) - 1
    first = sequences[0]
    for s in sequences[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return list(first[:n]), [list(s[n:]) for s in sequences]


def shared_prefix(sequences: list[list[int]], pad_id: int) -> Layout:
    """One row: the sequences' common prefix once, then each remainder as a branch.

    Branch ``i`` sees the prefix and its own tokens only, and its positions continue from
    the prefix as if it were alone, so under greedy decoding each branch produces what
    ``independent_rows`` would produce for ``sequences[i]``, while the prefix is computed
    and cached once instead of once per sequence.

    Args:
        sequences: ``S`` token-id lists (whole prompts).
        pad_id: unused (a single row needs no padding); kept for a uniform signature.
    """
    del pad_id
    prefix, suffixes = split_common_prefix(sequences)
    p = len(prefix)
    ids, owner, pos, last = list(prefix), [SHARED] * p, list(range(p)), []
    for i, suffix in enumerate(suffixes):
        ids.extend(suffix)
        owner.extend([i] * len(suffix))
        pos.extend(range(p, p + len(suffix)))
        last.append(len(ids) - 1)
    lengths = torch.tensor([p + len(s) for s in suffixes])
    return Layout(
        input_ids=torch.tensor([ids]),
        position_ids=torch.tensor([pos]),
        owner=torch.tensor([owner]),
        stream_row=torch.zeros(len(suffixes), dtype=torch.long),
        last_slot=torch.tensor(last),
        next_position=lengths,
    )


def stack_layouts(layouts: list[Layout], pad_id: int) -> Layout:
    """Several layouts as the rows of one (packing groups into one engine call).

    Each layout's rows are left-padded to the longest row (pad slots are seen by nobody, so
    every stream computes what it would alone); stream ``i`` of layout ``k`` becomes stream
    ``i`` plus the streams of the layouts before it, and mixing groups are renumbered so
    that streams of different layouts never share one. The result keeps the layouts
    (``parts``): the engine prefills them apart, or short ones of similar length together,
    and decodes all together.

    Raises:
        ValueError: the layouts mix columnar and 1D positions, or isolating and full
            columnar masks.
    """
    if not layouts:
        raise ValueError("stack_layouts needs at least one layout")
    if len(layouts) == 1:
        return layouts[0]
    first = layouts[0]
    if any(lay.columnar != first.columnar or lay.isolate != first.isolate for lay in layouts):
        raise ValueError("stack_layouts: the layouts differ in positions (columnar or not) or isolate")
    t = max(lay.input_ids.shape[1] for lay in layouts)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in (
        "input_ids", "position_ids", "owner", "stream_row", "last_slot", "next_position", "stream_group")}
    pending, past, streams, rows, groups = [], [], 0, 0, 0
    for lay in layouts:
        b, shift = lay.input_ids.shape
        shift = t - shift
        pos_pad = (b, shift, 2) if lay.columnar else (b, shift)
        parts["input_ids"].append(torch.cat([torch.full((b, shift), pad_id, dtype=torch.long), lay.input_ids], 1))
        parts["position_ids"].append(torch.cat([torch.zeros(pos_pad, dtype=torch.long), lay.position_ids], 1))
        owner = torch.where(lay.owner >= 0, lay.owner + streams, lay.owner)
        parts["owner"].append(torch.cat([torch.full((b, shift), PAD, dtype=torch.long), owner], 1))
        parts["stream_row"].append(lay.stream_row + rows)
        parts["last_slot"].append(lay.last_slot + shift)
        parts["next_position"].append(lay.next_position)
        parts["stream_group"].append(lay.stream_group + groups)
        pending += lay.pending
        past += lay.past if lay.past is not None else [None] * b
        streams, rows = streams + lay.num_streams, rows + b
        groups += int(lay.stream_group.max()) + 1 if lay.num_streams else 0
    return Layout(**{k: torch.cat(v) for k, v in parts.items()}, isolate=first.isolate, pending=pending,
                  past=past if any(p is not None for p in past) else None, parts=list(layouts))


def side_by_side(layouts: list[Layout]) -> tuple[Layout, torch.Tensor]:
    """One-row layouts one after another in a single row, for one prefill without padding.

    Streams are numbered as :func:`stack_layouts` numbers them (layout ``k``'s after the
    streams of the layouts before it); positions stay each layout's own. The row is only a
    prefill's: its slots must see their own layout's alone, which :func:`prefill_mask` does
    given the returned ``(1, T)`` segment (layout ``k``'s slots hold ``k``).

    Raises:
        ValueError: a layout has several rows, 2D positions or a past.
    """
    if any(lay.input_ids.shape[0] != 1 or lay.columnar or lay.past_tokens for lay in layouts):
        raise ValueError("side_by_side takes one-row layouts with 1D positions and no past")
    ids, positions, owner, last, segment, pending = [], [], [], [], [], []
    streams = width = 0
    for k, lay in enumerate(layouts):
        ids.append(lay.input_ids)
        positions.append(lay.position_ids)
        owner.append(torch.where(lay.owner >= 0, lay.owner + streams, lay.owner))
        last.append(lay.last_slot + width)
        segment.append(torch.full_like(lay.owner, k))
        pending += lay.pending
        streams += lay.num_streams
        width += lay.input_ids.shape[1]
    row = Layout(input_ids=torch.cat(ids, 1), position_ids=torch.cat(positions, 1), owner=torch.cat(owner, 1),
                 stream_row=torch.zeros(streams, dtype=torch.long), last_slot=torch.cat(last),
                 next_position=torch.cat([lay.next_position for lay in layouts]), pending=pending)
    return row, torch.cat(segment, 1)
