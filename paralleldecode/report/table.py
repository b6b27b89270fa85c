"""A run's summary as the fixed-width table a run prints at its end.

Columns and number formats come from :mod:`~paralleldecode.report.figures`, as on the HTML
page; counts are written without digit grouping so the columns stay narrow.
"""

from __future__ import annotations

from paralleldecode.report.figures import Summary, formatted, shown

_SEPARATOR = " | "


def format_table(summary: Summary) -> str:
    """Renders a summary as a fixed-width text table, one row per strategy.

    Percents get one decimal, counts none and seconds two; NaN or missing figures show as
    ``-``. A skipped strategy shows ``skipped: <reason>`` in place of its figures.

    Args:
        summary: strategy name -> figures (``summary.json``).

    Returns:
        The table as lines joined by newlines, without a trailing newline.
    """
    columns = shown([summary])
    header = ["strategy", *(f.header for f in columns)]
    rows: list[tuple[str, list[str] | str]] = []
    for name, figures in summary.items():
        reason = figures.get("skipped")
        if reason:
            rows.append((name, f"skipped: {reason}"))
        else:
            rows.append((name, [formatted(f.key, figures.get(f.key)) for f in columns]))

    widths = [len(title) for title in header]
    for name, cells in rows:
        widths[0] = max(widths[0], len(name))
        if isinstance(cells, list):
            for i, cell in enumerate(cells, start=1):
                widths[i] = max(widths[i], len(cell))

    # Names read left to right; numbers line up on their last digit.
    def render(name: str, cells: list[str]) -> str:
        numbers = (cell.rjust(width) for cell, width in zip(cells, widths[1:]))
        return _SEPARATOR.join([name.ljust(widths[0]), *numbers])

    lines = [render(header[0], header[1:]), "-+-".join("-" * width for width in widths)]
    for name, cells in rows:
        lines.append(render(name, cells) if isinstance(cells, list) else name.ljust(widths[0]) + _SEPARATOR + cells)
    return "\n".join(lines)


__all__ = ["format_table"]
