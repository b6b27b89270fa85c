"""Training runs that survive: resumable checkpoints, exact resume, SIGTERM, refused resumes
and the cost of training in the logs.

The slow tests run ``paralleldecode fit`` as real processes on tiny models: one run goes
uninterrupted, the other is killed by a real signal (``stop_at.SignalAtStep``, handed in
through ``--trainer.callbacks``) and resumed with ``--ckpt_path last``; the trained weights
and the per-step losses must be the same.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from datamodules import QAGroupsDataModule, TextBranchesDataModule
from paralleldecode.cli import build_cli
from paralleldecode.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[2]
CROSSBATCH = ROOT / "configs/fit/crossbatch_squad.yaml"
PRETRAIN = ROOT / "configs/fit/columnar_pretrain.yaml"
COMMAND = str(Path(sys.executable).parent / "paralleldecode")


@pytest.fixture
def text_file(tmp_path) -> Path:
    words = "the lighthouse keeper wrote down every ship that passed the point in the long winter".split()
    lines = [" ".join(words[(i * 7) % len(words):] + words[:(i * 7) % len(words)]) for i in range(60)]
    path = tmp_path / "text" / "wiki.tokens"
    path.parent.mkdir()
    path.write_text("\n".join(lines) + "\n")
    return path


def crossbatch_args(model: Path, root: Path, method: str, steps: int = 6, every: int = 2) -> list[str]:
    return [
        "--config", str(CROSSBATCH),
        "--model.init_args.model_name", str(model),
        "--model.init_args.method", method,
        "--model.init_args.learning_rate", "0.003",
        "--model.init_args.checkpoint_dir", str(root / "trained"),
        "--model.init_args.checkpoint_every_n_steps", str(every),
        "--data.init_args.dataset", "demo",
        "--data.init_args.data_path", "null",
        "--data.init_args.dataset_options", "null",
        "--trainer.max_steps", str(steps),
        "--trainer.log_every_n_steps", "1",
        "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false",
    ]


def columnar_args(model: Path, root: Path, text: Path, steps: int = 6, every: int = 2) -> list[str]:
    return [
        "--config", str(PRETRAIN),
        "--model.init_args.model_name", str(model),
        "--model.init_args.pair_indices", "[3, 4]",
        "--model.init_args.lora.r", "4",
        "--model.init_args.checkpoint_dir", str(root / "trained"),
        "--model.init_args.checkpoint_every_n_steps", str(every),
        "--data.init_args.source", str(text),
        "--data.init_args.name", "text",
        "--data.init_args.background_length", "8",
        "--data.init_args.seq_length", "8",
        "--data.init_args.branch_count", "3",
        "--trainer.max_steps", str(steps),
        "--trainer.log_every_n_steps", "1",
        "--trainer.default_root_dir", str(root),
        "--trainer.logger.init_args.save_dir", str(root),
        "--trainer.enable_progress_bar", "false",
    ]


def step_losses(root: Path) -> dict[int, float]:
    """``train/loss_step`` by global step over every TensorBoard version in ``root``; a
    step logged twice (by the killed run and again by the resumed one) must agree."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[int, float] = {}
    for folder in sorted(root.glob("lightning_logs/version_*")):
        acc = EventAccumulator(str(folder))
        acc.Reload()
        for event in acc.Scalars("train/loss_step") if "train/loss_step" in acc.Tags()["scalars"] else []:
            assert out.setdefault(event.step, event.value) == event.value, (folder, event.step)
    return out


def trained_weights(root: Path) -> dict[str, torch.Tensor]:
    (path,) = (root / "trained").glob("*/*.ckpt")
    return torch.load(path, weights_only=True)["state_dict"]


# -- fast: the loaders' state, refused resumes, the cost of training ----------------------


def _batches(loader, count: int | None = None, epoch: int | None = None) -> list:
    if epoch is not None:  # as Lightning does at each epoch's start
        loader.sampler.set_epoch(epoch)
    out = []
    for batch in loader:
        out.append([getattr(x, "id", x) if not isinstance(x, dict) else x["branches"] for x in batch])
        if count is not None and len(out) == count:
            break
    return out


@pytest.mark.parametrize("kind", ["groups", "text"])
@pytest.mark.parametrize("stop_after", [1, 3])
def test_a_restored_loader_goes_on_with_the_next_batch(kind, stop_after, tiny_models, text_file):
    def module():
        if kind == "groups":
            dm = QAGroupsDataModule(dataset="demo", batch_size=2, seed=3)
        else:
            dm = TextBranchesDataModule(source=str(text_file), tokenizer_name=str(tiny_models["llama"]),
                                        background_length=4, branch_count=2, seq_length=4, batch_size=2, seed=3)
        dm.setup("fit")
        return dm

    uninterrupted = module().train_dataloader()
    whole, second_epoch = _batches(uninterrupted, epoch=0), _batches(uninterrupted, epoch=1)
    assert len(whole) > stop_after + 1 and second_epoch != whole
    first = module().train_dataloader()
    assert _batches(first, stop_after, epoch=0) == whole[:stop_after]
    state = first.state_dict()
    restored = module().train_dataloader()
    restored.load_state_dict(state)
    assert _batches(restored) == whole[stop_after:]
    # The next epoch shuffles anew, as the uninterrupted loader's did.
    assert _batches(restored, epoch=1) == second_epoch


def test_a_checkpoint_of_another_method_is_refused_naming_both(tiny_models, tmp_path):
    model = tiny_models["llama"]
    build_cli(["fit", *crossbatch_args(model, tmp_path, "lora_crossbatch", steps=2, every=1)])
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2
    with pytest.raises(CheckpointError, match=r"lora_crossbatch.*this run is CrossBatchModule method 'crossbatch'"):
        build_cli(["fit", *crossbatch_args(model, tmp_path, "crossbatch", steps=4, every=1), "--ckpt_path", "last"])


def test_the_cost_of_training_is_logged(tiny_models, tmp_path, text_file):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    build_cli(["fit", *columnar_args(tiny_models["llama"], tmp_path, text_file, steps=3)])
    (folder,) = tmp_path.glob("lightning_logs/version_*")
    acc = EventAccumulator(str(folder))
    acc.Reload()
    for tag in ("train/tokens_per_s", "train/samples_per_s", "train/peak_memory_mb"):
        values = [e.value for e in acc.Scalars(tag)]
        assert len(values) == 3 and all(v > 0 for v in values), tag
    # Both rates share the step's seconds; a sample is 8 background + 3 x 8 branch tokens.
    for tokens, samples in zip(acc.Scalars("train/tokens_per_s"), acc.Scalars("train/samples_per_s")):
        assert tokens.value / samples.value == pytest.approx(32)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()  # at the end, though 3 % 2 != 0


# -- slow: real processes killed and resumed ------------------------------------------------


def run_fit(args: list[str], *, new_session: bool = False, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
               PYTHONWARNINGS="ignore")
    return subprocess.run([COMMAND, "fit", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, start_new_session=new_session)


def killer(step: int, signal_name: str, group: bool = False) -> list[str]:
    return ["--trainer.callbacks+=stop_at.SignalAtStep", "--trainer.callbacks.step", str(step),
            "--trainer.callbacks.signal_name", signal_name, "--trainer.callbacks.group", str(group).lower()]


def check_resumed_equals_uninterrupted(args, tmp_path: Path, signal_name: str, extra=()) -> None:
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    done = run_fit([*args(whole), *extra])
    assert done.returncode == 0, done.stderr[-3000:]
    # Killed as step 5 starts: after the checkpoint of step 4 (the second one).
    group = bool(extra)
    killed = run_fit([*args(broken), *extra, *killer(4, signal_name, group)], new_session=group)
    if signal_name == "SIGKILL":
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        assert torch.load(broken / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    else:
        # SIGTERM: step 5 ends, its checkpoint is written, the process says so and exits 143.
        assert killed.returncode == 143, killed.stderr[-3000:]
        assert "stopped by SIGTERM after step 5" in killed.stdout + killed.stderr
        assert torch.load(broken / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
    assert not (broken / "trained").exists()
    resumed = run_fit([*args(broken), *extra, "--ckpt_path", "last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restored all states" in resumed.stdout + resumed.stderr

    a, b = trained_weights(whole), trained_weights(broken)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
    losses = step_losses(whole)
    assert sorted(losses) == list(range(6))
    assert step_losses(broken) == pytest.approx(losses, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_crossbatch_killed_and_resumed_ends_like_an_uninterrupted_run(signal_name, tiny_models, tmp_path):
    # lora_crossbatch: adapters with dropout, so the random generators must resume too.
    check_resumed_equals_uninterrupted(
        lambda root: crossbatch_args(tiny_models["llama"], root, "lora_crossbatch"), tmp_path, signal_name)


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_columnar_killed_and_resumed_ends_like_an_uninterrupted_run(signal_name, tiny_models, tmp_path, text_file):
    check_resumed_equals_uninterrupted(
        lambda root: columnar_args(tiny_models["llama"], root, text_file), tmp_path, signal_name)


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_ddp_killed_and_resumed_ends_like_an_uninterrupted_run(signal_name, tiny_models, tmp_path):
    ddp = ["--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2"]
    check_resumed_equals_uninterrupted(
        lambda root: crossbatch_args(tiny_models["llama"], root, "lora_crossbatch"), tmp_path, signal_name, ddp)
