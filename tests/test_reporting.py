"""The printed summary table, and that it shows the columns the HTML page shows."""

from __future__ import annotations

import re

import pytest

from paralleldecode.report import format_table
from paralleldecode.report.figures import FIGURES

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


def test_the_table_and_the_page_show_the_same_columns(summary: dict) -> None:
    from paralleldecode.report.page import summary_table

    summary = {**summary, "batch": _figures(failed_questions=2, schema_fallbacks=0, constraint_seconds=0.4,
                                            accuracy=NAN)}
    printed = _row(format_table(summary), "strategy")[1:]
    page = re.findall(r'<th data-key="[^"]+">([^<]+)</th>', summary_table(summary))
    assert printed == page
    # failed and constraint seconds are non-zero somewhere, schema fallbacks and accuracy are not.
    assert "failed" in printed and "constraint s" in printed
    assert "schema fallbacks" not in printed and "acc" not in printed
    assert set(printed) <= {f.header for f in FIGURES}
