"""Shared fixtures: a byte-level BPE tokenizer trained here and tiny random causal LMs.

Nothing is downloaded: the tokenizer is trained on a few sentences in the test session and
the models are built from configs (2 layers, hidden 64) and saved to temporary folders, so
the code paths that load models by folder are the real ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tests never reach a hub; without this, a failed hub lookup retries with backoff for ~30 s.
# Set before transformers/huggingface_hub are imported, which read it once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# `compile: auto` would compile the embedded model's steps in every CLI run the slow tests
# start (minutes each on a CPU); tests that check the compiled path ask for it by name.
os.environ.setdefault("PARALLELDECODE_COMPILE", "off")

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "The lighthouse at Carrow Point was built in 1871 by the engineer Maud Feren.",
    "Answer the questions about the context. Reply with JSON: {\"answer\": \"...\"}.",
    "Question: Who built the lighthouse? Answer: Maud Feren. When? In 1871.",
    "The quick brown fox jumps over the lazy dog, 0123456789 times a day.",
    "Context, questions, answers: the model reads a paragraph and replies briefly.",
] * 20


def _train_tokenizer(folder: Path, chat_template: str | None) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "<|im_end|>", "<|im_start|>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>",
        pad_token="<pad>", unk_token="<unk>",
    )
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(folder)


def _build_model(arch: str, folder: Path, vocab_size: int, tok_folder: Path) -> None:
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    tok = AutoTokenizer.from_pretrained(tok_folder)
    common = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
        # Larger than the usual 0.02 so greedy choices are not near-ties.
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=16, **common))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tok-chat")
    _train_tokenizer(folder, CHATML)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    """Folders of tiny random models: ``llama``, ``qwen2``, ``qwen3`` (chat template) and
    ``llama-nochat`` (a tokenizer without a chat template)."""
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    out = {}
    for arch in ("llama", "qwen2", "qwen3"):
        folder = tmp_path_factory.mktemp(f"tiny-{arch}")
        _build_model(arch, folder, vocab, tokenizer_dir)
        out[arch] = folder
    nochat_tok = tmp_path_factory.mktemp("tok-plain")
    _train_tokenizer(nochat_tok, None)
    folder = tmp_path_factory.mktemp("tiny-llama-nochat")
    _build_model("llama", folder, vocab, nochat_tok)
    out["llama-nochat"] = folder
    return out


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real-data folder from ``PARALLELDECODE_DATA_DIR``; skips when unset."""
    root = os.environ.get("PARALLELDECODE_DATA_DIR")
    if not root:
        pytest.skip("PARALLELDECODE_DATA_DIR is not set")
    return Path(root)
