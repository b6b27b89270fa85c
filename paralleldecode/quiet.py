"""Keep a run's output to what its user asked for: the progress bar, the table, where the
outputs went, and real problems.

Each filter below names one known message of one library that says nothing about the run
(an advertisement, a library's note to its own maintainers about a dependency's
deprecation, the hardware summary that every Lightning run prints); every other warning
and log record is left as it is. ``PARALLELDECODE_DEBUG=1`` turns the filters off.
"""

from __future__ import annotations

import logging
import os
import warnings

# (message regex, module regex) of warnings that say nothing about the run.
_WARNINGS = (
    # Lightning's pytree helper builds torch's LeafSpec, which torch now deprecates.
    (r".*LeafSpec.* is deprecated", r"lightning\.pytorch\.utilities\._pytree"),
    # LightningCLI without a seed in the config picks 0 and says so; the config records it.
    (r"No seed found, seed set to 0", r"lightning\.fabric\.utilities\.seed"),
    # A predict run has no validation loop, so Lightning notes that it has no data loaders
    # for it; and it runs model.eval(), which is what predict wants.
    (r".*does not have many workers which may be a bottleneck",
     r"lightning\.pytorch\.trainer\.connectors\.data_connector"),
)

# Beginnings of Lightning log lines (INFO) that are advertisements or hardware summaries.
_LOG_PREFIXES = (
    "💡 Tip:",
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "Seed set to",
)


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_LOG_PREFIXES)


def quiet_libraries() -> None:
    """Install the filters (idempotent); call before Lightning and transformers are
    imported (the progress-bar setting is read at import)."""
    if os.environ.get("PARALLELDECODE_DEBUG") == "1":
        return
    # transformers draws a bar for reading a model's weights from disk (a fraction of a second).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for message, module in _WARNINGS:
        warnings.filterwarnings("ignore", message=message, module=module)
    import lightning.fabric  # noqa: F401 - installs the handlers filtered below
    import lightning.pytorch  # noqa: F401

    drop = _DropLines()
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
                 "lightning.fabric.utilities.rank_zero", "lightning.fabric.utilities.seed"):
        logger = logging.getLogger(name)
        for target in (logger, *logger.handlers):
            if not any(isinstance(f, _DropLines) for f in target.filters):
                target.addFilter(drop)
