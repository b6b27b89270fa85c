"""Shared-prefix branches (`one_sequence`): exactness against `batch`, costs, bad input."""

from __future__ import annotations

import pytest
import torch

from paralleldecode.data.records import Question, QuestionGroup
from paralleldecode.decoding import (
    DecodingEngine,
    GenerationConfig,
    independent_rows,
    shared_prefix,
    split_common_prefix,
)
from paralleldecode.decoding.layout import SHARED, additive, prefill_mask
from paralleldecode.models.loading import load_causal_lm
from paralleldecode.prompts import ONE_ANSWER, PromptRenderer, one_question
from paralleldecode.strategies import RunContext, get_strategy

BACKGROUND = ("The lighthouse at Carrow Point was built in 1871 by the engineer Maud Feren. "
              "Its lamp burned whale oil until 1904, when a paraffin burner replaced it.")
QUESTIONS = [
    Question("q1", "Who built it?", ["Maud Feren"]),
    Question("q2", "Until which year did the lamp burn whale oil, and what replaced it then?", ["1904"]),
    Question("q3", "Where?", ["Carrow Point"]),
    Question("q4", "What was the profession of the person who built the lighthouse at Carrow Point?",
             ["engineer"]),
]
GROUP = QuestionGroup("g", "demo", QUESTIONS, background=BACKGROUND)


def _ctx(folder, attn="sdpa", max_new_tokens=8):
    model, tok = load_causal_lm(str(folder), attn_implementation=attn)
    return RunContext(DecodingEngine(model, tok), PromptRenderer(tok),
                      GenerationConfig(max_new_tokens=max_new_tokens))


def test_split_keeps_every_prompt_exact():
    seqs = [[1, 2, 3, 4, 5], [1, 2, 3, 9], [1, 2, 3, 4]]
    prefix, suffixes = split_common_prefix(seqs)
    assert prefix == [1, 2, 3]
    assert [prefix + s for s in suffixes] == seqs
    # A single sequence (or identical ones) keeps one token per branch.
    assert split_common_prefix([[7, 8, 9]]) == ([7, 8], [[9]])
    assert split_common_prefix([[7, 8], [7, 8]]) == ([7], [[8], [8]])


def test_shared_prefix_layout_positions_and_owners():
    lay = shared_prefix([[1, 2, 3, 4], [1, 2, 5, 6, 7]], pad_id=0)
    assert lay.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7]]
    assert lay.owner.tolist() == [[SHARED, SHARED, 0, 0, 1, 1, 1]]
    # Each branch continues from the prefix as if it were alone.
    assert lay.position_ids.tolist() == [[0, 1, 2, 3, 2, 3, 4]]
    assert lay.last_slot.tolist() == [3, 6] and lay.next_position.tolist() == [4, 5]
    assert lay.processed_tokens == 7


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_branches_give_batch_answers_token_for_token(tiny_models, arch, attn):
    ctx = _ctx(tiny_models[arch], attn)
    batch = get_strategy("batch").run(GROUP, ctx)
    one = get_strategy("one_sequence").run(GROUP, ctx)
    assert [r.raw for r in one.results] == [r.raw for r in batch.results]
    assert [r.generated_tokens for r in one.results] == [r.generated_tokens for r in batch.results]
    # The prompt fits one prefill chunk, so it is one masked call as the batch's is
    # (test_prefill_plans: a longer one starts with a plain pass) ...
    assert one.cost.forward_passes == batch.cost.forward_passes
    # ... and the decoding steps are the same.
    assert one.cost.decode_passes == batch.cost.decode_passes == batch.cost.forward_passes - 1


def test_a_chunked_prefill_counts_its_passes_apart_from_the_steps(tiny_models):
    ctx = _ctx(tiny_models["llama"])
    whole = get_strategy("one_sequence").run(GROUP, ctx)
    ctx.engine.prefill_chunk = ctx.engine.plain_chunk = 16
    chunked = get_strategy("one_sequence").run(GROUP, ctx)
    assert [r.raw for r in chunked.results] == [r.raw for r in whole.results]
    assert chunked.cost.forward_passes > whole.cost.forward_passes + 2
    assert chunked.cost.decode_passes == whole.cost.decode_passes


def test_branch_logits_equal_the_branch_alone(tiny_models):
    """Parity of the isolating mask: the first-step logits of every branch equal those of
    its whole prompt run alone through the stock model."""
    model, tok = load_causal_lm(str(tiny_models["llama"]))
    seqs = [tok(f"Context: {BACKGROUND}\nQuestion: {q.text}")["input_ids"] for q in QUESTIONS]
    lay = shared_prefix(seqs, tok.pad_token_id)
    with torch.no_grad():
        out = model(input_ids=lay.input_ids, position_ids=lay.position_ids,
                    attention_mask=additive(prefill_mask(lay.owner), torch.float32)).logits[0]
        for i, seq in enumerate(seqs):
            alone = model(input_ids=torch.tensor([seq])).logits[0, -1]
            torch.testing.assert_close(out[lay.last_slot[i]], alone, rtol=1e-4, atol=1e-4)


def test_prefix_is_processed_once(tiny_models):
    ctx = _ctx(tiny_models["llama"])
    ids = [ctx.renderer.ids(one_question(GROUP, q), ONE_ANSWER.prefix) for q in QUESTIONS]
    prefix, suffixes = split_common_prefix(ids)
    one = get_strategy("one_sequence").run(GROUP, ctx)
    batch = get_strategy("batch").run(GROUP, ctx)
    assert one.cost.prompt_tokens == len(prefix) + sum(len(s) for s in suffixes)
    assert batch.cost.prompt_tokens == sum(len(i) for i in ids)
    g = len(QUESTIONS)
    assert one.cost.prompt_tokens <= batch.cost.prompt_tokens / g + sum(len(s) for s in suffixes)


def test_finished_branches_stop_costing_compute(tiny_models):
    model, tok = load_causal_lm(str(tiny_models["llama"]))
    engine = DecodingEngine(model, tok)
    seqs = [tok(f"{BACKGROUND} {q.text}")["input_ids"] for q in QUESTIONS]
    free = engine.generate(shared_prefix(seqs, 0), GenerationConfig(max_new_tokens=6, eos_token_ids=()))
    assert free.step_tokens == len(seqs) * 5  # 4 branches x 5 steps after the prefill
    stop = free.streams[0].token_ids[0]  # branch 0 stops after its first token
    res = engine.generate(shared_prefix(seqs, 0), GenerationConfig(max_new_tokens=6, eos_token_ids=(stop,)))
    assert res.streams[0].generated_tokens == 1
    expected = sum(min(s.generated_tokens, 6) - 1 for s in res.streams)
    assert res.step_tokens == expected < free.step_tokens
    # Same for independent rows: a finished row leaves the batch.
    rows = engine.generate(independent_rows(seqs, tok.pad_token_id),
                           GenerationConfig(max_new_tokens=6, eos_token_ids=(stop,)))
    assert [s.token_ids for s in rows.streams] == [s.token_ids for s in res.streams]


def test_group_of_one_and_very_different_lengths(tiny_models):
    ctx = _ctx(tiny_models["qwen3"], max_new_tokens=5)
    single = QuestionGroup("one", "demo", QUESTIONS[:1], background=BACKGROUND)
    assert [r.raw for r in get_strategy("one_sequence").run(single, ctx).results] == \
        [r.raw for r in get_strategy("batch").run(single, ctx).results]
    uneven = QuestionGroup("uneven", "demo", [
        Question("s", "Who?", ["x"]),
        Question("l", "Describe, in order, " + "every keeper, lamp and repair " * 20 + "?", ["y"]),
    ], background=BACKGROUND)
    assert [r.raw for r in get_strategy("one_sequence").run(uneven, ctx).results] == \
        [r.raw for r in get_strategy("batch").run(uneven, ctx).results]


def test_model_without_rope_is_refused_by_name(tmp_path, tiny_models):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2))
    ctx = RunContext(DecodingEngine(model, tok), PromptRenderer(tok), GenerationConfig(max_new_tokens=3))
    with pytest.raises(ValueError, match="rotary.*'gpt2'"):
        get_strategy("one_sequence").run(GROUP, ctx)


def test_prefix_longer_than_the_window_is_a_clear_error(tiny_models):
    ctx = _ctx(tiny_models["llama"])
    huge = QuestionGroup("huge", "demo", QUESTIONS, background="lighthouse " * 1200)
    with pytest.raises(ValueError, match="group 'huge'.*context window of 1024"):
        get_strategy("one_sequence").run(huge, ctx)
