"""The columnar layout: branches that unfold side by side after one background.

Every token has a 2D position ``(column, branch)``. The background is branch 0 at columns
``0..N-1``; branch ``b = 1..K`` holds its tokens at columns ``N, N+1, ...``, so the first
tokens of all branches share column ``N``. Attention is *column-synchronous*: a token at
column ``c`` sees every real token at a column ``< c`` (the background and every branch's
earlier tokens) and itself, never another token of its own column. The *isolating* variant
lets a branch see only the background and its own earlier tokens (then each branch is its
own prompt run alone, as in ``one_sequence``). Pads (right padding of shorter branches and
of shorter batch rows) are seen by nobody and see only themselves (an all-masked row would
turn into NaN under sdpa).

How this departs from a causal sequence: slot order carries no meaning; only the owner
and the column of a slot decide visibility, so the same rule (:func:`column_mask`) serves
training (the whole layout at once), the prefill, and every decoding step (cache keys plus
the step's tokens, which all sit in one column and so never see each other).

Training labels are per slot and *not* shifted by the usual causal-LM convention: the
token that follows slot ``t`` is the next token of the same branch, which in this layout
is rarely the next slot. Use :func:`columnar_loss`, never the model's own ``labels=``.

Shapes: ``B`` rows, ``T`` slots, ``Q`` query slots, ``L`` key slots, ``K`` branches,
``N`` background tokens, ``V`` vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from paralleldecode.decoding.layout import PAD, SHARED, Layout, additive, split_common_prefix

IGNORE_INDEX = -100


@dataclass
class ColumnarRows:
    """The linearised layout of one or more samples, rows padded to the same length.

    Slot order per row: the background (columns ``0..N-1``), then branch 1's tokens
    (columns ``N, N+1, ...``) right-padded to the row's longest branch, then branch 2's,
    and so on (branch-major); the row is then padded to the batch's longest row.

    Attributes:
        input_ids: ``(B, T)`` token ids (``pad_id`` in pad slots).
        owner: ``(B, T)`` ``SHARED`` for the background, ``b - 1`` for branch ``b``'s
            tokens, ``PAD`` for padding.
        column: ``(B, T)`` column of each slot (0 for pads).
        branch: ``(B, T)`` branch id of each slot: 0 for the background and for pads.
        slots: ``slots[row][b - 1]`` lists the slot of each token of branch ``b``.
    """

    input_ids: torch.Tensor
    owner: torch.Tensor
    column: torch.Tensor
    branch: torch.Tensor
    slots: list[list[list[int]]]

    @property
    def position_ids(self) -> torch.Tensor:
        """``(B, T, 2)`` (column, branch) per slot, as :class:`Rotary2D` takes them."""
        return torch.stack([self.column, self.branch], dim=-1)

    @property
    def is_pad(self) -> torch.Tensor:
        """``(B, T)`` bool."""
        return self.owner == PAD

    def mask(self, isolate: bool = False) -> torch.Tensor:
        """``(B, T, T)`` bool attention mask of the whole layout (see :func:`column_mask`)."""
        return column_mask(self.owner, self.column, self.owner, self.column, isolate)


def _check_sample(background: list[int], branches: list[list[int]], where: str) -> None:
    if not branches:
        raise ValueError(f"{where}: a columnar sample needs at least one branch; got none")
    empty = [b + 1 for b, toks in enumerate(branches) if len(toks) == 0]
    if empty:
        raise ValueError(f"{where}: branches {empty} are empty; every branch needs at least one token")


def linearise(samples: list[tuple[list[int], list[list[int]]]], pad_id: int) -> ColumnarRows:
    """Lay out ``(background, branches)`` samples, one per row (see :class:`ColumnarRows`).

    Args:
        samples: ``B`` pairs of background token ids (may be empty) and ``K_i >= 1``
            non-empty branches of token ids.
        pad_id: id written into pad slots.

    Raises:
        ValueError: no samples, a sample without branches, or an empty branch.
    """
    if not samples:
        raise ValueError("linearise needs at least one sample")
    rows = []
    for r, (background, branches) in enumerate(samples):
        _check_sample(background, branches, f"sample {r}")
        n, width = len(background), max(len(b) for b in branches)
        ids, owner = list(background), [SHARED] * n
        column, branch, slots = list(range(n)), [0] * n, []
        for b, toks in enumerate(branches):
            slots.append(list(range(len(ids), len(ids) + len(toks))))
            pad = width - len(toks)
            ids += list(toks) + [pad_id] * pad
            owner += [b] * len(toks) + [PAD] * pad
            column += list(range(n, n + len(toks))) + [0] * pad
            branch += [b + 1] * len(toks) + [0] * pad
        rows.append((ids, owner, column, branch, slots))
    t = max(len(r[0]) for r in rows)

    def stack(k: int, fill: int) -> torch.Tensor:
        return torch.tensor([r[k] + [fill] * (t - len(r[k])) for r in rows], dtype=torch.long)

    return ColumnarRows(stack(0, pad_id), stack(1, PAD), stack(2, 0), stack(3, 0), [r[4] for r in rows])


def column_mask(query_owner: torch.Tensor, query_column: torch.Tensor, key_owner: torch.Tensor,
                key_column: torch.Tensor, isolate: bool = False) -> torch.Tensor:
    """Column-synchronous visibility; the queries are the last ``Q`` of the ``L`` key slots.

    That convention covers both uses: the whole layout (``Q == L``: training, prefill) and a
    decoding step (keys = the cache then the step's tokens, queries = the step's tokens).

    Args:
        query_owner: ``(B, Q)`` ``SHARED``, a branch/stream index, or ``PAD``.
        query_column: ``(B, Q)``.
        key_owner: ``(B, L)``.
        key_column: ``(B, L)``.
        isolate: a branch sees only the background (``SHARED``) and its own tokens.

    Returns:
        ``(B, Q, L)`` bool, True = may attend: a real query sees real keys at earlier
        columns (only its own branch's and the background's with ``isolate``) and itself;
        a pad query sees only itself; a pad key is seen by nobody but itself.
    """
    q, length = query_owner.shape[1], key_owner.shape[1]
    if q > length:
        raise ValueError(f"column_mask: {q} queries but only {length} keys; the queries must be "
                         "the last key slots")
    qo, ko = query_owner[:, :, None], key_owner[:, None, :]
    mask = (key_column[:, None, :] < query_column[:, :, None]) & (ko != PAD) & (qo != PAD)
    if isolate:
        mask &= (ko == SHARED) | (ko == qo)
    own = torch.zeros(q, length, dtype=torch.bool, device=query_owner.device)
    own[torch.arange(q), length - q + torch.arange(q)] = True
    return mask | own


def columnar_batch(
    samples: list[tuple[list[int], list[list[int]], list[list[bool]]]],
    pad_id: int,
    isolate: bool = False,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """A training batch in the columnar layout.

    Args:
        samples: ``B`` triples ``(background_ids, branches, loss_masks)``: ``loss_masks[k]``
            is aligned with ``branches[k]``; True marks a token the model must predict.
            A branch's first token is never a target: in this layout only the background's
            last token precedes it, and that slot is shared by every branch (its mask entry
            is ignored). With an empty background the first tokens see nothing but
            themselves.
        pad_id: id for pad slots.
        isolate: the isolating variant of the mask.
        dtype: dtype of the additive mask (the model's compute dtype).

    Returns:
        a dict with

        * ``input_ids``: ``(B, T)`` long;
        * ``position_ids``: ``(B, T, 2)`` long, (column, branch);
        * ``attention_mask``: ``(B, 1, T, T)`` additive ``dtype`` mask (0 = attend,
          ``finfo(dtype).min`` = blocked), right for eager and sdpa attention;
        * ``labels``: ``(B, T)`` long, already aligned, not to be shifted: ``labels[r, t]``
          is the id of the token that follows slot ``t`` *in its own branch* when that
          token is a target, else ``-100`` (background slots, each branch's last token,
          non-targets, pads). Feed ``(logits, labels)`` to :func:`columnar_loss`, never to
          the model's ``labels=`` (which would shift them by one slot).

    Raises:
        ValueError: an empty branch or a sample without branches, or loss masks whose
            shape does not match the branches.
    """
    for r, (background, branches, masks) in enumerate(samples):
        _check_sample(background, branches, f"sample {r}")
        if len(masks) != len(branches) or any(len(m) != len(b) for m, b in zip(masks, branches)):
            raise ValueError(
                f"sample {r}: loss_masks must give one bool per branch token; branch lengths "
                f"{[len(b) for b in branches]}, mask lengths {[len(m) for m in masks]}"
            )
    rows = linearise([(bg, br) for bg, br, _ in samples], pad_id)
    labels = torch.full_like(rows.input_ids, IGNORE_INDEX)
    for r, (_, branches, masks) in enumerate(samples):
        for toks, mask, slots in zip(branches, masks, rows.slots[r]):
            for j in range(len(toks) - 1):
                if mask[j + 1]:
                    labels[r, slots[j]] = toks[j + 1]
    return {
        "input_ids": rows.input_ids,
        "position_ids": rows.position_ids,
        "attention_mask": additive(rows.mask(isolate), dtype),
        "labels": labels,
    }


def columnar_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over slots whose label is not ``-100``; no shift.

    Args:
        logits: ``(B, T, V)`` the model's logits over the batch's ``input_ids``.
        labels: ``(B, T)`` from :func:`columnar_batch`.

    Returns:
        a scalar (0, still attached to the graph, when no slot has a target).
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"columnar_loss: logits {tuple(logits.shape)} and labels "
                         f"{tuple(labels.shape)} disagree on (B, T)")
    if not bool((labels != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX)


def columnar_segments(renderer, group) -> tuple[list[int], list[list[int]]]:
    """The background and branches of a question group, as the strategy decodes them.

    Each question is rendered as its own ``one_question`` prompt primed with
    ``ONE_ANSWER.prefix``; the background is the prompts' longest common token prefix
    (instructions and context), each branch the rest (its question and the assistant header
    up to ``{"answer": "``). Training appends the tokens of ``answer + ONE_ANSWER.close`` to
    each branch as targets.

    Args:
        renderer: a :class:`~paralleldecode.prompts.PromptRenderer`.
        group: a :class:`~paralleldecode.data.records.QuestionGroup`.

    Returns:
        ``(background_ids, [branch_ids per question])``.
    """
    from paralleldecode.prompts import ONE_ANSWER, one_question

    return split_common_prefix([renderer.ids(one_question(group, q), ONE_ANSWER.prefix)
                                for q in group.questions])


def columnar_layout(background: list[int], branches: list[list[int]], pad_id: int,
                    isolate: bool = False) -> Layout:
    """One row for the decoding engine: stream ``i`` is branch ``i + 1``.

    Decoding is column-synchronous: every step feeds one token per live branch, all at the
    same column. With the full (non-isolating) rule a branch's prompt token at column
    ``c`` must see the other branches' tokens at columns ``< c``, generated ones included,
    so the prefill holds only columns ``< N + shortest branch``; the rest of each longer
    branch's prompt is fed one token per step (``Layout.pending``) while the shorter
    branches already generate. With ``isolate`` nothing depends on other branches, so the
    whole prompt is prefilled (this is then the ``shared_prefix`` layout with 2D positions).

    Slots are packed without pads, column by column (the mask ignores slot order, but a
    chunked prefill computes slots in order, and column order puts everything a slot may
    see before it or beside it in its chunk).

    Args:
        background: ``N`` token ids (may be empty).
        branches: ``K`` non-empty token-id lists.
        pad_id: unused (one row needs no padding); kept for a uniform signature.
        isolate: the isolating variant.
    """
    del pad_id
    _check_sample(background, branches, "columnar_layout")
    n = len(background)
    take = [len(b) for b in branches] if isolate else [min(len(b) for b in branches)] * len(branches)
    ids, owner, column, branch, last = list(background), [SHARED] * n, list(range(n)), [0] * n, []
    for b, toks in enumerate(branches):
        ids += toks[: take[b]]
        owner += [b] * take[b]
        column += list(range(n, n + take[b]))
        branch += [b + 1] * take[b]
        last.append(len(ids) - 1)
    order = sorted(range(len(ids)), key=column.__getitem__)  # stable: branch order within a column
    slot_of = {old: new for new, old in enumerate(order)}
    ids, owner, column, branch = ([seq[j] for j in order] for seq in (ids, owner, column, branch))
    last = [slot_of[j] for j in last]
    lengths = torch.tensor([n + len(b) for b in branches])
    return Layout(
        input_ids=torch.tensor([ids]),
        position_ids=torch.stack([torch.tensor([column]), torch.tensor([branch])], dim=-1),
        owner=torch.tensor([owner]),
        stream_row=torch.zeros(len(branches), dtype=torch.long),
        last_slot=torch.tensor(last),
        next_position=lengths,
        isolate=isolate,
        pending=[list(toks[take[b]:]) for b, toks in enumerate(branches)],
    )


def columnar_prompts(sequences: list[list[int]], pad_id: int, isolate: bool = False) -> Layout:
    """:func:`columnar_layout` of whole prompts: their common prefix is the background."""
    background, branches = split_common_prefix(sequences)
    return columnar_layout(background, branches, pad_id, isolate)
