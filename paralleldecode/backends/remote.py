"""Running text-only strategies on a remote or external engine (an OpenAI-compatible API,
vLLM) instead of the local decoding engine.

:class:`RemoteContext` offers strategies the same ``generate`` call as the local
:class:`~paralleldecode.strategies.RunContext`, over any client with a ``chat_many`` method
(:class:`~paralleldecode.backends.openai_api.OpenAIClient`,
:class:`~paralleldecode.backends.vllm_server.VLLMServerClient`, a vLLM server started for
the run). Differences from local runs:

* the reply is not primed with the JSON opening (chat APIs cannot continue an assistant
  turn portably); the instruction still asks for JSON and parsing is tolerant; with
  structured output on, each request carries its reply's JSON schema as ``response_format``
  (a server that refuses it gets the request once more without it, and the result says so);
* token counts come from the server's usage figures; ``forward_passes`` counts requests;
* a request that failed after its retries becomes an empty answer with ``finish_reason``
  ``"error"`` and the reason in ``error``: recorded, never dropped;
* layouts other than independent rows need token-level access and are refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from paralleldecode.data.records import QuestionGroup
from paralleldecode.decoding import GenerationConfig, GenerationResult, StreamResult
from paralleldecode.prompts import Message, ReplyFormat
from paralleldecode.strategies.base import StrategyUnavailable


class RemoteContext:
    """A run context whose generation goes through ``client.chat_many``.

    Args:
        client: has ``chat_many(list_of_messages, max_tokens, temperature, stop, seed)``
            returning results with ``text, prompt_tokens, completion_tokens,
            finish_reason, error``.
        generation: per-answer settings (``max_new_tokens``, ``temperature``, ``seed``,
            ``stop_strings``; ``top_p`` is the server's default).
        name: the back-end's name, for error messages.
        structured: send each reply's JSON schema with its request (``response_format``).
    """

    def __init__(self, client, generation: GenerationConfig, name: str = "API", structured: bool = False) -> None:
        self.client = client
        self.generation = generation
        self.name = name
        self.structured = structured

    def generate(
        self,
        group: QuestionGroup,
        build: Callable[[QuestionGroup], list[list[Message]]],
        reply: ReplyFormat,
        max_new_tokens: int | None = None,
        layout: str = "rows",
        session=None,
    ) -> tuple[list[str], GenerationResult]:
        """Send one chat request per stream; see the module docstring for the differences."""
        if layout != "rows" or session is not None:
            raise StrategyUnavailable(
                f"layout {layout!r}{' with a KV session' if session is not None else ''} needs token-level "
                f"access to a local model; the {self.name} back-end runs independent requests only"
            )
        gen = self.generation.budget(max_new_tokens)
        conversations = build(group)
        # Not primed remotely (chat APIs cannot continue an assistant turn portably): the
        # instruction asks for JSON, the schema (when on) holds the server to it.
        replies = reply if isinstance(reply, list) else [reply] * len(conversations)
        formats = [response_format(r) if self.structured else None for r in replies]
        start = time.perf_counter()
        results = self.client.chat_many(
            conversations, max_tokens=gen.max_new_tokens, temperature=gen.temperature,
            stop=list(gen.stop_strings) or None, seed=gen.seed,
            **({"response_formats": formats} if any(formats) else {}),
        )
        wall = time.perf_counter() - start
        streams = [
            StreamResult(
                token_ids=[], text=r.text if not r.error else "",
                finish_reason="error" if r.error else (r.finish_reason or "stop"),
                prompt_tokens=r.prompt_tokens, generated_tokens=r.completion_tokens, error=r.error,
                finish_seconds=r.latency_s, schema_fallback=r.schema_fallback,
            )
            for r in results
        ]
        res = GenerationResult(
            streams=streams, forward_passes=len(streams),
            prompt_tokens_processed=sum(s.prompt_tokens for s in streams), wall_seconds=wall,
        )
        return [s.text for s in streams], res


def response_format(reply: ReplyFormat) -> dict | None:
    """The OpenAI ``response_format`` that holds a reply to its schema (None without one)."""
    schema = reply.json_schema
    if schema is None:
        return None
    return {"type": "json_schema", "json_schema": {"name": "reply", "strict": True, "schema": schema}}
