"""Packed groups: every strategy answers exactly as unpacked, in fewer engine calls."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from paralleldecode.data.records import Question, QuestionGroup
from paralleldecode.decoding import DecodingEngine, GenerationConfig
from paralleldecode.models.crossbatch import CrossBatchMixer
from paralleldecode.models.loading import load_causal_lm
from paralleldecode.prompts import PromptRenderer
from paralleldecode.strategies import ContextTooLongError, GroupRun, RunContext, get_strategy
from paralleldecode.strategies.packing import Packer

BACKGROUNDS = [
    "The lighthouse at Carrow Point was built in 1871 by the engineer Maud Feren.",
    "The quick brown fox jumps over the lazy dog, 0123456789 times a day.",
    "Context, questions, answers: the model reads a paragraph and replies briefly.",
]
QUESTIONS = [["Who built it?", "When?", "Where is the lighthouse?"],
             ["What jumps?", "Over what does it jump, and how many times a day does it?"],
             ["What does the model read?", "How does it reply?", "What comes first?", "Why?"]]
GROUPS = [QuestionGroup(f"g{i}", "demo", [Question(f"g{i}q{j}", q, ["x"]) for j, q in enumerate(qs)],
                        background=bg)
          for i, (bg, qs) in enumerate(zip(BACKGROUNDS, QUESTIONS))]
STRATEGIES = ["all_in_one", "sequential", "sequential_cached", "batch", "batch_cached", "one_sequence",
              "collab_llm"]


@pytest.fixture(scope="module")
def ctx(tiny_models):
    model, tok = load_causal_lm(str(tiny_models["qwen2"]))
    return RunContext(DecodingEngine(model, tok), PromptRenderer(tok), GenerationConfig(max_new_tokens=6))


def _packed(strategy, groups, ctx):
    packer = Packer()
    pctx = dataclasses.replace(ctx, packer=packer)
    return packer.run([lambda g=g: strategy.run(g, pctx) for g in groups]), packer


def _calls(strategy, group, ctx):
    """Engine calls one unpacked run makes."""
    packer = Packer()  # outside run(): calls go straight through, counted by a wrapper
    count = []
    real = packer.call
    packer.call = lambda *a: count.append(1) or real(*a)
    strategy.run(group, dataclasses.replace(ctx, packer=packer))
    return len(count)


@pytest.mark.parametrize("name", STRATEGIES)
def test_packed_groups_answer_as_unpacked(ctx, name):
    options = {"dependency_max_new_tokens": 16} if name == "collab_llm" else None
    strategy = get_strategy(name, options)
    alone = [strategy.run(g, ctx) for g in GROUPS]
    packed, packer = _packed(strategy, GROUPS, ctx)
    assert all(isinstance(p, GroupRun) for p in packed), packed
    for a, p in zip(alone, packed):
        assert [r.raw for r in p.results] == [r.raw for r in a.results]
        assert [r.question_id for r in p.results] == [r.question_id for r in a.results]
        assert p.cost.prompt_tokens == a.cost.prompt_tokens
        assert p.cost.generated_tokens == a.cost.generated_tokens
        assert p.extras == a.extras
    # Rounds are shared: the packed run makes as many engine calls as its longest group.
    assert packer.calls == max(_calls(strategy, g, ctx) for g in GROUPS)
    # The shares of shared calls add up to the passes really made.
    assert sum(p.cost.forward_passes for p in packed) < sum(a.cost.forward_passes for a in alone)


@pytest.mark.parametrize("isolate", [False, True])
def test_packed_columnar_answers_as_unpacked(tiny_models, isolate):
    model, tok = load_causal_lm(str(tiny_models["llama"]))
    ctx = RunContext(DecodingEngine(model, tok), PromptRenderer(tok), GenerationConfig(max_new_tokens=5))
    strategy = get_strategy("columnar", {"pair_indices": [1], "isolate": isolate})
    alone = [strategy.run(g, ctx) for g in GROUPS]
    packed, packer = _packed(strategy, GROUPS, ctx)
    assert [[r.raw for r in p.results] for p in packed] == [[r.raw for r in a.results] for a in alone]
    assert packer.calls == 1


def test_mixing_stays_within_each_group_when_packed(tiny_models):
    model, tok = load_causal_lm(str(tiny_models["llama"]))
    torch.manual_seed(0)
    mixer = CrossBatchMixer("mixer", model.config.hidden_size, scale_init=0.7)
    ctx = RunContext(DecodingEngine(model, tok, mixer=mixer), PromptRenderer(tok),
                     GenerationConfig(max_new_tokens=5))
    strategy = get_strategy("batch")
    alone = [strategy.run(g, ctx) for g in GROUPS]
    packed, _ = _packed(strategy, GROUPS, ctx)
    assert [[r.raw for r in p.results] for p in packed] == [[r.raw for r in a.results] for a in alone]


def test_one_failing_group_does_not_fail_the_others(ctx):
    long = QuestionGroup("too-long", "demo", [Question("q", "Why?", ["x"])], background="word " * 1200)
    groups = [GROUPS[0], long, GROUPS[1]]
    packed, _ = _packed(get_strategy("batch"), groups, ctx)
    assert isinstance(packed[1], ContextTooLongError) and "'too-long'" in str(packed[1])
    alone = [get_strategy("batch").run(g, ctx) for g in (GROUPS[0], GROUPS[1])]
    assert [r.raw for r in packed[0].results] == [r.raw for r in alone[0].results]
    assert [r.raw for r in packed[2].results] == [r.raw for r in alone[1].results]


def test_a_stop_between_rounds_ends_the_run(ctx):
    class Stop(Exception):
        pass

    rounds = []

    def between():
        rounds.append(1)
        if len(rounds) == 2:
            raise Stop

    packer = Packer()
    pctx = dataclasses.replace(ctx, packer=packer)
    with pytest.raises(Stop):
        packer.run([lambda g=g: get_strategy("sequential").run(g, pctx) for g in GROUPS], between=between)
    assert packer.calls == 1
