"""`ColumnarModule` and `TextBranchesDataModule`: the loss falls, only the chosen tensors
train, checkpoints round-trip exactly, the CLI and DDP runs write what they promise, and bad
input fails with messages naming the option."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import lightning as L
import pytest
import torch

from datamodules import QAGroupsDataModule, TextBranchesDataModule
from datamodules.text_branches import cut_samples
from lightning_modules import ColumnarModule
from lightning_modules.columnar_module import lr_factor, slots
from paralleldecode.cli import build_cli
from paralleldecode.config_check import check_command_line
from paralleldecode.data.grouping import even_chunks
from paralleldecode.data.records import DataError
from paralleldecode.data.registry import load_groups
from paralleldecode.decoding.columnar import columnar_loss
from paralleldecode.models.columnar import load_columnar_checkpoint
from paralleldecode.models.loading import load_causal_lm
from paralleldecode.models.training import LoraSettings, read_checkpoint

ROOT = Path(__file__).resolve().parents[2]
PRETRAIN = ROOT / "configs/fit/columnar_pretrain.yaml"
FINETUNE = ROOT / "configs/fit/columnar_finetune.yaml"
TEXT = ("The lighthouse at Carrow Point was built in 1871 by the engineer Maud Feren. "
        "The quick brown fox jumps over the lazy dog, 0123456789 times a day. "
        "Context, questions, answers: the model reads a paragraph and replies briefly.\n")
PAIRS = [3, 4]  # the tiny models' heads have 8 frequency pairs


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "corpus" / "text.txt"
    path.parent.mkdir()
    path.write_text(TEXT * 30)
    return path


@pytest.fixture(scope="module")
def groups():
    return load_groups("demo", context_count=2, max_questions=3)


def _module(model, tmp_path, mode: str = "pretrain", **kw) -> ColumnarModule:
    kw.setdefault("lora", LoraSettings(r=4, alpha=8, dropout=0.0))
    kw.setdefault("pair_indices", PAIRS)
    return ColumnarModule(mode=mode, model_name=str(model), checkpoint_dir=str(tmp_path / "ckpt"), **kw)


def _text_data(path, tokenizer=None, **kw) -> TextBranchesDataModule:
    kw = {"background_length": 8, "branch_count": 3, "seq_length": 8, "batch_size": 2, "name": "text", **kw}
    return TextBranchesDataModule(source=str(path), tokenizer_name=str(tokenizer) if tokenizer else None, **kw)


def _trainer(tmp_path, steps: int, **kw) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path), **kw)


def _logits(module: ColumnarModule, batch) -> torch.Tensor:
    module.eval()
    with torch.no_grad():
        return module(module.encode(batch))


# -- training ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["pretrain", "finetune"])
def test_loss_falls_on_a_fixed_batch(tiny_models, tmp_path, text_file, groups, mode):
    torch.manual_seed(0)
    model = tiny_models["llama"]
    module = _module(model, tmp_path, mode)
    module.configure_model()
    if mode == "pretrain":
        data = _text_data(text_file, model)
        data.setup("fit")
        batch = data.samples[:2]
    else:
        batch = groups[:2]
    tensors = module.encode(batch)
    assert int((tensors["labels"] != -100).sum()) > 0
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(30):
        loss = columnar_loss(module(tensors), tensors["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_finetune_targets_are_the_answer_tokens(tiny_models, tmp_path, groups):
    module = _module(tiny_models["llama"], tmp_path, "finetune")
    module.configure_model()
    group = groups[0]
    background, branches, masks = module.question_sample(group)
    tok = module.tokenizer
    for q, branch, mask in zip(group.questions, branches, masks):
        answer = tok(q.answers[0] + '"}', add_special_tokens=False)["input_ids"]
        assert branch[-len(answer):] == answer and mask == [False] * (len(branch) - len(answer)) + [True] * len(answer)
    # The prompt part is what the columnar strategy decodes: background + branch = one_question prompt.
    from paralleldecode.prompts import ONE_ANSWER, one_question

    first = module.renderer.ids(one_question(group, group.questions[0]), ONE_ANSWER.prefix)
    assert background + branches[0][: len(branches[0]) - sum(masks[0])] == first


def test_lora_trains_only_adapters_and_named_modules(tiny_models, tmp_path, text_file):
    model = tiny_models["llama"]
    module = _module(model, tmp_path, trainable_modules=["lm_head"], learning_rate=1e-2)
    module.configure_model()
    adapted = {n.rsplit(".", 1)[-1] for n, m in module.model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj"}
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert "model.lm_head.weight" in trainable
    assert all(".lora_" in n or n == "model.lm_head.weight" for n in trainable), trainable
    _trainer(tmp_path, 3).fit(module, datamodule=_text_data(text_file, model))
    after = dict(module.named_parameters())
    for name, old in before.items():
        if name not in trainable:
            assert torch.equal(after[name].detach(), old), f"frozen {name} changed"
    changed = {n for n in trainable if not torch.equal(after[n].detach(), before[n])}
    assert "model.lm_head.weight" in changed and any(".lora_B." in n for n in changed)


def test_lr_warms_up_then_decays():
    f = lr_factor("cosine", 0.1, 100)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(99) < 0.01
    lin = lr_factor("linear", 0.0, 10)
    assert [round(lin(s), 2) for s in (0, 5, 9)] == [1.0, 0.5, 0.1]
    assert lr_factor("cosine", 0.1, float("inf"))(10**6) == 1.0


def test_groups_split_into_even_chunks_and_oversize_is_counted(tiny_models, tmp_path, groups):
    assert [len(c) for c in even_chunks(list(range(7)), 5)] == [4, 3]
    assert [len(c) for c in even_chunks(list(range(5)), 5)] == [5]
    module = _module(tiny_models["llama"], tmp_path, "finetune", max_branches=2)
    module.configure_model()
    group = groups[0]
    samples = module.group_samples(group)
    assert sum(len(s[1]) for s in samples) == len(group.questions) and all(len(s[1]) <= 2 for s in samples)
    # Fits only one question at a time: every chunk is split down to single questions.
    one = max(slots(module.question_sample(replace(group, questions=[q]))) for q in group.questions)
    module.hparams.max_length = one
    samples = module.group_samples(group)
    assert [len(s[1]) for s in samples] == [1] * len(group.questions) and module.split_groups > 0
    module.hparams.max_length = 2  # nothing fits: skipped and counted, never silently
    with pytest.warns(UserWarning, match="skipping"):
        assert module.group_samples(group) == []
    assert module.skipped_questions == len(group.questions)


# -- checkpoints ------------------------------------------------------------------------


def test_checkpoint_round_trip_gives_identical_logits(tiny_models, tmp_path, text_file):
    model = tiny_models["qwen3"]
    module = _module(model, tmp_path, learning_rate=1e-2)
    data = _text_data(text_file, model)
    _trainer(tmp_path, 3).fit(module, datamodule=data)
    path = tmp_path / "ckpt" / "text" / f"{model.name}_columnar_pretrain.ckpt"
    assert module.output_path() == path and path.is_file()
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert hp["model_name"] == str(model) and hp["pair_indices"] == PAIRS and hp["isolate"] is False
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert hp["lora"] == {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": targets}
    assert hp["untie_lm_head"] is False
    assert ckpt["state_dict"] and all(".lora_" in k and k.startswith("model.") for k in ckpt["state_dict"])
    assert "optimizer_states" not in ckpt

    batch = data.samples[:2]
    trained = _logits(module, batch)
    fresh, _ = load_causal_lm(str(model), attn_implementation="sdpa")
    fresh = load_columnar_checkpoint(path, fresh)
    probe = _module(model, tmp_path)
    probe.configure_model()
    probe.model = fresh.eval()
    assert torch.equal(_logits(probe, batch), trained)

    # Training continues from it (as fine-tuning does): same structure, tensors and logits.
    follow = _module(model, tmp_path, init_checkpoint=str(path))
    follow.configure_model()
    assert torch.equal(_logits(follow, batch), trained)
    assert all(p.requires_grad == (".lora_" in n) for n, p in follow.named_parameters())
    other = _module(model, tmp_path, "finetune", init_checkpoint=str(path), pair_indices=[1])
    with pytest.raises(ValueError, match=r"pair_indices: checkpoint \[3, 4\], this run \[1\]"):
        other.configure_model()


# -- the command line -------------------------------------------------------------------


def _fit_args(config: Path, model: Path, root: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(config),
        "--model.init_args.model_name", str(model),
        "--model.init_args.pair_indices", "[3, 4]",
        "--model.init_args.lora.r", "4",
        "--model.init_args.checkpoint_dir", str(root / "ckpt"),
        "--trainer.max_steps", "2",
        "--trainer.log_every_n_steps", "1",
        "--trainer.default_root_dir", str(root),
        "--trainer.logger.init_args.save_dir", str(root / "tb"),
        "--trainer.enable_progress_bar", "false",
        *extra,
    ]


def _pretrain_args(model: Path, root: Path, text: Path, *extra: str) -> list[str]:
    return _fit_args(PRETRAIN, model, root, "--data.init_args.source", str(text),
                     "--data.init_args.name", "text", "--data.init_args.background_length", "8",
                     "--data.init_args.seq_length", "8", "--data.init_args.branch_count", "3", *extra)


def test_fit_command_writes_tensorboard_and_checkpoint_and_refuses_to_overwrite(tiny_models, tmp_path, text_file):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = tiny_models["llama"]
    build_cli(_pretrain_args(model, tmp_path, text_file))
    pretrained = tmp_path / "ckpt" / "text" / f"{model.name}_columnar_pretrain.ckpt"
    assert read_checkpoint(pretrained)["hyper_parameters"]["mode"] == "pretrain"
    (run,) = (tmp_path / "tb" / "lightning_logs").glob("version_*")
    acc = EventAccumulator(str(run))
    acc.Reload()
    assert {"train/loss_step", "train/lr"} <= set(acc.Tags()["scalars"])

    with pytest.raises(FileExistsError, match=rf"{pretrained}.*model\.force"):
        build_cli(_pretrain_args(model, tmp_path / "again", text_file, "--model.init_args.checkpoint_dir",
                                 str(tmp_path / "ckpt")))

    # Fine-tune from it on question groups (the bundled demo set stands in for SQuAD).
    build_cli(_fit_args(FINETUNE, model, tmp_path / "ft", "--model.init_args.init_checkpoint", str(pretrained),
                        "--model.init_args.checkpoint_dir", str(tmp_path / "ckpt"),
                        "--data.init_args.dataset", "demo", "--data.init_args.data_path", "null",
                        "--data.init_args.dataset_options", "null"))
    tuned = read_checkpoint(tmp_path / "ckpt" / "demo" / f"{model.name}_columnar_finetune.ckpt")
    assert tuned["hyper_parameters"]["init_checkpoint"] == str(pretrained)


@pytest.mark.parametrize("config", [PRETRAIN, FINETUNE], ids=lambda p: p.stem)
def test_configs_instantiate(config):
    first = config.read_text().splitlines()[0]
    assert first == f"# paralleldecode fit --config {config.relative_to(ROOT)}"
    cli = build_cli(["--config", str(config)], run=False)
    assert isinstance(cli.model, ColumnarModule) and cli.model.model is None  # no weights loaded
    assert cli.model.hparams.mode == config.stem.removeprefix("columnar_")
    wanted = TextBranchesDataModule if cli.model.hparams.mode == "pretrain" else QAGroupsDataModule
    assert isinstance(cli.datamodule, wanted)


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_two_cpu_processes(tiny_models, tmp_path, text_file):
    model = tiny_models["llama"]
    cmd = [str(Path(sys.executable).parent / "paralleldecode"),
           *_pretrain_args(model, tmp_path, text_file, "--trainer.accelerator", "cpu",
                           "--trainer.strategy", "ddp", "--trainer.devices", "2")]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    path = tmp_path / "ckpt" / "text" / f"{model.name}_columnar_pretrain.ckpt"
    ckpt = read_checkpoint(path)
    assert ckpt["global_step"] == 2 and all(".lora_" in k for k in ckpt["state_dict"])
    fresh, _ = load_causal_lm(str(model))
    load_columnar_checkpoint(path, fresh)


def test_text_windows_are_a_background_then_consecutive_branches(tiny_models, text_file):
    windows = cut_samples(list(range(50)), background_length=4, branch_count=2, seq_length=5)
    assert len(windows) == 3  # 50 // 14; the short tail is left out
    assert windows[1] == {"background": [14, 15, 16, 17], "branches": [[18, 19, 20, 21, 22], [23, 24, 25, 26, 27]]}
    data = _text_data(text_file, tiny_models["llama"], max_samples=3)
    data.setup("fit")
    assert len(data.samples) == 3
    assert all(len(s["background"]) == 8 and [len(b) for b in s["branches"]] == [8, 8, 8] for s in data.samples)
    assert TextBranchesDataModule().dataset_name == "wikitext-2"
    assert TextBranchesDataModule(source="HuggingFaceFW/fineweb-edu").dataset_name == "fineweb-edu"


# -- bad input --------------------------------------------------------------------------


def test_bad_text_sources_are_named(tiny_models, tmp_path, monkeypatch):
    tok = tiny_models["llama"]
    with pytest.raises(DataError, match="does not exist"):
        _text_data(tmp_path / "missing.txt", tok).setup("fit")
    monkeypatch.delenv("PARALLELDECODE_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="PARALLELDECODE_DATA_DIR.*not set"):
        _text_data("${PARALLELDECODE_DATA_DIR}/wikitext-2/wiki.valid.tokens", tok).setup("fit")
    (tmp_path / "empty.txt").write_text("  \n\n")
    with pytest.raises(DataError, match="holds no text"):
        _text_data(tmp_path / "empty.txt", tok).setup("fit")
    (tmp_path / "short.txt").write_text("a few words")
    with pytest.raises(DataError, match="fewer than one sample needs"):
        _text_data(tmp_path / "short.txt", tok).setup("fit")
    with pytest.raises(DataError, match="could not be loaded from the Hugging Face hub"):
        _text_data("no-such-owner/no-such-dataset", tok).setup("fit")
    with pytest.raises(DataError, match="streaming.*max_samples"):
        _text_data("HuggingFaceFW/fineweb-edu", tok, streaming=True)


def test_bad_model_options_are_named(tiny_models, tmp_path, text_file):
    # The choices are declared once (a Literal in the signature): the command's early check,
    # LightningCLI and a module built in Python all refuse from it.
    args = _pretrain_args(tiny_models["llama"], tmp_path, text_file, "--model.init_args.mode", "pretraining")
    with pytest.raises(ValueError, match="model.init_args.mode must be one of pretrain, finetune; got 'pretraining'"):
        check_command_line(args)
    with pytest.raises(Exception, match="pretraining"):  # jsonargparse's ArgumentError
        build_cli(args[1:], run=False, exit_on_error=False)
    with pytest.raises(ValueError, match="model.mode must be one of pretrain, finetune; got 'pretraining'"):
        _module(tiny_models["llama"], tmp_path, "pretraining")
    with pytest.raises(ValueError, match="nothing to train"):
        _module(tiny_models["llama"], tmp_path, lora=None)
    module = _module(tiny_models["llama"], tmp_path, "finetune")
    with pytest.raises(ValueError,
                       match="mode 'finetune' trains on datamodules.QAGroupsDataModule, but data is TextBranches"):
        _trainer(tmp_path, 1).fit(module, datamodule=_text_data(text_file, tiny_models["llama"]))
