"""OpenAIClient against a real HTTP server on 127.0.0.1: replies, retries, errors, threads."""

from __future__ import annotations

import socket
import time

import pytest
from http_fixtures import Reply, ScriptedServer, completion

from paralleldecode.backends import openai_api
from paralleldecode.backends.openai_api import ChatResult, OpenAIClient

HELLO = [{"role": "user", "content": "Say hello."}]


def make_client(server: ScriptedServer, **options: object) -> OpenAIClient:
    settings = {"api_key_env": None, "timeout": 2.0, "max_retries": 2, "backoff": 0.01}
    settings.update(options)
    return OpenAIClient(server.base_url, "test-model", **settings)


def assert_failed(result: ChatResult, attempts: int, *fragments: str) -> None:
    assert result.finish_reason == "error"
    assert result.text == ""
    assert result.attempts == attempts
    assert result.error is not None and "\n" not in result.error
    for fragment in fragments:
        assert fragment in result.error


def test_normal_answer_with_usage(chat_server):
    chat_server.queue(Reply(body=completion("Hello!", prompt_tokens=12, completion_tokens=2)))
    result = make_client(chat_server).chat(HELLO)
    assert result.error is None
    assert (result.text, result.finish_reason, result.attempts) == ("Hello!", "stop", 1)
    assert (result.prompt_tokens, result.completion_tokens) == (12, 2)
    assert result.latency_s > 0


def test_server_sees_the_request_body(chat_server):
    chat_server.queue(Reply(body=completion("ok")))
    make_client(chat_server).chat(HELLO, max_tokens=17, temperature=0.5)
    make_client(chat_server).chat(HELLO, stop=["\n\n"], seed=7)
    plain, extras = chat_server.requests
    assert plain.path == "/v1/chat/completions"
    assert plain.body == {
        "model": "test-model", "messages": HELLO, "max_tokens": 17, "temperature": 0.5,
    }
    assert extras.body["stop"] == ["\n\n"] and extras.body["seed"] == 7
    assert plain.headers["Content-Type"] == "application/json"
    assert "Authorization" not in plain.headers


def test_trailing_slash_in_base_url(chat_server):
    client = OpenAIClient(chat_server.base_url + "/", "m", api_key_env=None)
    assert client.chat(HELLO).error is None
    assert chat_server.requests[0].path == "/v1/chat/completions"


def test_finish_reason_and_missing_usage(chat_server):
    body = completion("cut", finish_reason="length")
    del body["usage"]
    chat_server.queue(Reply(body=body))
    result = make_client(chat_server).chat(HELLO)
    assert (result.text, result.finish_reason) == ("cut", "length")
    assert (result.prompt_tokens, result.completion_tokens) == (0, 0)


def test_authorization_header_from_env(chat_server, monkeypatch):
    monkeypatch.setenv("PD_TEST_KEY", "sk-secret")
    client = make_client(chat_server, api_key_env="PD_TEST_KEY",
                         extra_headers={"HTTP-Referer": "https://example.org"})
    assert client.chat(HELLO).error is None
    headers = chat_server.requests[0].headers
    assert headers["Authorization"] == "Bearer sk-secret"
    assert headers["HTTP-Referer"] == "https://example.org"


@pytest.mark.parametrize("value", [None, ""])
def test_missing_api_key_fails_at_construction(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("PD_TEST_KEY", raising=False)
    else:
        monkeypatch.setenv("PD_TEST_KEY", value)
    with pytest.raises(ValueError, match="PD_TEST_KEY"):
        OpenAIClient("http://127.0.0.1:1/v1", "m", api_key_env="PD_TEST_KEY")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": 0}, "timeout"),
        ({"max_retries": -1}, "max_retries"),
        ({"concurrency": 0}, "concurrency"),
        ({"backoff": -1}, "backoff"),
    ],
)
def test_invalid_options(options, message):
    with pytest.raises(ValueError, match=message):
        OpenAIClient("http://127.0.0.1:1/v1", "m", api_key_env=None, **options)


def test_base_url_needs_a_scheme():
    with pytest.raises(ValueError, match="base_url"):
        OpenAIClient("127.0.0.1:8000/v1", "m", api_key_env=None)


def test_persistent_timeout_is_recorded(chat_server):
    chat_server.queue(Reply(body=completion("late"), delay=1.0))
    result = make_client(chat_server, timeout=0.3, max_retries=1).chat(HELLO)
    assert_failed(result, 2, "timed out", chat_server.base_url)
    assert len(chat_server.requests) == 2


def test_slow_first_attempt_then_fast(chat_server):
    chat_server.queue(Reply(body=completion("late"), delay=1.0), Reply(body=completion("fast")))
    result = make_client(chat_server, timeout=0.3).chat(HELLO)
    assert (result.error, result.text, result.attempts) == (None, "fast", 2)


def test_429_honours_retry_after(chat_server):
    # A 30 s backoff would stall the test; Retry-After: 0 must win.
    chat_server.queue(
        Reply(status=429, body={"error": "slow down"}, headers={"Retry-After": "0"}),
        Reply(body=completion("ok")),
    )
    start = time.monotonic()
    result = make_client(chat_server, backoff=30.0).chat(HELLO)
    assert (result.error, result.text, result.attempts) == (None, "ok", 2)
    assert time.monotonic() - start < 5


def test_500_then_success(chat_server):
    chat_server.queue(Reply(status=500, body="boom"), Reply(body=completion("ok")))
    result = make_client(chat_server).chat(HELLO)
    assert (result.error, result.text, result.attempts) == (None, "ok", 2)


def test_persistent_500_gives_up_after_max_retries(chat_server):
    chat_server.queue(Reply(status=500, body="internal trouble"))
    result = make_client(chat_server, max_retries=3).chat(HELLO)
    assert_failed(result, 4, "HTTP 500", chat_server.base_url + "/chat/completions",
                  "after 4 attempts", "internal trouble")
    assert len(chat_server.requests) == 4


def test_backoff_doubles_and_retry_after_is_capped(chat_server, monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(openai_api.time, "sleep", waits.append)
    chat_server.queue(
        Reply(status=503, body="busy"),
        Reply(status=503, body="busy"),
        Reply(status=429, body="later", headers={"Retry-After": "3600"}),
        Reply(status=500, body="boom"),
    )
    result = make_client(chat_server, backoff=0.5, max_retries=3).chat(HELLO)
    assert_failed(result, 4, "HTTP 500")
    assert waits == [0.5, 1.0, openai_api.MAX_WAIT_S]


@pytest.mark.parametrize("status", [400, 401, 404])
def test_client_errors_are_not_retried(chat_server, status):
    chat_server.queue(Reply(status=status, body={"error": {"message": "no such thing"}}))
    result = make_client(chat_server).chat(HELLO)
    assert_failed(result, 1, f"HTTP {status}", "after 1 attempt:", "no such thing")
    assert len(chat_server.requests) == 1


def test_malformed_json_is_retried_then_recorded(chat_server):
    chat_server.queue(Reply(body="<html>gateway\nerror</html>"))
    result = make_client(chat_server).chat(HELLO)
    assert_failed(result, 3, "invalid JSON", "<html>gateway error</html>")


def test_malformed_json_then_success(chat_server):
    chat_server.queue(Reply(body="{not json"), Reply(body=completion("ok")))
    result = make_client(chat_server).chat(HELLO)
    assert (result.error, result.text, result.attempts) == (None, "ok", 2)


def test_missing_choices_is_retried_then_recorded(chat_server):
    chat_server.queue(Reply(body={"error": {"message": "upstream overloaded"}}))
    result = make_client(chat_server, max_retries=1).chat(HELLO)
    assert_failed(result, 2, "choices[0].message.content", "upstream overloaded")


def test_connection_refused_is_recorded():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port once the probe is closed.
    client = OpenAIClient(f"http://127.0.0.1:{port}/v1", "m", api_key_env=None,
                          max_retries=1, backoff=0.01)
    result = client.chat(HELLO)
    assert_failed(result, 2, f"127.0.0.1:{port}", "refused")


def test_chat_many_keeps_order_and_isolates_failures(chat_server):
    def responder(body: dict) -> Reply:
        content = body["messages"][0]["content"]
        if content == "fail":
            return Reply(status=401, body="bad key")
        # Earlier prompts answer later, so completion order differs from input order.
        return Reply(body=completion(content.upper()), delay=0.05 * (5 - int(content)))

    chat_server.respond_with(responder)
    prompts = ["1", "2", "fail", "3", "4"]
    results = make_client(chat_server).chat_many(
        [[{"role": "user", "content": p}] for p in prompts], max_tokens=5
    )
    assert [r.text for r in results] == ["1", "2", "", "3", "4"]
    assert [r.error is None for r in results] == [True, True, False, True, True]
    assert all(seen.body["max_tokens"] == 5 for seen in chat_server.requests)


def test_chat_many_runs_concurrently(chat_server):
    chat_server.queue(Reply(body=completion("ok"), delay=0.3))
    start = time.monotonic()
    results = make_client(chat_server, concurrency=4).chat_many([HELLO] * 4)
    elapsed = time.monotonic() - start
    assert all(r.error is None for r in results)
    assert elapsed < 0.9, f"4 x 0.3 s requests took {elapsed:.2f} s with concurrency 4"


def test_chat_many_bounds_concurrency(chat_server):
    chat_server.queue(Reply(body=completion("ok"), delay=0.05))
    make_client(chat_server, concurrency=2).chat_many([HELLO] * 6)
    assert chat_server.peak_in_flight == 2


def test_chat_many_empty():
    assert OpenAIClient("http://127.0.0.1:1/v1", "m", api_key_env=None).chat_many([]) == []


ANSWER = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"],
          "additionalProperties": False}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "reply", "strict": True, "schema": ANSWER}}


def test_the_reply_schema_travels_as_response_format(chat_server):
    chat_server.queue(Reply(body=completion('{"answer": "hi"}')))
    result = make_client(chat_server).chat(HELLO, response_format=SCHEMA)
    assert chat_server.requests[0].body["response_format"] == SCHEMA
    assert result.text == '{"answer": "hi"}' and not result.schema_fallback


def test_a_server_refusing_response_format_is_asked_once_more_without_it(chat_server):
    refusal = Reply(status=400, body={"error": {"message": "Unsupported parameter: 'response_format'"}})
    chat_server.queue(refusal, Reply(body=completion('{"answer": "hi"}')))
    result = make_client(chat_server).chat(HELLO, response_format=SCHEMA)
    first, second = chat_server.requests
    assert "response_format" in first.body and "response_format" not in second.body
    assert result.text == '{"answer": "hi"}' and result.schema_fallback and result.attempts == 2


def test_other_bad_requests_are_not_retried_without_the_schema(chat_server):
    chat_server.queue(Reply(status=400, body={"error": {"message": "max_tokens is too large"}}))
    result = make_client(chat_server).chat(HELLO, response_format=SCHEMA)
    assert_failed(result, 1, "HTTP 400", "max_tokens")
    assert len(chat_server.requests) == 1 and not result.schema_fallback


def test_chat_many_sends_each_request_its_own_format(chat_server):
    chat_server.queue(Reply(body=completion("ok")))
    make_client(chat_server).chat_many([HELLO, HELLO], response_formats=[SCHEMA, None])
    assert sorted("response_format" in r.body for r in chat_server.requests) == [False, True]
