"""QuAC adapter: one `QuestionGroup` per dialogue, turns in the order they were asked.

QuAC questions come from an information-seeking dialogue about one section of a Wikipedia
article; later turns lean on earlier ones ("what happened after that?"), so the turn number
is kept in each question's metadata. Accepted layouts, told apart by content:

* the original release JSON (SQuAD-like): ``{"data": [{"title", "background",
  "section_title", "paragraphs": [{"context", "id", "qas": [{"question", "id", "answers":
  [{"text", "answer_start"}], "orig_answer": {"text", "answer_start"}, "followup",
  "yesno"}]}]}]}``;
* Hugging Face rows (``quac``), one row per dialogue: ``dialogue_id, wikipedia_page_title,
  background, section_title, context, turn_ids, questions, followups, yesnos, answers: {texts:
  [[..]], answer_starts: [[..]]}, orig_answers: {texts: [..], answer_starts: [..]}``, as a
  JSON list, JSON lines, parquet, a ``datasets.Dataset`` or any iterable of row mappings, or
  from the hub.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from paralleldecode.data.records import DataError, Question, QuestionGroup
from paralleldecode.data.registry import register_dataset
from paralleldecode.data.sources import field, optional_field, read_source, string_list, strings

DATASET = "quac"
DEFAULT_HUB_ID = "quac"

# The hub stores these dialogue acts as class indices into these names; the release as letters.
FOLLOWUPS = ("y", "n", "m")  # the asker should / should not / may follow up
YESNOS = ("y", "n", "x")  # the answer is yes / no / neither


@dataclass
class _Turn:
    """One question of a dialogue, as both layouts hold it once unpacked."""

    id: str
    text: str
    answers: list[str]
    followup: str
    yesno: str


@register_dataset(DATASET)
def load_quac(data_path: str | os.PathLike[str] | Iterable[Mapping[str, Any]] | None = None,
              split: str = "validation") -> list[QuestionGroup]:
    """Loads QuAC, one group per dialogue.

    The background is a header line naming the article and section, the article's
    background paragraph when there is one, a blank line and the section text as given
    (ending in the literal ``CANNOTANSWER`` that unanswerable turns point at). Gold answers
    are the texts of all annotators and the original answer, stripped and deduplicated;
    ``CANNOTANSWER`` is a gold answer like any other. Question metadata: ``turn`` (1 for
    the first question), ``followup`` (``y``/``n``/``m``) and ``yesno`` (``y``/``n``/``x``).

    Args:
        data_path: a local file (original JSON, or rows as JSON list, JSON lines or parquet), a
            hub id, or a ``datasets.Dataset`` / iterable of rows. None loads ``quac``.
        split: the hub split; files and in-memory rows have one split.

    Returns:
        Groups ``quac/<dialogue id>`` in source order.

    Raises:
        DataError: the source cannot be read, a record is malformed (the message names the
            file, the record location and id and the key), a dialogue or turn id repeats, or
            there are no dialogues.
    """
    source = read_source(DEFAULT_HUB_ID if data_path is None else data_path, DATASET, split)
    document = source.document
    if isinstance(document, Mapping) and "data" in document:
        groups = _original_groups(document, source.origin)
    else:
        groups = _row_groups(source.rows(single_record=True), source.origin)
    return _unique(groups, source.origin)


def _original_groups(document: Mapping[str, Any],
                     origin: str) -> Iterator[tuple[str, QuestionGroup]]:
    for a, article in enumerate(field(document, "data", list, origin)):
        at = f"{origin}: data[{a}]"
        title = field(article, "title", str, at)
        section = field(article, "section_title", str, at)
        # The article background only adds to the header; records without one are usable.
        page_background = optional_field(article, "background", str, at) or ""
        for p, paragraph in enumerate(field(article, "paragraphs", list, at)):
            where = f"{at}.paragraphs[{p}]"
            dialogue_id = field(paragraph, "id", str, where)
            where = f"{where} (id {dialogue_id!r})"
            context = field(paragraph, "context", str, where)
            turns = [_original_turn(qa, f"{where} qas[{t}]")
                     for t, qa in enumerate(field(paragraph, "qas", list, where))]
            yield where, _group(dialogue_id, title, section, page_background, context, turns,
                                where, origin)


def _original_turn(qa: Any, where: str) -> _Turn:
    turn_id = field(qa, "id", str, where)
    where = f"{where} (id {turn_id!r})"
    texts = [field(answer, "text", str, f"{where} answers[{i}]")
             for i, answer in enumerate(field(qa, "answers", list, where))]
    orig = field(field(qa, "orig_answer", Mapping, where), "text", str, f"{where} orig_answer")
    return _Turn(id=turn_id, text=field(qa, "question", str, where), answers=texts + [orig],
                 followup=_act(field(qa, "followup", (str, int), where), FOLLOWUPS,
                               "followup", where),
                 yesno=_act(field(qa, "yesno", (str, int), where), YESNOS, "yesno", where))


def _row_groups(rows: Iterable[tuple[str, Any]],
                origin: str) -> Iterator[tuple[str, QuestionGroup]]:
    for location, row in rows:
        yield _row_group(row, f"{origin}: {location}", origin)


def _row_group(row: Any, where: str, origin: str) -> tuple[str, QuestionGroup]:
    """The group of one row, with the row's location and id for later messages."""
    dialogue_id = field(row, "dialogue_id", str, where)
    where = f"{where} (id {dialogue_id!r})"
    turn_ids = strings(row, "turn_ids", where)
    per_turn = {
        "questions": strings(row, "questions", where),
        "followups": field(row, "followups", list, where),
        "yesnos": field(row, "yesnos", list, where),
        "answers.texts": field(field(row, "answers", Mapping, where), "texts", list,
                               f"{where} answers"),
        "orig_answers.texts": strings(field(row, "orig_answers", Mapping, where), "texts",
                                       f"{where} orig_answers"),
    }
    for key, values in per_turn.items():
        if len(values) != len(turn_ids):
            raise DataError(f"{where}: {key!r} has {len(values)} entries but 'turn_ids' has "
                            f"{len(turn_ids)}; every turn needs one")
    turns = []
    for t, turn_id in enumerate(turn_ids):
        texts = string_list(per_turn["answers.texts"][t], f"answers.texts[{t}]", where)
        turns.append(_Turn(
            id=turn_id, text=per_turn["questions"][t],
            answers=texts + [per_turn["orig_answers.texts"][t]],
            followup=_act(per_turn["followups"][t], FOLLOWUPS, f"followups[{t}]", where),
            yesno=_act(per_turn["yesnos"][t], YESNOS, f"yesnos[{t}]", where)))
    return where, _group(dialogue_id, field(row, "wikipedia_page_title", str, where),
                         field(row, "section_title", str, where),
                         optional_field(row, "background", str, where) or "",
                         field(row, "context", str, where), turns, where, origin)


def _group(dialogue_id: str, title: str, section: str, page_background: str, context: str,
           turns: list[_Turn], where: str, origin: str) -> QuestionGroup:
    """The group of one dialogue, whichever layout it was read from."""
    if not turns:
        raise DataError(f"{where}: the dialogue has no turns; a group needs at least one question")
    header = f"Wikipedia article: {title.strip()} | Section: {section.strip()}"
    if page_background.strip():
        header = f"{header}\n{page_background.strip()}"
    questions = []
    for number, turn in enumerate(turns, start=1):
        # Annotators' texts may differ only in surrounding spaces (the hub strips them, the
        # release does not); stripping first lets duplicates collapse in both layouts.
        answers = list(dict.fromkeys(a.strip() for a in turn.answers if a.strip()))
        try:
            questions.append(Question(id=turn.id, text=turn.text, answers=answers, metadata={
                "turn": number, "followup": turn.followup, "yesno": turn.yesno}))
        except DataError as err:
            raise DataError(f"{where}: turn {number}: {err}") from None
    try:
        return QuestionGroup(id=f"{DATASET}/{dialogue_id}", dataset=DATASET, questions=questions,
                             background=f"{header}\n\n{context}",
                             metadata={"source": origin, "title": title.strip(),
                                       "section_title": section.strip()})
    except DataError as err:
        raise DataError(f"{where}: {err}") from None


def _act(value: Any, names: tuple[str, ...], key: str, where: str) -> str:
    """A dialogue act as its letter, from either the letter or the hub's class index."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return names[value]
    if isinstance(value, str) and value in names:
        return value
    raise DataError(f"{where}: {key!r} should be one of {', '.join(names)} (or its index), got "
                    f"{value!r}")


def _unique(groups: Iterable[tuple[str, QuestionGroup]], origin: str) -> list[QuestionGroup]:
    """The groups as a list, refusing a dialogue or turn id used twice in the source."""
    kept: list[QuestionGroup] = []
    owners: dict[str, str] = {}
    for where, group in groups:
        for key, uid in [("group", group.id)] + [("turn", q.id) for q in group.questions]:
            if uid in owners:
                raise DataError(f"{where}: {key} id {uid!r} was already used by {owners[uid]}")
            owners[uid] = where.removeprefix(f"{origin}: ")
        kept.append(group)
    if not kept:
        raise DataError(f"{origin} holds no dialogues")
    return kept
