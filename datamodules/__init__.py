"""LightningDataModules: grouped question batches and multi-branch text for the LightningModules."""

from datamodules.qa_groups import QAGroupsDataModule
from datamodules.text_branches import TextBranchesDataModule

__all__ = ["QAGroupsDataModule", "TextBranchesDataModule"]
