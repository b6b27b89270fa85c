"""`QAGroupsDataModule`: batches of question groups for predict (and fit, for the trained methods).

Each batch is a plain list of :class:`~paralleldecode.data.records.QuestionGroup`. Under DDP
Lightning wraps the sequential sampler for predict in an *unrepeated* distributed sampler,
so every rank gets a disjoint share and no group is padded in twice; the prediction writer
then merges the ranks' files once.

The training loader is a stateful one (torchdata's ``StatefulDataLoader``, each epoch's
shuffle a function of ``seed`` and the epoch): Lightning saves its position in every
checkpoint, so a run resumed mid-epoch reads the batches the uninterrupted run would have
read next, and the epochs after it in the same order.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

from paralleldecode.data.records import DataError, QuestionGroup
from paralleldecode.data.registry import check_options, dataset_names, load_groups


class QAGroupsDataModule(L.LightningDataModule):
    """Question groups from a registered data set.

    Args:
        dataset: a registered data set name (``demo``, ``squad``, ...).
        data_path: a local file, or a hub id; environment variables are expanded. None
            uses the data set's default (the bundled file for ``demo``, the hub for others).
        split: the split to read where the source has several.
        context_count: sample this many groups (seeded); None keeps all.
        min_questions: leave out groups with fewer questions.
        max_questions: split larger groups into chunks of at most this many.
        seed: seed of the group sample (and of data sets that group at random).
        batch_size: groups per batch (predict and fit).
        dataset_options: options of the chosen data set (e.g. ``{group_size: 4}`` for
            ``hotpot``); unknown ones are refused with the list of accepted ones.
    """

    def __init__(
        self,
        dataset: str = "demo",
        data_path: str | None = None,
        split: str = "validation",
        context_count: int | None = None,
        min_questions: int = 1,
        max_questions: int | None = None,
        seed: int = 0,
        batch_size: int = 1,
        dataset_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if dataset not in dataset_names():
            raise DataError(
                f"data.dataset: unknown data set {dataset!r}; registered: {', '.join(dataset_names())}"
            )
        if max_questions is not None and min_questions > max_questions:
            raise DataError(
                f"data.min_questions ({min_questions}) is larger than data.max_questions ({max_questions})"
            )
        check_options(dataset, dataset_options, label="data.dataset_options: ")
        if batch_size < 1:
            raise DataError(f"data.batch_size must be >= 1, got {batch_size}")
        self.groups: list[QuestionGroup] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.groups is not None:
            return
        h = self.hparams
        path = os.path.expandvars(os.path.expanduser(h.data_path)) if h.data_path else None
        self.groups = load_groups(
            h.dataset, data_path=path, split=h.split, min_questions=h.min_questions,
            max_questions=h.max_questions, context_count=h.context_count, seed=h.seed,
            options=h.dataset_options,
        )

    # The list of groups is the map-style dataset; `collate_fn=list` keeps a batch a plain list.
    def train_dataloader(self) -> StatefulDataLoader:
        """Shuffled batches of groups, in an order set by ``seed`` (each epoch a new one),
        from a loader whose position a checkpoint keeps."""
        return stateful_loader(self.groups, self.hparams.batch_size, self.hparams.seed, self.trainer)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.groups, batch_size=self.hparams.batch_size, shuffle=False,
                          collate_fn=list)


class ResumableShuffle(StatefulDistributedSampler):
    """This rank's share of a random order that depends on ``seed`` and the epoch alone
    (Lightning calls ``set_epoch`` as each epoch starts), with the epoch and the position
    in it as its state: a restored loader shuffles the epoch it stopped in, and every later
    one, as the uninterrupted run did. Being a ``DistributedSampler``, Lightning keeps it
    under DDP instead of swapping in its own (which would forget the epoch on restore)."""

    def state_dict(self) -> dict[str, int]:
        return {**super().state_dict(), "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        super().load_state_dict(state)
        self.set_epoch(state["epoch"])


def stateful_loader(items: list, batch_size: int, seed: int, trainer=None) -> StatefulDataLoader:
    """Shuffled batches (plain lists) of ``items`` from a loader with ``state_dict`` /
    ``load_state_dict``, so a restored loader goes on with the batch after the last one read;
    under ``trainer``'s DDP each rank reads its own share."""
    replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    sampler = ResumableShuffle(items, num_replicas=replicas, rank=rank, shuffle=True, seed=seed)
    # `collate_fn=list` keeps a batch a plain list of records.
    return StatefulDataLoader(items, batch_size=batch_size, sampler=sampler, collate_fn=list)
