"""LLMJudge against a scripted judge server: parsing, failures, the cache and averages."""

from __future__ import annotations

import json
import math

import pytest
from http_fixtures import Reply, ScriptedServer, completion

from paralleldecode.backends.judge import JudgeScore, LLMJudge, parse_judge_reply
from paralleldecode.backends.openai_api import OpenAIClient

ITEM = ("What lowers a fever?", "Paracetamol or ibuprofen.", "Take paracetamol.")
VERDICT = '{"fluency": 5, "relevance": 4, "completeness": 3, "proficiency": 4}'


def make_judge(server: ScriptedServer, cache_path=None, model: str = "judge-model") -> LLMJudge:
    client = OpenAIClient(server.base_url, model, api_key_env=None, timeout=2.0,
                          max_retries=1, backoff=0.01)
    return LLMJudge(client, cache_path=cache_path)


def test_scores_from_a_scripted_reply(chat_server):
    chat_server.queue(Reply(body=completion(VERDICT)))
    score = make_judge(chat_server).score(*ITEM)
    assert score == JudgeScore(5.0, 4.0, 3.0, 4.0, error=None, cached=False)


def test_prompt_carries_question_reference_and_answer(chat_server):
    chat_server.queue(Reply(body=completion(VERDICT)))
    make_judge(chat_server).score(*ITEM)
    body = chat_server.requests[0].body
    assert body["model"] == "judge-model"
    assert body["max_tokens"] == 200 and body["temperature"] == 0.0
    prompt = "\n".join(message["content"] for message in body["messages"])
    for text in ITEM:
        assert text in prompt
    assert "proficiency" in prompt and "JSON" in prompt


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (f"Here is my rating:\n```json\n{VERDICT}\n```", (5.0, 4.0, 3.0, 4.0)),
        ('{"note": "x"} then {"fluency": 9, "relevance": 0, "completeness": "2", '
         '"proficiency": 4.0}', (5.0, 1.0, 2.0, 4.0)),
    ],
)
def test_tolerant_parsing(reply, expected):
    score = parse_judge_reply(reply)
    assert score.error is None
    assert (score.fluency, score.relevance, score.completeness, score.proficiency) == expected


@pytest.mark.parametrize(
    ("reply", "fragment"),
    [
        ("I think it is quite good.", "no JSON object"),
        ('{"fluency": 5, "relevance": 4, "completeness": 3}', "proficiency"),
        ('{"fluency": "great", "relevance": 4, "completeness": 3, "proficiency": true}',
         "fluency, proficiency"),
    ],
)
def test_broken_reply_is_an_error_with_no_scores(reply, fragment):
    score = parse_judge_reply(reply)
    assert score.error is not None and fragment in score.error
    assert (score.fluency, score.relevance, score.completeness, score.proficiency) == (
        None, None, None, None,
    )


def test_broken_reply_from_server_shows_an_excerpt(chat_server):
    chat_server.queue(Reply(body=completion("The answer deserves a four.")))
    score = make_judge(chat_server).score(*ITEM)
    assert score.fluency is None and "deserves a four" in score.error


def test_failed_request_is_an_error_and_not_cached(chat_server, tmp_path):
    cache = tmp_path / "judge.jsonl"
    chat_server.queue(Reply(status=401, body="bad key"), Reply(body=completion(VERDICT)))
    judge = make_judge(chat_server, cache)
    failed = judge.score(*ITEM)
    assert failed.fluency is None and "judge request failed" in failed.error
    assert "HTTP 401" in failed.error
    assert not cache.exists()
    # The failure was not cached, so asking again reaches the server and succeeds.
    assert judge.score(*ITEM).error is None


def test_cache_spares_requests_on_a_rerun(chat_server, tmp_path):
    cache = tmp_path / "sub" / "judge.jsonl"
    items = [ITEM, ("Q2", "gold 2", "answer 2")]
    chat_server.queue(Reply(body=completion(VERDICT)))
    first = make_judge(chat_server, cache).score_many(items)
    assert [score.cached for score in first] == [False, False]
    assert len(chat_server.requests) == 2
    assert len(cache.read_text().splitlines()) == 2

    second = make_judge(chat_server, cache).score_many(items)
    assert len(chat_server.requests) == 2, "a cached rerun must not reach the server"
    assert [score.cached for score in second] == [True, True]
    assert [(s.fluency, s.proficiency) for s in second] == [(5.0, 4.0), (5.0, 4.0)]


def test_cache_key_includes_the_judge_model(chat_server, tmp_path):
    cache = tmp_path / "judge.jsonl"
    chat_server.queue(Reply(body=completion(VERDICT)))
    make_judge(chat_server, cache, model="judge-a").score(*ITEM)
    assert make_judge(chat_server, cache, model="judge-b").score(*ITEM).cached is False
    assert len(chat_server.requests) == 2


def test_cache_survives_a_torn_last_line(chat_server, tmp_path):
    cache = tmp_path / "judge.jsonl"
    chat_server.queue(Reply(body=completion(VERDICT)))
    make_judge(chat_server, cache).score(*ITEM)
    with cache.open("a") as handle:
        handle.write('{"key": "abc", "fluen')  # a write cut short by a crash
    judge = make_judge(chat_server, cache)
    assert judge.score(*ITEM).cached is True
    judge.score("Q2", "gold", "answer")
    lines = cache.read_text().splitlines()
    assert len(lines) == 3
    assert json.loads(lines[-1])["model"] == "judge-model"


def test_identical_items_cost_one_request(chat_server):
    chat_server.queue(Reply(body=completion(VERDICT)))
    scores = make_judge(chat_server).score_many([ITEM, ITEM, ITEM])
    assert len(chat_server.requests) == 1
    assert all(score.relevance == 4.0 for score in scores)


def test_averages():
    scores = [
        JudgeScore(5, 4, 3, 2),
        JudgeScore(3, 2, 1, 4, cached=True),
        JudgeScore(error="no JSON object"),
    ]
    assert LLMJudge.averages(scores) == {
        "fluency": 4.0, "relevance": 3.0, "completeness": 2.0, "proficiency": 3.0,
        "judged": 2, "judge_failures": 1,
    }


def test_averages_with_nothing_scored():
    averages = LLMJudge.averages([JudgeScore(error="down")])
    assert math.isnan(averages["fluency"])
    assert (averages["judged"], averages["judge_failures"]) == (0, 1)
