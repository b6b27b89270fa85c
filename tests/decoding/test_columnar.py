"""The columnar layout: linearisation, the column-synchronous mask, training batches, and
the engine's column-by-column decoding against one full forward over the final layout."""

from __future__ import annotations

import pytest
import torch

from paralleldecode.decoding import DecodingEngine, GenerationConfig, shared_prefix
from paralleldecode.decoding.columnar import (
    column_mask,
    columnar_batch,
    columnar_layout,
    columnar_loss,
    linearise,
)
from paralleldecode.decoding.layout import PAD, SHARED, additive
from paralleldecode.models.loading import load_causal_lm
from paralleldecode.models.rope2d import install_rope2d

BG = [11, 12, 13, 14, 15]
BRANCHES = [[21, 22, 23], [31, 32, 33, 34, 35, 36], [41, 42]]


def _model(folder, attn="sdpa", pairs=(7, 8)):
    model, tok = load_causal_lm(str(folder), attn_implementation=attn)
    install_rope2d(model, list(pairs))
    return model, tok


def _forward(model, rows, isolate):
    with torch.no_grad():
        return model(input_ids=rows.input_ids, position_ids=rows.position_ids,
                     attention_mask=additive(rows.mask(isolate), torch.float32)).logits


def test_linearised_layout_slots_columns_branches():
    rows = linearise([(BG[:2], [[5, 6], [7, 8, 9]]), ([1], [[2]])], pad_id=0)  # right padding
    assert rows.input_ids.tolist() == [[11, 12, 5, 6, 0, 7, 8, 9],
                                       [1, 2, 0, 0, 0, 0, 0, 0]]
    assert rows.owner.tolist() == [[SHARED, SHARED, 0, 0, PAD, 1, 1, 1],
                                   [SHARED, 0, PAD, PAD, PAD, PAD, PAD, PAD]]
    assert rows.position_ids[0].tolist() == [[0, 0], [1, 0], [2, 1], [3, 1], [0, 0], [2, 2], [3, 2], [4, 2]]
    assert rows.slots == [[[2, 3], [5, 6, 7]], [[1]]]
    assert rows.is_pad.sum().item() == 7


def test_mask_same_column_invisible_earlier_visible_pads_invisible():
    rows = linearise([([1, 2], [[3, 4], [5, 6, 7]])], pad_id=0)
    #          slots: 0:bg c0  1:bg c1  2:b1 c2  3:b1 c3  4:pad  5:b2 c2  6:b2 c3  7:b2 c4
    m = rows.mask()[0]
    assert m[2].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]  # b1@c2: background, itself; not b2@c2
    assert m[6].tolist() == [1, 1, 1, 0, 0, 1, 1, 0]  # b2@c3: all of columns < 3, not b1@c3
    assert m[7].tolist() == [1, 1, 1, 1, 0, 1, 1, 1]  # b2@c4 sees b1's tokens at c2, c3
    assert m[4].tolist() == [0, 0, 0, 0, 1, 0, 0, 0]  # the pad sees only itself
    assert m[:, 4].tolist() == [0, 0, 0, 0, 1, 0, 0, 0]  # nobody sees the pad
    assert m[1].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]  # the background is plainly causal
    iso = rows.mask(isolate=True)[0]
    assert iso[7].tolist() == [1, 1, 0, 0, 0, 1, 1, 1]  # only the background and its own
    # One rule for the prefill and a step: the last rows of the full mask are a step's mask.
    step = column_mask(rows.owner[:, 5:], rows.column[:, 5:], rows.owner, rows.column)
    assert torch.equal(step[0], m[5:])


def test_training_batch_labels_follow_the_branch_not_the_slot():
    batch = columnar_batch([
        ([1, 2], [[3, 4, 5], [6, 7]], [[True, True, True], [False, True]]),
        ([], [[8, 9]], [[False, True]]),
    ], pad_id=0)
    assert batch["input_ids"].shape == (2, 8) and batch["position_ids"].shape == (2, 8, 2)
    assert batch["attention_mask"].shape == (2, 1, 8, 8) and batch["attention_mask"].dtype == torch.float32
    # Row 0 slots: bg 1, 2 | b1 3, 4, 5 | b2 6, 7, pad -> slot 2 (3) predicts 4, slot 3 (4)
    # predicts 5, slot 5 (6) predicts 7; a branch's first token and its last slot carry no label.
    assert batch["labels"].tolist() == [[-100, -100, 4, 5, -100, 7, -100, -100],
                                        [9, -100, -100, -100, -100, -100, -100, -100]]
    blocked = torch.finfo(torch.float32).min
    assert set(batch["attention_mask"].unique().tolist()) == {0.0, blocked}
    logits = torch.randn(2, 8, 16, requires_grad=True)
    loss = columnar_loss(logits, batch["labels"])
    picked = [logits[0, 2].log_softmax(-1)[4], logits[0, 3].log_softmax(-1)[5],
              logits[0, 5].log_softmax(-1)[7], logits[1, 0].log_softmax(-1)[9]]
    torch.testing.assert_close(loss, -torch.stack(picked).mean())
    loss.backward()
    assert columnar_loss(logits, torch.full((2, 8), -100)).item() == 0.0


@pytest.mark.parametrize("bad, match", [
    ([([1], [], [])], "at least one branch"),
    ([([1], [[2], []], [[True], []])], r"branches \[2\] are empty"),
    ([([1], [[2, 3]], [[True]])], "one bool per branch token"),
])
def test_bad_training_samples_are_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        columnar_batch(bad, pad_id=0)


def test_empty_branch_is_refused_by_the_engine_layout():
    with pytest.raises(ValueError, match="empty"):
        columnar_layout(BG, [[1], []], pad_id=0)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_isolated_branch_equals_the_branch_alone(tiny_models, attn):
    """Parity of the isolating mask: each branch's logits equal those of the background
    plus that branch alone (same 2D positions, plain causal mask), in eager and sdpa; with
    no branch pairs they also equal the stock model's with 1D positions."""
    stock, _ = load_causal_lm(str(tiny_models["llama"]), attn_implementation=attn)
    for pairs in ([], [6, 7, 8]):
        model, _ = _model(tiny_models["llama"], attn, pairs)
        rows = linearise([(BG, BRANCHES)], pad_id=0)
        full = _forward(model, rows, isolate=True)[0]
        for b, toks in enumerate(BRANCHES):
            alone = linearise([(BG, [toks])], pad_id=0)
            alone.branch[alone.branch == 1] = b + 1  # the branch keeps its id
            ref = _forward(model, alone, isolate=True)[0, len(BG):]
            torch.testing.assert_close(full[rows.slots[0][b]], ref, atol=1e-4, rtol=0)
            if not pairs:
                with torch.no_grad():
                    plain = stock(input_ids=torch.tensor([BG + toks])).logits[0, len(BG):]
                torch.testing.assert_close(full[rows.slots[0][b]], plain, atol=1e-4, rtol=0)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_columns_decide_what_a_token_sees(tiny_models, attn):
    """Changing another branch's token at column c changes logits at columns > c only."""
    model, _ = _model(tiny_models["qwen3"], attn)
    rows = linearise([(BG, BRANCHES)], pad_id=0)
    base = _forward(model, rows, isolate=False)[0]
    changed = linearise([(BG, [BRANCHES[0], [31, 32, 99, 34, 35, 36], BRANCHES[2]])], pad_id=0)
    other = _forward(model, changed, isolate=False)[0]  # branch 2's token at column N+2 changed
    b1 = rows.slots[0][0]  # columns N, N+1, N+2
    torch.testing.assert_close(other[b1[:3]], base[b1[:3]], atol=1e-5, rtol=0)
    b3 = rows.slots[0][2]  # columns N, N+1: never see column N+2
    torch.testing.assert_close(other[b3], base[b3], atol=1e-5, rtol=0)
    # Branch 1 with one more token at column N+3 sees the change.
    longer = linearise([(BG, [BRANCHES[0] + [24], [31, 32, 99, 34, 35, 36], BRANCHES[2]])], pad_id=0)
    same = linearise([(BG, [BRANCHES[0] + [24], BRANCHES[1], BRANCHES[2]])], pad_id=0)
    last_longer = _forward(model, longer, isolate=False)[0, longer.slots[0][0][3]]
    last_same = _forward(model, same, isolate=False)[0, same.slots[0][0][3]]
    assert (last_longer - last_same).abs().max() > 1e-4
    # ... whereas the isolating variant does not.
    iso_longer = _forward(model, longer, isolate=True)[0, longer.slots[0][0][3]]
    iso_same = _forward(model, same, isolate=True)[0, same.slots[0][0][3]]
    torch.testing.assert_close(iso_longer, iso_same, atol=1e-5, rtol=0)


@pytest.mark.parametrize("isolate", [False, True])
@pytest.mark.parametrize("arch, attn", [("llama", "sdpa"), ("llama", "eager"), ("qwen2", "sdpa")])
def test_cached_column_decoding_equals_one_full_forward(tiny_models, arch, attn, isolate):
    model, tok = _model(tiny_models[arch], attn)
    engine = DecodingEngine(model, tok)
    free = engine.generate(columnar_layout(BG, BRANCHES, 0, isolate),
                           GenerationConfig(max_new_tokens=6, eos_token_ids=()))
    # Stop branch 3 after its second token, so the others run on past a stopped branch.
    stop = free.streams[2].token_ids[1]
    res = engine.generate(columnar_layout(BG, BRANCHES, 0, isolate),
                          GenerationConfig(max_new_tokens=6, eos_token_ids=(stop,), output_logits=True))
    lengths = [s.generated_tokens for s in res.streams]
    assert lengths[2] <= 2 and max(lengths) > lengths[2]
    finals = [b + s.token_ids for b, s in zip(BRANCHES, res.streams)]
    rows = linearise([(BG, finals)], pad_id=tok.pad_token_id)
    full = _forward(model, rows, isolate)[0]
    for b, s in enumerate(res.streams):
        assert s.logits.shape == (s.generated_tokens, full.shape[-1])
        # Generated token j is predicted at the slot of branch token len(prompt) - 1 + j.
        slots = rows.slots[0][b][len(BRANCHES[b]) - 1: len(BRANCHES[b]) - 1 + s.generated_tokens]
        torch.testing.assert_close(s.logits, full[slots], atol=1e-4, rtol=0)
        assert s.token_ids == full[slots].argmax(-1).tolist()


def test_columnar_steps_and_prefill(tiny_models):
    """The full rule prefills only the columns every branch has in its prompt, then feeds
    the longer prompts one token per step beside the shorter branches' answers."""
    model, tok = _model(tiny_models["llama"])
    engine = DecodingEngine(model, tok)
    lay = columnar_layout(BG, BRANCHES, 0)
    assert lay.input_ids.shape[1] == len(BG) + 3 * 2 and lay.pending == [[23], [33, 34, 35, 36], []]
    assert lay.next_position.tolist() == [8, 11, 7] and lay.prompt_tokens.tolist() == [8, 11, 7]
    assert lay.stream_branch.tolist() == [1, 2, 3]  # stream i is branch i + 1
    res = engine.generate(lay, GenerationConfig(max_new_tokens=3, eos_token_ids=()))
    assert [s.generated_tokens for s in res.streams] == [3, 3, 3]
    # Every prompt token counts once, whether the prefill or a step computed it.
    assert res.prompt_tokens_processed == len(BG) + 11
    # Passes: the prefill, then branch 2's 4 pending prompt tokens (the others generate
    # meanwhile, and each stopped branch is fed once more), then its 2nd and 3rd tokens'
    # inputs; the token that ends a branch needs no pass of its own.
    assert res.forward_passes == 1 + 4 + 2
    # Step tokens: 3, 3, 3 (branch 3 fed once more), 2 (branch 1 fed once more), 1, 1.
    assert res.step_tokens == 13
    iso = columnar_layout(BG, BRANCHES, 0, isolate=True)
    assert iso.pending == [[], [], []] and iso.processed_tokens == len(BG) + 11


def test_isolated_no_pairs_equals_shared_prefix(tiny_models):
    model, tok = _model(tiny_models["qwen3"], pairs=())
    engine = DecodingEngine(model, tok)
    cfg = GenerationConfig(max_new_tokens=6, eos_token_ids=())
    col = engine.generate(columnar_layout(BG, BRANCHES, 0, isolate=True), cfg)
    one = engine.generate(shared_prefix([BG + b for b in BRANCHES], 0), cfg)
    assert [s.token_ids for s in col.streams] == [s.token_ids for s in one.streams]
    steps = [r.forward_passes - r.prefill_passes for r in (col, one)]
    assert steps[0] == steps[1] and col.step_tokens == one.step_tokens


def test_columnar_layout_needs_the_2d_rotary_module(tiny_models):
    model, tok = load_causal_lm(str(tiny_models["llama"]))
    with pytest.raises(ValueError, match="2D rotary module.*install_rope2d"):
        DecodingEngine(model, tok).generate(columnar_layout(BG, BRANCHES, 0), GenerationConfig(max_new_tokens=2))


@pytest.mark.parametrize("isolate", [False, True])
def test_training_batch_scores_what_the_engine_decodes(tiny_models, isolate):
    """The loss ColumnarModule trains on is taken at exactly the logits the engine decodes
    from: same layout, mask and positions, targets = the tokens the engine generated."""
    model, tok = _model(tiny_models["llama"])
    res = DecodingEngine(model, tok).generate(
        columnar_layout(BG, BRANCHES, 0, isolate),
        GenerationConfig(max_new_tokens=5, eos_token_ids=(), output_logits=True))
    finals = [b + s.token_ids for b, s in zip(BRANCHES, res.streams)]
    masks = [[False] * len(b) + [True] * len(s.token_ids) for b, s in zip(BRANCHES, res.streams)]
    batch = columnar_batch([(BG, finals, masks)], pad_id=tok.pad_token_id, isolate=isolate)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       attention_mask=batch["attention_mask"]).logits
    scored = batch["labels"] != -100
    decoded = torch.cat([s.logits for s in res.streams])  # branch-major, like the slots
    assert batch["labels"][scored].tolist() == [t for s in res.streams for t in s.token_ids]
    torch.testing.assert_close(logits[scored], decoded, atol=1e-4, rtol=0)
    expected = torch.nn.functional.cross_entropy(decoded, batch["labels"][scored])
    torch.testing.assert_close(columnar_loss(logits, batch["labels"]), expected, atol=1e-5, rtol=0)
