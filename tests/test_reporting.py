"""The summary table and the quality-versus-cost plot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from paralleldecode.reporting import format_table, write_plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

NAN = float("nan")


def _figures(**overrides: float) -> dict[str, float | int]:
    figures: dict[str, float | int] = {
        "em": 61.54,
        "f1": 70.26,
        "lenient": 75.0,
        "format_rate": 100.0,
        "questions": 100,
        "prompt_tokens": 123456,
        "generated_tokens": 2000,
        "forward_passes": 100,
        "wall_seconds": 12.345,
    }
    figures.update(overrides)
    return figures


@pytest.fixture
def summary() -> dict[str, dict]:
    return {
        "sequential": _figures(),
        "shared_prefix": _figures(em=NAN, f1=55.0, generated_tokens=1900, wall_seconds=3.1),
        "speculative": {"skipped": "needs a CUDA device"},
    }


def _row(table: str, strategy: str) -> list[str]:
    (line,) = [line for line in table.splitlines() if line.startswith(strategy + " ")]
    return [cell.strip() for cell in line.split("|")]


def test_table_header_lists_every_column(summary: dict) -> None:
    header = _row(format_table(summary), "strategy")
    assert header == [
        "strategy", "EM", "F1", "lenient", "format%", "questions",
        "prompt tok", "gen tok", "fwd passes", "wall s",
    ]  # fmt: skip


def test_questions_per_second_shows_and_failures_only_when_there_are_some() -> None:
    ok = {"batch": _figures(questions_per_second=8.1, failed_questions=0)}
    header = _row(format_table(ok), "strategy")
    assert "q/s" in header and "failed" not in header
    failing = {"batch": _figures(failed_questions=0), "sequential": _figures(failed_questions=3)}
    table = format_table(failing)
    column = _row(table, "strategy").index("failed")
    assert _row(table, "sequential")[column] == "3" and _row(table, "batch")[column] == "0"


def test_table_formats_percents_counts_and_seconds(summary: dict) -> None:
    assert _row(format_table(summary), "sequential") == [
        "sequential", "61.5", "70.3", "75.0", "100.0", "100", "123456", "2000", "100", "12.35",
    ]  # fmt: skip


def test_table_shows_nan_as_dash(summary: dict) -> None:
    row = _row(format_table(summary), "shared_prefix")
    assert row[1:3] == ["-", "55.0"]
    assert row[-1] == "3.10"


def test_table_shows_the_skip_reason(summary: dict) -> None:
    assert _row(format_table(summary), "speculative") == [
        "speculative",
        "skipped: needs a CUDA device",
    ]


def test_table_is_fixed_width(summary: dict) -> None:
    lines = format_table(summary).splitlines()
    # Header, rule and the two strategies that ran have the same length; the skipped row
    # is shorter but its reason still starts in the first figure column.
    assert len({len(line) for line in lines[:4]}) == 1
    assert len({line.index("|") for line in lines if "|" in line}) == 1


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000  # two labelled panels, not an empty image


def test_write_plot_writes_png(tmp_path: Path, summary: dict) -> None:
    path = tmp_path / "summary.png"
    write_plot(summary, path)
    _assert_png(path)


def test_write_plot_single_strategy(tmp_path: Path) -> None:
    path = tmp_path / "one.png"
    write_plot({"sequential": _figures()}, str(path))
    _assert_png(path)


def test_write_plot_all_quality_nan(tmp_path: Path) -> None:
    path = tmp_path / "nan.png"
    write_plot({"a": _figures(em=NAN, f1=NAN), "b": {"skipped": "no GPU"}}, path)
    _assert_png(path)


def test_write_plot_leaves_pyplot_alone(tmp_path: Path) -> None:
    # Importing pyplot would pick a process-wide backend behind the caller's back. A fresh
    # interpreter is needed because torchmetrics imports pyplot into this one.
    script = (
        "import sys; from paralleldecode.reporting import write_plot; "
        f"write_plot({{'a': {_figures()!r}}}, {str(tmp_path / 'a.png')!r}); "
        "assert 'matplotlib.pyplot' not in sys.modules"
    )
    # The package may not be installed; put the checkout first on the child's path.
    repo_root = str(Path(__file__).resolve().parents[1])
    python_path = os.pathsep.join([repo_root, os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": python_path}
    subprocess.run([sys.executable, "-c", script], check=True, env=env)
