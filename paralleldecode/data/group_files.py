"""The package's own group layout as JSON lines, and the record check every adapter uses.

One group per line: ``{"id", "background", "questions": [{"id", "question", "answers",
"metadata"?}], "metadata"?}``. :func:`write_groups_jsonl` writes it, :func:`load_groups_jsonl`
reads it back (the generated task families and a user's own file of groups). Records are read
with :func:`~paralleldecode.data.sources.field`, as every adapter reads them, so every
malformed-record message reads the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from paralleldecode.data.records import DataError, Question, QuestionGroup
from paralleldecode.data.sources import field, read_source, with_id


def write_groups_jsonl(groups: Iterable[QuestionGroup], path: str | os.PathLike[str]) -> None:
    """Writes groups as JSON lines, one group per line, in the layout `load_groups_jsonl` reads.

    Missing parent folders are created. Metadata keys are written only when not empty.

    Raises:
        DataError: a group has no background, a question has options or its own context (the
            layout has no place for them), or metadata is not JSON-serialisable.
    """
    lines = []
    for group in groups:
        if group.background is None:
            raise DataError(f"group {group.id!r} has no background; the task layout needs one")
        questions = []
        for q in group.questions:
            if q.options is not None or q.context is not None:
                raise DataError(f"question {q.id!r} has options or its own context, which the "
                                f"task layout cannot hold")
            record: dict[str, Any] = {"id": q.id, "question": q.text, "answers": q.answers}
            if q.metadata:
                record["metadata"] = q.metadata
            questions.append(record)
        row: dict[str, Any] = {"id": group.id, "background": group.background,
                               "questions": questions}
        if group.metadata:
            row["metadata"] = group.metadata
        try:
            lines.append(json.dumps(row, ensure_ascii=False))
        except (TypeError, ValueError) as err:
            raise DataError(f"group {group.id!r} cannot be written as JSON: {err}") from err
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def load_groups_jsonl(path: str | os.PathLike[str], dataset: str) -> list[QuestionGroup]:
    """Reads groups from a JSON-lines file, one group per line (blank lines are skipped).

    Each line is ``{"id": str, "background": str, "questions": [{"id": str, "question": str,
    "answers": [str, ...], "metadata": {...}?}, ...], "metadata": {...}?}``. Metadata is kept
    as it is, so writing groups with `write_groups_jsonl` and reading them back gives equal
    groups. The file is read by :func:`~paralleldecode.data.sources.read_source`, so a JSON
    list of such groups is read too.

    Args:
        path: the file.
        dataset: the name put into each group's ``dataset``.

    Raises:
        DataError: the file is missing or unreadable, a line is not JSON, a key is missing or
            has another type, a group has no questions, or an id repeats. The message names
            the file, the line, the group id and the key.
    """
    # A Path, not a str: a missing user file must be reported, never looked up on the hub.
    source = read_source(Path(path), dataset)
    groups: list[QuestionGroup] = []
    group_lines: dict[str, str] = {}
    question_lines: dict[str, str] = {}
    for location, record in source.rows(single_record=True):
        where = with_id(f"{source.origin}: {location}", record)
        group = _read_group(record, where, dataset)
        _claim(group_lines, group.id, location, where, "group")
        for q in group.questions:
            _claim(question_lines, q.id, location, where, "question")
        groups.append(group)
    if not groups:
        raise DataError(f"{source.origin} holds no groups")
    return groups


def _claim(used: dict[str, str], key: str, location: str, where: str, what: str) -> None:
    if key in used:
        raise DataError(f"{where}: {what} id {key!r} was already used on {used[key]}")
    used[key] = location


def _read_group(record: Any, where: str, dataset: str) -> QuestionGroup:
    gid = field(record, "id", str, where)
    background = field(record, "background", str, where)
    metadata = _optional_object(record, where)
    raw_questions = field(record, "questions", list, where)
    if not raw_questions:
        raise DataError(f"{where}: 'questions' is empty; a group needs at least one question")
    questions = [_read_question(q, with_id(f"{where}: questions[{j}]", q))
                 for j, q in enumerate(raw_questions)]
    try:
        return QuestionGroup(id=gid, dataset=dataset, questions=questions,
                             background=background, metadata=metadata)
    except DataError as err:
        raise DataError(f"{where}: {err}") from None


def _read_question(record: Any, where: str) -> Question:
    qid = field(record, "id", str, where)
    text = field(record, "question", str, where)
    answers = field(record, "answers", list, where)
    if not all(isinstance(a, str) for a in answers):
        raise DataError(f"{where}: 'answers' must be a list of strings, got {answers!r}")
    metadata = _optional_object(record, where)
    try:
        return Question(id=qid, text=text, answers=answers, metadata=metadata)
    except DataError as err:
        raise DataError(f"{where}: {err}") from None


def _optional_object(record: Mapping[str, Any], where: str) -> dict[str, Any]:
    if "metadata" not in record:
        return {}
    return field(record, "metadata", dict, where)

