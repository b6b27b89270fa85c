"""`paralleldecode predict` on the OpenAI-compatible back-end, against a real local server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from http_fixtures import Reply, completion

from paralleldecode.cli import build_cli

ROOT = Path(__file__).resolve().parents[2]
FAILING = "Who gave those books?"  # a demo question the server always answers with HTTP 500


def _answer(body: dict) -> Reply:
    last = body["messages"][-1]["content"]
    if FAILING in last:
        return Reply(status=500, body="upstream exploded")
    if "Question 1:" in last:  # all_in_one
        return Reply(body=completion('{"answers": {"1": "sheep", "2": "nine weeks"}}', 120, 12))
    if "rate the answer" in json.dumps(body).lower() or "judge" in body["messages"][0]["content"].lower():
        return Reply(body=completion('{"fluency": 4, "relevance": 5, "completeness": 3, "proficiency": 4}'))
    return Reply(body=completion('{"answer": "sheep"}', 50, 5))


def _config(tmp_path: Path, url: str, strategies: list[str], **extra) -> Path:
    cfg = yaml.safe_load((ROOT / "configs/predict/api.yaml").read_text())
    args = cfg["model"]["init_args"]
    args["strategies"] = strategies
    args["backend"]["init_args"].update(base_url=url, model="test-model", api_key_env="TEST_KEY",
                                        backoff=0.01, max_retries=1, timeout=5)
    args.update(extra)
    cfg["data"]["init_args"]["context_count"] = 2
    cfg["trainer"].update(default_root_dir=str(tmp_path), enable_progress_bar=False)
    path = tmp_path / "api.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_text_strategies_run_on_the_api_and_failures_are_recorded(chat_server, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sk-test")
    chat_server.respond_with(_answer)
    build_cli(["predict", "--config", str(_config(tmp_path, chat_server.base_url,
                                                  ["all_in_one", "sequential", "batch"]))])
    (out,) = tmp_path.glob("lightning_logs/version_*")
    records = [json.loads(line) for line in (out / "predictions.jsonl").open()]
    summary = json.loads((out / "summary.json").read_text())
    per_strategy = {s: [r for r in records if r["strategy"] == s] for s in summary}
    n = len(per_strategy["batch"])
    assert n > 0 and all(len(v) == n for v in per_strategy.values())  # nothing dropped
    failed = [r for r in records if r["question"] == FAILING and r["strategy"] != "all_in_one"]
    assert failed and all(r["finish_reason"] == "error" and "HTTP 500" in r["error"] for r in failed)
    ok = [r for r in per_strategy["batch"] if r["question"] != FAILING]
    assert all(r["answer"] == "sheep" and r["error"] is None for r in ok)
    # Token usage comes from the server's figures; one request per answer.
    assert summary["batch"]["prompt_tokens"] == 50 * (n - 1) + 0
    assert summary["batch"]["forward_passes"] == n
    assert all(s.headers["Authorization"] == "Bearer sk-test" for s in chat_server.requests)


def test_strategies_needing_a_local_model_are_refused(chat_server, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sk-test")
    cfg = _config(tmp_path, chat_server.base_url, ["batch", "one_sequence"])
    with pytest.raises(ValueError, match="'one_sequence' needs token-level access.*OpenAIClient"):
        build_cli(["--config", str(cfg)], run=False)
    cfg = _config(tmp_path, chat_server.base_url, ["batch", "collab_hidden"])
    with pytest.raises(ValueError, match="'collab_hidden' needs .*hidden states and a trained checkpoint"):
        build_cli(["--config", str(cfg)], run=False)


def test_missing_key_variable_is_named(chat_server, tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_KEY", raising=False)
    with pytest.raises(ValueError, match="TEST_KEY"):
        build_cli(["--config", str(_config(tmp_path, chat_server.base_url, ["batch"]))], run=False)


def test_judge_scores_long_answers_into_the_summary(chat_server, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sk-test")
    chat_server.respond_with(_answer)
    rows = [{"id": "c1", "title": "t", "description": "病人发热三天，咳嗽。",
             "QA_pairs": [{"question": "诊断是什么？", "answer": "上呼吸道感染"},
                          {"question": "如何治疗？", "answer": "休息多饮水"}]}]
    data = tmp_path / "clin.json"
    data.write_text(json.dumps(rows, ensure_ascii=False))
    judge = {"class_path": "paralleldecode.backends.judge.LLMJudge", "init_args": {
        "client": {"class_path": "paralleldecode.backends.openai_api.OpenAIClient", "init_args": {
            "base_url": chat_server.base_url, "model": "judge-model", "api_key_env": "TEST_KEY",
            "backoff": 0.01, "max_retries": 1}},
        "cache_path": str(tmp_path / "judge.jsonl")}}
    cfg = yaml.safe_load(_config(tmp_path, chat_server.base_url, ["batch"], judge=judge).read_text())
    cfg["data"]["init_args"].update(dataset="cmb", data_path=str(data), context_count=None,
                                    dataset_options={"subset": "clin"})
    path = tmp_path / "judge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    build_cli(["predict", "--config", str(path)])
    (out,) = tmp_path.glob("lightning_logs/version_*")
    summary = json.loads((out / "summary.json").read_text())["batch"]
    assert summary["judge_fluency"] == 4 and summary["judge_completeness"] == 3
    assert summary["rougeL"] is not None and summary["em"] is None
    records = [json.loads(line) for line in (out / "predictions.jsonl").open()]
    assert all(r["answer_type"] == "long" and r["judge_relevance"] == 5 for r in records)


def test_structured_output_sends_each_replys_schema_and_counts_refusals(chat_server, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sk-test")

    def answer(body: dict) -> Reply:
        if "response_format" in body and "Question 1:" in body["messages"][-1]["content"]:
            return Reply(status=400, body={"error": {"message": "response_format json_schema unsupported"}})
        return _answer(body)

    chat_server.respond_with(answer)
    build_cli(["predict", "--config", str(_config(tmp_path, chat_server.base_url, ["all_in_one", "batch"]))])
    (out,) = tmp_path.glob("lightning_logs/version_*")
    schemas = [r.body["response_format"]["json_schema"]["schema"] for r in chat_server.requests
               if "response_format" in r.body]
    assert any(list(s["properties"]) == ["answer"] for s in schemas)
    assert any(list(s["properties"]) == ["answers"] and len(s["properties"]["answers"]["required"]) >= 2
               for s in schemas)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["all_in_one"]["schema_fallbacks"] == 2  # one request per group, both refused
    assert summary["batch"]["schema_fallbacks"] == 0 and summary["batch"]["structured_output"] is True
    records = [json.loads(line) for line in (out / "predictions.jsonl").open()]
    assert all(r["schema_fallback"] for r in records if r["strategy"] == "all_in_one")
    assert not any(r["schema_fallback"] for r in records if r["strategy"] == "batch")


def test_structured_output_off_sends_no_schema(chat_server, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sk-test")
    chat_server.respond_with(_answer)
    build_cli(["predict", "--config", str(_config(tmp_path, chat_server.base_url, ["batch"],
                                                  structured_output=False))])
    assert chat_server.requests and not any("response_format" in r.body for r in chat_server.requests)
