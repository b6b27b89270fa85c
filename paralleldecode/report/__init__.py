"""How a run is reported: the printed table at the end of every run (:mod:`.table`), the
self-contained HTML page ``report.html`` and the page comparing runs (:mod:`.page`), both
from one specification of the summary figures (:mod:`.figures`).

    paralleldecode-report RUN_DIR                       # writes RUN_DIR/report.html
    paralleldecode-report RUN_A RUN_B --out cmp.html    # one page comparing the runs
    python -m paralleldecode.report ...                 # the same
"""

from paralleldecode.report.figures import FIGURES, Figure, formatted, number, shown
from paralleldecode.report.page import (
    REPORT,
    ReportError,
    Run,
    check_same_data,
    correctness,
    load_run,
    main,
    pareto,
    render_comparison,
    render_run,
    status,
    write_report,
)
from paralleldecode.report.table import format_table

__all__ = ["FIGURES", "Figure", "REPORT", "ReportError", "Run", "check_same_data", "correctness", "format_table",
           "formatted", "load_run", "main", "number", "pareto", "render_comparison", "render_run", "shown", "status",
           "write_report"]
