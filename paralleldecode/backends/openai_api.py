"""A small client for OpenAI-compatible chat-completions APIs, built on the standard library.

"OpenAI-compatible" here means a server that accepts ``POST {base_url}/chat/completions``
with a JSON body ``{"model", "messages", "max_tokens", "temperature"}`` (plus optional
``stop`` and ``seed``), takes the key as ``Authorization: Bearer <key>``, and answers with
``choices[0].message.content``, ``choices[0].finish_reason`` and, optionally, ``usage``
with ``prompt_tokens`` and ``completion_tokens``. OpenAI, OpenRouter, DeepSeek, vLLM's
``serve`` and llama.cpp's server all speak it; ``base_url`` is the part before
``/chat/completions``, e.g. ``https://openrouter.ai/api/v1`` or ``http://127.0.0.1:8000/v1``.

Retry policy: a request is tried up to ``1 + max_retries`` times. Timeouts, connection
errors, HTTP 429, HTTP 5xx and a 2xx reply whose body is not JSON or lacks
``choices[0].message.content`` are retried after ``backoff * 2**attempt`` seconds (attempt
counting from 0), or after the server's numeric ``Retry-After`` header when it sends one;
either wait is capped at :data:`MAX_WAIT_S`. Any other 4xx (bad request, bad key, unknown
model) is final at once, since repeating it cannot help.

Failures are recorded, never raised: :meth:`OpenAIClient.chat` returns a
:class:`ChatResult` with ``finish_reason="error"`` and a one-line ``error``, so one bad
request in a long benchmark run costs one answer, not the run. Only invalid options at
construction raise.

``timeout`` is applied by ``urllib`` to each socket operation (connecting, waiting for the
reply, each read), not to the request as a whole.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import paralleldecode

Message = Mapping[str, str]

# No wait between attempts exceeds this, whatever the backoff or Retry-After say: a server
# asking for minutes is better recorded as a failure than allowed to stall a whole run.
MAX_WAIT_S = 60.0

_EXCERPT_CHARS = 200


@dataclass
class ChatResult:
    """The outcome of one chat request, successful or not.

    Attributes:
        text: the reply's ``choices[0].message.content``; empty on failure.
        prompt_tokens: ``usage.prompt_tokens`` (0 when the server does not report it).
        completion_tokens: ``usage.completion_tokens`` (0 when not reported).
        finish_reason: as the server says ("stop", "length", ...); "unknown" when it says
            nothing; "error" on failure.
        latency_s: seconds from the first attempt to the outcome, retries and waits
            included.
        attempts: how many HTTP requests were made.
        error: None on success; otherwise one line naming the status or exception, the URL
            and the number of attempts, with an excerpt of the last reply.
        schema_fallback: the request asked for a ``response_format`` that the server
            refused (HTTP 400 naming it), and this is the answer to the same request sent
            again without it.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    latency_s: float
    attempts: int
    error: str | None = None
    schema_fallback: bool = False


class _AttemptFailed(Exception):
    """One attempt went wrong; says whether another may succeed and how long to wait."""

    def __init__(
        self, reason: str, retryable: bool, detail: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.detail = detail
        self.retry_after = retry_after


def one_line(text: str) -> str:
    """The text on one line, cut to an excerpt short enough for a log or a results file."""
    flat = " ".join(text.split())
    return flat if len(flat) <= _EXCERPT_CHARS else flat[:_EXCERPT_CHARS] + "..."


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    """The ``Retry-After`` header in seconds; None when absent or not a plain number.

    The HTTP-date form is ignored on purpose: the exponential backoff covers it, and parsing
    dates against a remote clock buys little.
    """
    value = headers.get("Retry-After") if headers is not None else None
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and seconds >= 0 else None


def _parse_reply(raw: bytes) -> tuple[str, str, int, int]:
    """Reads (text, finish_reason, prompt_tokens, completion_tokens) from a 2xx body.

    Raises:
        _AttemptFailed: retryable, when the body is not JSON or has no message content;
            proxies sometimes answer 200 with an HTML page or an ``{"error": ...}`` object
            that a second try gets past.
    """
    excerpt = one_line(raw.decode("utf-8", errors="replace"))
    try:
        body = json.loads(raw)
    except ValueError:
        raise _AttemptFailed("invalid JSON in reply", retryable=True, detail=excerpt) from None
    try:
        choice = body["choices"][0]
        text = choice["message"]["content"]
    except (KeyError, IndexError, TypeError):
        text = None
    if not isinstance(text, str):
        raise _AttemptFailed(
            "reply lacks choices[0].message.content", retryable=True, detail=excerpt
        )
    usage = body.get("usage")
    return (
        text,
        str(choice.get("finish_reason") or "unknown"),
        _token_count(usage, "prompt_tokens"),
        _token_count(usage, "completion_tokens"),
    )


def _token_count(usage: object, key: str) -> int:
    """``usage[key]`` as an int; 0 when usage or the count is absent or not an integer.

    Token counts are bookkeeping: a server that reports them oddly must not cost the answer.
    """
    value = usage.get(key) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class OpenAIClient:
    """Sends chat requests to one model behind an OpenAI-compatible endpoint.

    The client holds no connection state, so one instance may be shared by threads.

    Args:
        base_url: the API root, e.g. ``https://api.deepseek.com/v1``; requests go to
            ``{base_url}/chat/completions``.
        model: the model name the server expects.
        api_key_env: the environment variable holding the key, read once here; None for
            servers that need no key (a local vLLM, say).
        timeout: seconds each socket operation may take.
        max_retries: extra attempts after the first for retryable failures.
        backoff: the first wait between attempts, in seconds; it doubles each attempt.
        concurrency: requests in flight at once in :meth:`chat_many`.
        extra_headers: sent with every request (OpenRouter's ``HTTP-Referer``, say); they
            override the defaults.

    Raises:
        ValueError: for an invalid option, or when ``api_key_env`` names a variable that is
            unset or empty.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        concurrency: int = 4,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if not model:
            raise ValueError("model must be a non-empty model name")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if backoff < 0:
            raise ValueError(f"backoff must be >= 0 seconds, got {backoff}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.url = f"{base_url.rstrip('/')}/chat/completions"
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.concurrency = concurrency
        self._headers = self._build_headers(api_key_env, extra_headers or {})

    def __repr__(self) -> str:
        # What a run's settings record (and a resumed run compares): the model and where it
        # is served, never the object's address.
        return f"{type(self).__name__}(model={self.model!r}, url={self.url!r})"

    @staticmethod
    def _build_headers(api_key_env: str | None, extra: Mapping[str, str]) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            # Some CDNs in front of hosted APIs turn away urllib's default agent.
            "User-Agent": f"paralleldecode/{paralleldecode.__version__}",
        }
        if api_key_env is not None:
            key = os.environ.get(api_key_env, "")
            if not key:
                raise ValueError(
                    f"environment variable {api_key_env} is unset or empty; set it to the "
                    "API key, or pass api_key_env=None for a server that needs no key"
                )
            headers["Authorization"] = f"Bearer {key}"
        headers.update(extra)
        return headers

    def chat(
        self,
        messages: Sequence[Message],
        max_tokens: int = 256,
        temperature: float = 0.0,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        response_format: Mapping[str, object] | None = None,
    ) -> ChatResult:
        """Asks for one completion, retrying what may pass on a second try.

        Args:
            messages: the conversation, e.g. ``[{"role": "user", "content": "Hi"}]``.
            max_tokens: the most tokens the reply may have.
            temperature: 0 for (near-)greedy decoding.
            stop: a string or strings that end the reply; omitted from the request if None.
            seed: asks the server for repeatable sampling; omitted if None.
            response_format: e.g. ``{"type": "json_schema", "json_schema": {...}}``; a server
                that refuses it (HTTP 400 whose body names ``response_format``) gets the
                request once more without it, and the result has ``schema_fallback`` set.

        Returns:
            The reply, or a result with ``finish_reason="error"`` and ``error`` set; a failed
            request never raises.
        """
        payload = {
            "model": self.model,
            "messages": list(messages),
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if stop is not None:
            payload["stop"] = stop if isinstance(stop, str) else list(stop)
        if seed is not None:
            payload["seed"] = seed
        if response_format is not None:
            payload["response_format"] = dict(response_format)
        data = json.dumps(payload).encode("utf-8")
        start = time.monotonic()
        attempt = 0
        while True:
            try:
                text, finish, prompt_tokens, completion_tokens = self._attempt(data)
            except _AttemptFailed as failure:
                if response_format is not None and failure.reason == "HTTP 400" \
                        and "response_format" in failure.detail:
                    again = self.chat(messages, max_tokens, temperature, stop, seed)
                    return dataclasses.replace(again, schema_fallback=True, attempts=again.attempts + attempt + 1,
                                               latency_s=time.monotonic() - start)
                if not failure.retryable or attempt >= self.max_retries:
                    return self._failed(failure, attempt + 1, time.monotonic() - start)
                time.sleep(self._wait(attempt, failure.retry_after))
                attempt += 1
                continue
            return ChatResult(
                text=text,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                finish_reason=finish,
                latency_s=time.monotonic() - start,
                attempts=attempt + 1,
            )

    def chat_many(
        self, conversations: Sequence[Sequence[Message]],
        response_formats: Sequence[Mapping[str, object] | None] | None = None, **kwargs: object
    ) -> list[ChatResult]:
        """Runs :meth:`chat` on each conversation, ``concurrency`` at a time.

        Args:
            conversations: one message list per request.
            response_formats: one ``response_format`` (or None) per request.
            **kwargs: passed to every :meth:`chat` call (``max_tokens``, ``temperature``,
                ``stop``, ``seed``).

        Returns:
            One result per conversation, in input order; a failed request yields an error
            result in its slot and leaves the others alone.
        """
        if not conversations:
            return []
        formats = list(response_formats) if response_formats is not None else [None] * len(conversations)
        workers = min(self.concurrency, len(conversations))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-chat") as pool:
            return list(pool.map(lambda pair: self.chat(pair[0], response_format=pair[1], **kwargs),
                                 zip(conversations, formats)))

    def _attempt(self, data: bytes) -> tuple[str, str, int, int]:
        """One HTTP request; the parsed reply or an :class:`_AttemptFailed`."""
        request = urllib.request.Request(self.url, data=data, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            raise self._http_failure(err) from None
        except urllib.error.URLError as err:
            # Connection refused, DNS failure, or a timeout while connecting or sending.
            raise _AttemptFailed(self._describe(err.reason), retryable=True) from None
        except (OSError, http.client.HTTPException) as err:
            # A timeout waiting for the reply, a reset, or a reply cut short.
            raise _AttemptFailed(self._describe(err), retryable=True) from None
        return _parse_reply(raw)

    def _http_failure(self, err: urllib.error.HTTPError) -> _AttemptFailed:
        try:
            body = err.read().decode("utf-8", errors="replace")
        except (OSError, http.client.HTTPException):
            body = ""
        retryable = err.code == 429 or err.code >= 500
        return _AttemptFailed(
            f"HTTP {err.code}", retryable, one_line(body), _retry_after(err.headers)
        )

    def _describe(self, err: object) -> str:
        if isinstance(err, TimeoutError):
            return f"timed out after {self.timeout:g} s"
        if isinstance(err, BaseException):
            return one_line(f"{type(err).__name__}: {err}")
        return one_line(str(err))

    def _wait(self, attempt: int, retry_after: float | None) -> float:
        wait = retry_after if retry_after is not None else self.backoff * 2**attempt
        return min(wait, MAX_WAIT_S)

    def _failed(self, failure: _AttemptFailed, attempts: int, latency_s: float) -> ChatResult:
        plural = "s" if attempts != 1 else ""
        error = f"{failure.reason} from {self.url} after {attempts} attempt{plural}"
        if failure.detail:
            error += f": {failure.detail}"
        return ChatResult(
            text="",
            prompt_tokens=0,
            completion_tokens=0,
            finish_reason="error",
            latency_s=latency_s,
            attempts=attempts,
            error=error,
        )
