"""The ``columnar`` strategy: parity with ``one_sequence``, trained weights (checkpoint and
LoRA adapter), the untrained flag, and bad input."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from paralleldecode.decoding import DecodingEngine, GenerationConfig
from paralleldecode.decoding.columnar import columnar_layout, columnar_segments
from paralleldecode.models.columnar import load_columnar_checkpoint, prepare_columnar_model
from paralleldecode.models.loading import load_causal_lm
from paralleldecode.models.rope2d import has_rope2d, pair_indices_of
from paralleldecode.models.training import LoraSettings, set_trainable, trainable_state, trained_checkpoint_path
from paralleldecode.prompts import PromptRenderer
from paralleldecode.strategies import RunContext, get_strategy
from tests.strategies.test_one_sequence import GROUP

PAIRS = [6, 8]


def _ctx(folder, attn="sdpa", max_new_tokens=6):
    model, tok = load_causal_lm(str(folder), attn_implementation=attn)
    return RunContext(DecodingEngine(model, tok), PromptRenderer(tok),
                      GenerationConfig(max_new_tokens=max_new_tokens))


def _trained_checkpoint(folder, path, isolate=False):
    """A checkpoint in ColumnarModule's format, of a model whose LoRA and LM head were
    perturbed (standing in for training); returns that model."""
    model, _ = load_causal_lm(str(folder))
    lora = LoraSettings(r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"])
    prepare_columnar_model(model, PAIRS, lora, untie_lm_head=True)
    set_trainable(model, ["lm_head"], lora=True)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    state = {f"model.{k}": v for k, v in trainable_state(model, model.state_dict()).items()}
    torch.save({"state_dict": state, "hyper_parameters": {
        "model_name": str(folder), "pair_indices": PAIRS, "isolate": isolate,
        "lora": lora.as_dict(), "untie_lm_head": True}}, path)
    return model.eval()


@pytest.mark.parametrize("arch, attn", [("llama", "sdpa"), ("llama", "eager"), ("qwen3", "sdpa")])
def test_isolated_without_branch_pairs_answers_like_one_sequence(tiny_models, arch, attn):
    ctx = _ctx(tiny_models[arch], attn)
    one = get_strategy("one_sequence").run(GROUP, ctx)
    col = get_strategy("columnar", {"isolate": True}).run(GROUP, ctx)
    assert [r.raw for r in col.results] == [r.raw for r in one.results]
    # Both prefill the prompt (one chunk) in one masked call.
    assert col.cost.forward_passes == one.cost.forward_passes
    assert col.cost.prompt_tokens == one.cost.prompt_tokens


def test_untrained_run_says_so_and_leaves_the_shared_model_alone(tiny_models, caplog):
    ctx = _ctx(tiny_models["llama"])
    strategy = get_strategy("columnar", {"pair_indices": PAIRS})
    with caplog.at_level(logging.WARNING, logger="paralleldecode.strategies.columnar"):
        run = strategy.run(GROUP, ctx)
        strategy.run(GROUP, ctx)
    assert run.extras == {"untrained_groups": 1.0}
    assert "untrained_groups" in strategy.extra_figures
    assert sum("no checkpoint given or found" in r.message for r in caplog.records) == 1  # once
    assert len(run.results) == len(GROUP.questions) and all(r.strategy == "columnar" for r in run.results)
    assert not has_rope2d(ctx.engine.model)  # other strategies keep the stock model
    assert pair_indices_of(strategy.engine(GROUP, ctx)[0].model) == PAIRS
    # The full column rule really differs from one_sequence's isolation here.
    assert run.cost.forward_passes >= get_strategy("one_sequence").run(GROUP, ctx).cost.forward_passes


def test_checkpoint_loads_the_trained_model(tiny_models, tmp_path):
    path = tmp_path / "columnar.ckpt"
    trained = _trained_checkpoint(tiny_models["llama"], path)
    fresh, tok = load_causal_lm(str(tiny_models["llama"]))
    load_columnar_checkpoint(path, fresh)
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids=ids).logits, trained(input_ids=ids).logits, atol=0, rtol=0)
    assert pair_indices_of(fresh) == PAIRS

    ctx = _ctx(tiny_models["llama"])
    strategy = get_strategy("columnar", {"checkpoint": str(path)})
    run = strategy.run(GROUP, ctx)
    assert run.extras == {"untrained_groups": 0.0} and strategy.layout == "columnar"
    # Same answers as the engine over the (unmerged) trained model itself.
    background, branches = columnar_segments(ctx.renderer, GROUP)
    cfg = GenerationConfig(max_new_tokens=6, stop_strings=('"}',))
    ref = DecodingEngine(trained, tok).generate(columnar_layout(background, branches, 0), cfg)
    assert [r.raw for r in run.results] == ['{"answer": "' + s.text + ('"}' if s.finish_reason == "stop_string" else "")
                                            for s in ref.streams]
    assert not has_rope2d(ctx.engine.model)


def test_checkpoint_is_discovered_by_model_and_dataset(tiny_models, tmp_path):
    folder = tiny_models["llama"]
    path = trained_checkpoint_path(tmp_path, GROUP.dataset, str(folder), "columnar_finetune")
    path.parent.mkdir(parents=True)
    _trained_checkpoint(folder, path, isolate=True)
    ctx = dataclasses.replace(_ctx(folder), model_name=str(folder))
    found = get_strategy("columnar", {"checkpoint_dir": str(tmp_path)}).run(GROUP, ctx)
    given = get_strategy("columnar", {"checkpoint": str(path)}).run(GROUP, ctx)
    assert found.extras == {"untrained_groups": 0.0}
    assert [r.raw for r in found.results] == [r.raw for r in given.results]
    elsewhere = get_strategy("columnar", {"checkpoint_dir": str(tmp_path / "none")}).run(GROUP, ctx)
    assert elsewhere.extras == {"untrained_groups": 1.0}


def test_lora_adapter_folder(tiny_models, tmp_path):
    from peft import LoraConfig, get_peft_model

    from paralleldecode.strategies.columnar import load_lora_adapter, merge_lora

    base, _ = load_causal_lm(str(tiny_models["qwen2"]))
    peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "o_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits
        fresh, _ = load_causal_lm(str(tiny_models["qwen2"]))
        load_lora_adapter(fresh, tmp_path / "adapter")
        torch.testing.assert_close(fresh(input_ids=ids).logits, want, atol=1e-5, rtol=0)
        assert merge_lora(fresh) == 4  # 2 layers x (q_proj, o_proj)
        torch.testing.assert_close(fresh(input_ids=ids).logits, want, atol=1e-4, rtol=0)

    ctx = _ctx(tiny_models["qwen2"])
    run = get_strategy("columnar", {"adapter": str(tmp_path / "adapter"), "isolate": True}).run(GROUP, ctx)
    assert run.extras == {"untrained_groups": 0.0}
    assert not any(".lora_" in n for n, _ in ctx.engine.model.named_parameters())


def test_bad_options_are_clear_errors(tiny_models, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_strategy("columnar", {"checkpoint": str(tmp_path / "missing.ckpt")})
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        get_strategy("columnar", {"adapter": str(tmp_path)})
    path = tmp_path / "columnar.ckpt"
    _trained_checkpoint(tiny_models["llama"], path)
    with pytest.raises(ValueError, match=r"pair_indices=\[1\] differ from the checkpoint's \[6, 8\]"):
        get_strategy("columnar", {"checkpoint": str(path), "pair_indices": [1]})
    torch.save({"state_dict": {}, "hyper_parameters": {"model_name": "x"}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not a columnar checkpoint.*pair_indices"):
        get_strategy("columnar", {"checkpoint": str(tmp_path / "other.ckpt")})
    # A checkpoint trained on another base model (narrower layers).
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(ValueError, match="trained on .*tiny-llama"):
        load_columnar_checkpoint(path, other)
    ctx = _ctx(tiny_models["llama"])
    with pytest.raises(ValueError, match=r"entry 99 is out of range.*1\.\.8"):
        get_strategy("columnar", {"pair_indices": [99]}).run(GROUP, ctx)


def test_model_without_rope_is_refused_by_name(tiny_models):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2))
    ctx = RunContext(DecodingEngine(model, tok), PromptRenderer(tok), GenerationConfig(max_new_tokens=3))
    with pytest.raises(ValueError, match="rotary.*'gpt2'"):
        get_strategy("columnar").run(GROUP, ctx)


def test_layout_command_prints_the_table_and_the_branches(tiny_models, tmp_path, capsys):
    from paralleldecode.columnar_layout import main

    argv = ["--model", str(tiny_models["llama"]), "--background", GROUP.background,
            "--question", "Who built it?", "--question", "Until which year did the lamp burn oil?",
            "--max-new-tokens", "4"]
    assert main(argv + ["--pair-indices", "6", "8"]) == 0
    out = capsys.readouterr().out
    assert "base model (no checkpoint or adapter" in out and "pair_indices (branch axis): [6, 8]" in out
    lines = out.splitlines()
    head = lines.index(next(line for line in lines if line.split()[:4] == ["slot", "branch", "column", "token"]))
    n = int(next(line for line in lines if line.startswith("background:")).split("(")[1].split()[0])
    rows = [line.split(None, 3) for line in lines[head + 1:] if line.strip() and line.split()[0].isdigit()]
    assert [int(r[2]) for r in rows[:n]] == list(range(n)) and {r[1] for r in rows[:n]} == {"0"}
    firsts = [r for r in rows[n:] if r[2] == str(n)]
    assert [r[1] for r in firsts] == ["1", "2"]  # both branches start at column N
    assert "branch 1: Who built it?" in out and "branch 2: Until which year" in out
    assert "reply: {\"answer\": \"" in out

    path = tmp_path / "columnar.ckpt"
    _trained_checkpoint(tiny_models["llama"], path, isolate=True)
    assert main(argv + ["--checkpoint", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"weights: {path}" in out and "isolate: True" in out and "[6, 8]" in out
    with pytest.raises(SystemExit):
        main(argv + ["--checkpoint", str(path), "--pair-indices", "1"])
    assert "differ from the checkpoint's [6, 8]" in capsys.readouterr().err
