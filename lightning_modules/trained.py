"""`TrainedWeightsModule`: what the package's trainable LightningModules share.

Their checkpoints hold only the tensors that train (adapters, heads, extra modules), never
the frozen base: ``on_save_checkpoint`` drops the rest, and loading is non-strict. At the end
of fit the trained weights are written to ``{checkpoint_dir}/{dataset}/{model}_{method}.ckpt``
(see :func:`~paralleldecode.models.training.trained_checkpoint_path`), where the predict
strategies discover them; fit refuses to start when that file exists, unless ``force``.

Runs survive: :class:`~lightning_modules.callbacks.ResumableCheckpoint` keeps
``{default_root_dir}/checkpoints/last.ckpt`` (every ``checkpoint_every_n_steps`` optimizer
steps, at the end, and on SIGTERM, which then ends the process with status 143), and
``paralleldecode fit ... --ckpt_path last`` continues from it exactly: the trainable tensors,
optimizer, scheduler and loop state are Lightning's; the data order is the data modules'
stateful loaders'; the random generators (dropout) are restored here at the first step after
the checkpoint. A checkpoint of another module, method or base model is refused before any
step, naming both. :class:`~lightning_modules.callbacks.TrainingCost` shows tokens/s,
samples/s and peak memory as training runs.

Subclasses have ``model_name``, ``checkpoint_dir``, ``checkpoint_every_n_steps`` and ``force``
hyperparameters (and optionally ``checkpoint_dataset``), implement :meth:`checkpoint_method`,
and set ``batch_tokens`` / ``batch_samples`` in ``training_step``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_modules.callbacks import ResumableCheckpoint, TrainingCost
from paralleldecode.errors import CheckpointError
from paralleldecode.models.training import trainable_state, trained_checkpoint_path

RUN_KEY = "paralleldecode_run"  # what a checkpoint was trained as: module, method, base model
RNG_KEY = "rng_states"


class TrainedWeightsModule(L.LightningModule):
    """Base class: trainable-only checkpoints and the trained-weights file."""

    def __init__(self) -> None:
        super().__init__()
        # Checkpoints hold only trained tensors; the base weights come from model_name.
        self.strict_loading = False
        self.batch_tokens: int | None = None  # what the last training batch held (TrainingCost)
        self.batch_samples: int | None = None
        self._rng_to_restore: dict[str, Any] | None = None

    def checkpoint_method(self) -> str:  # pragma: no cover - abstract
        """The ``{method}`` part of the trained-weights file name."""
        raise NotImplementedError

    def output_path(self) -> Path:
        """``{checkpoint_dir}/{dataset}/{model}_{method}.ckpt``."""
        h = self.hparams
        return trained_checkpoint_path(h.checkpoint_dir, self.dataset_name(), h.model_name,
                                       self.checkpoint_method())

    def dataset_name(self) -> str:
        """``checkpoint_dataset`` when set, else the data module's ``dataset_name`` or
        ``dataset`` setting."""
        name = self.hparams.get("checkpoint_dataset")
        dm = self._trainer.datamodule if self._trainer is not None else None
        if not name:
            name = getattr(dm, "dataset_name", None)
        if not name and dm is not None:
            name = getattr(dm, "hparams", {}).get("dataset")
        if not name:
            raise ValueError("cannot name the trained checkpoint: the data module has neither a "
                             "dataset_name (TextBranchesDataModule) nor a dataset (QAGroupsDataModule)"
                             + ("; set model.checkpoint_dataset" if "checkpoint_dataset" in self.hparams else ""))
        return str(name)

    def refuse_existing(self) -> None:
        """Raise before training when the trained-weights file exists and ``force`` is off."""
        path = self.output_path()
        if path.exists() and not self.hparams.force:
            raise FileExistsError(f"trained checkpoint {path} exists; set model.force: true to overwrite "
                                  "it, or change model.checkpoint_dir")

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.refuse_existing()

    def configure_callbacks(self) -> list:
        """Resumable checkpoints (unless ``checkpoint_every_n_steps`` is null or the Trainer
        has ``enable_checkpointing: false``) and the cost of training."""
        callbacks: list = [TrainingCost()]
        every = self.hparams.get("checkpoint_every_n_steps")
        if every and self.trainer.checkpoint_callbacks:
            callbacks.append(ResumableCheckpoint(self.checkpoint_folder(self.trainer), every))
        return callbacks

    @staticmethod
    def checkpoint_folder(trainer) -> Path:
        """Where :class:`ResumableCheckpoint` keeps ``last.ckpt``: ``{default_root_dir}/checkpoints``."""
        return Path(trainer.default_root_dir) / "checkpoints"

    def last_checkpoint(self, trainer) -> Path | None:
        """The ``last.ckpt`` a killed run left in ``trainer``'s folder, or None (then
        ``--ckpt_path last`` starts afresh, with Lightning's warning)."""
        path = ResumableCheckpoint.last_in(self.checkpoint_folder(trainer))
        return path if path.is_file() else None

    def run_identity(self) -> dict[str, str]:
        """What a checkpoint of this run was trained as; a resumed run must match it."""
        return {"module": type(self).__name__, "method": self.checkpoint_method(),
                "model_name": str(self.hparams.model_name)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = trainable_state(self, checkpoint["state_dict"])
        checkpoint[RUN_KEY] = self.run_identity()
        # Every rank's generators (ranks draw differently), gathered: every rank saves
        # together. Plain tensors and tuples only: checkpoints load with weights_only=True.
        mine = {"torch": torch.get_rng_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(ranks, mine)
        else:
            ranks = [mine]
        checkpoint[RNG_KEY] = ranks

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint trained as something else (before any step), and keep its
        random generators' states for the first step after it."""
        path = self.trainer.ckpt_path if self._trainer is not None else None
        theirs, ours = checkpoint.get(RUN_KEY), self.run_identity()
        if theirs is None:
            raise CheckpointError(f"--ckpt_path {path}: not a checkpoint of a paralleldecode training run "
                                  f"(no {RUN_KEY!r} entry); this run is {_describe(ours)}")
        if theirs != ours:
            raise CheckpointError(f"--ckpt_path {path} was trained as {_describe(theirs)}, but this run is "
                                  f"{_describe(ours)}; resume with the same settings or start without --ckpt_path")
        ranks = checkpoint.get(RNG_KEY) or [None]
        self._rng_to_restore = ranks[self.global_rank] if len(ranks) > self.global_rank else ranks[0]

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Restored here, not at load time: between the two, Lightning and the loaders may
        # draw random numbers that the uninterrupted run drew before the checkpoint.
        states, self._rng_to_restore = self._rng_to_restore, None
        if states:
            torch.set_rng_state(states["torch"])
            random.setstate(_as_tuple(states["python"]))
            if states.get("cuda") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])

    def save_trained(self) -> Path:
        """Write the trained weights (collective under DDP/FSDP: every rank calls it, shards
        are gathered, rank 0 writes)."""
        path = self.output_path()
        self.trainer.save_checkpoint(path, weights_only=True)
        rank_zero_info(f"trained weights ({self.checkpoint_method()}) written to {path}")
        return path

    def on_fit_end(self) -> None:
        self.save_trained()


def _describe(run: dict[str, str]) -> str:
    return f"{run.get('module')} method {run.get('method')!r} on model {run.get('model_name')!r}"


def _as_tuple(state):
    """``random.getstate()`` after a checkpoint round trip (tuples may come back as lists)."""
    return tuple(_as_tuple(x) for x in state) if isinstance(state, (list, tuple)) else state
