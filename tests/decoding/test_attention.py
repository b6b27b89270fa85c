"""Blocked oneDNN attention: sdpa's outputs for the masks the engine and transformers make,
sdpa itself for what it does not take, the model switched only inside the context, and the
engine's eager passes giving the plain engine's tokens."""

from __future__ import annotations

import types

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from paralleldecode.decoding import DecodingEngine, GenerationConfig, attention, cpu_kernels, shared_prefix
from paralleldecode.decoding.attention import NAME, BlockedAttention, available, blocked_attention, masked_span
from paralleldecode.decoding.columnar import columnar_layout
from paralleldecode.decoding.layout import additive, prefill_mask
from paralleldecode.models.loading import load_causal_lm
from paralleldecode.models.rope2d import install_rope2d

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch without oneDNN")


def _chunks(n: int) -> dict:
    """Prefill chunks of n slots, the plain start's included."""
    return {"prefill_chunk": n, "plain_chunk": n}


def _qkv(b, h, g, q, keys, d=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # transformers hands the query over as a transposed (B, Q, H, D) projection
    query = torch.randn(b, q, h, d, generator=gen).transpose(1, 2)
    return query, torch.randn(b, g, keys, d, generator=gen), torch.randn(b, g, keys, d, generator=gen)


def _module(h, g):
    return types.SimpleNamespace(num_key_value_groups=h // g, is_causal=True)


def _both(module, query, key, value, mask, **kwargs):
    with torch.inference_mode():
        ours = blocked_attention(module, query, key, value, mask, **kwargs)[0]
        ref = sdpa_attention_forward(module, query, key, value, mask, **kwargs)[0]
    return ours, ref


@pytest.mark.parametrize("heads,groups", [(4, 2), (6, 6), (8, 1)])
@pytest.mark.parametrize("block_scores", [attention.BLOCK_SCORES, 3000])
def test_causal_chunk_after_a_prefix_equals_sdpa(monkeypatch, heads, groups, block_scores):
    """transformers' bool mask for a chunk that follows cached keys; small blocks too."""
    monkeypatch.setattr(attention, "BLOCK_SCORES", block_scores)
    q, keys = 96, 250
    query, key, value = _qkv(1, heads, groups, q, keys)
    mask = torch.ones(q, keys, dtype=torch.bool).tril(keys - q)[None, None]
    ours, ref = _both(_module(heads, groups), query, key, value, mask)
    assert ours.shape == ref.shape == (1, q, heads, 16)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert masked_span(mask) == (keys - q + 1, keys)


def test_branch_masks_of_several_rows_equal_sdpa():
    """The engine's additive masks: per-row owners, a shared prefix, branches, padding."""
    b, q, keys = 2, 80, 120
    owner = torch.full((b, keys), -1)  # SHARED prefix, then branches 0..3 interleaved in runs
    owner[0, 40:] = torch.arange(80) // 20
    owner[1, 60:] = torch.arange(60) // 15
    owner[1, :5] = -2  # left padding
    mask = additive(prefill_mask(owner, keys - q), torch.float32)
    query, key, value = _qkv(b, 4, 2, q, keys, seed=1)
    ours, ref = _both(_module(4, 2), query, key, value, mask)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    lo, hi = masked_span(mask)
    assert 0 <= lo < hi <= keys


@pytest.mark.parametrize("additive_mask", [False, True])
def test_bfloat16_is_computed_in_float32(monkeypatch, additive_mask):
    """bf16 inputs give the float32 computation of the same values, rounded once: sdpa's
    output to bf16 rounding."""
    monkeypatch.setattr(attention, "MIN_BF16_KEYS", 200)
    q, keys = 96, 250
    query, key, value = (t.to(torch.bfloat16) for t in _qkv(1, 6, 2, q, keys, seed=2))
    mask = torch.ones(q, keys, dtype=torch.bool).tril(keys - q)[None, None]
    if additive_mask:
        mask = additive(mask[:, 0], torch.bfloat16)
    ours, ref = _both(_module(6, 2), query, key, value, mask)
    assert ours.dtype == torch.bfloat16
    with torch.inference_mode():
        wide = blocked_attention(_module(6, 2), query.float(), key.float(), value.float(),
                                 mask if mask.dtype == torch.bool else mask.float())[0]
    torch.testing.assert_close(ours, wide.to(torch.bfloat16), atol=0, rtol=0)
    torch.testing.assert_close(ours.float(), ref.float(), atol=2e-2, rtol=2e-2)


def test_what_it_does_not_take_goes_to_sdpa_itself():
    module = _module(4, 2)
    query, key, value = _qkv(1, 4, 2, 96, 96)
    short = _qkv(1, 4, 2, attention.MIN_QUERIES - 1, 100)
    blind = torch.ones(96, 96, dtype=torch.bool).tril()[None, None].clone()
    blind[0, 0, 5] = False  # query 5 sees no key
    per_head = torch.ones(1, 4, 96, 96, dtype=torch.bool).tril()
    few_keys = tuple(t.to(torch.bfloat16) for t in _qkv(1, 4, 2, 96, attention.MIN_BF16_KEYS - 1))
    for args in [(*few_keys, torch.ones(1, 1, 96, attention.MIN_BF16_KEYS - 1, dtype=torch.bool)),
                 (*short, torch.ones(1, 1, attention.MIN_QUERIES - 1, 100, dtype=torch.bool)),
                 (query, key, value, blind), (query, key, value, per_head),
                 (query.double(), key.double(), value.double(), None)]:
        ours, ref = _both(module, *args)
        torch.testing.assert_close(ours, ref, atol=0, rtol=0, equal_nan=True)
    assert masked_span(blind) is None
    # the causal path: sdpa's, or the causal CPU kernel's where it is loaded (to float32 rounding;
    # which calls go there is tests/decoding/test_cpu_kernels.py's)
    ours, ref = _both(module, query, key, value, None)
    torch.testing.assert_close(ours, ref, atol=5e-6, rtol=1e-5)
    with torch.enable_grad():  # autograd: sdpa's kernel, which has a backward
        q = query.clone().requires_grad_()
        out = blocked_attention(module, q, key, value, torch.ones(1, 1, 96, 96, dtype=torch.bool))[0]
        out.sum().backward()
    assert q.grad is not None


def test_the_span_is_found_once_per_mask_and_again_after_a_change():
    mask = torch.ones(1, 1, 70, 100, dtype=torch.bool)
    assert masked_span(mask) == (0, 0)
    mask[0, 0, 3, 40:50] = False
    assert masked_span(mask) == (40, 50)  # written in place: its version moved on
    other = torch.ones(1, 1, 70, 100, dtype=torch.bool).tril(30)
    assert masked_span(other) == (31, 100)


@pytest.fixture(autouse=True)
def _forget_spans(monkeypatch):
    monkeypatch.setattr(attention, "_last_span", None)
    # The engine tests here are about the blocked kernel, whichever kernel wins on this CPU's
    # race, and where the package's prefill kernel would take its float32 calls
    # (tests/decoding/test_cpu_kernels.py runs the engine through that one).
    monkeypatch.setenv(attention.ENV, "on")
    with cpu_kernels.suspended():
        yield


@pytest.fixture()
def llama(tiny_models):
    return load_causal_lm(str(tiny_models["llama"]), attn_implementation="sdpa")


def test_the_model_is_switched_only_inside_and_computes_the_same(llama):
    model, _ = llama
    router = BlockedAttention.for_model(model)
    assert router is BlockedAttention.for_model(model)
    ids = torch.randint(5, 200, (2, 100))
    mask = additive(torch.ones(2, 100, 100, dtype=torch.bool).tril(), torch.float32)
    with torch.inference_mode():
        plain = model(input_ids=ids, attention_mask=mask).logits
        with router.routed():
            assert model.config._attn_implementation == NAME
            with router.routed():  # nested
                inside = model(input_ids=ids, attention_mask=mask).logits
            assert model.config._attn_implementation == NAME
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(inside, plain, atol=1e-4, rtol=1e-4)


def test_models_it_does_not_switch_are_named(tiny_models, llama):
    model, _ = llama
    assert available(model) is None
    assert available(model.to(torch.bfloat16)) is None
    assert "float16" in available(model.to(torch.float16))
    eager, _ = load_causal_lm(str(tiny_models["llama"]), attn_implementation="eager")
    assert "'eager'" in available(eager)
    with BlockedAttention.for_model(eager).routed():
        assert eager.config._attn_implementation == "eager"


def test_the_engine_takes_the_kernel_that_wins_the_race(monkeypatch, llama):
    """Under ``auto`` the blocked kernel is taken only when it beats sdpa's by the margin, the
    race runs once per shape, and the note says which kernel runs and why."""
    model, tok = llama
    times = {"sdpa": 0.010, "blocked": 0.010}
    calls = []

    def race(*shape):
        calls.append(shape)
        return times["sdpa"], times["blocked"]

    monkeypatch.setattr(attention, "race", race)
    monkeypatch.setenv(attention.ENV, "auto")
    for blocked, taken in ((0.010, False), (0.0095, False), (0.008, True)):
        monkeypatch.setattr(attention, "_verdicts", {})
        times["blocked"] = blocked
        engine = DecodingEngine(model, tok, compile="on")
        assert (engine.attention is BlockedAttention.for_model(model)) == taken, blocked
        assert ("and blocked attention" in engine.compile_note) == taken
        assert ("masked attention left as it is (sdpa's kernel was as fast or faster on this CPU (10.0 ms "
                "against" in engine.compile_note) != taken
        DecodingEngine(model, tok, compile="on")  # the verdict is kept
    assert len(calls) == 3 and calls[0] == (torch.float32, 4, 2, 16)
    for setting, taken in (("on", True), ("off", False), (" ON ", True)):
        monkeypatch.setenv(attention.ENV, setting)
        assert (DecodingEngine(model, tok, compile="on").attention is BlockedAttention.for_model(model)) == taken
    assert len(calls) == 3
    assert DecodingEngine(model, tok, compile="off").attention is None
    monkeypatch.setenv(attention.ENV, "fast")
    with pytest.raises(ValueError, match="PARALLELDECODE_BLOCKED_ATTENTION='fast': expected one of auto, on, off"):
        DecodingEngine(model, tok, compile="on")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_race_times_both_kernels_on_a_probe_chunk(dtype):
    sdpa, blocked = attention.race(dtype, 4, 2, 16, rounds=1)
    assert 0 < sdpa < 10 and 0 < blocked < 10


def test_engine_prefill_with_blocked_attention_gives_the_plain_tokens(llama):
    """A shared prefix in chunks (the causal path, then transformers' chunk masks) and ten
    branches (the engine's masks) through the blocked kernel: the plain engine's tokens."""
    model, tok = llama
    gen = torch.Generator().manual_seed(3)
    base = torch.randint(20, 400, (300,), generator=gen).tolist()
    seqs = [base + torch.randint(20, 400, (8,), generator=gen).tolist() for _ in range(10)]
    cfg = GenerationConfig(max_new_tokens=1, eos_token_ids=(), output_logits=True)
    a = DecodingEngine(model, tok, compile="off", **_chunks(96)).generate(shared_prefix(seqs, 0), cfg)
    assert attention._last_span is None  # the plain engine never called the kernel
    b = DecodingEngine(model, tok, compile="on", **_chunks(96)).generate(shared_prefix(seqs, 0), cfg)
    assert attention._last_span is not None
    assert [s.token_ids for s in b.streams] == [s.token_ids for s in a.streams]
    torch.testing.assert_close(torch.stack([s.logits for s in b.streams]),
                               torch.stack([s.logits for s in a.streams]), atol=1e-4, rtol=1e-4)


def test_bfloat16_engine_prefill_goes_through_the_kernel(monkeypatch, tiny_models):
    """A bf16 model's chunked shared-prefix prefill: through the kernel once the keys are
    many enough, and no further from the float32 model's logits than sdpa's bf16 path."""
    path = str(tiny_models["llama"])
    wide, tok = load_causal_lm(path, attn_implementation="sdpa", dtype=torch.float32)
    model, _ = load_causal_lm(path, attn_implementation="sdpa", dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(5)
    base = torch.randint(20, 400, (300,), generator=gen).tolist()
    seqs = [base + torch.randint(20, 400, (8,), generator=gen).tolist() for _ in range(10)]
    cfg = GenerationConfig(max_new_tokens=1, eos_token_ids=(), output_logits=True)

    def logits(m, min_keys):
        monkeypatch.setattr(attention, "_last_span", None)
        monkeypatch.setattr(attention, "MIN_BF16_KEYS", min_keys)
        out = DecodingEngine(m, tok, compile="on", **_chunks(96)).generate(shared_prefix(seqs, 0), cfg)
        return torch.stack([s.logits for s in out.streams]).float(), attention._last_span is not None

    exact, _ = logits(wide, 0)
    ours, called = logits(model, 150)
    assert called
    sdpa, called = logits(model, 10**9)
    assert not called
    # measured 0.054 against 0.052: the packed bf16 linears round a little differently
    assert (ours - exact).abs().mean() <= (sdpa - exact).abs().mean() * 1.1


def test_columnar_prefill_with_blocked_attention_gives_the_plain_tokens(tiny_models):
    """Columnar layouts stay eager throughout: their column masks go through the kernel."""
    model, tok = load_causal_lm(str(tiny_models["llama"]), attn_implementation="sdpa")
    install_rope2d(model, [7, 8])
    gen = torch.Generator().manual_seed(4)
    bg = torch.randint(20, 400, (40,), generator=gen).tolist()
    branches = [torch.randint(20, 400, (n,), generator=gen).tolist() for n in (30, 25, 20)]
    cfg = GenerationConfig(max_new_tokens=6, eos_token_ids=(), output_logits=True)
    a = DecodingEngine(model, tok, compile="off").generate(columnar_layout(bg, branches, 0, False), cfg)
    assert attention._last_span is None
    b = DecodingEngine(model, tok, compile="on").generate(columnar_layout(bg, branches, 0, False), cfg)
    assert attention._last_span is not None
    assert [s.token_ids for s in b.streams] == [s.token_ids for s in a.streams]
    for x, y in zip(a.streams, b.streams):
        torch.testing.assert_close(y.logits, x.logits, atol=1e-4, rtol=1e-4)
