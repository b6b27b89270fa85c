"""The engine's cross-batch hook with the real mixing modules on a tiny model."""

from __future__ import annotations

import pytest
import torch

from paralleldecode.decoding import DecodingEngine, GenerationConfig, independent_rows
from paralleldecode.models.crossbatch import CrossBatchMixer
from paralleldecode.models.loading import load_causal_lm

PROMPTS = ["Who built the lighthouse?", "The quick brown fox", "When was it built?"]
OTHER = ["Who built the lighthouse?", "Context, questions, answers: 0123", "When was it built?"]


class Recording(torch.nn.Module):
    """Wraps a mixer and keeps what it returned at each step."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, states, groups):
        out = self.inner(states, groups)
        self.seen.append(out.detach().clone())
        return out


@pytest.fixture(scope="module")
def model_and_tok(tiny_models):
    return load_causal_lm(str(tiny_models["llama"]))


def _ids(tok, prompts):
    return [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]


def _run(model, tok, prompts, mixer, mix_layer=-1, n=6):
    engine = DecodingEngine(model, tok, mixer=mixer, mix_layer=mix_layer)
    return engine.generate(independent_rows(_ids(tok, prompts), tok.pad_token_id),
                           GenerationConfig(max_new_tokens=n, eos_token_ids=()))


def test_identity_mixer_reproduces_plain_decoding(model_and_tok):
    model, tok = model_and_tok
    plain = _run(model, tok, PROMPTS, None)
    hooked = _run(model, tok, PROMPTS, CrossBatchMixer("mixer", model.config.hidden_size))  # s = 0
    assert [s.token_ids for s in hooked.streams] == [s.token_ids for s in plain.streams]


def test_mixing_lets_other_sequences_change_this_one(model_and_tok):
    model, tok = model_and_tok
    torch.manual_seed(0)
    mixer = CrossBatchMixer("mixer", model.config.hidden_size, scale_init=0.7)
    a, b = Recording(mixer), Recording(mixer)
    _run(model, tok, PROMPTS, a, n=2)
    _run(model, tok, OTHER, b, n=2)
    # Stream 0's prompt is the same in both runs; only stream 1's differs.
    assert not torch.allclose(a.seen[0][0], b.seen[0][0])
    # Without mixing, rows are independent: stream 0's tokens do not depend on stream 1.
    plain_a, plain_b = _run(model, tok, PROMPTS, None), _run(model, tok, OTHER, None)
    assert plain_a.streams[0].token_ids == plain_b.streams[0].token_ids


def test_groups_keep_mixing_inside_a_group(model_and_tok):
    model, tok = model_and_tok
    mixer = CrossBatchMixer("mixer", model.config.hidden_size, scale_init=0.7)
    runs = []
    for prompts in (PROMPTS, OTHER):
        rec = Recording(mixer)
        lay = independent_rows(_ids(tok, prompts), tok.pad_token_id)
        lay.stream_group = torch.tensor([0, 1, 0])  # stream 1 alone in its group
        DecodingEngine(model, tok, mixer=rec).generate(lay, GenerationConfig(max_new_tokens=2, eos_token_ids=()))
        runs.append(rec.seen[0])
    torch.testing.assert_close(runs[0][0], runs[1][0])  # stream 0 never sees stream 1


def test_an_earlier_layer_can_be_mixed(model_and_tok):
    model, tok = model_and_tok
    res = _run(model, tok, PROMPTS, CrossBatchMixer("attention", model.config.hidden_size), mix_layer=1)
    assert all(s.generated_tokens == 6 for s in res.streams)
