"""The baseline strategies on tiny models: records, costs and bad input."""

from __future__ import annotations

import pytest

from paralleldecode.data.records import Question, QuestionGroup
from paralleldecode.decoding import DecodingEngine, GenerationConfig
from paralleldecode.models.loading import load_causal_lm
from paralleldecode.prompts import PromptRenderer
from paralleldecode.strategies import ContextTooLongError, RunContext, get_strategy

QUESTIONS = [Question(f"q{i}", text, [gold]) for i, (text, gold) in enumerate([
    ("Who built the lighthouse?", "Maud Feren"),
    ("In what year?", "1871"),
    ("Where is it?", "Carrow Point"),
])]
GROUP = QuestionGroup("g1", "demo", QUESTIONS,
                      background="The lighthouse at Carrow Point was built in 1871 by Maud Feren.")


@pytest.fixture(scope="module")
def ctx(tiny_models):
    model, tok = load_causal_lm(str(tiny_models["llama"]))
    return RunContext(DecodingEngine(model, tok), PromptRenderer(tok),
                      GenerationConfig(max_new_tokens=5))


@pytest.mark.parametrize("name", ["all_in_one", "sequential", "batch"])
def test_one_record_per_question_with_costs(ctx, name):
    run = get_strategy(name).run(GROUP, ctx)
    assert [r.question_id for r in run.results] == ["q0", "q1", "q2"]
    assert all(r.strategy == name and r.gold for r in run.results)
    assert all(r.em is not None and 0 <= r.f1 <= 1 for r in run.results)
    assert run.cost.forward_passes > 0 and run.cost.generated_tokens > 0
    assert run.cost.wall_seconds > 0
    # Per-question token shares add up to what the group cost.
    assert sum(r.generated_tokens for r in run.results) == pytest.approx(run.cost.generated_tokens)


def test_costs_differ_as_the_strategies_promise(ctx):
    runs = {n: get_strategy(n).run(GROUP, ctx) for n in ("all_in_one", "sequential", "batch")}
    seq = runs["sequential"].results
    # History grows: every turn's prompt is longer than the one before.
    assert seq[0].prompt_tokens < seq[1].prompt_tokens < seq[2].prompt_tokens
    # batch repeats the context per question; all_in_one sends it once.
    assert runs["all_in_one"].cost.prompt_tokens < runs["batch"].cost.prompt_tokens
    assert runs["batch"].cost.forward_passes <= ctx.generation.max_new_tokens
    assert runs["sequential"].cost.forward_passes > runs["batch"].cost.forward_passes


def test_group_of_one_question(ctx):
    single = QuestionGroup("g2", "demo", QUESTIONS[:1], background=GROUP.background)
    for name in ("all_in_one", "sequential", "batch"):
        assert len(get_strategy(name).run(single, ctx).results) == 1


def test_context_longer_than_the_window_names_the_group(ctx):
    huge = QuestionGroup("long-group", "demo", QUESTIONS, background="lighthouse " * 1200)
    with pytest.raises(ContextTooLongError, match="group 'long-group'.*context window of 1024.*truncate_context"):
        get_strategy("batch").run(huge, ctx)


def test_truncate_context_cuts_the_background_to_fit(ctx):
    huge = QuestionGroup("long-group", "demo", QUESTIONS, background="lighthouse " * 1200)
    cut = RunContext(ctx.engine, ctx.renderer, ctx.generation, truncate_context=True)
    run = get_strategy("batch").run(huge, cut)
    assert len(run.results) == 3
    assert max(r.prompt_tokens for r in run.results) + 5 <= 1024


def test_a_group_without_questions_is_refused():
    from paralleldecode.data.records import DataError

    with pytest.raises(DataError, match="group 'empty'.*no questions"):
        QuestionGroup("empty", "demo", [], background="x")
