"""The trained methods end to end: ``paralleldecode fit`` writes TensorBoard losses and a
trained checkpoint; ``paralleldecode predict`` discovers it (or says why it skipped)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from paralleldecode.cli import build_cli
from paralleldecode.data.registry import load_groups
from paralleldecode.decoding import DecodingEngine, GenerationConfig
from paralleldecode.models.loading import load_causal_lm
from paralleldecode.prompts import PromptRenderer
from paralleldecode.strategies import RunContext, StrategyUnavailable, get_strategy

ROOT = Path(__file__).resolve().parents[2]
FIT = ROOT / "configs/fit/crossbatch_squad.yaml"


def fit_args(model: Path, root: Path, method: str, *extra: str) -> list[str]:
    return [
        "--config", str(FIT),
        "--model.init_args.model_name", str(model),
        "--model.init_args.method", method,
        "--model.init_args.learning_rate", "0.003",
        "--model.init_args.checkpoint_dir", str(root / "ckpt"),
        "--data.init_args.dataset", "demo",
        "--data.init_args.data_path", "null",
        "--data.init_args.dataset_options", "null",
        "--data.init_args.context_count", "4",
        "--trainer.max_steps", "4",
        "--trainer.log_every_n_steps", "1",
        "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false",
        *extra,
    ]


def _scalars(folder: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_fit_logs_both_losses_and_writes_the_checkpoint(tiny_models, tmp_path):
    model = tiny_models["llama"]
    build_cli(["fit", *fit_args(model, tmp_path, "crossbatch")])
    (logs,) = tmp_path.glob("lightning_logs/version_*")
    scalars = _scalars(logs)
    for tag in ("train/loss_step", "train/loss_mixed_step", "train/loss_plain_step", "train/mixing_gain_step"):
        assert len(scalars[tag]) == 4, (tag, sorted(scalars))
    gain = [p - m for p, m in zip(scalars["train/loss_plain_step"], scalars["train/loss_mixed_step"])]
    assert scalars["train/mixing_gain_step"] == pytest.approx(gain, abs=1e-5)
    assert (tmp_path / "ckpt" / "demo" / f"{model.name}_crossbatch.ckpt").is_file()


def test_predict_discovers_checkpoints_and_skips_missing_ones(tiny_models, tmp_path):
    model = tiny_models["llama"]
    build_cli(["fit", *fit_args(model, tmp_path / "fit", "crossbatch")])
    out = tmp_path / "predict"
    build_cli([
        "predict", "--config", str(ROOT / "configs/predict/demo.yaml"),
        "--model.init_args.model_name", str(model),
        "--model.init_args.max_new_tokens", "4",
        "--model.init_args.strategies", "[batch, finetuned, collab_hidden]",
        "--model.init_args.strategy_options",
        json.dumps({s: {"checkpoint_dir": str(tmp_path / "fit" / "ckpt")} for s in ("finetuned", "collab_hidden")}),
        "--data.init_args.context_count", "2",
        "--trainer.default_root_dir", str(out),
        "--trainer.enable_progress_bar", "false",
    ])
    (run,) = out.glob("lightning_logs/version_*")
    summary = json.loads((run / "summary.json").read_text())
    expected = tmp_path / "fit" / "ckpt" / "demo" / f"{model.name}_baseline.ckpt"
    assert summary["finetuned"] == {"skipped": summary["finetuned"]["skipped"]}
    assert str(expected) in summary["finetuned"]["skipped"]
    assert summary["collab_hidden"]["questions"] == summary["batch"]["questions"] > 0
    records = [json.loads(line) for line in (run / "predictions.jsonl").open()]
    assert {r["strategy"] for r in records} == {"batch", "collab_hidden"}


def test_discovery_goes_by_model_and_dataset(tiny_models, tmp_path):
    model, tok = load_causal_lm(str(tiny_models["llama"]))
    ctx = RunContext(DecodingEngine(model, tok), PromptRenderer(tok), GenerationConfig(max_new_tokens=3),
                     model_name=str(tiny_models["llama"]))
    (group,) = load_groups("demo", context_count=1)
    strategy = get_strategy("lora_crossbatch", {"checkpoint_dir": str(tmp_path)})
    with pytest.raises(StrategyUnavailable, match="no 'lora_crossbatch' checkpoint at .*demo"):
        strategy.locate(group, ctx)
    for dataset, name in [("demo", f"{tiny_models['llama'].name}_lora_crossbatch.ckpt"),
                          ("squad", f"{tiny_models['llama'].name}_lora_crossbatch.ckpt"),
                          ("demo", f"{tiny_models['llama'].name}_crossbatch.ckpt"),
                          ("demo", "other-model_lora_crossbatch.ckpt")]:
        (tmp_path / dataset).mkdir(exist_ok=True)
        (tmp_path / dataset / name).write_bytes(b"")
    assert strategy.locate(group, ctx) == tmp_path / "demo" / f"{tiny_models['llama'].name}_lora_crossbatch.ckpt"
    other = get_strategy("lora_crossbatch", {"checkpoint_dir": str(tmp_path), "dataset": "squad"})
    assert other.locate(group, ctx) == tmp_path / "squad" / f"{tiny_models['llama'].name}_lora_crossbatch.ckpt"
    explicit = get_strategy("finetuned", {"checkpoint": str(tmp_path / "nowhere.ckpt")})
    with pytest.raises(StrategyUnavailable, match="nowhere.ckpt does not exist"):
        explicit.locate(group, ctx)


def test_trained_strategy_keeps_the_shared_model_untouched(tiny_models, tmp_path):
    build_cli(["fit", *fit_args(tiny_models["llama"], tmp_path, "lora_crossbatch")])
    model, tok = load_causal_lm(str(tiny_models["llama"]))
    before = {n: p.clone() for n, p in model.state_dict().items()}
    ctx = RunContext(DecodingEngine(model, tok), PromptRenderer(tok), GenerationConfig(max_new_tokens=3),
                     model_name=str(tiny_models["llama"]))
    (group,) = load_groups("demo", context_count=1)
    run = get_strategy("lora_crossbatch", {"checkpoint_dir": str(tmp_path / "ckpt")}).run(group, ctx)
    assert len(run.results) == len(group.questions)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def _fit_subprocess(model: Path, root: Path, method: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).parent / "paralleldecode"), "fit", *fit_args(model, root, method, *extra)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.ddp
def test_fit_under_ddp_on_two_cpu_processes(tiny_models, tmp_path):
    model = tiny_models["llama"]
    proc = _fit_subprocess(model, tmp_path, "lora_crossbatch", "--trainer.accelerator", "cpu",
                           "--trainer.strategy", "ddp", "--trainer.devices", "2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    path = tmp_path / "ckpt" / "demo" / f"{model.name}_lora_crossbatch.ckpt"
    state = torch.load(path, weights_only=True)["state_dict"]
    assert any(".lora_B." in k for k in state) and any(k.startswith("net.mixer.") for k in state)


@pytest.mark.slow
@pytest.mark.ddp
def test_fit_under_fsdp2_on_two_cpu_processes(tiny_models, tmp_path):
    model = tiny_models["llama"]
    proc = _fit_subprocess(model, tmp_path, "lora_crossbatch",
                           "--config", str(ROOT / "configs/fit/crossbatch_squad_fsdp.yaml"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    path = tmp_path / "ckpt" / "demo" / f"{model.name}_lora_crossbatch.ckpt"
    state = torch.load(path, weights_only=True)["state_dict"]
    # Gathered into whole tensors, not shards.
    base, _ = load_causal_lm(str(model))
    assert state["net.lm.lm_head.weight"].shape == base.lm_head.weight.shape
    from paralleldecode.models.crossbatch_lm import load_crossbatch_checkpoint

    net, _ = load_crossbatch_checkpoint(path, base)
    assert net.mixer is not None
