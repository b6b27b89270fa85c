"""Prefix-cached peers: `batch_cached` equals `batch` and `sequential_cached` equals
`sequential` token for token, while computing only what is new."""

from __future__ import annotations

import pytest

from paralleldecode.data.records import Question, QuestionGroup
from paralleldecode.decoding import DecodingEngine, GenerationConfig
from paralleldecode.models.loading import load_causal_lm
from paralleldecode.prompts import PromptRenderer
from paralleldecode.strategies import RunContext, get_strategy

BACKGROUND = ("The lighthouse at Carrow Point was built in 1871 by the engineer Maud Feren. "
              "Its lamp burned whale oil until 1904, when a paraffin burner replaced it.")
QUESTIONS = [
    Question("q1", "Who built it?", ["Maud Feren"]),
    Question("q2", "Until which year did the lamp burn whale oil, and what replaced it then?", ["1904"]),
    Question("q3", "Where?", ["Carrow Point"]),
    Question("q4", "What was the profession of the person who built the lighthouse?", ["engineer"]),
]
GROUP = QuestionGroup("g", "demo", QUESTIONS, background=BACKGROUND)


def _ctx(folder, attn="sdpa", max_new_tokens=8, chunk=512):
    model, tok = load_causal_lm(str(folder), attn_implementation=attn)
    return RunContext(DecodingEngine(model, tok, prefill_chunk=chunk), PromptRenderer(tok),
                      GenerationConfig(max_new_tokens=max_new_tokens))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_batch_cached_gives_batch_answers_and_counts_the_prefix_once(tiny_models, arch, attn):
    ctx = _ctx(tiny_models[arch], attn)
    batch = get_strategy("batch").run(GROUP, ctx)
    cached = get_strategy("batch_cached").run(GROUP, ctx)
    assert [r.raw for r in cached.results] == [r.raw for r in batch.results]
    assert [r.generated_tokens for r in cached.results] == [r.generated_tokens for r in batch.results]
    prompts = [r.prompt_tokens for r in batch.results]
    one = get_strategy("one_sequence").run(GROUP, ctx)
    # The prefix once plus each question's rest: what one_sequence computes too.
    assert cached.cost.prompt_tokens == one.cost.prompt_tokens < batch.cost.prompt_tokens == sum(prompts)
    # One prefill of the prefix, then batch's calls.
    assert cached.cost.forward_passes == batch.cost.forward_passes + 1
    # A prefix this short is copied into every row (see the next test for a shared one):
    # the KV is batch's, not one_sequence's.
    assert cached.cost.peak_cache_bytes == batch.cost.peak_cache_bytes
    assert one.cost.peak_cache_bytes < cached.cost.peak_cache_bytes


def _shared_and_copied(folder, **options):
    model, tok = load_causal_lm(str(folder), attn_implementation="sdpa")
    return [RunContext(DecodingEngine(model, tok, share_past=share, **options), PromptRenderer(tok),
                       GenerationConfig(max_new_tokens=8)) for share in (True, False)]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_rows_reading_one_shared_prefix_decode_as_rows_holding_copies(tiny_models, arch, monkeypatch):
    monkeypatch.setattr("paralleldecode.decoding.engine.MIN_SHARED_PAST", 1)  # share the short prefix
    shared, copied = _shared_and_copied(tiny_models[arch], compile="off")
    a, b = get_strategy("batch_cached").run(GROUP, shared), get_strategy("batch_cached").run(GROUP, copied)
    assert [r.raw for r in a.results] == [r.raw for r in b.results]
    assert a.cost.forward_passes == b.cost.forward_passes
    plain = get_strategy("batch").run(GROUP, copied).cost.peak_cache_bytes
    assert a.cost.peak_cache_bytes < b.cost.peak_cache_bytes == plain


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_sequential_cached_gives_sequential_answers_computing_only_new_tokens(tiny_models, arch, attn):
    ctx = _ctx(tiny_models[arch], attn)
    plain = get_strategy("sequential").run(GROUP, ctx)
    cached = get_strategy("sequential_cached").run(GROUP, ctx)
    assert [r.raw for r in cached.results] == [r.raw for r in plain.results]
    assert [r.prompt_tokens for r in cached.results] == [r.prompt_tokens for r in plain.results]
    assert cached.cost.forward_passes == plain.cost.forward_passes
    # Turn k recomputes the whole conversation in `sequential`; the cached peer computes
    # each token about once (a few at each reply's end are re-read as the template writes them).
    last = plain.results[-1].prompt_tokens
    assert cached.cost.prompt_tokens < last + 8 * len(QUESTIONS) < plain.cost.prompt_tokens


def test_chunked_prefill_keeps_cached_strategies_exact(tiny_models):
    ctx, small = _ctx(tiny_models["llama"]), _ctx(tiny_models["llama"], chunk=6)
    for name in ("batch_cached", "sequential_cached", "one_sequence"):
        a, b = get_strategy(name).run(GROUP, ctx), get_strategy(name).run(GROUP, small)
        assert [r.raw for r in a.results] == [r.raw for r in b.results], name
        assert b.cost.forward_passes > a.cost.forward_passes


def test_batch_cached_without_a_common_prefix_is_batch(tiny_models):
    """Prompts that share no token leave nothing to cache: the plan is then batch's."""
    ctx = _ctx(tiny_models["llama"])
    ids = [[5, 6, 7, 8], [9, 10, 11]]
    gen = GenerationConfig(max_new_tokens=4, eos_token_ids=())
    cached = ctx._prefix_cached(ids, gen)
    from paralleldecode.decoding import independent_rows

    plain = ctx.engine.generate(independent_rows(ids, ctx.engine.pad_id), gen)
    assert [s.token_ids for s in cached.streams] == [s.token_ids for s in plain.streams]
    assert cached.forward_passes == plain.forward_passes
    assert cached.prompt_tokens_processed == plain.prompt_tokens_processed == 7


@pytest.mark.parametrize("name", ["batch_cached", "sequential_cached"])
def test_cached_strategies_are_refused_on_api_backends(name):
    from lightning_modules.strategy_module import StrategyModule
    from paralleldecode.backends.openai_api import OpenAIClient

    with pytest.raises(ValueError, match="token-level access to a local model"):
        StrategyModule(strategies=[name], backend=OpenAIClient(base_url="http://127.0.0.1:9/v1", model="m",
                                                                      api_key_env=None))


@pytest.mark.parametrize("option", ["prefill_chunk", "plain_chunk"])
def test_chunk_options_below_one_are_refused_by_name(option):
    from lightning_modules.strategy_module import StrategyModule
    from paralleldecode.errors import OptionError

    with pytest.raises(OptionError, match=f"model.{option} must be >= 1, got 0"):
        StrategyModule(strategies=["batch"], **{option: 0})


def test_share_past_reaches_the_engine_and_leaves_the_answer_settings(tiny_models):
    from lightning_modules.strategy_module import StrategyModule

    modules = [StrategyModule(model_name=str(tiny_models["llama"]), strategies=["batch_cached"], share_past=share,
                              compile="off", structured_output=False) for share in (True, False)]
    for module in modules:
        module.configure_model()
    assert modules[0]._engine().shared_attention is not None and modules[1]._engine().shared_attention is None
    assert modules[0].answer_settings() == modules[1].answer_settings()
