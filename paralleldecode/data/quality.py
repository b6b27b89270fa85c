"""QuALITY adapter: multiple-choice questions about long articles, one group per article.

Two record layouts, told apart by their keys (never by a file's extension), in any container
:func:`~paralleldecode.data.sources.read_source` reads (JSON list, JSON lines, parquet,
``datasets.Dataset``, hub):

* Hugging Face rows (``emozilla/quality``): ``{article, question, options: [4 strings],
  answer: 0-based index, hard: bool}``, one question per row.
* The original release: JSON lines of ``{article_id, set_unique_id?, title, article,
  questions: [{question, question_unique_id?, options, gold_label: 1-based, difficult: 0/1}]}``,
  one article (with one writer's question set) per line. The test release withholds
  ``gold_label``; such questions load without gold.

Either way records are grouped by identical article text, so an article whose questions
come in several rows or question sets is one group.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from string import ascii_uppercase
from typing import Any

from paralleldecode.data.records import DataError, Question, QuestionGroup
from paralleldecode.data.registry import register_dataset
from paralleldecode.data.sources import field, optional_field, read_source, text_field, with_id

DATASET = "quality"
HUB_ID = "emozilla/quality"
ACCEPTED_LAYOUTS = (
    "Hugging Face rows {article, question, options: [..], answer: 0-based index, hard: bool} "
    "or the original release {article_id, set_unique_id?, title, article, questions: "
    "[{question, question_unique_id?, options: [..], gold_label: 1-based index, "
    "difficult: 0 or 1}]}"
)


@dataclass
class _Item:
    """One parsed question with its article and where it came from."""

    where: str
    article: str
    text: str
    options: list[str]
    answers: list[str]
    hard: bool | None
    # Identifiers of the original release, kept in the question's metadata when present.
    ids: dict[str, str] = dataclass_field(default_factory=dict)
    title: str | None = None
    article_id: str | None = None


@register_dataset(DATASET)
def load_quality(data_path: str | os.PathLike[str] | Iterable[Mapping[str, Any]] | None,
                 split: str, *, hard_only: bool = False) -> list[QuestionGroup]:
    """Loads QuALITY as one group of multiple-choice questions per article.

    Args:
        data_path: a local file, a hub id, or a ``datasets.Dataset`` / iterable of records;
            None loads ``emozilla/quality`` from the hub.
        split: the hub split (``train`` or ``validation``); ignored for files and in-memory
            records.
        hard_only: keep only the questions QuALITY marks hard (``hard`` / ``difficult``);
            articles left without questions are left out.

    Returns:
        Groups ``quality/<n>``, ``n`` counting articles in order of first appearance, the
        article as background; questions ``<n>-<k>`` in source order (numbered before
        ``hard_only`` filters, so ids do not depend on it), options in order, gold the
        answer's letter (``["B"]``). Question metadata has ``hard`` (None where a record
        does not say) and the original release's ids; group metadata has ``title`` and
        ``article_id`` where the records have them.

    Raises:
        DataError: a record is malformed (the message names the file, the record and the
            key), ``hard_only`` meets a question without a difficulty flag or leaves no
            question, or the source cannot be read.
    """
    source = read_source(HUB_ID if data_path is None else data_path, DATASET, split)
    records = source.rows(single_record=True, non_empty=True)
    first_location, first = records[0]
    located = [(with_id(f"{source.origin}: {location}", record, "article_id"), record)
               for location, record in records]
    # The first record's keys tell the layout; every other record must then follow it.
    if isinstance(first, Mapping) and "questions" in first:
        items = [item for where, record in located for item in _original_items(record, where)]
    elif isinstance(first, Mapping) and "question" in first:
        items = [_row_item(record, where) for where, record in located]
    else:
        raise DataError(f"{source.origin}: {first_location} matches no QuALITY layout; "
                        f"expected {ACCEPTED_LAYOUTS}")
    return _group_by_article(items, source.origin, hard_only)


def _row_item(row: Any, where: str) -> _Item:
    options = _options(row, where)
    answer = field(row, "answer", int, where)
    return _Item(where=where, article=text_field(row, "article", where),
                 text=text_field(row, "question", where), options=options,
                 answers=[_letter(answer, 0, options, "answer", where)],
                 hard=field(row, "hard", bool, where))


def _original_items(record: Any, where: str) -> list[_Item]:
    article = text_field(record, "article", where)
    title = field(record, "title", str, where)
    article_id = field(record, "article_id", str, where)
    set_id = optional_field(record, "set_unique_id", str, where)
    items = []
    for k, question in enumerate(field(record, "questions", list, where)):
        at = f"{where} questions[{k}]"
        question_id = optional_field(question, "question_unique_id", str, at)
        if question_id is not None:
            at += f" (question_unique_id {question_id!r})"
        options = _options(question, at)
        # The test release has no gold_label.
        gold = optional_field(question, "gold_label", int, at)
        difficult = optional_field(question, "difficult", (bool, int), at)
        if difficult not in (None, 0, 1):
            raise DataError(f"{at}: 'difficult' should be 0 or 1, got {difficult!r}")
        ids = {"set_unique_id": set_id, "question_unique_id": question_id}
        items.append(_Item(
            where=at, article=article, text=text_field(question, "question", at),
            options=options,
            answers=[] if gold is None else [_letter(gold, 1, options, "gold_label", at)],
            hard=None if difficult is None else bool(difficult),
            ids={key: value for key, value in ids.items() if value is not None},
            title=title, article_id=article_id,
        ))
    return items


def _group_by_article(items: list[_Item], origin: str, hard_only: bool) -> list[QuestionGroup]:
    by_article: dict[str, list[_Item]] = {}
    for item in items:
        by_article.setdefault(item.article, []).append(item)
    if not by_article:
        raise DataError(f"{origin} holds no questions")
    groups = []
    for n, (article, members) in enumerate(by_article.items()):
        questions = []
        for k, item in enumerate(members):
            if hard_only and item.hard is None:
                raise DataError(f"{item.where} does not say whether the question is hard "
                                f"('difficult' is missing), which hard_only needs")
            if hard_only and not item.hard:
                continue
            questions.append(Question(id=f"{n}-{k}", text=item.text, answers=item.answers,
                                      options=item.options,
                                      metadata={"hard": item.hard, **item.ids}))
        if questions:
            groups.append(QuestionGroup(id=f"{DATASET}/{n}", dataset=DATASET,
                                        questions=questions, background=article,
                                        metadata=_article_metadata(members, origin)))
    if not groups:
        raise DataError(f"{origin}: hard_only leaves no question (none is marked hard)")
    return groups


def _article_metadata(members: list[_Item], origin: str) -> dict[str, Any]:
    # The first record that names the article does; the Hugging Face rows have no names.
    named = next((item for item in members if item.title is not None), None)
    metadata: dict[str, Any] = {"source": origin}
    if named is not None:
        metadata.update(title=named.title, article_id=named.article_id)
    return metadata


def _options(record: Any, where: str) -> list[str]:
    options = field(record, "options", list, where)
    if len(options) < 2 or len(options) > len(ascii_uppercase) \
            or not all(isinstance(option, str) for option in options):
        raise DataError(f"{where}: 'options' should be a list of 2 to "
                        f"{len(ascii_uppercase)} strings, got {options!r}")
    return options


def _letter(value: int, first: int, options: list[str], key: str, where: str) -> str:
    """The letter of option number ``value``, options counted from ``first`` (0 or 1)."""
    # bool is an int subclass; a True/False index is a malformed record, not option A/B.
    if isinstance(value, bool) or not first <= value < first + len(options):
        raise DataError(f"{where}: {key!r} {value!r} does not name one of the "
                        f"{len(options)} options (counted from {first})")
    return ascii_uppercase[value - first]
