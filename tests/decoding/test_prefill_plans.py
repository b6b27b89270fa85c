"""Prefill plans of the engine: chunks, the plain causal path, rows that start from a row
cache, stacked layouts and per-stream budgets; each is exact against the plain call."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from paralleldecode.decoding import (
    DecodingEngine,
    GenerationConfig,
    independent_rows,
    shared_prefix,
    split_common_prefix,
)
from paralleldecode.decoding.cache import RowCache
from paralleldecode.decoding.columnar import columnar_prompts
from paralleldecode.decoding.engine import part_batches
from paralleldecode.decoding.layout import SHARED, Layout, side_by_side, stack_layouts
from paralleldecode.models.loading import cache_keyword, load_causal_lm
from paralleldecode.models.rope2d import install_rope2d

PROMPTS = [
    "The lighthouse at Carrow Point was built in 1871 by the engineer Maud Feren. Who built it?",
    "The lighthouse at Carrow Point was built in 1871 by the engineer Maud Feren. When?",
    "The lighthouse at Carrow Point was built in 1871 by the engineer Maud Feren. Answer with JSON: "
    "where is the lighthouse?",
]
GREEDY = GenerationConfig(max_new_tokens=8, eos_token_ids=())


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def model_and_tok(request, tiny_models):
    return load_causal_lm(str(tiny_models[request.param]))


def _ids(tok, prompts=PROMPTS):
    return [tok(p)["input_ids"] for p in prompts]


def _tokens(res):
    return [s.token_ids for s in res.streams]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("build", [independent_rows, shared_prefix])
def test_chunked_prefill_gives_the_same_tokens(model_and_tok, attn, build):
    model, tok = model_and_tok
    model.config._attn_implementation = attn
    ids = _ids(tok)
    whole = DecodingEngine(model, tok).generate(build(ids, tok.pad_token_id), GREEDY)
    chunked = DecodingEngine(model, tok, prefill_chunk=5, plain_chunk=5).generate(build(ids, tok.pad_token_id), GREEDY)
    model.config._attn_implementation = "sdpa"
    assert _tokens(chunked) == _tokens(whole)
    longest = build(ids, tok.pad_token_id).input_ids.shape[1]
    assert chunked.prefill_passes >= -(-longest // 5)  # every chunk is a model call
    assert chunked.forward_passes - chunked.prefill_passes == whole.forward_passes - whole.prefill_passes


@pytest.mark.parametrize("isolate", [False, True])
def test_chunked_columnar_prefill_gives_the_same_tokens(tiny_models, isolate):
    model, tok = load_causal_lm(str(tiny_models["llama"]))
    install_rope2d(model, [1])
    ids = _ids(tok)
    whole = DecodingEngine(model, tok).generate(columnar_prompts(ids, 0, isolate), GREEDY)
    chunked = DecodingEngine(model, tok, prefill_chunk=4).generate(columnar_prompts(ids, 0, isolate), GREEDY)
    assert _tokens(chunked) == _tokens(whole)
    assert chunked.prefill_passes > whole.prefill_passes == 1


def test_the_plain_start_goes_in_one_pass_up_to_plain_chunk(model_and_tok):
    """A shared prefix over an empty cache is one maskless pass of up to ``plain_chunk``
    slots; past that, and after it, passes of ``prefill_chunk``; the tokens are the fully
    chunked prefill's."""
    model, tok = model_and_tok
    ids = _ids(tok)
    lay = shared_prefix(ids, tok.pad_token_id)
    plain = int((lay.owner == SHARED).sum()) + int((lay.owner == 0).sum())
    rest = lay.input_ids.shape[1] - plain
    chunked = DecodingEngine(model, tok, prefill_chunk=4, plain_chunk=4).generate(lay, GREEDY)
    for plain_chunk, passes in ((10_000, 1 + -(-rest // 4)), (8, 1 + -(-(plain - 8) // 4) + -(-rest // 4))):
        engine = DecodingEngine(model, tok, prefill_chunk=4, plain_chunk=plain_chunk)
        calls: list[int] = []
        hook = model.register_forward_pre_hook(lambda m, a, kw, calls=calls: calls.append(kw["input_ids"].shape[1]),
                                               with_kwargs=True)
        try:
            res = engine.generate(lay, GREEDY)
        finally:
            hook.remove()
        assert _tokens(res) == _tokens(chunked)
        assert res.prefill_passes == passes
        assert calls[0] == min(plain_chunk, plain) and max(calls[1:res.prefill_passes]) <= 4
    # A plain start after a cached prefix attends over that cache: prefill_chunk passes.
    prefix, _ = split_common_prefix(ids)
    pre = engine.prefill(independent_rows([prefix[:5]], tok.pad_token_id))
    cont = engine.generate(independent_rows([ids[0]], tok.pad_token_id, past=[pre.caches[0]]), GREEDY)
    assert cont.prefill_passes == -(-(len(ids[0]) - 5) // 4)
    assert _tokens(cont)[0] == _tokens(chunked)[0]


def test_plain_chunk_must_be_positive(model_and_tok):
    model, tok = model_and_tok
    with pytest.raises(ValueError, match="plain_chunk must be >= 1, got 0"):
        DecodingEngine(model, tok, plain_chunk=0)


def test_a_lone_prompt_takes_the_plain_path_and_a_shared_prefix_splits_there(model_and_tok):
    model, tok = model_and_tok
    ids = _ids(tok)
    lay = shared_prefix(ids, tok.pad_token_id)
    width = lay.input_ids.shape[1]
    calls = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw.get("attention_mask")),
                                           with_kwargs=True)
    one = GenerationConfig(max_new_tokens=1)
    try:
        DecodingEngine(model, tok).generate(independent_rows(ids[:1], tok.pad_token_id), one)
        assert calls == [None]  # one plain call: no explicit mask
        calls.clear()
        # A prompt that fits one prefill chunk is one masked call, its start plain or not.
        first = DecodingEngine(model, tok, prefill_chunk=width).generate(lay, one)
        assert len(calls) == 1 and calls[0].shape[-2:] == (width, width)
        calls.clear()
        # A longer one: the prefix and the first branch read as one causal sequence (plain),
        # the other branches need the mask.
        split = DecodingEngine(model, tok, prefill_chunk=width - 1, plain_chunk=width).generate(lay, one)
        plain = int((lay.owner == SHARED).sum()) + int((lay.owner == 0).sum())
        assert calls[0] is None and calls[1] is not None
        assert calls[1].shape[-2:] == (width - plain, width)
        assert _tokens(split) == _tokens(first)
    finally:
        hook.remove()


def test_rows_starting_from_a_prefilled_prefix_equal_whole_prompts(model_and_tok):
    model, tok = model_and_tok
    ids = _ids(tok)
    engine = DecodingEngine(model, tok)
    prefix, suffixes = split_common_prefix(ids)
    pre = engine.prefill(independent_rows([prefix], tok.pad_token_id))
    assert pre.streams == [] and len(pre.caches) == 1 and pre.caches[0].tokens == prefix
    assert pre.prompt_tokens_processed == len(prefix)
    lay = independent_rows(ids, tok.pad_token_id, past=[pre.caches[0]] * len(ids))
    assert lay.input_ids.shape[1] == max(len(s) for s in suffixes)
    res = engine.generate(lay, GREEDY)
    plain = engine.generate(independent_rows(ids, tok.pad_token_id), GREEDY)
    assert _tokens(res) == _tokens(plain)
    assert res.prompt_tokens_processed == sum(len(s) for s in suffixes)  # the prefix is not redone
    assert [s.prompt_tokens for s in res.streams] == [len(i) for i in ids]
    # The prefix is held once per row: the KV counts every copy.
    per_token = pre.peak_cache_bytes / len(prefix)
    assert res.peak_cache_bytes >= per_token * len(ids) * len(prefix)


def test_keep_cache_continues_a_conversation_exactly(model_and_tok):
    model, tok = model_and_tok
    engine = DecodingEngine(model, tok)
    first = _ids(tok, PROMPTS[:2])
    res = engine.generate(independent_rows(first, tok.pad_token_id), GREEDY, keep_cache=True)
    for ids, s, kept in zip(first, res.streams, res.caches):
        assert kept.tokens == ids + s.token_ids[:-1]  # the last token was never fed
        assert isinstance(kept, RowCache) and kept.keys[0].shape[1] == len(kept)
    # Continue both conversations with new text: only the new tokens are computed.
    more = [k.tokens + s.token_ids[-1:] + tok(" And then?")["input_ids"] for k, s in zip(res.caches, res.streams)]
    lay = independent_rows(more, tok.pad_token_id, past=res.caches)
    cont = engine.generate(lay, GREEDY)
    again = engine.generate(independent_rows(more, tok.pad_token_id), GREEDY)
    assert _tokens(cont) == _tokens(again)
    assert cont.prompt_tokens_processed == sum(len(m) - len(k) for m, k in zip(more, res.caches))
    # A cache that shares only part of a prompt is cut where they differ.
    edited = [more[0][:5] + [more[0][5] + 1] + more[0][6:]]
    lay = independent_rows(edited, tok.pad_token_id, past=res.caches[:1])
    assert lay.past[0].tokens == more[0][:5] and lay.processed_tokens == len(edited[0]) - 5
    assert _tokens(engine.generate(lay, GREEDY)) == _tokens(engine.generate(
        independent_rows(edited, tok.pad_token_id), GREEDY))


def test_kept_caches_survive_rows_that_finish_early(model_and_tok):
    model, tok = model_and_tok
    engine = DecodingEngine(model, tok)
    ids = _ids(tok)
    configs = [GenerationConfig(max_new_tokens=n, eos_token_ids=()) for n in (2, 7, 4)]
    res = engine.generate(independent_rows(ids, tok.pad_token_id), configs, keep_cache=True)
    assert [len(s.token_ids) for s in res.streams] == [2, 7, 4]
    assert [len(k) for k in res.caches] == [len(i) + n - 1 for i, n in zip(ids, (2, 7, 4))]
    alone = engine.generate(independent_rows(ids[:1], tok.pad_token_id),
                            GenerationConfig(max_new_tokens=2, eos_token_ids=()), keep_cache=True)
    torch.testing.assert_close(res.caches[0].keys[1], alone.caches[0].keys[1], atol=1e-5, rtol=1e-4)


def test_per_stream_budgets_and_stop_strings(model_and_tok):
    model, tok = model_and_tok
    engine = DecodingEngine(model, tok)
    ids = _ids(tok)
    free = engine.generate(independent_rows(ids, tok.pad_token_id), GREEDY)
    stop = free.streams[1].text[2:4]
    assert stop.strip()
    configs = [GenerationConfig(max_new_tokens=3, eos_token_ids=()),
               GenerationConfig(max_new_tokens=8, eos_token_ids=(), stop_strings=(stop,)), GREEDY]
    res = engine.generate(independent_rows(ids, tok.pad_token_id), configs)
    assert res.streams[0].token_ids == free.streams[0].token_ids[:3]
    assert res.streams[1].finish_reason == "stop_string" and stop not in res.streams[1].text
    assert res.streams[2].token_ids == free.streams[2].token_ids
    with pytest.raises(ValueError, match="must share temperature"):
        engine.generate(independent_rows(ids, tok.pad_token_id),
                        [GREEDY, GREEDY, GenerationConfig(max_new_tokens=8, temperature=1.0)])


def test_stacked_layouts_decode_as_they_do_alone(model_and_tok):
    model, tok = model_and_tok
    engine = DecodingEngine(model, tok)
    ids = _ids(tok)
    other = _ids(tok, ["The quick brown fox jumps over the lazy dog. Who jumps?",
                       "The quick brown fox jumps over the lazy dog. Over what?"])
    parts = [shared_prefix(ids, tok.pad_token_id), shared_prefix(other, tok.pad_token_id),
             independent_rows(other, tok.pad_token_id)]
    alone = [engine.generate(p, GREEDY) for p in parts]
    packed = stack_layouts(parts, tok.pad_token_id)
    assert packed.input_ids.shape[0] == 4 and packed.num_streams == 7
    assert packed.stream_group.tolist() == [0, 0, 0, 1, 1, 2, 2]
    res = engine.generate(packed, GREEDY)
    assert _tokens(res) == [t for a in alone for t in _tokens(a)]
    assert res.prompt_tokens_processed == sum(p.processed_tokens for p in parts)


def test_short_parts_are_prefilled_side_by_side_in_one_pass(model_and_tok):
    model, tok = model_and_tok
    engine = DecodingEngine(model, tok)
    long_past = "The quick brown fox jumps over the lazy dog near the old mill by the river. "
    groups = [_ids(tok), _ids(tok, [p.replace("1871", "1872") for p in PROMPTS]),
              _ids(tok, [long_past * 3 + "Who jumps?", long_past * 3 + "Over what?"])]
    parts = [shared_prefix(g, tok.pad_token_id) for g in groups]
    assert part_batches(parts, engine.side_by_side_slots, engine.prefill_chunk) == [[0, 1, 2]]
    alone = [engine.generate(p, GREEDY) for p in parts]
    masks = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: masks.append(kw.get("attention_mask")),
                                           with_kwargs=True)
    try:
        res = engine.generate(stack_layouts(parts, tok.pad_token_id), GREEDY)
    finally:
        hook.remove()
    assert _tokens(res) == [t for a in alone for t in _tokens(a)]
    # One masked pass over the three parts' slots one after another (no padding), where
    # alone each took one; a slot sees its own part's slots alone.
    width = sum(p.input_ids.shape[1] for p in parts)
    assert res.prefill_passes == 1 and masks[0].shape[-2:] == (width, width)
    seen = masks[0][0, 0] == 0
    first, second = parts[0].input_ids.shape[1], parts[1].input_ids.shape[1]
    assert not seen[first:, :first].any() and not seen[first + second:, first:first + second].any()
    assert seen[first, first] and seen[first + second, first + second]
    # ... and a smaller budget splits them: a third pass.
    small = DecodingEngine(model, tok, prefill_chunk=first + second, plain_chunk=first + second)
    assert small.side_by_side_slots == first + second
    split = small.generate(stack_layouts(parts, tok.pad_token_id), GREEDY)
    assert _tokens(split) == _tokens(res) and split.prefill_passes > 1


def test_side_by_side_keeps_each_layouts_positions_and_streams(model_and_tok):
    _, tok = model_and_tok
    a, b = shared_prefix(_ids(tok), tok.pad_token_id), independent_rows(_ids(tok)[:1], tok.pad_token_id)
    row, segment = side_by_side([a, b])
    wa = a.input_ids.shape[1]
    assert row.input_ids.shape == (1, wa + b.input_ids.shape[1]) and row.num_streams == a.num_streams + 1
    assert torch.equal(row.position_ids[:, wa:], b.position_ids) and torch.equal(row.owner[:, :wa], a.owner)
    assert row.owner[0, -1] == a.num_streams and row.last_slot[-1] == wa + b.last_slot[0]
    assert segment[0].tolist() == [0] * wa + [1] * b.input_ids.shape[1]
    with pytest.raises(ValueError, match="one-row layouts"):
        side_by_side([stack_layouts([a, a], tok.pad_token_id)])


def test_part_batches_keep_runs_of_short_parts_bounded():
    def rows(*widths):
        return independent_rows([[1] * w for w in widths], 0)

    parts = [rows(40), rows(10), rows(11, 12), rows(12), rows(600), rows(39), rows(11)]
    # Two rows (already a batched call) and 600 slots (wider than a chunk) go alone; the
    # others go side by side in their order.
    assert part_batches(parts, most_slots=2048, widest=512) == [[2], [4], [0, 1, 3, 5, 6]]
    # At most 60 slots in a run: a new one starts where the next part would not fit.
    assert part_batches(parts, most_slots=60, widest=512) == [[2], [4], [0, 1], [3, 5], [6]]
    # A part starting from a cache is prefilled alone.
    with_past = dataclasses.replace(rows(10), past=[RowCache([1, 2], [], [])])
    assert part_batches([with_past, rows(10), rows(10)], 8192, 512) == [[0], [1, 2]]


def test_stacking_refuses_mixed_position_kinds():
    rows = independent_rows([[1, 2, 3]], 0)
    col = columnar_prompts([[1, 2, 3], [1, 2, 4]], 0)
    with pytest.raises(ValueError, match="differ in positions"):
        stack_layouts([rows, col], 0)


def test_layout_past_must_match_rows():
    lay = independent_rows([[1, 2], [3, 4]], 0)
    with pytest.raises(ValueError, match="2 rows"):
        Layout(lay.input_ids, lay.position_ids, lay.owner, lay.stream_row, lay.last_slot,
               lay.next_position, past=[None])


def test_the_cache_goes_under_the_name_the_model_takes(tiny_models):
    model, _ = load_causal_lm(str(tiny_models["llama"]))
    params = inspect.signature(model.get_decoder().forward).parameters
    expected = "cache" if "cache" in params else "past_key_values"
    assert cache_keyword(model) == expected

    class OldStyle(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None):  # an older transformers
            return input_ids

    assert cache_keyword(OldStyle()) == "past_key_values"
