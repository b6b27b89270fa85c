"""Reading a predict run's folder back, for the tests that compare a run with another."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TIMING = {"latency_s"}
FIGURES = ("questions", "em", "f1", "lenient", "format_rate", "prompt_tokens", "generated_tokens",
           "forward_passes", "failed_questions")


def records(out: Path, leave_out=TIMING) -> list[dict]:
    """``predictions.jsonl``'s records in order, without the keys that vary run to run."""
    return [{k: v for k, v in json.loads(line).items() if k not in leave_out}
            for line in (out / "predictions.jsonl").open()]


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def same_figures(a: dict, b: dict) -> None:
    """Two summaries with the same strategies and the same quality and cost counts."""
    assert list(a) == list(b)
    for name in a:
        for key in FIGURES:
            assert a[name].get(key) == pytest.approx(b[name].get(key)), (name, key)


def assert_same_run(out: Path, reference: Path) -> None:
    """The same records, record for record, and the same summary figures."""
    assert records(out) == records(reference)
    same_figures(summary(out), summary(reference))
