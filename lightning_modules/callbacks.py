"""Callbacks every trainable module attaches: checkpoints a run resumes from exactly, a clean
stop on SIGTERM, and the cost of training as it runs.

* :class:`ResumableCheckpoint` is Lightning's ``ModelCheckpoint`` keeping one ``last.ckpt``
  (trainable tensors, optimizer, scheduler, loop and data-loader state) in
  ``{default_root_dir}/checkpoints``, written every N optimizer steps and at the end, so
  ``paralleldecode fit ... --ckpt_path last`` continues a killed run. On SIGTERM it writes
  ``last.ckpt`` at the next step boundary and ends the process with status 143; under DDP the
  ranks agree (any rank that got the signal stops them all) before anything is written, so
  every rank stops after the same step and the checkpoint is whole. Lightning alone stops on
  SIGTERM with status 0 and keeps nothing.
* :class:`TrainingCost` logs ``train/tokens_per_s`` and ``train/samples_per_s`` (progress bar
  and logger; each step's own rate, from the batch's start to its end) and
  ``train/peak_memory_mb`` (peak RSS of the process on CPU, ``max_memory_allocated`` on CUDA).
  The module says what a batch held by setting ``batch_tokens`` and ``batch_samples`` in its
  ``training_step``.
"""

from __future__ import annotations

import resource
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info


class ResumableCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_steps`` optimizer steps, at the end of fit and on SIGTERM.

    Args:
        dirpath: the folder of ``last.ckpt`` (a fixed folder, not a logger version's, so
            ``--ckpt_path last`` finds it from a new process).
        every_n_steps: optimizer steps between two checkpoints.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int) -> None:
        if every_n_steps < 1:
            raise ValueError(f"checkpoint every_n_steps must be >= 1, got {every_n_steps}")
        # save_top_k=0: only last.ckpt, overwritten in place (no step-named copies, no -v1).
        super().__init__(dirpath=str(dirpath), save_top_k=0, save_last=True, every_n_train_steps=every_n_steps,
                         enable_version_counter=False)

    @classmethod
    def last_in(cls, dirpath: str | Path) -> Path:
        """Where the checkpoint of a run whose folder is ``dirpath`` is kept."""
        return Path(dirpath) / f"{cls.CHECKPOINT_NAME_LAST}{cls.FILE_EXTENSION}"

    @property
    def last_path(self) -> Path:
        return self.last_in(self.dirpath)

    def _save_last_now(self, trainer) -> None:
        if self._last_global_step_saved != trainer.global_step or not self.last_path.exists():
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning's own SIGTERM handler forwards the signal to the other ranks and runs a
        # collective inside the handler; a rank signalled twice (by the scheduler and by rank
        # 0) then runs one collective too many, and the ranks lose step (seen under DDP as
        # "Connection reset by peer"). This handler only takes note; the ranks agree at the
        # next step boundary instead. Lightning restores the earlier handler at teardown.
        self._sigterm = False
        self._step_at_batch_start = -1
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._note_sigterm)

    def _note_sigterm(self, signum, frame) -> None:
        self._sigterm = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.global_step == self._step_at_batch_start:
            return  # a batch inside a gradient accumulation: stopping would lose its gradients
        # Every rank takes part in the decision (a collective under DDP), then in the save.
        if not trainer.strategy.reduce_boolean_decision(self._sigterm, all=False):
            return
        self._save_last_now(trainer)
        rank_zero_info(f"stopped by SIGTERM after step {trainer.global_step}; resume with --ckpt_path last "
                       f"({self.last_path})")
        # Lightning ends the step (its logs included) and raises SIGTERMException on every
        # rank whose flag is set: set it on all. The `paralleldecode` command turns that
        # exception into exit status 143.
        trainer._signal_connector.received_sigterm = True

    def on_train_end(self, trainer, pl_module) -> None:
        if not trainer.fast_dev_run:
            self._save_last_now(trainer)


class TrainingCost(Callback):
    """Tokens and samples per second of every step, and the process's peak memory."""

    def __init__(self) -> None:
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: Any, batch_idx: int) -> None:
        seconds = max(time.perf_counter() - self._start, 1e-9)
        tokens = getattr(pl_module, "batch_tokens", None)
        samples = getattr(pl_module, "batch_samples", None)
        log = dict(on_step=True, on_epoch=False, batch_size=1)
        if tokens is not None:
            pl_module.log("train/tokens_per_s", tokens / seconds, prog_bar=True, **log)
        if samples is not None:
            pl_module.log("train/samples_per_s", samples / seconds, prog_bar=True, **log)
        pl_module.log("train/peak_memory_mb", peak_memory_mb(pl_module.device), **log)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far in MiB: CUDA's allocated peak on a GPU, the process's peak RSS
    otherwise (Linux reports ``ru_maxrss`` in KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


__all__ = ["ResumableCheckpoint", "TrainingCost", "peak_memory_mb"]
