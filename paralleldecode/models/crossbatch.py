"""Cross-batch interaction: sequences of one batch read each other's hidden states.

At every decoding step the hidden state of each sequence's latest token, ``H`` of shape
``(B, D)``, goes through a cross-batch module before the LM head. The module computes an
*info* term ``info`` of shape ``(B, D)`` for every sequence from the states of the **other**
sequences and combines it with ``H``.

Two info sources:

* :class:`CrossBatchAttention`: multi-head attention across the batch with learnable
  ``W_q, W_k, W_v, W_o``; ``info = W_o(A V)``.
* :class:`CrossBatchEmbeddingMixer`: parameter-free; cosine similarity between states
  (divided by a temperature) softmax-weights an average of the other states,
  ``info = A H``.

Self-exclusion: the diagonal of the ``B x B`` score matrix is masked before the softmax, so
a sequence never attends to itself. Row ``i`` of the weights ``A`` has ``A[i, i] == 0`` and
sums to one over the other (allowed) sequences: the values averaged into ``info[i]`` are
only those of the others; ``H[i]`` enters ``info[i]`` only through the query / similarity
that chooses the weights.

Groups: an optional ``groups`` tensor ``(B,)`` says which sequences belong together; pairs
with different group ids are masked out exactly like the diagonal, so sequences of different
groups never influence each other.

Identity cases (exact, ``torch.equal``): with ``B == 1``, and for every sequence that is
alone in its group (no partner left after masking), the output row is the input row
unchanged; its ``info`` row is defined as zero (for attention this also drops ``W_o``'s bias).

Combinations (see :class:`CrossBatchMixer`):

* ``"scale"``: attention: ``(1 - alpha) * H + alpha * info`` with ``alpha = sigmoid(a)``, a
  learnable scalar initialised so ``alpha == alpha_init``; mixer: ``H + s * info`` with a
  learnable scalar ``s`` initialised to ``scale_init`` (``0.0``: an untrained mixer is the
  identity).
* ``"gate"`` (question-aware): ``H + g * info`` with ``g = sigmoid(MLP([H, info]))`` of shape
  ``(B, 1)``, one gate per sequence.
"""

from __future__ import annotations

import math

import torch
from torch import nn

MODULES = ("attention", "mixer")
COMBINES = ("scale", "gate")

__all__ = [
    "COMBINES",
    "MODULES",
    "CrossBatchAttention",
    "CrossBatchEmbeddingMixer",
    "CrossBatchMixer",
    "partner_mask",
]


def _check_choice(name: str, value: str, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ValueError(
            f"unknown {name} {value!r}; accepted values: {', '.join(repr(a) for a in accepted)}"
        )


def _check_input(hidden: torch.Tensor, groups: torch.Tensor | None, hidden_size: int) -> None:
    if hidden.dim() != 2 or hidden.shape[1] != hidden_size:
        raise ValueError(
            f"expected hidden states of shape (B, {hidden_size}), got {tuple(hidden.shape)}"
        )
    if groups is not None and tuple(groups.shape) != (hidden.shape[0],):
        raise ValueError(
            f"groups must have shape ({hidden.shape[0]},), got {tuple(groups.shape)}"
        )


def partner_mask(batch_size: int, groups: torch.Tensor | None = None,
                 device: torch.device | None = None) -> torch.Tensor:
    """Which sequences may read which: ``mask[i, j]`` is True when ``j`` informs ``i``.

    Args:
        batch_size: ``B``.
        groups: optional group ids ``(B,)``; only pairs with equal ids are allowed.
        device: device of the mask (defaults to ``groups``' device, else CPU).

    Returns:
        Bool tensor ``(B, B)``, False on the diagonal (self-exclusion) and across groups.
    """
    if groups is not None:
        device = groups.device
    eye = torch.eye(batch_size, dtype=torch.bool, device=device)
    if groups is None:
        return ~eye
    return (groups[:, None] == groups[None, :]) & ~eye


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim restricted to ``mask``; rows with no True give all zeros."""
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    # Masked entries underflow to exactly 0 when the row has an allowed entry; a row with
    # none comes out uniform, and multiplying by the mask zeroes it.
    return torch.softmax(filled, dim=-1) * mask.to(scores.dtype)


class _CrossBatchSource(nn.Module):
    """Base of the info sources: ``info(H, groups) -> (B, D)`` plus its own combination."""

    hidden_size: int

    def weights(self, hidden: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def info(self, hidden: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def combine(self, hidden: torch.Tensor, info: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, hidden: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Mix ``hidden`` with the other sequences' states (the module's "scale" form).

        Args:
            hidden: ``(B, D)`` latest-token hidden states.
            groups: optional ``(B,)`` group ids; mixing stays within a group.

        Returns:
            ``(B, D)``; rows without partners (``B == 1``, singleton groups) equal the input.
        """
        return self.mix(hidden, groups, self.combine)

    def mix(self, hidden: torch.Tensor, groups: torch.Tensor | None, combine) -> torch.Tensor:
        """``combine(hidden, info)`` for rows with partners; the input row, exactly, for the
        others (``B == 1``, singleton groups). Both combinations go through here."""
        _check_input(hidden, groups, self.hidden_size)
        if hidden.shape[0] == 1:
            return hidden.clone()
        has_partner = partner_mask(hidden.shape[0], groups, hidden.device).any(dim=1)
        out = combine(hidden, self.info(hidden, groups))
        return torch.where(has_partner[:, None], out, hidden)


class CrossBatchAttention(_CrossBatchSource):
    """Multi-head attention across the batch, excluding each sequence itself.

    Every sequence is a query; keys and values are the other sequences of its group:
    ``A = softmax_masked(Q K^T / sqrt(d_head))`` per head (``(heads, B, B)``, zero diagonal),
    ``info = W_o(A V)``. :meth:`forward` returns ``(1 - alpha) * H + alpha * info`` with
    ``alpha = sigmoid(alpha_logit)`` in ``(0, 1)``.

    Args:
        hidden_size: ``D``; must be divisible by ``num_heads``.
        num_heads: number of attention heads.
        alpha_init: initial ``alpha`` in ``(0, 1)``.
        learn_combination: when False no ``alpha`` parameter is created (used by
            :class:`CrossBatchMixer` with ``combine="gate"``, which combines itself);
            :meth:`forward` then raises.
    """

    def __init__(self, hidden_size: int, num_heads: int = 4, alpha_init: float = 0.1,
                 learn_combination: bool = True) -> None:
        super().__init__()
        if num_heads < 1 or hidden_size % num_heads:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})"
            )
        if not 0.0 < alpha_init < 1.0:
            raise ValueError(f"alpha_init must lie in (0, 1), got {alpha_init}")
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.o_proj = nn.Linear(hidden_size, hidden_size)
        self.alpha_logit: nn.Parameter | None = None
        if learn_combination:
            logit = math.log(alpha_init / (1.0 - alpha_init))
            self.alpha_logit = nn.Parameter(torch.tensor([logit]))  # 1-D: FSDP2 refuses scalars

    @property
    def alpha(self) -> torch.Tensor:
        """The mixing weight ``sigmoid(alpha_logit)``, shape ``(1,)``, in ``(0, 1)``."""
        if self.alpha_logit is None:
            raise RuntimeError("built with learn_combination=False: no alpha")
        return torch.sigmoid(self.alpha_logit)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # (B, D) -> (heads, B, d_head)
        return x.view(x.shape[0], self.num_heads, self.head_dim).transpose(0, 1)

    def weights(self, hidden: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Attention weights.

        Args:
            hidden: ``(B, D)``.
            groups: optional ``(B,)`` group ids.

        Returns:
            ``(heads, B, B)``; ``[h, i, j]`` is how much ``i`` reads ``j``. Zero on the
            diagonal and across groups; each row sums to 1, or is all zero without partners.
        """
        q = self._heads(self.q_proj(hidden))
        k = self._heads(self.k_proj(hidden))
        scores = q @ k.transpose(1, 2) / math.sqrt(self.head_dim)
        mask = partner_mask(hidden.shape[0], groups, hidden.device)
        return _masked_softmax(scores, mask[None])

    def info(self, hidden: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-batch contribution ``W_o(A V)``.

        Args:
            hidden: ``(B, D)``.
            groups: optional ``(B,)`` group ids.

        Returns:
            ``(B, D)``; rows of sequences without partners are exactly zero.
        """
        _check_input(hidden, groups, self.hidden_size)
        attn = self.weights(hidden, groups)                      # (heads, B, B)
        context = attn @ self._heads(self.v_proj(hidden))        # (heads, B, d_head)
        context = context.transpose(0, 1).reshape(hidden.shape)  # (B, D)
        has_partner = partner_mask(hidden.shape[0], groups, hidden.device).any(dim=1)
        return torch.where(has_partner[:, None], self.o_proj(context),
                           torch.zeros_like(hidden))

    def combine(self, hidden: torch.Tensor, info: torch.Tensor) -> torch.Tensor:
        """``(1 - alpha) * hidden + alpha * info``, both ``(B, D)``."""
        alpha = self.alpha
        return (1.0 - alpha) * hidden + alpha * info


class CrossBatchEmbeddingMixer(_CrossBatchSource):
    """Parameter-free similarity-weighted average of the other sequences' states.

    ``S[i, j] = cos(H[i], H[j]) / temperature``; the diagonal and other groups are masked,
    ``A = softmax(S)`` row-wise and ``info = A H``: ``info[i]`` is a convex combination of
    the other sequences' states. :meth:`forward` returns ``H + s * info`` with a learnable
    scalar ``s`` (initialised to ``scale_init``).

    Args:
        hidden_size: ``D``.
        temperature: softmax temperature (> 0); smaller is sharper.
        scale_init: initial ``s``; ``0.0`` makes the untrained module the identity.
        learn_combination: when False no ``s`` parameter is created (the module is then
            parameter-free; used by :class:`CrossBatchMixer` with ``combine="gate"``).
    """

    def __init__(self, hidden_size: int, temperature: float = 1.0, scale_init: float = 0.0,
                 learn_combination: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.hidden_size = hidden_size
        self.temperature = float(temperature)
        self.scale: nn.Parameter | None = None
        if learn_combination:
            self.scale = nn.Parameter(torch.tensor([float(scale_init)]))  # 1-D: FSDP2 refuses scalars

    def weights(self, hidden: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Mixing weights.

        Args:
            hidden: ``(B, D)``.
            groups: optional ``(B,)`` group ids.

        Returns:
            ``(B, B)``, zero on the diagonal and across groups; rows sum to 1 (or are zero).
        """
        unit = nn.functional.normalize(hidden, dim=-1)
        scores = unit @ unit.T / self.temperature
        return _masked_softmax(scores, partner_mask(hidden.shape[0], groups, hidden.device))

    def info(self, hidden: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted average of the other sequences' states, ``A H``.

        Args:
            hidden: ``(B, D)``.
            groups: optional ``(B,)`` group ids.

        Returns:
            ``(B, D)``; rows of sequences without partners are exactly zero.
        """
        _check_input(hidden, groups, self.hidden_size)
        return self.weights(hidden, groups) @ hidden

    def combine(self, hidden: torch.Tensor, info: torch.Tensor) -> torch.Tensor:
        """``hidden + s * info``, both ``(B, D)``."""
        if self.scale is None:
            raise RuntimeError("built with learn_combination=False: no scale")
        return hidden + self.scale * info


class CrossBatchMixer(nn.Module):
    """An info source (attention or mixer) plus a combination with the input states.

    ``combine="scale"``: the source's own form: attention ``(1 - alpha) * H + alpha * info``,
    mixer ``H + s * info`` (``s`` starts at ``scale_init``, default 0.0).
    ``combine="gate"``: ``H + g * info`` with the question-aware gate
    ``g = sigmoid(W_2 tanh(W_1 [H, info] + b_1) + b_2)`` of shape ``(B, 1)``; the source then
    has no ``alpha`` / ``s``. In both modes rows without partners return the input exactly.

    Args:
        module: ``"attention"`` (:class:`CrossBatchAttention`) or ``"mixer"``
            (:class:`CrossBatchEmbeddingMixer`).
        hidden_size: ``D``.
        combine: ``"scale"`` or ``"gate"``.
        gate_hidden: hidden width of the gate MLP (default ``hidden_size``).
        **module_kwargs: forwarded to the source (``num_heads``, ``alpha_init``,
            ``temperature``, ``scale_init``).
    """

    def __init__(self, module: str, hidden_size: int, combine: str = "scale",
                 gate_hidden: int | None = None, **module_kwargs) -> None:
        super().__init__()
        _check_choice("module", module, MODULES)
        _check_choice("combine", combine, COMBINES)
        self.hidden_size = hidden_size
        learn = combine == "scale"
        if module == "attention":
            self.source: _CrossBatchSource = CrossBatchAttention(
                hidden_size, learn_combination=learn, **module_kwargs)
        else:
            self.source = CrossBatchEmbeddingMixer(
                hidden_size, learn_combination=learn, **module_kwargs)
        self.gate: nn.Sequential | None = None
        if combine == "gate":
            width = gate_hidden or hidden_size
            self.gate = nn.Sequential(
                nn.Linear(2 * hidden_size, width), nn.Tanh(), nn.Linear(width, 1))

    def info(self, hidden: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """The source's info term ``(B, D)`` (zero rows for sequences without partners)."""
        return self.source.info(hidden, groups)

    def gate_values(self, hidden: torch.Tensor, info: torch.Tensor) -> torch.Tensor:
        """Gate ``g`` of shape ``(B, 1)`` in ``(0, 1)`` from ``hidden`` and ``info`` ``(B, D)``."""
        if self.gate is None:
            raise RuntimeError("gate_values needs combine='gate'")
        return torch.sigmoid(self.gate(torch.cat([hidden, info], dim=-1)))

    def forward(self, hidden: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Combine each sequence's state with information from the others.

        Args:
            hidden: ``(B, D)`` latest-token hidden states.
            groups: optional ``(B,)`` group ids; mixing stays within a group.

        Returns:
            ``(B, D)``; rows without partners (``B == 1``, singleton groups) equal the input.
        """
        if self.gate is None:
            return self.source(hidden, groups)
        return self.source.mix(hidden, groups, self._gated)

    def _gated(self, hidden: torch.Tensor, info: torch.Tensor) -> torch.Tensor:
        """``hidden + g * info`` with the question-aware gate, both ``(B, D)``."""
        return hidden + self.gate_values(hidden, info) * info
