"""`TrainedWeightsModule`: what the package's trainable LightningModules share.

Their checkpoints hold only the tensors that train (adapters, heads, extra modules), never
the frozen base: ``on_save_checkpoint`` drops the rest, and loading is non-strict. At the end
of fit the trained weights are written to ``{checkpoint_dir}/{dataset}/{model}_{method}.ckpt``
(see :func:`~paralleldecode.models.training.trained_checkpoint_path`), where the predict
strategies discover them; fit refuses to start when that file exists, unless ``force``.

Subclasses have ``model_name``, ``checkpoint_dir`` and ``force`` hyperparameters (and
optionally ``checkpoint_dataset``) and implement :meth:`checkpoint_method`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from paralleldecode.models.training import trainable_state, trained_checkpoint_path


class TrainedWeightsModule(L.LightningModule):
    """Base class: trainable-only checkpoints and the trained-weights file."""

    def __init__(self) -> None:
        super().__init__()
        # Checkpoints hold only trained tensors; the base weights come from model_name.
        self.strict_loading = False

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

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = trainable_state(self, checkpoint["state_dict"])

    def save_trained(self) -> Path:
        """Write the trained weights (collective under DDP/FSDP: every rank calls it, shards
        are gathered, rank 0 writes)."""
        path = self.output_path()
        self.trainer.save_checkpoint(path, weights_only=True)
        rank_zero_info(f"trained weights ({self.checkpoint_method()}) written to {path}")
        return path

    def on_fit_end(self) -> None:
        self.save_trained()
