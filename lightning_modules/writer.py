"""Writes a predict run's outputs: ``predictions.jsonl``, ``summary.json``, a plot, and
TensorBoard scalars.

Under DDP every rank appends its own ``predictions.rank<R>.jsonl`` as batches finish; after
the epoch, all ranks compute the (synced) summary, wait at a barrier, and rank 0 merges the
rank files into one ``predictions.jsonl`` exactly once, ordered by strategy, then by group
as the data module listed them, then by question.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import BasePredictionWriter

from paralleldecode.reporting import format_table, write_plot


class PredictionWriter(BasePredictionWriter):
    """Args:
        output_dir: where to write; None = the trainer's log directory (or its root dir).
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.folder: Path | None = None

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        # `trainer.log_dir` is a collective broadcast under DDP: resolve it here, where
        # every rank is, never per batch (ranks may run different numbers of batches).
        self.folder = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._part(trainer).unlink(missing_ok=True)

    def _part(self, trainer) -> Path:
        return self.folder / f"predictions.rank{trainer.global_rank}.jsonl"

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch,
                           batch_idx, dataloader_idx=0) -> None:
        # Indices into the data module's group list; Lightning tracks them in predict.
        if batch_indices is None:
            batch_indices = [batch_idx * len(batch) + i for i in range(len(batch))]
        index = {g.id: i for g, i in zip(batch, batch_indices)}
        with self._part(trainer).open("a", encoding="utf-8") as f:
            for rec in prediction:
                f.write(json.dumps({**rec, "group_index": index.get(rec["group_id"])},
                                   ensure_ascii=False) + "\n")

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        summary = pl_module.summary()  # collective: every rank takes part
        trainer.strategy.barrier("prediction-writer")
        if trainer.is_global_zero:
            self._merge(trainer, list(summary))
            self._report(trainer, summary)
        trainer.strategy.barrier("prediction-writer-done")

    def _merge(self, trainer, strategy_order: list[str]) -> None:
        folder = self.folder
        parts = sorted(folder.glob("predictions.rank*.jsonl"))
        records = [json.loads(line) for p in parts for line in p.open(encoding="utf-8")]
        rank = {name: i for i, name in enumerate(strategy_order)}
        # Python's sort is stable: within a group the strategy's own question order stays.
        records.sort(key=lambda r: (rank.get(r["strategy"], len(rank)), r["group_index"]))
        with (folder / "predictions.jsonl").open("w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        for p in parts:
            p.unlink()

    def _report(self, trainer, summary: dict[str, dict[str, Any]]) -> None:
        folder = self.folder
        clean = {s: {k: (None if isinstance(v, float) and math.isnan(v) else v)
                     for k, v in fig.items()} for s, fig in summary.items()}
        (folder / "summary.json").write_text(json.dumps(clean, indent=2) + "\n")
        write_plot(summary, folder / "quality_vs_cost.png")
        table = format_table(summary)
        print("\n" + table + f"\n\noutputs in {folder}", flush=True)
        logger = trainer.logger
        if logger is not None and hasattr(logger.experiment, "add_scalar"):
            exp = logger.experiment
            for strategy, fig in summary.items():
                for key, value in fig.items():
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        exp.add_scalar(f"predict/{strategy}/{key}", value, 0)
            exp.add_text("predict/summary", "```\n" + table + "\n```", 0)
            exp.flush()
