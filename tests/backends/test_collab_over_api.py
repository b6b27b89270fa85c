"""Dependency-aware strategies with a scripted model behind a real local HTTP server."""

from __future__ import annotations

import json

import pytest
from http_fixtures import Reply, completion

from paralleldecode.backends.openai_api import OpenAIClient
from paralleldecode.backends.remote import RemoteContext
from paralleldecode.data.records import Question, QuestionGroup
from paralleldecode.decoding import GenerationConfig
from paralleldecode.dependencies.llm import LLMDependencyGenerator
from paralleldecode.strategies import StrategyUnavailable, get_strategy

GROUP = QuestionGroup("g", "demo", [
    Question("q1", "Who designed the Carrow bridge?", ["Maud Feren"]),
    Question("q2", "In what year did that designer die?", ["1902"]),
    Question("q3", "What river does the bridge cross?", ["Lune"]),
], background="The Carrow bridge over the Lune was designed by Maud Feren, who died in 1902.")


def _ctx(server) -> RemoteContext:
    client = OpenAIClient(server.base_url, "m", api_key_env=None, backoff=0.01, max_retries=0)
    return RemoteContext(client, GenerationConfig(max_new_tokens=16))


def _script(edges_reply: str):
    answers = {"Who designed": "Maud Feren", "In what year": "1902", "What river": "Lune"}

    def respond(body: dict) -> Reply:
        last = body["messages"][-1]["content"]
        if "Questions:\n1." in last:
            return Reply(body=completion(edges_reply, 40, 20))
        key = next(k for k in answers if f"Question: {k}" in last)
        return Reply(body=completion(json.dumps({"answer": answers[key]}), 30, 4))
    return respond


@pytest.mark.parametrize("reply, fallback", [
    ('{"edges": [{"from": 1, "to": 2, "confidence": 0.9, "reason": "that designer"}]}', False),
    ('{"edges": [{"from": 1, "to": 2, "confid', True),  # cut off: partial JSON
    ("I think question 2 depends on question 1.", True),  # no JSON
])
def test_llm_generator_valid_partial_and_broken(chat_server, reply, fallback):
    chat_server.respond_with(_script(reply))
    dep = LLMDependencyGenerator(_ctx(chat_server)).generate(GROUP)
    assert dep.fallback is fallback
    assert dep.tokens == 60  # prompt + reply tokens of the step, from the server's usage
    # The heuristic fallback still links "that designer" back to question 1.
    assert (0, 1) in {(e.source, e.target) for e in dep.edges}
    if fallback:
        assert dep.details["fallback_reason"]


def test_collab_llm_answers_layer_by_layer_with_parents_answers(chat_server):
    chat_server.respond_with(_script('{"edges": [{"from": 1, "to": 2, "confidence": 0.9}]}'))
    run = get_strategy("collab_llm_ideal").run(GROUP, _ctx(chat_server))
    assert [r.answer for r in run.results] == ["Maud Feren", "1902", "Lune"]
    assert run.extras["layers"] == 2 and run.extras["edges_kept"] == 1
    assert run.extras["dependency_tokens"] == 60 and run.extras["dependency_fallbacks"] == 0
    assert 0 < run.extras["ideal_latency_s"] <= run.cost.wall_seconds
    prompts = [s.body["messages"][-1]["content"] for s in chat_server.requests]
    child = next(p for p in prompts if "Question: In what year" in p)
    assert "Answers to earlier questions:" in child and "Maud Feren" in child
    parentless = next(p for p in prompts if "Question: What river" in p)
    assert "Answers to earlier questions" not in parentless
    # The dependency step's tokens are part of the strategy's cost.
    assert run.cost.prompt_tokens == 40 + 3 * 30 and run.cost.forward_passes == 1 + 3


def test_layouts_needing_a_local_model_make_the_strategy_unavailable(chat_server):
    # The runner skips a strategy that raises StrategyUnavailable instead of failing the run.
    with pytest.raises(StrategyUnavailable, match="layout 'shared_prefix' needs token-level access"):
        get_strategy("one_sequence").run(GROUP, _ctx(chat_server))
    assert chat_server.requests == []
