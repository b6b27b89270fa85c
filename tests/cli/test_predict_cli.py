"""`paralleldecode predict` end to end through the real LightningCLI on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paralleldecode.cli import build_cli
from paralleldecode.strategies import strategy_names

ROOT = Path(__file__).resolve().parents[2]
DEMO_STRATEGIES = ["all_in_one", "sequential", "sequential_cached", "batch", "batch_cached", "one_sequence"]
RECORD_KEYS = {"strategy", "group_id", "question_id", "question", "answer", "gold", "em", "f1",
               "lenient", "format_ok", "prompt_tokens", "generated_tokens", "forward_passes",
               "latency_s"}
SUMMARY_KEYS = {"em", "f1", "lenient", "format_rate", "questions", "prompt_tokens",
                "generated_tokens", "forward_passes", "wall_seconds"}


def predict_args(model: Path, root: Path, *extra: str) -> list[str]:
    return [
        "predict", "--config", str(ROOT / "configs/predict/demo.yaml"),
        "--model.init_args.model_name", str(model),
        "--model.init_args.max_new_tokens", "6",
        "--data.init_args.context_count", "2",
        "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false",
        *extra,
    ]


def instantiate(args: list[str]):
    """Parse and instantiate without running (``run=False`` takes no subcommand)."""
    return build_cli(args[1:], run=False)


def run_dir(root: Path) -> Path:
    (found,) = root.glob("lightning_logs/version_*")
    return found


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_predict_writes_records_summary_tensorboard_and_plot(tiny_models, tmp_path, arch, capsys):
    build_cli(predict_args(tiny_models[arch], tmp_path))
    out = run_dir(tmp_path)
    records = [json.loads(line) for line in (out / "predictions.jsonl").open()]
    questions = {(r["group_id"], r["question_id"]) for r in records}
    assert len(records) == len(questions) * len(DEMO_STRATEGIES)
    assert [r["strategy"] for r in records[:: len(questions)]] == DEMO_STRATEGIES
    for r in records:
        assert RECORD_KEYS <= set(r)
        assert r["generated_tokens"] > 0 and r["forward_passes"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == DEMO_STRATEGIES
    for fig in summary.values():
        assert SUMMARY_KEYS <= set(fig)
        assert fig["questions"] == len(questions)
    # batch decodes all questions of a group together: fewer passes than sequential.
    assert summary["batch"]["forward_passes"] < summary["sequential"]["forward_passes"]
    assert list(out.glob("events.out.tfevents.*"))
    assert (out / "report.html").is_file() and not (out / "quality_vs_cost.png").exists()
    assert not list(out.glob("predictions.rank*.jsonl"))
    printed = capsys.readouterr().out
    assert all(name in printed for name in DEMO_STRATEGIES) and "fwd passes" in printed


def test_tensorboard_holds_the_summary_scalars(tiny_models, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    build_cli(predict_args(tiny_models["llama"], tmp_path, "--model.init_args.strategies", "[batch]"))
    acc = EventAccumulator(str(run_dir(tmp_path)))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "predict/batch/f1" in tags and "predict/batch/forward_passes" in tags


def test_plain_tokenizer_without_chat_template(tiny_models, tmp_path):
    build_cli(predict_args(tiny_models["llama-nochat"], tmp_path, "--model.init_args.strategies", "[batch]"))
    assert (run_dir(tmp_path) / "summary.json").is_file()


def test_every_config_instantiates(monkeypatch):
    import re

    configs = sorted((ROOT / "configs").rglob("*.yaml"))
    assert configs
    for cfg in configs:
        # API configs read their key from the environment at construction.
        for var in re.findall(r"api_key_env:\s*(\w+)", cfg.read_text()):
            monkeypatch.setenv(var, "sk-dummy")
        first = cfg.read_text().splitlines()[0]
        command = first.removeprefix("# paralleldecode ").split()[0]
        assert first.startswith("# paralleldecode ") and f"--config {cfg.relative_to(ROOT)}" in first, cfg
        assert command in ("fit", "validate", "test", "predict"), cfg
        # A config that completes another names both on its first line.
        args = [a for path in re.findall(r"--config (\S+)", first) for a in ("--config", str(ROOT / path))]
        cli = build_cli(args, run=False)
        assert cli.model is not None and cli.datamodule is not None


def test_unknown_strategy_lists_registered(tmp_path, tiny_models):
    # jsonargparse re-raises instantiation errors as ValueError carrying our message.
    with pytest.raises(ValueError, match="unknown strategy 'nope'") as err:
        instantiate(predict_args(tiny_models["llama"], tmp_path, "--model.init_args.strategies", "[nope]"))
    for name in strategy_names():
        assert name in str(err.value)


def test_unknown_dataset_lists_registered(tmp_path, tiny_models):
    with pytest.raises(ValueError, match="unknown data set 'nope'.*demo.*squad"):
        instantiate(predict_args(tiny_models["llama"], tmp_path, "--data.init_args.dataset", "nope"))


def test_min_above_max_questions_is_refused(tmp_path, tiny_models):
    with pytest.raises(ValueError, match="min_questions.*max_questions"):
        instantiate(predict_args(tiny_models["llama"], tmp_path, "--data.init_args.min_questions", "4",
                                 "--data.init_args.max_questions", "2"))


def test_help_answers_without_loading_a_model(capsys):
    with pytest.raises(SystemExit) as ex:
        build_cli(["predict", "--help"])
    assert ex.value.code == 0
    assert "--model" in capsys.readouterr().out


def test_multiple_choice_and_long_answers_get_their_metrics(tiny_models, tmp_path):
    article = "The ferry leaves Tarnby at nine and reaches Estmark at noon, carrying mail and cattle."
    rows = [{"article": article, "question": q, "options": opts, "answer": a, "hard": False}
            for q, opts, a in [("When does the ferry leave?", ["At nine", "At noon", "At six", "At ten"], 0),
                               ("What does it carry?", ["Coal", "Mail and cattle", "Wine", "Salt"], 1)]]
    path = tmp_path / "quality.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    build_cli(predict_args(tiny_models["llama"], tmp_path, "--data.init_args.dataset", "quality",
                           "--data.init_args.data_path", str(path),
                           "--model.init_args.strategies", "[batch, one_sequence]"))
    out = run_dir(tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "predictions.jsonl").open()]
    assert all(r["answer_type"] == "choice" and r["gold"] in (["A"], ["B"]) for r in records)
    assert all(r["accuracy"] in (0.0, 1.0) and r["em"] is None for r in records)
    for fig in summary.values():
        assert 0 <= fig["accuracy"] <= 100 and fig["em"] is None and fig["questions"] == 2


def test_dependency_strategies_report_layers_and_write_html(tiny_models, tmp_path):
    from html.parser import HTMLParser

    html = tmp_path / "html"
    opts = json.dumps({"collab_llm_ideal": {"html_dir": str(html), "min_confidence": 0.0},
                       "collab_bert": {"html_dir": str(html)}})
    build_cli(predict_args(tiny_models["llama"], tmp_path,
                           "--model.init_args.strategies", "[batch, collab_llm_ideal, collab_bert]",
                           "--model.init_args.strategy_options", opts,
                           "--model.init_args.structured_output", "false"))
    summary = json.loads((run_dir(tmp_path) / "summary.json").read_text())
    for name in ("collab_llm_ideal", "collab_bert"):
        fig = summary[name]
        assert fig["layers"] >= 2 and fig["edges_kept"] >= 0 and fig["dependency_tokens"] > 0
        assert fig["questions"] == summary["batch"]["questions"]
    # Unconstrained, a random tiny model cannot write JSON edges: every group fell back to
    # the heuristic.
    assert summary["collab_llm_ideal"]["dependency_fallbacks"] == 2
    assert 0 < summary["collab_llm_ideal"]["ideal_latency_s"] <= summary["collab_llm_ideal"]["wall_seconds"]
    pages = sorted((html / "collab_bert").glob("*.html"))
    assert len(pages) == 2
    text = pages[0].read_text()
    HTMLParser().feed(text)
    assert "<svg" in text and "https://" not in text


def test_unknown_strategy_option_is_refused(tiny_models, tmp_path):
    opts = json.dumps({"collab_llm": {"max_dependency": 2}})
    with pytest.raises(ValueError, match="no option 'max_dependency'.*max_dependencies"):
        instantiate(predict_args(tiny_models["llama"], tmp_path, "--model.init_args.strategies",
                                 "[collab_llm]", "--model.init_args.strategy_options", opts))
