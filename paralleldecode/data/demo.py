"""The bundled demo set: 12 short invented paragraphs with SQuAD-style questions.

It lets every command run without a download. Some questions lean on an earlier one ("Who
built it?" then "When did that person die?"), which dependency-aware strategies can use.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from paralleldecode.data.records import DataError, Question, QuestionGroup
from paralleldecode.data.sources import field, with_id

DATASET = "demo"
LAYOUT_VERSION = 1


def load_demo(path: str | os.PathLike[str] | None = None) -> list[QuestionGroup]:
    """Loads the bundled demo set, or a user file of the same layout.

    The layout is ``{"version": 1, "groups": [{"id", "title", "context", "questions":
    [{"id", "question", "answers": [str, ...]}]}]}``.

    Args:
        path: a JSON file of the demo layout; None loads the bundled ``demo/demo.json``.

    Returns:
        One group per entry of ``groups``, background = context, metadata with title and source.

    Raises:
        DataError: the file is missing, not JSON, of another version, or a record is malformed.
    """
    # A Traversable, not a filesystem path: the package may be installed zipped.
    if path is None:
        source = resources.files("paralleldecode.data") / "demo" / "demo.json"
    else:
        source = Path(path)
    origin = f"demo file {source}"
    try:
        doc = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{origin} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{origin} cannot be read as JSON: {err}") from err
    if field(doc, "version", int, origin) != LAYOUT_VERSION:
        raise DataError(f"{origin}: version {doc['version']} is not supported "
                        f"(expected {LAYOUT_VERSION})")
    groups = [_group(g, f"{origin}: groups[{i}]", str(source))
              for i, g in enumerate(field(doc, "groups", list, origin))]
    if not groups:
        raise DataError(f"{origin} holds no groups")
    return groups


def _group(record: Any, where: str, source: str) -> QuestionGroup:
    where = with_id(where, record)
    questions = [_question(q, f"{where}.questions[{j}]")
                 for j, q in enumerate(field(record, "questions", list, where))]
    try:
        return QuestionGroup(
            id=field(record, "id", str, where), dataset=DATASET, questions=questions,
            background=field(record, "context", str, where),
            metadata={"title": field(record, "title", str, where), "source": source},
        )
    except DataError as err:
        raise DataError(f"{where}: {err}") from None


def _question(record: Any, where: str) -> Question:
    where = with_id(where, record)
    answers = field(record, "answers", list, where)
    if not all(isinstance(a, str) for a in answers):
        raise DataError(f"{where}: 'answers' must be a list of strings, got {answers!r}")
    try:
        return Question(id=field(record, "id", str, where),
                        text=field(record, "question", str, where), answers=answers)
    except DataError as err:
        raise DataError(f"{where}: {err}") from None
