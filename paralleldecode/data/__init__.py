"""Data: the shared records, data set adapters, and group selection."""

from paralleldecode.data.demo import load_demo
from paralleldecode.data.grouping import select_groups
from paralleldecode.data.records import DataError, Question, QuestionGroup
from paralleldecode.data.registry import dataset_names, load_groups
from paralleldecode.data.squad import load_squad
from paralleldecode.data.tasks import (
    generate_multidoc,
    generate_planning,
    generate_retrieval,
    load_groups_jsonl,
    load_task,
    matching_records,
    write_groups_jsonl,
)

__all__ = ["Question", "QuestionGroup", "DataError", "load_groups", "dataset_names",
           "select_groups", "load_squad", "load_demo", "generate_retrieval", "generate_multidoc",
           "generate_planning", "load_task", "load_groups_jsonl", "write_groups_jsonl",
           "matching_records"]
