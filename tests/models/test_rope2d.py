"""2D RoPE: parity with the stock rotary module, the branch axis, installation and errors."""

from __future__ import annotations

import copy

import pytest
import torch

from paralleldecode.models.loading import load_causal_lm
from paralleldecode.models.rope2d import (
    Rotary2D,
    has_rope2d,
    install_rope2d,
    pair_indices_of,
)

IDS = torch.tensor([[5, 17, 42, 99, 7, 63, 12, 88]])


def _columns_and_branches(ids: torch.Tensor, branch: int) -> torch.Tensor:
    t = ids.shape[1]
    return torch.stack([torch.arange(t)[None], torch.full((1, t), branch)], dim=-1)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_no_branch_pairs_equals_the_stock_model(tiny_models, arch):
    model, _ = load_causal_lm(str(tiny_models[arch]))
    with torch.no_grad():
        stock = model(input_ids=IDS).logits
        install_rope2d(model, [])
        assert has_rope2d(model) and pair_indices_of(model) == []
        plain = model(input_ids=IDS).logits
        pos2d = _columns_and_branches(IDS, 3)
        mask = _causal_mask(8)
        two_d = model(input_ids=IDS, position_ids=pos2d, attention_mask=mask).logits
    torch.testing.assert_close(plain, stock, atol=1e-5, rtol=0)
    torch.testing.assert_close(two_d, stock, atol=1e-5, rtol=0)


def test_cos_sin_differ_only_in_the_branch_pairs(tiny_models):
    model, _ = load_causal_lm(str(tiny_models["llama"]))
    stock = model.model.rotary_emb
    install_rope2d(model, [2, 5])
    rotary = model.model.rotary_emb
    assert isinstance(rotary, Rotary2D) and "RotaryEmbedding" not in type(rotary).__name__
    assert not hasattr(rotary, "original_inv_freq")
    torch.testing.assert_close(rotary.inv_freq, stock.inv_freq)
    x = torch.zeros(1, 8, 64)
    half = rotary.num_pairs  # head_dim 16 -> 8 pairs
    cos0, sin0 = rotary(x, _columns_and_branches(IDS, 0))
    cos3, sin3 = rotary(x, _columns_and_branches(IDS, 3))
    stock_cos, stock_sin = stock(x, torch.arange(8)[None])
    differ = ((cos0 - cos3).abs() > 1e-6).any(dim=(0, 1)) | ((sin0 - sin3).abs() > 1e-6).any(dim=(0, 1))
    expected = torch.zeros(2 * half, dtype=torch.bool)
    for p in (2, 5):
        expected[p - 1] = expected[p - 1 + half] = True
    assert differ.tolist() == expected.tolist()
    # Column pairs are the stock ones; branch pairs follow the branch id, not the column.
    keep = ~expected
    torch.testing.assert_close(cos3[..., keep], stock_cos[..., keep])
    torch.testing.assert_close(sin3[..., keep], stock_sin[..., keep])
    assert torch.allclose(cos3[0, :, 1], torch.cos(torch.tensor(3.0) * rotary.inv_freq[1]).expand(8))
    # Plain (B, T) ids are branch 0.
    c, s = rotary(x, torch.arange(8)[None])
    torch.testing.assert_close(c, cos0)
    torch.testing.assert_close(s, sin0)


def test_branch_ids_change_logits_only_with_branch_pairs(tiny_models):
    model, _ = load_causal_lm(str(tiny_models["qwen2"]))
    mask = _causal_mask(8)

    def logits(branch: int) -> torch.Tensor:
        # The first half of the tokens on branch 0, the second on `branch`: RoPE is
        # relative, so only branch *differences* between tokens can matter.
        pos = _columns_and_branches(IDS, 0)
        pos[0, 4:, 1] = branch
        with torch.no_grad():
            return model(input_ids=IDS, position_ids=pos, attention_mask=mask).logits

    install_rope2d(model, [])
    torch.testing.assert_close(logits(1), logits(4), atol=1e-6, rtol=0)
    install_rope2d(model, [7, 8])  # re-install with other pairs
    assert pair_indices_of(model) == [7, 8]
    one, four = logits(1), logits(4)
    assert (one - four).abs().max() > 1e-3
    # Tokens before the branch change see only branch-0 tokens: unchanged.
    torch.testing.assert_close(one[:, :4], four[:, :4], atol=1e-6, rtol=0)
    # The same shift for every token changes nothing (relative positions are unchanged).
    pos = _columns_and_branches(IDS, 2)
    with torch.no_grad():
        shifted = model(input_ids=IDS, position_ids=pos, attention_mask=mask).logits
    torch.testing.assert_close(shifted, logits(0), atol=1e-5, rtol=0)
    assert install_rope2d(model, [7, 8]) is model


def test_install_after_peft_injection_and_on_a_deep_copy(tiny_models):
    from paralleldecode.models.training import LoraSettings, add_lora

    model, _ = load_causal_lm(str(tiny_models["llama"]))
    add_lora(model, LoraSettings(r=2, alpha=4, dropout=0.0))
    install_rope2d(model, [1])
    assert has_rope2d(model) and pair_indices_of(model) == [1]
    twin = copy.deepcopy(model)
    install_rope2d(twin, [3])
    assert pair_indices_of(model) == [1] and pair_indices_of(twin) == [3]
    # Nothing of the rotary module enters a state dict.
    assert not any("rotary" in k for k in model.state_dict())


@pytest.mark.parametrize("bad, match", [
    ([0], r"entry 0 is out of range.*1\.\.8"),
    ([9], r"entry 9 is out of range.*1\.\.8"),
    ([2, 2], "repeated"),
    (["1"], r"integers in 1\.\.8"),
])
def test_bad_pair_indices_are_clear_errors(tiny_models, bad, match):
    model, _ = load_causal_lm(str(tiny_models["llama"]))
    with pytest.raises(ValueError, match=match):
        install_rope2d(model, bad)
    assert not has_rope2d(model)


def test_model_without_rotary_embeddings_is_refused(tiny_models):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="rotary position embeddings.*'gpt2' has none"):
        install_rope2d(model, [1])
    with pytest.raises(ValueError, match="no 2D rotary module"):
        pair_indices_of(model)


def test_bad_position_shape_is_a_clear_error(tiny_models):
    model, _ = load_causal_lm(str(tiny_models["llama"]))
    install_rope2d(model, [1])
    with pytest.raises(ValueError, match=r"\(B, T\) or \(B, T, 2\)"):
        model.model.rotary_emb(torch.zeros(1, 8, 64), torch.zeros(1, 8, 3, dtype=torch.long))


def _causal_mask(n: int) -> torch.Tensor:
    """``(1, 1, n, n)`` additive causal mask."""
    blocked = ~torch.ones(n, n, dtype=torch.bool).tril()
    return torch.zeros(1, 1, n, n).masked_fill(blocked, torch.finfo(torch.float32).min)
