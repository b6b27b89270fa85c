"""LightningDataModules: grouped question batches for the LightningModules."""

from datamodules.qa_groups import QAGroupsDataModule

__all__ = ["QAGroupsDataModule"]
