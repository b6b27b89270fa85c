"""vLLM as a back-end for the text-only strategies (optional: ``pip install vllm``).

vLLM batches and schedules requests itself, so the strategies' prompts go to it as chat
conversations and come back with exact token counts. It needs a supported accelerator;
without the ``vllm`` package the client refuses at construction with the install command.
"""

from __future__ import annotations

import importlib.util
import time

from paralleldecode.backends.openai_api import ChatResult


class VLLMClient:
    """Chat completions through an in-process ``vllm.LLM``.

    Args:
        model: a Hugging Face id or local folder vLLM can load.
        dtype: vLLM's dtype option (``auto``, ``bfloat16``, ...).
        tensor_parallel_size: GPUs to shard the model over.
        gpu_memory_utilization: fraction of GPU memory vLLM may take.
        max_model_len: context window to allocate; None = the model's.

    Raises:
        RuntimeError: the ``vllm`` package is not installed.
    """

    def __init__(self, model: str, dtype: str = "auto", tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.85, max_model_len: int | None = None) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise RuntimeError(
                "the vLLM back-end needs the vllm package, which is not installed; install "
                "with `pip install 'paralleldecode[vllm]'` on a machine with a supported GPU, "
                "or use the local back-end (model.model_name) or the OpenAI-compatible API back-end"
            )
        self.model = model
        self._kwargs = dict(model=model, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                            gpu_memory_utilization=gpu_memory_utilization)
        if max_model_len is not None:
            self._kwargs["max_model_len"] = max_model_len
        self._llm = None

    def _engine(self):
        # Loading takes the GPU: do it on first use, not when a config is parsed.
        if self._llm is None:
            import vllm

            self._llm = vllm.LLM(**self._kwargs)
        return self._llm

    def chat_many(self, conversations, max_tokens: int = 256, temperature: float = 0.0,
                  stop=None, seed: int | None = None, response_formats=None) -> list[ChatResult]:
        """Generate a reply for every conversation in one vLLM call, in input order (results
        shaped like the API client's; ``latency_s`` is the whole call's).

        vLLM's own guided decoding is not wired in here: replies asked for with a schema
        are generated without it, and every such result says so (``schema_fallback``).
        """
        import vllm

        params = vllm.SamplingParams(max_tokens=max_tokens, temperature=temperature, stop=stop,
                                     seed=seed)
        start = time.perf_counter()
        outputs = self._engine().chat(conversations, params, use_tqdm=False)
        wall = time.perf_counter() - start
        return [
            ChatResult(
                text=o.outputs[0].text, prompt_tokens=len(o.prompt_token_ids or []),
                completion_tokens=len(o.outputs[0].token_ids),
                finish_reason=o.outputs[0].finish_reason or "stop", latency_s=wall, attempts=1,
                schema_fallback=bool(response_formats and response_formats[i]),
            )
            for i, o in enumerate(outputs)
        ]
