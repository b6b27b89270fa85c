"""Generated task families for parallel decoding within one sequence.

Each group has one shared ``background`` that is read once and several questions that do not
depend on each other, so every question can be decoded as its own branch:

* ``retrieval``: a list of invented people, one record per line; each question gives two
  attributes that together match exactly one person, whose full name is the gold answer.
* ``multidoc``: a few short invented documents; one question per document whose gold answer
  is a span copied verbatim from that document.
* ``planning``: a goal with constraints; each question asks for a short plan of one sub-task.
  There is no gold answer, so only speed and format can be compared.

Everything is drawn from seeded generators (no download, no model in the loop), and a user
may replace a generated set with a JSON-lines file of the same shape: one group per line,
``{"id", "background", "questions": [{"id", "question", "answers", "metadata"?}],
"metadata"?}`` (:mod:`paralleldecode.data.group_files` writes and reads it). One module
per family; the invented words they draw from are data (``vocabulary.json``).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from paralleldecode.data.group_files import load_groups_jsonl, write_groups_jsonl
from paralleldecode.data.records import DataError, QuestionGroup
from paralleldecode.data.tasks.common import DEFAULT_COUNT, MULTIDOC, PLANNING, RETRIEVAL
from paralleldecode.data.tasks.multidoc import MAX_DOCUMENTS, generate_multidoc
from paralleldecode.data.tasks.planning import MAX_SUBTASKS, generate_planning
from paralleldecode.data.tasks.retrieval import MAX_CRITERIA, generate_retrieval, matching_records

GENERATORS: dict[str, Callable[..., list[QuestionGroup]]] = {
    RETRIEVAL: generate_retrieval, MULTIDOC: generate_multidoc, PLANNING: generate_planning,
}


def load_task(dataset: str, data_path: str | os.PathLike[str] | None = None) -> list[QuestionGroup]:
    """Loads a task family: generated (seed 0, 20 groups) or from a user JSON-lines file.

    Args:
        dataset: ``retrieval``, ``multidoc`` or ``planning``.
        data_path: None generates the default groups; otherwise a file read by
            `load_groups_jsonl`.

    Raises:
        DataError: the family is unknown or the file is not usable.
    """
    if dataset not in GENERATORS:
        raise DataError(f"unknown task family {dataset!r}; known: {', '.join(GENERATORS)}")
    if data_path is None:
        return GENERATORS[dataset]()
    return load_groups_jsonl(data_path, dataset)


__all__ = ["DEFAULT_COUNT", "GENERATORS", "MAX_CRITERIA", "MAX_DOCUMENTS", "MAX_SUBTASKS", "MULTIDOC", "PLANNING",
           "RETRIEVAL", "generate_multidoc", "generate_planning", "generate_retrieval", "load_groups_jsonl",
           "load_task", "matching_records", "write_groups_jsonl"]
