"""The engine against ``model.generate`` and its own contracts."""

from __future__ import annotations

import pytest
import torch

from paralleldecode.decoding import DecodingEngine, GenerationConfig, independent_rows
from paralleldecode.decoding.cache import reserved_slots
from paralleldecode.decoding.layout import PAD, prefill_mask, step_mask
from paralleldecode.models.loading import load_causal_lm

PROMPTS = [
    "Who built the lighthouse at Carrow Point?",
    "The quick brown fox",
    "Answer with JSON: when was it built? The lighthouse was built in",
]


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def model_and_tok(request, tiny_models):
    return load_causal_lm(str(tiny_models[request.param]))


def _hf_greedy(model, tok, prompts, n):
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=n, do_sample=False, eos_token_id=None,
                         pad_token_id=tok.pad_token_id)
    return out[:, enc["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_greedy_matches_model_generate_with_padding(model_and_tok, attn):
    model, tok = model_and_tok
    model.config._attn_implementation = attn
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    assert len({len(i) for i in ids}) > 1  # padding is exercised
    engine = DecodingEngine(model, tok)
    res = engine.generate(independent_rows(ids, tok.pad_token_id),
                          GenerationConfig(max_new_tokens=12, eos_token_ids=()))
    expected = _hf_greedy(model, tok, PROMPTS, 12)
    assert [s.token_ids for s in res.streams] == expected
    assert res.forward_passes == 12
    assert all(s.finish_reason == "length" for s in res.streams)
    model.config._attn_implementation = "sdpa"


def test_eos_stops_a_stream_and_counts_tokens_up_to_it(model_and_tok):
    model, tok = model_and_tok
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    engine = DecodingEngine(model, tok)
    free = engine.generate(independent_rows(ids, tok.pad_token_id),
                           GenerationConfig(max_new_tokens=10, eos_token_ids=()))
    # Declare the third token of stream 0 an EOS: that stream stops there, others go on.
    stop_tok = free.streams[0].token_ids[2]
    res = engine.generate(independent_rows(ids, tok.pad_token_id),
                          GenerationConfig(max_new_tokens=10, eos_token_ids=(stop_tok,)))
    first = free.streams[0].token_ids.index(stop_tok)
    assert res.streams[0].token_ids == free.streams[0].token_ids[: first + 1]
    assert res.streams[0].finish_reason == "eos"
    assert res.streams[0].generated_tokens == first + 1
    for a, b in zip(res.streams[1:], free.streams[1:]):
        cut = b.token_ids.index(stop_tok) + 1 if stop_tok in b.token_ids else len(b.token_ids)
        assert a.token_ids == b.token_ids[:cut]  # dropping a finished row changes nothing


def test_stop_string_cuts_text(model_and_tok):
    model, tok = model_and_tok
    ids = [tok(PROMPTS[0], add_special_tokens=False)["input_ids"]]
    engine = DecodingEngine(model, tok)
    free = engine.generate(independent_rows(ids, tok.pad_token_id),
                           GenerationConfig(max_new_tokens=8, eos_token_ids=()))
    text = free.streams[0].text
    stop = text[len(text) // 2: len(text) // 2 + 2]
    assert stop.strip(), f"need a visible stop string in {text!r}"
    res = engine.generate(independent_rows(ids, tok.pad_token_id),
                          GenerationConfig(max_new_tokens=8, eos_token_ids=(), stop_strings=(stop,)))
    s = res.streams[0]
    assert s.finish_reason == "stop_string"
    assert stop not in s.text and text.startswith(s.text)
    assert s.generated_tokens <= 8


def test_sampling_is_seeded(model_and_tok):
    model, tok = model_and_tok
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    engine = DecodingEngine(model, tok)
    lay = independent_rows(ids, tok.pad_token_id)
    cfg = dict(max_new_tokens=10, temperature=1.5, top_p=0.9, eos_token_ids=())
    a = engine.generate(lay, GenerationConfig(seed=1, **cfg))
    b = engine.generate(lay, GenerationConfig(seed=1, **cfg))
    c = engine.generate(lay, GenerationConfig(seed=2, **cfg))
    assert [s.token_ids for s in a.streams] == [s.token_ids for s in b.streams]
    assert [s.token_ids for s in a.streams] != [s.token_ids for s in c.streams]


def test_context_window_is_checked(model_and_tok):
    model, tok = model_and_tok
    engine = DecodingEngine(model, tok)
    lay = independent_rows([[5] * 1020], tok.pad_token_id)
    with pytest.raises(ValueError, match="context window of 1024"):
        engine.generate(lay, GenerationConfig(max_new_tokens=10))


def test_masks_keep_pads_and_streams_apart():
    owner = torch.tensor([[PAD, 0, 0], [1, 1, 1]])
    m = prefill_mask(owner)
    assert m[0, 0].tolist() == [True, False, False]  # a pad sees only itself
    assert m[0, 2].tolist() == [False, True, True]  # a real token never sees pads
    assert m[1].tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    s = step_mask(owner, torch.tensor([[0], [1]]))
    assert s[0, 0].tolist() == [False, True, True, True]
    assert s[1, 0].tolist() == [True, True, True, True]


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=0)


def test_cuda_buffers_hold_a_multiple_of_16_slots_and_cpu_buffers_what_they_need(tiny_models):
    """Compiled CUDA steps are specialised on a length's divisibility, so an unaligned buffer
    would compile the step again; on the CPU aligned buffers measured slower."""
    assert [reserved_slots(n, torch.device("cuda")) for n in (1, 16, 17, 330)] == [16, 16, 32, 336]
    assert [reserved_slots(n, torch.device("cpu")) for n in (1, 16, 17, 330)] == [1, 16, 17, 330]
    model, tok = load_causal_lm(str(tiny_models["llama"]))
    engine = DecodingEngine(model, tok, compile="off")
    layout = independent_rows([[5] * 9, [6] * 4], engine.pad_id)
    cache = engine._prefill(layout, decode_tokens=8)[0]
    assert cache.layers[0].buffers[0].shape[-2] == 9 + 8
