"""Grammar-constrained replies: on random tiny models (whose free output is garbage) every
reply follows its schema, on every layout of the engine; unconstrained runs are unchanged."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from paralleldecode.data.records import DataError, Question, QuestionGroup
from paralleldecode.data.registry import load_groups
from paralleldecode.decoding import DecodingEngine, GenerationConfig
from paralleldecode.decoding.constraints import Grammars
from paralleldecode.errors import OptionError
from paralleldecode.models.crossbatch import CrossBatchMixer
from paralleldecode.models.loading import load_causal_lm
from paralleldecode.prompts import PromptRenderer, answer_reply, answers_reply
from paralleldecode.strategies import RunContext, get_strategy
from paralleldecode.strategies.packing import Packer

PINNED = Path(__file__).resolve().parents[1] / "strategies" / "unconstrained_answers.json"
CHOICE = QuestionGroup("mc", "quality", [
    Question("m1", "When does the ferry leave?", ["A"], options=["At nine", "At noon", "At six"]),
    Question("m2", "What does it carry?", ["B"], options=["Coal", "Mail", "Wine", "Salt", "Oil", "Tea"]),
], background="The ferry leaves Tarnby at nine and reaches Estmark at noon, carrying mail.")


def _ctx(folder, grammars=True, max_new_tokens=6, mixer=None, **gen):
    model, tok = load_causal_lm(str(folder))
    engine = DecodingEngine(model, tok, mixer=mixer)
    g = Grammars(tok, model.config.vocab_size, sorted(engine.eos_ids(GenerationConfig()))) if grammars else None
    return RunContext(engine, PromptRenderer(tok), GenerationConfig(max_new_tokens=max_new_tokens, **gen), grammars=g)


def _matches(grammars: Grammars, schema: str, raw: str) -> bool:
    """Whether ``raw`` is the schema's language (complete) or a start of it (cut short)."""
    import xgrammar as xgr

    m = xgr.GrammarMatcher(grammars.compiled(schema))
    return m.accept_string(raw)


def _check_one(raw: str, finish: str, question: Question, grammars) -> None:
    assert _matches(grammars, answer_reply(question).schema, raw), raw
    if finish != "length":
        obj = json.loads(raw)
        assert list(obj) == ["answer"] and isinstance(obj["answer"], str), raw
        if question.options:
            assert obj["answer"] in "ABCDEFGHIJ"[: len(question.options)], raw


@pytest.fixture(scope="module")
def groups():
    return load_groups("demo")[:3] + [CHOICE]


@pytest.mark.parametrize("name", ["batch", "one_sequence", "batch_cached", "sequential", "sequential_cached"])
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_every_single_answer_follows_its_schema(tiny_models, groups, name, arch):
    ctx = _ctx(tiny_models[arch], max_new_tokens=10)
    for group in groups:
        run = get_strategy(name).run(group, ctx)
        for q, r in zip(group.questions, run.results):
            _check_one(r.raw, r.finish_reason, q, ctx.grammars)
    # With a budget to close, the choice group's replies are complete letters.
    ctx = _ctx(tiny_models[arch], max_new_tokens=24)
    run = get_strategy(name).run(CHOICE, ctx)
    assert all(r.format_ok and r.answer in "ABCDEF" for r in run.results)


def test_one_sequence_still_equals_batch_with_constraints(tiny_models, groups):
    ctx = _ctx(tiny_models["qwen2"], max_new_tokens=12)
    for group in groups:
        a = get_strategy("batch").run(group, ctx)
        b = get_strategy("one_sequence").run(group, ctx)
        assert [r.raw for r in a.results] == [r.raw for r in b.results]
        c = get_strategy("batch_cached").run(group, ctx)
        assert [r.raw for r in c.results] == [r.raw for r in a.results]


def test_all_in_one_answers_exactly_the_groups_numbers(tiny_models, groups):
    ctx = _ctx(tiny_models["llama"], max_new_tokens=4)
    for group in groups:
        run = get_strategy("all_in_one").run(group, ctx)
        raw = run.results[0].raw
        assert _matches(ctx.grammars, answers_reply(group.questions).schema, raw), raw
        if run.results[0].finish_reason != "length":
            answers = json.loads(raw)["answers"]
            assert list(answers) == [str(i + 1) for i in range(len(group))]
            for q, a in zip(group.questions, answers.values()):
                assert not q.options or a in "ABCDEF"[: len(q.options)]


def test_dependency_edges_always_satisfy_the_schema(tiny_models, groups):
    ctx = _ctx(tiny_models["llama"], max_new_tokens=8)
    for group in groups:
        run = get_strategy("collab_llm", {"dependency_max_new_tokens": 96, "min_confidence": 0.0}).run(group, ctx)
        assert run.extras["dependency_fallbacks"] == 0
        assert all(r.dependency_fallback is False for r in run.results)
        assert run.extras["edges_proposed"] <= 2 * len(group)


@pytest.mark.parametrize("isolate", [False, True])
def test_columnar_branches_follow_their_schemas_even_while_others_read_their_prompts(tiny_models, groups, isolate):
    # The full column rule feeds a longer question's prompt while shorter ones answer.
    ctx = _ctx(tiny_models["llama"], max_new_tokens=10)
    strategy = get_strategy("columnar", {"pair_indices": [1], "isolate": isolate})
    for group in groups:
        run = strategy.run(group, ctx)
        for q, r in zip(group.questions, run.results):
            _check_one(r.raw, r.finish_reason, q, ctx.grammars)


def test_the_mixing_hook_and_sampling_are_constrained_too(tiny_models, groups):
    torch.manual_seed(0)
    model, _ = load_causal_lm(str(tiny_models["llama"]))
    mixer = CrossBatchMixer("mixer", model.config.hidden_size, scale_init=0.7)
    for ctx in (_ctx(tiny_models["llama"], mixer=mixer, max_new_tokens=10),
                _ctx(tiny_models["llama"], max_new_tokens=10, temperature=1.5, top_p=0.95, seed=3)):
        for group in groups:
            run = get_strategy("batch").run(group, ctx)
            for q, r in zip(group.questions, run.results):
                _check_one(r.raw, r.finish_reason, q, ctx.grammars)


def test_packed_groups_keep_their_own_schemas(tiny_models, groups):
    ctx = _ctx(tiny_models["llama"], max_new_tokens=10)
    strategy = get_strategy("batch")
    alone = [strategy.run(g, ctx) for g in groups]
    packer = Packer()
    pctx = dataclasses.replace(ctx, packer=packer)
    packed = packer.run([lambda g=g: strategy.run(g, pctx) for g in groups])
    assert [[r.raw for r in p.results] for p in packed] == [[r.raw for r in a.results] for a in alone]
    assert packer.calls == 1


def test_a_budget_too_small_to_close_the_json_is_counted_as_length(tiny_models):
    ctx = _ctx(tiny_models["llama"], max_new_tokens=2)
    run = get_strategy("batch").run(CHOICE, ctx)
    for r in run.results:
        assert r.finish_reason in ("length", "stop_string", "eos")
        if r.finish_reason == "length":
            assert not r.format_ok and r.raw.startswith('{"answer": "')


def test_unconstrained_runs_give_the_answers_they_gave_before_constraints(tiny_models, groups):
    """Pinned from the code before structured output existed: tiny llama, the first two
    demo groups, greedy, 6 new tokens."""
    pinned = json.loads(PINNED.read_text())
    ctx = _ctx(tiny_models["llama"], grammars=False, max_new_tokens=6)
    for name, expected in pinned.items():
        options = {"dependency_max_new_tokens": 12} if name == "collab_llm" else None
        strategy = get_strategy(name, options)
        got = [r.raw for g in groups[:2] for r in strategy.run(g, ctx).results]
        assert got == expected, name


def test_a_tokenizer_xgrammar_cannot_read_is_named():
    class NotATokenizer:
        pass

    with pytest.raises(OptionError, match="tiny-thing.*structured_output false"):
        Grammars(NotATokenizer(), 100, [0], model_name="tiny-thing")


def test_more_options_than_letters_is_refused():
    with pytest.raises(DataError, match="'q9' has 11 options.*at most 10"):
        Question("q9", "Which?", ["A"], options=[str(i) for i in range(11)])
