"""Runs that survive, through the real LightningCLI in this process: resuming from what a
folder holds (finished files, part files, a line cut short), groups that fail, refusals,
and packed groups."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from run_outputs import TIMING, records, same_figures, summary

from paralleldecode.cli import build_cli
from paralleldecode.errors import UserError
from paralleldecode.run_folder import ResumeError

# Real LightningCLI runs of tiny models: seconds each, left out of the fast suite.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STRATEGIES = "[sequential, batch, one_sequence]"


def args(model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "predict", "--config", str(ROOT / "configs/predict/demo.yaml"),
        "--model.init_args.model_name", str(model),
        "--model.init_args.max_new_tokens", "4",
        "--model.init_args.strategies", STRATEGIES,
        "--model.init_args.output_dir", str(out),
        "--data.init_args.context_count", "5",
        "--trainer.default_root_dir", str(out.parent / (out.name + "-logs")),
        "--trainer.enable_progress_bar", "false",
        *extra,
    ]


@pytest.fixture(scope="module")
def reference(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    build_cli(args(tiny_models["llama"], out))
    return out


def test_a_finished_folder_resumes_to_the_same_outputs_and_keeps_timings(tiny_models, reference, tmp_path):
    out = tmp_path / "run"
    build_cli(args(tiny_models["llama"], out, "--trainer.limit_predict_batches", "2"))
    first = [json.loads(line) for line in (out / "predictions.jsonl").open()]
    assert {r["group_index"] for r in first} == {0, 1}
    build_cli(args(tiny_models["llama"], out, "--model.init_args.resume", "true"))
    assert records(out) == records(reference)
    same_figures(summary(out), summary(reference))
    # Restored records keep the latencies they were measured with.
    lines = (out / "predictions.jsonl").open()
    again = {(r["strategy"], r["question_id"]): r["latency_s"] for r in map(json.loads, lines)}
    assert all(again[(r["strategy"], r["question_id"])] == r["latency_s"] for r in first)
    assert not list(out.glob("predictions.rank*.jsonl"))
    saved = json.loads((out / "run.json").read_text())
    assert len(saved["resumed"]) == 1 and saved["settings"]["model"]["max_new_tokens"] == 4


def test_part_files_of_a_crashed_run_resume_and_a_cut_line_is_computed_again(tiny_models, reference, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    build_cli(args(tiny_models["llama"], out, "--trainer.limit_predict_batches", "3"))
    # Turn the finished files back into what a crash leaves: the part file, its last line
    # cut in the middle of the write.
    lines = (out / "predictions.jsonl").read_text().splitlines()
    units = [json.loads(line) for line in (out / "group_costs.jsonl").read_text().splitlines()]
    by_key = {}
    for line in lines:
        rec = json.loads(line)
        by_key.setdefault((rec["strategy"], rec["group_id"]), []).append(rec)
    part = out / "predictions.rank0.crashed.jsonl"
    text = "".join(json.dumps({**u, "records": by_key[(u["strategy"], u["group_id"])]}) + "\n" for u in units)
    part.write_text(text[: len(text) - 40])
    for name in ("predictions.jsonl", "group_costs.jsonl", "summary.json"):
        (out / name).unlink()
    build_cli(args(tiny_models["llama"], out, "--model.init_args.resume", "true"))
    assert records(out) == records(reference)
    same_figures(summary(out), summary(reference))
    assert not part.exists()


def test_without_resume_a_folder_with_predictions_is_refused(tiny_models, reference):
    with pytest.raises(ValueError, match="already holds predictions; pass --model.init_args.resume true"):
        build_cli(args(tiny_models["llama"], reference)[1:], run=False)


def test_resume_refuses_other_settings_naming_them(tiny_models, reference, tmp_path):
    out = tmp_path / "copy"
    out.mkdir()
    for f in reference.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ResumeError, match=r"model.max_new_tokens: 4 then, 5 now\)"):
        build_cli(args(tiny_models["llama"], out, "--model.init_args.resume", "true",
                       "--model.init_args.max_new_tokens", "5"))


def test_resume_needs_a_fixed_folder(tiny_models, tmp_path):
    argv = [a for a in args(tiny_models["llama"], tmp_path / "x", "--model.init_args.resume", "true")]
    i = argv.index("--model.init_args.output_dir")
    del argv[i:i + 2]
    with pytest.raises(ValueError, match="resume needs a fixed model.output_dir"):
        build_cli(argv[1:], run=False)


def _data_with_a_long_third_group(path: Path) -> Path:
    groups = [{"id": f"g{i}", "title": "t", "context": f"The tower number {i} stands by the river.",
               "questions": [{"id": f"g{i}q{j}", "question": q, "answers": ["river"]}
                             for j, q in enumerate(["Where is it?", "What stands there?"])]}
              for i in range(5)]
    groups[2]["context"] = "The river runs on and on. " * 200  # beyond the tiny model's 1024 tokens
    path.write_text(json.dumps({"version": 1, "groups": groups}))
    return path


def test_a_group_that_fails_is_recorded_and_the_run_goes_on(tiny_models, tmp_path, capsys):
    data = _data_with_a_long_third_group(tmp_path / "data.json")
    out = tmp_path / "run"
    build_cli(args(tiny_models["llama"], out, "--data.init_args.data_path", str(data)))
    recs = [json.loads(line) for line in (out / "predictions.jsonl").open()]
    failed = [r for r in recs if r["finish_reason"] == "error"]
    assert {r["group_id"] for r in failed} == {"g2"} and len(failed) == 2 * 3
    assert all("ContextTooLongError" in r["error"] and "'g2'" in r["error"] for r in failed)
    assert all(r["answer"] == "" and r["generated_tokens"] == 0 for r in failed)
    assert {r["group_id"] for r in recs if r["finish_reason"] != "error"} == {"g0", "g1", "g3", "g4"}
    fig = summary(out)
    assert all(fig[name]["failed_questions"] == 2 and fig[name]["questions"] == 10 for name in fig)
    printed = capsys.readouterr().out
    assert "failed" in printed.split("outputs in")[0]  # the table shows the column


def test_on_error_raise_stops_at_the_failing_group(tiny_models, tmp_path):
    data = _data_with_a_long_third_group(tmp_path / "data.json")
    out = tmp_path / "run"
    with pytest.raises(UserError, match="group 'g2'.*context window"):
        build_cli(args(tiny_models["llama"], out, "--data.init_args.data_path", str(data),
                       "--model.init_args.on_error", "raise"))
    # What finished before is on disk, ready to resume.
    parts = list(out.glob("predictions.rank*.jsonl"))
    assert parts and {json.loads(line)["group_id"] for p in parts for line in p.open()} == {"g0", "g1"}


def test_packed_groups_give_the_unpacked_records(tiny_models, reference, tmp_path):
    out = tmp_path / "packed"
    build_cli(args(tiny_models["llama"], out, "--model.init_args.pack_groups", "true",
                   "--data.init_args.batch_size", "3"))
    # A record's passes are those of the call that answered it: a packed call's.
    shared = TIMING | {"forward_passes"}
    assert records(out, shared) == records(reference, shared)
    packed, plain = summary(out), summary(reference)
    for name in packed:
        for key in ("questions", "em", "prompt_tokens", "generated_tokens"):
            assert packed[name][key] == plain[name][key]
        # Decoding steps are shared between the groups of a batch.
        assert packed[name]["forward_passes"] < plain[name]["forward_passes"]
        assert packed[name]["questions_per_second"] > 0


def test_pack_groups_with_batch_size_one_is_a_no_op(tiny_models, reference, tmp_path):
    out = tmp_path / "one"
    build_cli(args(tiny_models["llama"], out, "--model.init_args.pack_groups", "true"))
    assert records(out) == records(reference)
