"""Real `paralleldecode predict` processes stopped from outside (SIGTERM, SIGKILL, a killed
DDP run) and resumed: the resumed outputs equal an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_outputs import assert_same_run, records

ROOT = Path(__file__).resolve().parents[2]
STRATEGIES = ["sequential", "batch"]
PER_GROUP = len(STRATEGIES)  # part-file lines per finished group


def command(model: Path, out: Path, *extra: str) -> list[str]:
    return [
        str(Path(sys.executable).parent / "paralleldecode"), "predict",
        "--config", str(ROOT / "configs/predict/demo.yaml"),
        "--model.init_args.model_name", str(model),
        "--model.init_args.max_new_tokens", "12",
        "--model.init_args.strategies", f"[{', '.join(STRATEGIES)}]",
        "--model.init_args.output_dir", str(out),
        "--trainer.default_root_dir", str(out.parent / (out.name + "-logs")),
        "--trainer.enable_progress_bar", "false",
        *extra,
    ]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def finished_units(out: Path) -> int:
    return sum(1 for p in out.glob("predictions.rank*.jsonl") for line in p.open() if line.endswith("\n"))


def start_and_wait(cmd: list[str], out: Path, units: int, **popen) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    deadline = time.monotonic() + 600
    while finished_units(out) < units:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc


@pytest.fixture(scope="module")
def reference(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    run(command(tiny_models["llama"], out))
    return out


@pytest.mark.slow
def test_sigterm_stops_within_a_group_and_the_run_resumes(tiny_models, reference, tmp_path):
    out = tmp_path / "run"
    groups = len(records(reference)) and len({r["group_id"] for r in records(reference)})
    proc = start_and_wait(command(tiny_models["llama"], out), out, 2 * PER_GROUP)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    stopped_after = time.monotonic() - sent
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err and "resume true" in err
    # One group of both strategies takes well under a second on the tiny model; the rest is
    # Lightning's teardown.
    assert stopped_after < 10, stopped_after
    done = finished_units(out)
    assert 2 * PER_GROUP <= done < groups * PER_GROUP  # it stopped early, keeping what it had
    run(command(tiny_models["llama"], out, "--model.init_args.resume", "true"))
    assert_same_run(out, reference)


@pytest.mark.slow
def test_sigkill_after_the_third_group_then_resume(tiny_models, reference, tmp_path):
    out = tmp_path / "run"
    proc = start_and_wait(command(tiny_models["llama"], out), out, 3 * PER_GROUP)
    proc.kill()
    proc.communicate(timeout=60)
    assert not (out / "predictions.jsonl").exists() and finished_units(out) >= 3 * PER_GROUP
    run(command(tiny_models["llama"], out, "--model.init_args.resume", "true"))
    assert_same_run(out, reference)


@pytest.mark.slow
@pytest.mark.ddp
def test_a_killed_ddp_run_resumes_on_one_process(tiny_models, reference, tmp_path):
    out = tmp_path / "run"
    ddp = ("--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2")
    proc = start_and_wait(command(tiny_models["llama"], out, *ddp), out, 4 * PER_GROUP,
                          start_new_session=True)
    os.killpg(proc.pid, signal.SIGKILL)  # every rank at once, as a pre-empted job
    proc.communicate(timeout=60)
    assert len(list(out.glob("predictions.rank*.jsonl"))) == 2
    run(command(tiny_models["llama"], out, "--model.init_args.resume", "true"))
    assert_same_run(out, reference)
