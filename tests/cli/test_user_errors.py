"""What a user reads when the input is wrong: real `paralleldecode` processes, exit status 2,
one line on stderr naming the culprit, no traceback; config errors answer at once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXE = str(Path(sys.executable).parent / "paralleldecode")


def fails(*args: str, cwd: Path = ROOT) -> tuple[str, float]:
    start = time.monotonic()
    proc = subprocess.run([EXE, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    took = time.monotonic() - start
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Namespace(" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in lines if ln.startswith("paralleldecode: error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0].removeprefix("paralleldecode: error: "), took


def demo(*extra: str) -> list[str]:
    return ["predict", "--config", str(ROOT / "configs/predict/demo.yaml"), *extra]


# Each: the arguments, and what the one line must name.
CONFIG_ERRORS = {
    "unknown strategy": (demo("--model.init_args.strategies", "[batch, nope]"), ["'nope'", "one_sequence"]),
    "unknown option": (demo("--model.init_args.max_new_token", "3"), ["max_new_token", "max_new_tokens"]),
    "wrong type": (demo("--model.init_args.temperature", "warm"), ["model.init_args.temperature", "float"]),
    "bad choice": (demo("--model.init_args.on_error", "ignore"), ["on_error", "record, raise"]),
    "unknown data set": (demo("--data.init_args.dataset", "squid"), ["'squid'", "squad"]),
    "unknown data set option": (demo("--data.init_args.dataset", "squad", "--data.init_args.dataset_options",
                                     "{group_by: article, gruop_size: 4}"), ["gruop_size", "articles"]),
    "missing data file": (demo("--data.init_args.dataset", "squad", "--data.init_args.data_path",
                               "/nowhere/dev.json"), ["/nowhere/dev.json"]),
    "unknown strategy option": (demo("--model.init_args.strategies", "[collab_llm]",
                                     "--model.init_args.strategy_options", "{collab_llm: {max_dependency: 2}}"),
                                ["max_dependency", "max_dependencies"]),
    "resume without a folder": (demo("--model.init_args.resume", "true"), ["output_dir"]),
    "missing config file": (["predict", "--config", "configs/predict/nope.yaml"], ["nope.yaml"]),
    "missing model folder": (demo("--model.init_args.model_name", "./no-such-model"), ["./no-such-model"]),
}


@pytest.mark.parametrize("case", sorted(CONFIG_ERRORS))
def test_config_errors_answer_in_one_line_at_once(case):
    args, names = CONFIG_ERRORS[case]
    message, took = fails(*args)
    for name in names:
        assert name in message, message
    assert took < 5, f"{case}: {took:.1f} s"


def test_an_output_folder_with_predictions_is_not_written_over(tmp_path):
    (tmp_path / "predictions.jsonl").write_text("{}\n")
    message, took = fails(*demo("--model.init_args.output_dir", str(tmp_path)))
    assert str(tmp_path) in message and "resume true" in message and took < 5


def test_invalid_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args: [unclosed\n")
    message, _ = fails("predict", "--config", str(bad))
    assert str(bad) in message and "YAML" in message


@pytest.mark.slow
def test_errors_found_later_are_one_line_too(tiny_models, tmp_path):
    """Errors that need the data read, the model loaded or Lightning's own parser."""
    model = str(tiny_models["llama"])
    bad_record = tmp_path / "demo.json"
    bad_record.write_text(json.dumps({"version": 1, "groups": [{"id": "g1", "title": "t", "context": "c",
                                                                "questions": [{"id": "q1", "answers": ["a"]}]}]}))
    message, _ = fails(*demo("--model.init_args.model_name", model, "--data.init_args.data_path", str(bad_record)))
    assert str(bad_record) in message and "'question'" in message and "q1" in message
    message, _ = fails(*demo("--model.init_args.model_name", "nobody/no-such-model"))
    assert "nobody/no-such-model" in message
    message, _ = fails(*demo("--trainer.devicez", "2", "--trainer.default_root_dir", str(tmp_path / "logs")))
    assert "devicez" in message
    corrupt = tmp_path / "bad.ckpt"
    corrupt.write_bytes(b"\x80\x04not a checkpoint")
    options = json.dumps({"finetuned": {"checkpoint": str(corrupt)}})
    message, _ = fails(*demo("--model.init_args.model_name", model, "--model.init_args.strategies", "[finetuned]",
                             "--model.init_args.strategy_options", options))
    assert str(corrupt) in message and "cannot be read" in message
    # A group longer than the window fails its group (recorded); on_error raise stops there.
    long = tmp_path / "long.json"
    long.write_text(json.dumps({"version": 1, "groups": [{"id": "huge", "title": "t", "context": "word " * 1500,
                                                          "questions": [{"id": "q1", "question": "Why?",
                                                                         "answers": ["a"]}]}]}))
    message, _ = fails(*demo("--model.init_args.model_name", model, "--data.init_args.data_path", str(long),
                             "--model.init_args.on_error", "raise", "--model.init_args.strategies", "[batch]",
                             "--trainer.default_root_dir", str(tmp_path / "logs")))
    assert "'huge'" in message and "context window" in message
