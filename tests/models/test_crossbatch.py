"""Cross-batch modules: identity cases, self-exclusion, mixing, groups, gradients, options."""

from __future__ import annotations

import itertools

import pytest
import torch

from paralleldecode.models.crossbatch import (
    CrossBatchAttention,
    CrossBatchEmbeddingMixer,
    CrossBatchMixer,
    partner_mask,
)

D = 16
CASES = list(itertools.product(("attention", "mixer"), ("scale", "gate")))
IDS = [f"{m}-{c}" for m, c in CASES]


def _build(module: str, combine: str) -> CrossBatchMixer:
    torch.manual_seed(0)
    kwargs = {"scale_init": 0.7} if (module == "mixer" and combine == "scale") else {}
    # scale_init != 0 so the "scale" mixer actually mixes (s = 0 would be the identity).
    return CrossBatchMixer(module, D, combine=combine, **kwargs)


def _states(b: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("module", "combine"), CASES, ids=IDS)
def test_single_sequence_is_identity(module, combine):
    m = _build(module, combine)
    h = _states(1)
    assert torch.equal(m(h), h)
    assert torch.equal(m(h, torch.tensor([3])), h)


@pytest.mark.parametrize(("module", "combine"), CASES, ids=IDS)
def test_weights_exclude_self_and_info_is_convex_combination(module, combine):
    m = _build(module, combine)
    h = _states(5)
    w = m.source.weights(h)
    w = w if w.dim() == 3 else w[None]  # (heads, B, B)
    # Exact by construction: the diagonal is masked before the softmax.
    assert torch.all(w.diagonal(dim1=1, dim2=2) == 0)
    assert torch.allclose(w.sum(-1), torch.ones(w.shape[:2]))
    if module == "mixer":
        # info[i] = sum_j A[i, j] H[j] with A[i, i] = 0: only the others' states are averaged.
        assert torch.allclose(m.info(h), w[0] @ h, atol=1e-6)


@pytest.mark.parametrize(("module", "combine"), CASES, ids=IDS)
def test_info_with_one_partner_ignores_own_state(module, combine):
    # With B = 2 each sequence has a single other, whose weight is exactly 1; so info[0]
    # (H[1] for the mixer, W_o(W_v H[1]) for attention) cannot depend on H[0] at all.
    m = _build(module, combine)
    h = _states(2)
    h2 = h.clone()
    h2[0] = torch.randn(D, generator=torch.Generator().manual_seed(9)) * 3
    with torch.no_grad():
        info_a, info_b = m.info(h), m.info(h2)
    assert torch.allclose(info_a[0], info_b[0], atol=1e-6)
    if module == "mixer":
        assert torch.allclose(info_a[0], h[1])
    # ...while sequence 1's info does read the changed sequence 0.
    assert not torch.allclose(info_a[1], info_b[1])


@pytest.mark.parametrize(("module", "combine"), CASES, ids=IDS)
def test_info_depends_on_others(module, combine):
    m = _build(module, combine)
    h = _states(4)
    others_zero = h.clone()
    others_zero[1:] = 0
    with torch.no_grad():
        assert not torch.allclose(m.info(h)[0], m.info(others_zero)[0])


@pytest.mark.parametrize(("module", "combine"), CASES, ids=IDS)
def test_changing_another_sequence_changes_output(module, combine):
    m = _build(module, combine)
    h = _states(4)
    h2 = h.clone()
    h2[2] = torch.randn(D, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out, out2 = m(h), m(h2)
    for i in (0, 1, 3):
        assert not torch.allclose(out[i], out2[i])


def test_untrained_scale_mixer_is_identity():
    m = CrossBatchMixer("mixer", D)  # s = 0.0
    h = _states(4)
    assert torch.allclose(m(h), h)


def test_attention_alpha_init_and_formula():
    m = CrossBatchAttention(D, num_heads=4, alpha_init=0.25)
    assert torch.isclose(m.alpha, torch.tensor(0.25))
    h = _states(3)
    with torch.no_grad():
        expected = 0.75 * h + 0.25 * m.info(h)
        assert torch.allclose(m(h), expected, atol=1e-6)


@pytest.mark.parametrize(("module", "combine"), CASES, ids=IDS)
def test_groups_isolate_and_singletons_pass_through(module, combine):
    m = _build(module, combine)
    groups = torch.tensor([0, 1, 0, 1, 2])  # sequence 4 is alone in its group
    h = _states(5)
    h2 = h.clone()
    h2[1] = torch.randn(D, generator=torch.Generator().manual_seed(7))  # group 1 changes
    with torch.no_grad():
        out, out2 = m(h, groups), m(h2, groups)
        assert torch.equal(out[4], h[4])  # singleton: exact identity
        assert torch.equal(out[[0, 2]], out2[[0, 2]])  # group 0 unaffected by group 1
        assert not torch.allclose(out[3], out2[3])  # group 1 partner does see it
        # Group 0 alone gives the same result as inside the mixed batch.
        alone = m(h[[0, 2]])
        assert torch.allclose(out[[0, 2]], alone, atol=1e-6)
    w = m.source.weights(h, groups)
    w = w if w.dim() == 3 else w[None]
    allowed = partner_mask(5, groups)
    assert torch.all(w[:, ~allowed] == 0)


@pytest.mark.parametrize(("module", "combine"), CASES, ids=IDS)
def test_gradients_reach_every_parameter(module, combine):
    m = _build(module, combine)
    h = _states(4).requires_grad_(True)
    m(h, torch.tensor([0, 0, 1, 1])).pow(2).sum().backward()
    assert h.grad is not None
    params = dict(m.named_parameters())
    if module == "attention" or combine == "gate":
        assert params  # attention projections and/or the gate
    for name, p in params.items():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


def test_mixer_is_parameter_free_except_combination():
    assert [n for n, _ in CrossBatchMixer("mixer", D).named_parameters()] == ["source.scale"]
    gate = CrossBatchMixer("mixer", D, combine="gate")
    assert all(n.startswith("gate.") for n, _ in gate.named_parameters())


def test_bad_options_raise_listing_accepted():
    with pytest.raises(ValueError, match=r"'attention', 'mixer'"):
        CrossBatchMixer("conv", D)
    with pytest.raises(ValueError, match=r"'scale', 'gate'"):
        CrossBatchMixer("mixer", D, combine="add")
    with pytest.raises(ValueError, match="divisible"):
        CrossBatchAttention(10, num_heads=4)
    with pytest.raises(ValueError, match="alpha_init"):
        CrossBatchAttention(D, alpha_init=1.0)
    with pytest.raises(ValueError, match="temperature"):
        CrossBatchEmbeddingMixer(D, temperature=0.0)
    with pytest.raises(ValueError, match="shape"):
        CrossBatchMixer("mixer", D)(torch.zeros(3, D + 1))
