"""`QAGroupsDataModule`: batches of question groups for predict (and fit, for the trained methods).

Each batch is a plain list of :class:`~paralleldecode.data.records.QuestionGroup`. Under DDP
Lightning wraps the sequential sampler for predict in an *unrepeated* distributed sampler,
so every rank gets a disjoint share and no group is padded in twice; the prediction writer
then merges the ranks' files once.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

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
    def train_dataloader(self) -> DataLoader:
        """Shuffled (seeded per epoch by Lightning's sampler seeding) batches of groups."""
        return DataLoader(self.groups, batch_size=self.hparams.batch_size, shuffle=True,
                          collate_fn=list)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.groups, batch_size=self.hparams.batch_size, shuffle=False,
                          collate_fn=list)
