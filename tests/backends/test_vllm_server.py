"""vLLM through its own server: refusals that need no vLLM (fast), and the real server from
``.venv-vllm`` (slow; skipped with the reason where ``make vllm`` has not been run).

The slow tests start vLLM's OpenAI server on 127.0.0.1 with the embedded model: a reset
empties its prefix cache (what the benchmark does before each vLLM row's group); the engine's
token-id prompts give ``batch``'s and ``sequential``'s replies exactly; ``paralleldecode
predict`` runs every strategy the API back-end takes against it, records the answers asked
while the server is down as failed, and asks only those again when resumed; the back-end that
starts its own server runs and stops it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from paralleldecode.backends.vllm_server import (
    VLLMEngine,
    VLLMServer,
    VLLMServerClient,
    VLLMUnavailable,
    default_python,
    vllm_version,
)

ROOT = Path(__file__).resolve().parents[2]
COMMAND = str(Path(sys.executable).parent / "paralleldecode")
MODEL = "smollm2-135m-instruct"


# -- fast: what is refused, and how -------------------------------------------------------------


def test_a_missing_environment_names_make_vllm(tmp_path):
    missing = tmp_path / "nowhere" / "bin" / "python"
    with pytest.raises(VLLMUnavailable, match=r"nowhere/bin/python does not exist; run `make vllm`"):
        vllm_version(missing)
    with pytest.raises(VLLMUnavailable, match="make vllm"):
        VLLMServerClient(python=str(missing))


def test_a_python_without_vllm_is_refused_with_its_own_error():
    with pytest.raises(VLLMUnavailable, match=r"vLLM cannot be imported by .*No module named 'vllm'"):
        vllm_version(sys.executable)


@pytest.mark.parametrize("gib", [1.5, 0, -2])
def test_kv_cache_space_must_be_whole_gib(gib):
    with pytest.raises(ValueError, match=rf"kv_cache_gib must be a whole number of GiB, at least 1 .*got {gib}"):
        VLLMServer(MODEL, python=sys.executable, kv_cache_gib=gib)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the KV space setting is vLLM-CPU's")
def test_a_whole_float_kv_cache_space_reaches_vllm_as_an_integer(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    server = VLLMServer(MODEL, python=sys.executable, kv_cache_gib=2.0)
    assert server.environment()["VLLM_CPU_KVCACHE_SPACE"] == "2"


def test_a_taken_port_is_named(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(VLLMUnavailable, match=rf"port {port} on 127.0.0.1 is already in use"):
            VLLMServer(MODEL, python=sys.executable, port=port, log_file=tmp_path / "log").start()


def test_a_server_that_exits_or_never_answers_names_its_log(tiny_models, tmp_path):
    # This Python has no vLLM: the server process exits at once.
    log = tmp_path / "exits.log"
    with pytest.raises(VLLMUnavailable, match=rf"exited with status 1 before it was ready: .*vllm.*\(log: {log}\)"):
        VLLMServer(str(tiny_models["llama"]), python=sys.executable, log_file=log).start()
    # A "Python" that never answers: the wait ends at the timeout, and the process is stopped.
    sleeper = tmp_path / "sleeper"
    sleeper.write_text("#!/bin/sh\nexec sleep 60\n")
    sleeper.chmod(0o755)
    server = VLLMServer(str(tiny_models["llama"]), python=sleeper, startup_timeout=1.5,
                        log_file=tmp_path / "never.log")
    with pytest.raises(VLLMUnavailable, match=r"did not become ready in 1.5 s \(log: .*never.log\)"):
        server.start()
    assert not server.running


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_settle_waits_while_the_process_group_is_busy():
    server = VLLMServer(MODEL, python=sys.executable)
    assert server.cpu_seconds() is None and server.settle() == 0.0  # no server
    busy = "import time\nt = time.time()\nwhile time.time() - t < 1.0: pass\ntime.sleep(30)\n"
    server._proc = subprocess.Popen([sys.executable, "-c", busy], start_new_session=True)
    try:
        waited = server.settle(timeout=10)
        assert 0.5 < waited < 5  # the busy second (less what the start took), then one quiet window
        used = server.cpu_seconds()
        assert used >= 0.5
        time.sleep(0.4)
        assert server.cpu_seconds() - used < 0.1
    finally:
        server._proc.kill()
        server._proc.wait()


def test_a_prefix_cache_reset_needs_a_running_resettable_server(monkeypatch):
    monkeypatch.delenv("VLLM_SERVER_DEV_MODE", raising=False)
    with pytest.raises(RuntimeError, match="not running; start it"):
        VLLMServer(MODEL, python=sys.executable, resettable=True).reset_prefix_cache()
    assert VLLMServer(MODEL, python=sys.executable, resettable=True).environment()["VLLM_SERVER_DEV_MODE"] == "1"
    plain = VLLMServer(MODEL, python=sys.executable)
    assert "VLLM_SERVER_DEV_MODE" not in plain.environment()
    plain._proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(RuntimeError, match="without resettable=True"):
            plain.reset_prefix_cache()
    finally:
        plain._proc.kill()
        plain._proc.wait()


# -- slow: the real server ------------------------------------------------------------------------


def _require_vllm() -> None:
    try:
        vllm_version()
    except VLLMUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _require_vllm()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with VLLMServer(MODEL, log_file=log, resettable=True) as running:
        yield running


@pytest.mark.slow
def test_a_reset_empties_the_prefix_cache(server):
    from paralleldecode.decoding import GenerationConfig
    from paralleldecode.models.loading import load_causal_lm

    _, tok = load_causal_lm(MODEL)
    engine = VLLMEngine(server, tok, None)
    prompt = list(range(1000, 1400))  # 25 of vLLM's 16-token blocks
    config = GenerationConfig(max_new_tokens=2)

    def cached() -> int:
        _, usage = engine.complete([prompt], config)
        return usage["prompt_tokens_details"]["cached_tokens"]

    server.reset_prefix_cache()
    assert cached() == 0
    assert cached() >= 384  # the same prompt again: all its full blocks were kept
    server.reset_prefix_cache()
    assert cached() == 0
    # after a request the server settles, and then uses (almost) no CPU
    assert server.settle(timeout=10) < 10
    before = server.cpu_seconds()
    time.sleep(0.5)
    assert server.cpu_seconds() - before < 0.25


@pytest.mark.slow
def test_token_id_prompts_give_the_engines_replies(server):
    from paralleldecode.data.registry import load_groups
    from paralleldecode.decoding import DecodingEngine, GenerationConfig
    from paralleldecode.models.loading import load_causal_lm
    from paralleldecode.prompts import PromptRenderer
    from paralleldecode.strategies import RunContext, get_strategy

    model, tok = load_causal_lm(MODEL)
    local = RunContext(DecodingEngine(model, tok), PromptRenderer(tok), GenerationConfig(max_new_tokens=24))
    peer = RunContext(VLLMEngine(server, tok, local.engine.max_positions), local.renderer, local.generation)
    for group in load_groups("demo", context_count=3):
        for name in ("batch", "sequential"):
            ours, theirs = get_strategy(name).run(group, local), get_strategy(name).run(group, peer)
            assert [r.raw for r in theirs.results] == [r.raw for r in ours.results], (name, group.id)
            assert theirs.cost.prompt_tokens == ours.cost.prompt_tokens
    with pytest.raises(ValueError, match="independent rows"):
        get_strategy("one_sequence").run(group, peer)


def _predict(out: Path, base_url: str, *extra: str, wait: bool = True):
    cmd = [COMMAND, "predict", "--config", str(ROOT / "configs/predict/vllm_server.yaml"),
           "--model.init_args.backend.init_args.base_url", base_url,
           "--model.init_args.backend.init_args.max_retries", "0",
           "--model.init_args.output_dir", str(out), "--data.init_args.context_count", "2",
           "--trainer.default_root_dir", str(out.parent / "logs"), "--trainer.enable_progress_bar", "false",
           *extra]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").open()]


STRATEGIES = {"all_in_one", "sequential", "batch", "collab_llm", "collab_llm_ideal", "collab_bert", "collab_bert_ideal"}


@pytest.mark.slow
def test_predict_against_the_server_survives_its_death_and_resumes(tmp_path):
    _require_vllm()
    server = VLLMServer(MODEL, log_file=tmp_path / "server.log").start()
    try:
        whole = tmp_path / "whole"
        done = _predict(whole, server.base_url)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        records = _records(whole)
        assert {r["strategy"] for r in records} == STRATEGIES
        assert all(r["finish_reason"] != "error" for r in records)
        # Constrained by response_format: every reply that ended by itself is well-formed.
        ended = [r for r in records if r["finish_reason"] != "length"]
        assert ended and all(r["format_ok"] for r in ended)
        assert all(r["prompt_tokens"] > 0 for r in records)  # from the server's usage figures
        expected = {(r["strategy"], r["question_id"]) for r in records}

        # The server dies once the first unit is on disk: the rest is recorded as failed.
        broken = tmp_path / "broken"
        proc = _predict(broken, server.base_url, wait=False)
        deadline = time.monotonic() + 600
        while not any(p.read_text().strip() for p in broken.glob("predictions.rank*.jsonl")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.2)
        server.kill()
        output = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, output[-3000:]
        failed = [r for r in _records(broken) if r["finish_reason"] == "error"]
        assert failed and all(r["error"] for r in failed)
        assert {(r["strategy"], r["question_id"]) for r in _records(broken)} == expected  # none lost

        # Back up: the resumed run asks the failed groups again and keeps the rest.
        server.start()
        resumed = _predict(broken, server.base_url, "--model.init_args.resume", "true")
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        again = _records(broken)
        assert {(r["strategy"], r["question_id"]) for r in again} == expected
        assert all(r["finish_reason"] != "error" for r in again)
    finally:
        server.stop()


def _vllm_servers() -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"vllm.entrypoints.openai.api_server" in (proc / "cmdline").read_bytes():
                out.append(int(proc.name))
        except OSError:
            continue
    return out


@pytest.mark.slow
def test_the_backend_starts_and_stops_its_own_server(tmp_path):
    _require_vllm()
    before = _vllm_servers()
    out = tmp_path / "run"
    proc = subprocess.run([COMMAND, "predict", "--config", str(ROOT / "configs/predict/vllm.yaml"),
                           "--model.init_args.output_dir", str(out), "--data.init_args.context_count", "2",
                           "--trainer.default_root_dir", str(tmp_path / "logs"),
                           "--trainer.enable_progress_bar", "false"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = _records(out)
    assert {r["strategy"] for r in records} == {"all_in_one", "sequential", "batch"}
    assert all(r["finish_reason"] != "error" and r["prompt_tokens"] > 0 for r in records)
    assert _vllm_servers() == before  # nothing left running


def test_the_default_python_is_the_projects_venv(monkeypatch, tmp_path):
    monkeypatch.delenv("PARALLELDECODE_VLLM_PYTHON", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_python() == ROOT / ".venv-vllm" / "bin" / "python"
    monkeypatch.setenv("PARALLELDECODE_VLLM_PYTHON", "/opt/other/python")
    assert default_python() == Path("/opt/other/python")
