"""`CrossBatchModule`: what trains, what is saved, and that training lowers the loss."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from datamodules import QAGroupsDataModule
from lightning_modules import CrossBatchModule
from paralleldecode.data.registry import load_groups
from paralleldecode.models.crossbatch_lm import METHODS, load_crossbatch_checkpoint
from paralleldecode.models.loading import load_causal_lm
from paralleldecode.models.training import read_checkpoint


def _module(model, tmp_path, method, **kw) -> CrossBatchModule:
    return CrossBatchModule(model_name=str(model), method=method, checkpoint_dataset="demo",
                            checkpoint_dir=str(tmp_path / "ckpt"), **kw)


def _trainer(tmp_path, steps: int, **kw) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=str(tmp_path), **kw)


def _data(batch_size: int = 2, count: int = 2) -> QAGroupsDataModule:
    return QAGroupsDataModule(dataset="demo", context_count=count, max_questions=4,
                              batch_size=batch_size)


@pytest.fixture(scope="module")
def groups():
    return load_groups("demo", context_count=2, max_questions=4)


@pytest.mark.parametrize("method", METHODS)
def test_only_the_trainable_set_changes(tiny_models, tmp_path, method):
    module = _module(tiny_models["llama"], tmp_path, method, learning_rate=1e-2)
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    expected = {"net.lm.lm_head.weight"}
    assert expected <= trainable
    assert any(".lora_" in n for n in trainable) == method.startswith("lora_")
    assert any(n.startswith("net.mixer.") for n in trainable) == method.endswith("crossbatch")
    assert all(n in expected or ".lora_" in n or n.startswith("net.mixer.") for n in trainable)
    _trainer(tmp_path, 3).fit(module, datamodule=_data())
    after = dict(module.named_parameters())
    for name, old in before.items():
        if name in trainable:
            continue
        assert torch.equal(after[name].detach(), old), f"frozen {name} changed"
    changed = [n for n in trainable if not torch.equal(after[n].detach(), before[n])]
    assert "net.lm.lm_head.weight" in changed
    if method.startswith("lora_"):  # lora_B starts at zero and moves first
        assert any(".lora_B." in n for n in changed)


@pytest.mark.parametrize("method", ["crossbatch", "lora_crossbatch"])
def test_mixed_loss_falls_on_a_fixed_batch(tiny_models, tmp_path, method, groups):
    torch.manual_seed(0)
    module = _module(tiny_models["llama"], tmp_path, method, learning_rate=3e-3)
    module.configure_model()
    opt = module.configure_optimizers()
    losses = []
    for _ in range(30):
        loss = module(groups[:2]).mixed
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_gradients_reach_only_the_trainable_set(tiny_models, tmp_path, groups):
    module = _module(tiny_models["llama"], tmp_path, "lora_crossbatch", use_gate=True)
    module.configure_model()
    module(groups[:2]).mixed.backward()
    for name, p in module.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name


@pytest.mark.parametrize("method,mix", [("crossbatch", "attention"), ("lora_crossbatch", "mixer"),
                                        ("lora_lmhead", "attention"), ("baseline", "attention")])
def test_checkpoint_holds_only_trained_weights_and_reloads_identically(tiny_models, tmp_path, method, mix, groups):
    module = _module(tiny_models["llama"], tmp_path, method, mix_method=mix, learning_rate=1e-2)
    _trainer(tmp_path, 2).fit(module, datamodule=_data())
    path = module.output_path()
    assert path == tmp_path / "ckpt" / "demo" / f"{tiny_models['llama'].name}_{method}.ckpt"
    ckpt = read_checkpoint(path)  # weights_only: plain hyperparameters
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert set(ckpt["state_dict"]) == trainable
    assert ckpt["hyper_parameters"]["method"] == method

    base, _ = load_causal_lm(str(tiny_models["llama"]))
    net, hp = load_crossbatch_checkpoint(path, base, expected_method=method)
    assert hp["mix_method"] == mix
    module.eval()
    with torch.no_grad():
        want = module.net(**module.encode(groups[:2]))
        got = net(**module.encode(groups[:2]))
    assert torch.equal(want.mixed, got.mixed) and torch.equal(want.plain, got.plain)
    with pytest.raises(ValueError, match="expected 'baseline'" if method != "baseline" else "expected 'crossbatch'"):
        load_crossbatch_checkpoint(path, load_causal_lm(str(tiny_models["llama"]))[0],
                                   expected_method="baseline" if method != "baseline" else "crossbatch")
    # Another base model (narrower layers): a clear error naming the one it was trained on.
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(ValueError, match="trained on .*tiny-llama.*do not fit this model"):
        load_crossbatch_checkpoint(path, other)


def test_existing_checkpoint_is_kept_unless_forced(tiny_models, tmp_path):
    module = _module(tiny_models["llama"], tmp_path, "baseline")
    _trainer(tmp_path, 1).fit(module, datamodule=_data())
    stamp = module.output_path().stat().st_mtime_ns
    again = _module(tiny_models["llama"], tmp_path, "baseline")
    with pytest.raises(FileExistsError, match="model.force"):
        _trainer(tmp_path, 1).fit(again, datamodule=_data())
    assert module.output_path().stat().st_mtime_ns == stamp
    forced = _module(tiny_models["llama"], tmp_path, "baseline", force=True)
    _trainer(tmp_path, 1).fit(forced, datamodule=_data())
    assert module.output_path().stat().st_mtime_ns != stamp


def test_bad_settings_name_the_choices(tiny_models, tmp_path):
    with pytest.raises(ValueError, match="accepted: baseline, crossbatch, lora_lmhead, lora_crossbatch"):
        _module(tiny_models["llama"], tmp_path, "lora")
    with pytest.raises(ValueError, match="model.mix_method must be one of attention, mixer; got 'average'"):
        _module(tiny_models["llama"], tmp_path, "crossbatch", mix_method="average")
    module = _module(tiny_models["llama"], tmp_path, "lora_lmhead", lora_target_modules=["qkv"])
    with pytest.raises(ValueError, match="its linear layers: .*q_proj"):
        module.configure_model()
