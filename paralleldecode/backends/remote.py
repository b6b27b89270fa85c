"""Running text-only strategies on a remote or external engine (an OpenAI-compatible API,
vLLM) instead of the local decoding engine.

:class:`RemoteContext` offers strategies the same ``generate`` call as the local
:class:`~paralleldecode.strategies.RunContext`, over any client with a ``chat_many`` method
(:class:`~paralleldecode.backends.openai_api.OpenAIClient`,
:class:`~paralleldecode.backends.vllm_client.VLLMClient`). Differences from local runs:

* the reply is not primed with the JSON opening (chat APIs cannot continue an assistant
  turn portably); the instruction still asks for JSON and parsing is tolerant;
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
    """

    def __init__(self, client, generation: GenerationConfig, name: str = "API") -> None:
        self.client = client
        self.generation = generation
        self.name = name

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
        del reply  # not primed remotely; parsing handles whole replies
        if layout != "rows" or session is not None:
            raise StrategyUnavailable(
                f"layout {layout!r}{' with a KV session' if session is not None else ''} needs token-level access to a local model; the {self.name} "
                "back-end runs independent requests only"
            )
        gen = self.generation.budget(max_new_tokens)
        start = time.perf_counter()
        results = self.client.chat_many(
            build(group), max_tokens=gen.max_new_tokens, temperature=gen.temperature,
            stop=list(gen.stop_strings) or None, seed=gen.seed,
        )
        wall = time.perf_counter() - start
        streams = [
            StreamResult(
                token_ids=[], text=r.text if not r.error else "",
                finish_reason="error" if r.error else (r.finish_reason or "stop"),
                prompt_tokens=r.prompt_tokens, generated_tokens=r.completion_tokens, error=r.error,
                finish_seconds=r.latency_s,
            )
            for r in results
        ]
        res = GenerationResult(
            streams=streams, forward_passes=len(streams),
            prompt_tokens_processed=sum(s.prompt_tokens for s in streams), wall_seconds=wall,
        )
        return [s.text for s in streams], res
