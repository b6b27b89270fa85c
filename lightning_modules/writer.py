"""Writes a predict run's outputs: the units as they finish, then ``predictions.jsonl``,
``group_costs.jsonl``, ``summary.json``, a plot and TensorBoard scalars.

Every process appends each finished unit (one strategy on one group) to its own part file
the moment it finishes (see :mod:`paralleldecode.run_folder`); after the epoch, all ranks
compute the (synced) summary, wait at a barrier, and rank 0 merges this run's part files
into the finished files exactly once, ordered by strategy, then by group as the data module
listed them, then by question, and only then removes the part files. With ``resume`` every
process first reads what the folder already holds, and the module restores those units
instead of computing them.
"""

from __future__ import annotations

import json
import math
import sys
import uuid
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import BasePredictionWriter

import paralleldecode
from paralleldecode import run_folder
from paralleldecode.report import format_table, write_report


class PredictionWriter(BasePredictionWriter):
    """Args:
        output_dir: where to write; None = the trainer's log directory (or its root dir).
        resume: continue the run the folder holds (see the module docstring).
    """

    def __init__(self, output_dir: str | None = None, resume: bool = False) -> None:
        # Interval "batch" makes Lightning track each batch's indices into the group list.
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.resume = resume
        self.folder: Path | None = None
        self.units: dict[run_folder.Key, dict[str, Any]] = {}
        self.run_id = ""
        self.log_dir: str | None = None
        self.settings: dict[str, Any] = {}
        self._trainer = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "predict" or not hasattr(pl_module, "answer_settings"):
            return
        data = getattr(trainer, "datamodule", None)
        hp = dict(getattr(data, "hparams", {}) or {})
        hp.pop("batch_size", None)  # how groups are batched does not change answers
        self.settings = {"model": pl_module.answer_settings(), "data": hp}
        if self.resume and self.output_dir is not None:
            # Before any weights load: a folder of another run's settings is refused now.
            run_folder.check_settings(Path(self.output_dir), self.settings)

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        # `trainer.log_dir` and the broadcast are collective under DDP: resolve them here,
        # where every rank is, never per batch (ranks may run different numbers of batches).
        self.log_dir = trainer.log_dir
        self.folder = Path(self.output_dir or self.log_dir or trainer.default_root_dir)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.run_id = trainer.strategy.broadcast(uuid.uuid4().hex[:10])
        self._trainer = trainer
        if self.resume:
            self.units, notes = run_folder.read_units(self.folder)
            if trainer.is_global_zero:
                for note in notes:
                    print(f"resume: {note}", flush=True)
                print(f"resume: {len(self.units)} finished (strategy, group) units found in {self.folder}",
                      flush=True)
        if trainer.is_global_zero:
            saved = run_folder.check_settings(self.folder, self.settings) if self.resume else None
            record = saved or run_folder.settings_record(self.settings, paralleldecode.__version__)
            if saved is not None:
                record["resumed"] = [*saved.get("resumed", []), run_folder.settings_record({}, "")["started"]]
            run_folder.write_settings(self.folder, record)
        pl_module.sink = self

    # -- what the module calls ------------------------------------------------------------

    def group_indices(self, batch, batch_idx: int) -> list[int]:
        """The batch's places in the data module's group list (Lightning tracks them)."""
        loop = getattr(self._trainer, "predict_loop", None)
        indices = list(getattr(loop, "current_batch_indices", []) or [])
        if len(indices) != len(batch):
            indices = [batch_idx * len(batch) + i for i in range(len(batch))]
        return indices

    def restored(self, strategy: str, group) -> dict[str, Any] | None:
        """The unit the folder already holds for this strategy and group, if any, if it
        answered exactly this group's questions and none of its answers failed (a server
        that was down, a group that did not fit: computed again, as unfinished work)."""
        unit = self.units.get((strategy, group.id))
        if unit is None or [r["question_id"] for r in unit["records"]] != [q.id for q in group.questions]:
            return None
        if any(r.get("finish_reason") == "error" for r in unit["records"]):
            return None
        return unit

    def write(self, unit: dict[str, Any]) -> None:
        run_folder.append_unit(run_folder.part_path(self.folder, self._trainer.global_rank, self.run_id), unit)

    # -- Lightning hooks ------------------------------------------------------------------

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch,
                           batch_idx, dataloader_idx=0) -> None:
        """Nothing left to do: every unit of the batch was written as it finished."""

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """Say where the finished work is when a run is stopped (SIGTERM, Ctrl-C) or fails."""
        if self.folder is None or not trainer.is_global_zero:
            return
        done = sum(1 for p in self.folder.glob(run_folder.PART_GLOB) for _ in p.open(encoding="utf-8"))
        how = "stopped" if type(exception).__name__ in ("SIGTERMException", "KeyboardInterrupt") else "failed"
        again = ("rerun with --model.init_args.resume true to continue" if self.output_dir is not None
                 else f"rerun with --model.init_args.output_dir {self.folder} --model.init_args.resume true "
                      "to continue")
        print(f"paralleldecode: {how}; {done} finished (strategy, group) units are in {self.folder}; {again}",
              file=sys.stderr, flush=True)

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        summary = pl_module.summary()  # collective: every rank takes part
        trainer.strategy.barrier("prediction-writer")
        if trainer.is_global_zero:
            units = {}
            for part in sorted(self.folder.glob(f"predictions.rank*.{self.run_id}.jsonl")):
                for line in part.read_text(encoding="utf-8").splitlines():
                    unit = json.loads(line)
                    units.setdefault(run_folder.unit_key(unit), unit)
            run_folder.write_finished(self.folder, run_folder.ordered(units.values(), list(summary)))
            groups = getattr(getattr(trainer, "datamodule", None), "groups", None)
            if groups:
                run_folder.write_groups(self.folder, groups)
            self._copy_config(trainer)
            self._report(trainer, summary)
            run_folder.remove_parts(self.folder)
        trainer.strategy.barrier("prediction-writer-done")

    def _copy_config(self, trainer) -> None:  # noqa: ARG002 - rank 0 only: no collectives here
        """LightningCLI saves the whole config in the log folder; keep a copy beside the
        outputs when they go elsewhere."""
        saved = Path(self.log_dir) / "config.yaml" if self.log_dir else None
        if saved is not None and saved.is_file() and saved.resolve() != (self.folder / "config.yaml").resolve():
            (self.folder / "config.yaml").write_text(saved.read_text(encoding="utf-8"), encoding="utf-8")

    def _report(self, trainer, summary: dict[str, dict[str, Any]]) -> None:
        folder = self.folder
        clean = {s: {k: (None if isinstance(v, float) and math.isnan(v) else v)
                     for k, v in fig.items()} for s, fig in summary.items()}
        (folder / "summary.json").write_text(json.dumps(clean, indent=2) + "\n")
        table = format_table(summary)
        structured = any(fig.get("structured_output") for fig in summary.values())
        note = ("structured output: on (replies constrained to their JSON schemas)" if structured
                else "structured output: off (unconstrained replies)")
        try:
            page = write_report(folder)
        except Exception as err:  # noqa: BLE001 - the run's results are written; say what failed
            print(f"paralleldecode: report.html could not be written: {type(err).__name__}: {err}",
                  file=sys.stderr, flush=True)
            page = None
        where = f"outputs in {folder}" + (f" (open {page.name} to look at the run)" if page else "")
        print("\n" + table + f"\n{note}\n\n{where}", flush=True)
        logger = trainer.logger
        if logger is not None and hasattr(logger.experiment, "add_scalar"):
            exp = logger.experiment
            for strategy, fig in summary.items():
                for key, value in fig.items():
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        exp.add_scalar(f"predict/{strategy}/{key}", value, 0)
            exp.add_text("predict/summary", "```\n" + table + "\n```", 0)
            exp.flush()
