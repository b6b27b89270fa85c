"""The vLLM back-end without vLLM installed: a clear refusal, at config time."""

from __future__ import annotations

import importlib.util

import pytest

from paralleldecode.backends.vllm_client import VLLMClient


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_missing_vllm_names_the_install_command():
    with pytest.raises(RuntimeError, match=r"vllm package, which is not installed.*paralleldecode\[vllm\]"):
        VLLMClient("Qwen/Qwen2.5-0.5B-Instruct")
