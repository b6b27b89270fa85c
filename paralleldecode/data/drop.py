"""DROP adapter: one `QuestionGroup` per passage, questions in source order.

DROP questions need discrete reasoning over a passage (counting, adding, comparing dates), so
gold answers are numbers, dates or one or more spans. Accepted layouts, told apart by content:

* the original release JSON: ``{passage_id: {"passage", "qa_pairs": [{"question",
  "query_id", "answer": {"number", "date": {"day", "month", "year"}, "spans"},
  "validated_answers": [same shape, ..]}]}}``;
* Hugging Face rows (``ucinlp/drop``): ``section_id, query_id, passage, question,
  answers_spans: {spans: [..], types: [..]}``, one row per question, as a JSON list, JSON
  lines, parquet, a ``datasets.Dataset`` or any iterable of row mappings, or from the hub.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from paralleldecode.data.records import DataError, Question, QuestionGroup
from paralleldecode.data.registry import register_dataset
from paralleldecode.data.sources import field, read_source, strings

DATASET = "drop"
DEFAULT_HUB_ID = "ucinlp/drop"

# One parsed question with where it came from: (location for messages, section id, passage,
# question).
_Item = tuple[str, str, str, Question]


@register_dataset(DATASET)
def load_drop(data_path: str | os.PathLike[str] | Iterable[Mapping[str, Any]] | None = None,
              split: str = "validation") -> list[QuestionGroup]:
    """Loads DROP, one group per passage.

    Gold answers: for Hugging Face rows, the spans (the hub already rendered numbers and dates
    as spans). For the original JSON, each of ``answer`` and ``validated_answers`` gives: its
    number when not empty, else its date (the non-empty parts, day month year, joined by
    spaces), else its spans (several spans give ``"a, b"`` and then each span); the renderings
    are deduplicated in order. Question metadata keeps ``types`` (``number``, ``date`` or
    ``span``, one per number, date or span, in the hub's vocabulary).

    Args:
        data_path: a local file (original JSON, or rows as JSON list, JSON lines or parquet), a
            hub id, or a ``datasets.Dataset`` / iterable of rows. None loads ``ucinlp/drop``.
        split: the hub split; files and in-memory rows have one split.

    Returns:
        Groups ``drop/<section id>`` in order of first appearance, with the passage as
        ``background``.

    Raises:
        DataError: the source cannot be read, a record is malformed (the message names the
            file, the record location and id and the key), a section id comes with two
            different passages, a query id repeats, or there are no questions.
    """
    source = read_source(DEFAULT_HUB_ID if data_path is None else data_path, DATASET, split)
    document = source.document
    if isinstance(document, Mapping) and "section_id" not in document:
        items = _original_items(document, source.origin)
    else:
        items = _row_items(source.rows(single_record=True), source.origin)
    return _group_by_section(items, source.origin)


def _original_items(document: Mapping[str, Any], origin: str) -> Iterator[_Item]:
    for section_id, entry in document.items():
        at = f"{origin}: passage {section_id!r}"
        passage = field(entry, "passage", str, at)
        pairs = field(entry, "qa_pairs", list, at)
        if not pairs:
            raise DataError(f"{at}: 'qa_pairs' is empty; a passage needs at least one question")
        for j, qa in enumerate(pairs):
            where = f"{at} qa_pairs[{j}]"
            qid = field(qa, "query_id", str, where)
            where = f"{where} (id {qid!r})"
            text = field(qa, "question", str, where)
            answers = [("answer", field(qa, "answer", Mapping, where))]
            # The training file has no validated answers; only dev questions were re-annotated.
            if "validated_answers" in qa:
                validated = field(qa, "validated_answers", list, where)
                answers += [(f"validated_answers[{k}]", a) for k, a in enumerate(validated)]
            gold: list[str] = []
            types: list[str] = []
            for key, answer in answers:
                texts, kinds = _render(answer, f"{where} {key}")
                gold += texts
                types += kinds
            yield where, section_id, passage, _question(qid, text, gold, types, where)


def _render(answer: Any, where: str) -> tuple[list[str], list[str]]:
    """The gold texts of one original answer, and their types in the hub's vocabulary."""
    number = field(answer, "number", str, where)
    date = field(answer, "date", Mapping, where)
    date_parts = [field(date, part, str, f"{where} date") for part in ("day", "month", "year")]
    spans = strings(answer, "spans", where)
    if number:
        return [number], ["number"]
    date_text = " ".join(part for part in date_parts if part)
    if date_text:
        return [date_text], ["date"]
    # A multi-span answer is right only as a whole, but a model may name the spans in any
    # form, so the joined spans and each single span are all accepted.
    joined = [", ".join(spans)] if len(spans) > 1 else []
    return joined + spans, ["span"] * len(spans)


def _row_items(rows: Iterable[tuple[str, Any]], origin: str) -> Iterator[_Item]:
    for location, row in rows:
        where = f"{origin}: {location}"
        qid = field(row, "query_id", str, where)
        where = f"{where} (id {qid!r})"
        section_id = field(row, "section_id", str, where)
        passage = field(row, "passage", str, where)
        text = field(row, "question", str, where)
        answers = field(row, "answers_spans", Mapping, where)
        spans = strings(answers, "spans", f"{where} answers_spans")
        types = strings(answers, "types", f"{where} answers_spans")
        yield where, section_id, passage, _question(qid, text, spans, types, where)


def _question(qid: str, text: str, gold: list[str], types: list[str], where: str) -> Question:
    try:
        # Annotators often agree, so the same text comes several times; keep it once.
        return Question(id=qid, text=text, answers=list(dict.fromkeys(g for g in gold if g)),
                        metadata={"types": types})
    except DataError as err:
        raise DataError(f"{where}: {err}") from None


def _group_by_section(items: Iterable[_Item], origin: str) -> list[QuestionGroup]:
    sections: dict[str, tuple[str, str, list[Question]]] = {}
    first_seen: dict[str, str] = {}
    for where, section_id, passage, question in items:
        if question.id in first_seen:
            raise DataError(f"{where}: query id {question.id!r} was already used by "
                            f"{first_seen[question.id]}")
        first_seen[question.id] = where.removeprefix(f"{origin}: ")
        first_where, first_passage, questions = sections.setdefault(
            section_id, (where, passage, []))
        if passage != first_passage:
            raise DataError(f"{where}: section {section_id!r} has another 'passage' than in "
                            f"{first_where}")
        questions.append(question)
    if not sections:
        raise DataError(f"{origin} holds no questions")
    return [
        QuestionGroup(id=f"{DATASET}/{section_id}", dataset=DATASET, questions=questions,
                      background=passage, metadata={"source": origin})
        for section_id, (_, passage, questions) in sections.items()
    ]
