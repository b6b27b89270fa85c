"""HotpotQA (distractor setting) adapter: questions grouped at random, each with its own paragraphs.

HotpotQA questions share no context: each comes with its own ten paragraphs (two gold, eight
distractors). Groups are therefore made by chance: the questions are shuffled with the run
seed and cut into consecutive groups of ``group_size``; every question keeps its paragraphs as
`Question.context` and the group has no ``background``.

Accepted layouts, told apart per record by its keys (never by file extension):

* the original release: ``_id, question, answer, type, level, supporting_facts: [[title,
  sent_idx], ..], context: [[title, [sentence, ..]], ..]``, as a JSON list or JSON lines;
* Hugging Face rows (``hotpotqa/hotpot_qa``, config ``distractor``): ``id, question, answer,
  type, level, supporting_facts: {title: [..], sent_id: [..]}, context: {title: [..],
  sentences: [[..], ..]}``, as a JSON list, JSON lines, parquet, a ``datasets.Dataset`` or
  any iterable of row mappings, or from the hub.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Mapping
from typing import Any

from paralleldecode.data.records import DataError, Question, QuestionGroup
from paralleldecode.data.registry import register_dataset
from paralleldecode.data.sources import field, read_source, string_list

DATASET = "hotpot"
DEFAULT_HUB_ID = "hotpotqa/hotpot_qa"
DEFAULT_HUB_CONFIG = "distractor"

# A paragraph as both layouts hold it once unpacked: (title, sentences).
_Paragraph = tuple[str, list[str]]


@register_dataset(DATASET)
def load_hotpot(data_path: str | os.PathLike[str] | Iterable[Mapping[str, Any]] | None = None,
                split: str = "validation", *, group_size: int = 4,
                seed: int = 0) -> list[QuestionGroup]:
    """Loads HotpotQA questions and groups them at random.

    Args:
        data_path: a local file (original records or Hugging Face rows; JSON list, JSON lines
            or parquet), a hub id, or a ``datasets.Dataset`` / iterable of rows. None loads
            ``hotpotqa/hotpot_qa`` (config ``distractor``) from the hub.
        split: the hub split; files and in-memory rows have one split.
        group_size: questions per group (the last group may be smaller).
        seed: seed of the shuffle, so the same seed gives the same groups.

    Returns:
        Groups ``hotpot/0``, ``hotpot/1``, ... with ``background=None``; each question's
        ``context`` holds its paragraphs (None for the rare record without any), and its
        metadata keeps ``type``, ``level`` and ``supporting_facts`` (``[[title, sent_idx]]``).

    Raises:
        DataError: ``group_size`` is not an integer of at least 1, the source cannot be read,
            a record is malformed (the message names the file, the record location and id and
            the key), a question id repeats, or there are no questions.
    """
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise DataError(f"{DATASET}: group_size must be an integer of at least 1, "
                        f"got {group_size!r}")
    source = read_source(DEFAULT_HUB_ID if data_path is None else data_path, DATASET, split,
                         DEFAULT_HUB_CONFIG)
    questions: list[Question] = []
    first_seen: dict[str, str] = {}
    for location, record in source.rows(single_record=True):
        question = _question(record, f"{source.origin}: {location}")
        if question.id in first_seen:
            raise DataError(f"{source.origin}: {location}: question id {question.id!r} was "
                            f"already used by {first_seen[question.id]}")
        first_seen[question.id] = location
        questions.append(question)
    if not questions:
        raise DataError(f"{source.origin} holds no questions")
    shuffled = random.Random(seed).sample(questions, len(questions))
    metadata = {"source": source.origin, "grouping": "random", "group_size": group_size,
                "seed": seed}
    return [
        QuestionGroup(id=f"{DATASET}/{index}", dataset=DATASET,
                      questions=shuffled[start:start + group_size], background=None,
                      metadata=dict(metadata))
        for index, start in enumerate(range(0, len(shuffled), group_size))
    ]


def _question(record: Any, where: str) -> Question:
    """One question from a record of either layout; ``where`` is origin plus location."""
    original = isinstance(record, Mapping) and "_id" in record
    if isinstance(record, Mapping) and not original and "id" not in record:
        raise DataError(f"{where} has no '_id' key (original layout) or 'id' key "
                        f"(Hugging Face rows)")
    qid = field(record, "_id" if original else "id", str, where)
    where = f"{where} (id {qid!r})"
    text = field(record, "question", str, where)
    answer = field(record, "answer", str, where)
    metadata: dict[str, Any] = {"type": field(record, "type", str, where),
                                "level": field(record, "level", str, where)}
    if original:
        paragraphs = _original_paragraphs(field(record, "context", list, where), where)
        facts = _original_facts(field(record, "supporting_facts", list, where), where)
    else:
        paragraphs = _row_paragraphs(field(record, "context", Mapping, where), where)
        facts = _row_facts(field(record, "supporting_facts", Mapping, where), where)
    metadata["supporting_facts"] = facts
    # Sentences carry their own leading spaces, so they are joined as they are.
    context = "\n\n".join(f"{title}: {''.join(sentences)}" for title, sentences in paragraphs)
    try:
        # An empty gold answer is no gold: the question stays, unscored.
        return Question(id=qid, text=text, answers=[answer] if answer else [],
                        context=context or None, metadata=metadata)
    except DataError as err:
        raise DataError(f"{where}: {err}") from None


def _original_paragraphs(context: list[Any], where: str) -> list[_Paragraph]:
    paragraphs = []
    for i, pair in enumerate(context):
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
            raise DataError(f"{where}: 'context[{i}]' should be [title, [sentence, ..]], "
                            f"got {pair!r:.100}")
        paragraphs.append((pair[0], string_list(pair[1], f"context[{i}][1]", where)))
    return paragraphs


def _row_paragraphs(context: Mapping[str, Any], where: str) -> list[_Paragraph]:
    titles = string_list(field(context, "title", list, f"{where} context"), "context.title",
                         where)
    sentences = field(context, "sentences", list, f"{where} context")
    _same_length(titles, sentences, "context.title", "context.sentences", where)
    return [(title, string_list(s, f"context.sentences[{i}]", where))
            for i, (title, s) in enumerate(zip(titles, sentences))]


def _original_facts(facts: list[Any], where: str) -> list[list[Any]]:
    for i, fact in enumerate(facts):
        if not (isinstance(fact, list) and len(fact) == 2 and isinstance(fact[0], str)
                and _is_index(fact[1])):
            raise DataError(f"{where}: 'supporting_facts[{i}]' should be [title, sentence "
                            f"index], got {fact!r:.100}")
    return [list(fact) for fact in facts]


def _row_facts(facts: Mapping[str, Any], where: str) -> list[list[Any]]:
    at = f"{where} supporting_facts"
    titles = string_list(field(facts, "title", list, at), "supporting_facts.title", where)
    indices = field(facts, "sent_id", list, at)
    _same_length(titles, indices, "supporting_facts.title", "supporting_facts.sent_id", where)
    if not all(_is_index(i) for i in indices):
        raise DataError(f"{where}: 'supporting_facts.sent_id' should hold sentence indices, "
                        f"got {indices!r:.100}")
    return [[title, index] for title, index in zip(titles, indices)]


def _same_length(first: list[Any], second: list[Any], first_key: str, second_key: str,
                 where: str) -> None:
    if len(first) != len(second):
        raise DataError(f"{where}: {first_key!r} has {len(first)} entries but {second_key!r} "
                        f"has {len(second)}")


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
