"""SQuAD adapter: one `QuestionGroup` per distinct context paragraph.

Accepted sources: the original SQuAD JSON file, Hugging Face rows (a JSON list, JSON lines,
parquet, an in-memory `datasets.Dataset` or any iterable of row mappings), or a Hugging Face
hub id; all containers are read by :func:`paralleldecode.data.sources.read_source`. File
layouts are told apart by content, because SQuAD copies in the wild carry any extension.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from paralleldecode.data.records import DataError, Question, QuestionGroup
from paralleldecode.data.sources import field, read_source, with_id

DATASET = "squad"
DEFAULT_HUB_ID = "rajpurkar/squad"
ACCEPTED_LAYOUTS = (
    "the original SQuAD JSON ({'version', 'data': [{'title', 'paragraphs': [...]}]}), "
    "a JSON list of Hugging Face rows, or JSON lines or parquet of such rows "
    "(row keys: id, title, context, question, answers: {text, answer_start})"
)

# One parsed question with where it came from: (location for messages, context, title, question).
_Item = tuple[str, str, str, Question]


def load_squad(source: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
               split: str = "validation") -> list[QuestionGroup]:
    """Loads SQuAD (v1.1 layout; v2 files load too, unanswerable questions get no answers).

    Args:
        source: a local file (original JSON, or rows as a JSON list, JSON lines or
            parquet), a hub id such as ``"rajpurkar/squad"``, or a `datasets.Dataset` /
            iterable of row mappings.
        split: the hub split to load; ignored for files and in-memory rows.

    Returns:
        One group per distinct context, in order of first appearance, questions in source
        order. Group ids are ``squad/<first question id>``.

    Raises:
        DataError: the file is missing or of no accepted layout, a record is malformed (the
            message names the file, the record and the key), or the hub cannot be reached.
    """
    src = read_source(source, DATASET, split, accepted=ACCEPTED_LAYOUTS)
    items = _row_items(src.records, src.origin) if src.document is None else \
        _document_items(src.document, src.origin)
    label = str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__
    groups = _group_by_context(items, src.origin, label)
    if src.from_hub:
        for group in groups:
            group.metadata["split"] = split
    return groups


def _document_items(doc: Any, origin: str) -> Iterable[_Item]:
    if isinstance(doc, Mapping) and "data" in doc:
        return _original_items(doc, origin)
    if isinstance(doc, Mapping) and ("question" in doc or "context" in doc):
        # A JSON-lines file holding a single row parses as one JSON object.
        return _row_items([("line 1", doc)], origin)
    if isinstance(doc, list):
        return _row_items([(f"row {i}", row) for i, row in enumerate(doc)], origin)
    raise DataError(f"{origin} has no accepted layout; expected {ACCEPTED_LAYOUTS}")


def _original_items(doc: Mapping[str, Any], origin: str) -> Iterable[_Item]:
    articles = field(doc, "data", list, origin)
    for a, article in enumerate(articles):
        at = f"{origin}: data[{a}]"
        title = _optional_title(article, at)
        for p, paragraph in enumerate(field(article, "paragraphs", list, at)):
            at_p = f"{at}.paragraphs[{p}]"
            context = field(paragraph, "context", str, at_p)
            for q, qa in enumerate(field(paragraph, "qas", list, at_p)):
                where = with_id(f"{at_p}.qas[{q}]", qa)
                texts, starts = _original_answers(field(qa, "answers", list, where), where)
                yield where, context, title, _question(qa, texts, starts, where)


def _original_answers(answers: list[Any], where: str) -> tuple[list[str], list[int]]:
    texts, starts = [], []
    for i, answer in enumerate(answers):
        texts.append(field(answer, "text", str, f"{where} answers[{i}]"))
        starts.append(field(answer, "answer_start", int, f"{where} answers[{i}]"))
    return texts, starts


def _row_items(rows: Iterable[tuple[str, Any]], origin: str) -> Iterable[_Item]:
    for label, row in rows:
        where = with_id(f"{origin}: {label}", row)
        context = field(row, "context", str, where)
        answers = field(row, "answers", Mapping, where)
        texts = field(answers, "text", list, f"{where} answers")
        starts = field(answers, "answer_start", list, f"{where} answers")
        if len(texts) != len(starts) or not all(isinstance(t, str) for t in texts) \
                or not all(isinstance(s, int) for s in starts):
            raise DataError(f"{where}: 'answers' needs equally long lists of 'text' strings and "
                            f"'answer_start' integers, got {dict(answers)!r}")
        yield where, context, _optional_title(row, where), _question(row, texts, starts, where)


def _optional_title(record: Any, where: str) -> str:
    # Titles only label output; SQuAD-like files without them are still usable.
    if isinstance(record, Mapping) and "title" not in record:
        return ""
    return field(record, "title", str, where)


def _question(record: Mapping[str, Any], texts: list[str], starts: list[int],
              where: str) -> Question:
    qid = field(record, "id", str, where)
    text = field(record, "question", str, where)
    # SQuAD repeats one gold span once per annotator; keep each text once (first offset).
    first_start: dict[str, int] = {}
    for answer, start in zip(texts, starts):
        first_start.setdefault(answer, start)
    try:
        return Question(id=qid, text=text, answers=list(first_start),
                        metadata={"answer_start": list(first_start.values())})
    except DataError as err:
        raise DataError(f"{where}: {err}") from None


def _group_by_context(items: Iterable[_Item], origin: str, source: str) -> list[QuestionGroup]:
    by_context: dict[str, tuple[str, list[Question]]] = {}
    seen: dict[str, str] = {}
    for where, context, title, question in items:
        if question.id in seen:
            raise DataError(f"{where}: question id {question.id!r} was already used by "
                            f"{seen[question.id]}")
        seen[question.id] = where
        by_context.setdefault(context, (title, []))[1].append(question)
    if not by_context:
        raise DataError(f"{origin} holds no questions")
    return [
        QuestionGroup(id=f"{DATASET}/{questions[0].id}", dataset=DATASET, questions=questions,
                      background=context, metadata={"title": title, "source": source})
        for context, (title, questions) in by_context.items()
    ]


def select_articles(groups: list[QuestionGroup], articles: str | list[int] | None) -> list[QuestionGroup]:
    """Keep the groups of a slice of articles: ``[start, stop]`` (or the string
    ``"start:stop"``) over the distinct titles in order of first appearance, with Python
    slice rules (``None`` keeps all; ``stop`` may be None or left out of the string).

    SQuAD dev v1.1 has 48 articles: ``[0, 24]`` and ``[24, 48]`` split it into two halves
    that share no paragraph, e.g. one to fine-tune on and one to evaluate on. In YAML write
    the list form: YAML 1.1 reads an unquoted-looking ``24:48`` as the base-60 number 1488.

    Raises:
        DataError: ``articles`` is not of that form, or selects nothing.
    """
    if articles is None:
        return groups
    usage = "expected [start, stop] (in YAML) or 'start:stop', e.g. [0, 24]"
    if isinstance(articles, int) and not isinstance(articles, bool):
        raise DataError(f"squad option articles={articles!r}: {usage}; a YAML value like 24:48 "
                        f"is read as the base-60 number {articles}")
    if isinstance(articles, str):
        parts = articles.split(":")
    elif isinstance(articles, (list, tuple)):
        parts = list(articles)
    else:
        parts = []
    try:
        if len(parts) != 2:
            raise ValueError
        start, stop = (None if x is None or str(x).strip() == "" else int(x) for x in parts)
    except (TypeError, ValueError):
        raise DataError(f"squad option articles={articles!r}: {usage}") from None
    titles = list(dict.fromkeys(g.metadata.get("title", "") for g in groups))
    chosen = set(titles[start:stop])
    kept = [g for g in groups if g.metadata.get("title", "") in chosen]
    if not kept:
        raise DataError(f"squad option articles={articles!r} selects no article; the source has "
                        f"{len(titles)} articles")
    return kept


GROUP_BY = ("paragraph", "article")


def group_articles(groups: list[QuestionGroup], questions: int = 10, seed: int = 0,
                   paragraphs: int | None = None) -> list[QuestionGroup]:
    """One group per article: all its paragraphs as the context, ``questions`` of its
    questions sampled (seeded) from the whole article, kept in reading order.

    SQuAD dev articles run to 3K-20K tokens (SmolLM2's tokenizer), so these are the long
    shared contexts that paragraph groups never have; a group whose prompt does not fit the
    model's window fails with the window error (or is cut with ``truncate_context``).

    Args:
        groups: paragraph groups (as :func:`load_squad` returns them), in file order.
        questions: questions per article group (all of a smaller article's).
        seed: seed of the sample.
        paragraphs: keep only each article's first ``paragraphs`` paragraphs (and sample
            questions among theirs), for contexts that fit a smaller window; None keeps all.

    Raises:
        DataError: ``questions`` or ``paragraphs`` below 1.
    """
    import random

    if questions < 1:
        raise DataError(f"squad option article_questions must be at least 1, got {questions}")
    if paragraphs is not None and paragraphs < 1:
        raise DataError(f"squad option article_paragraphs must be at least 1 or null, got {paragraphs}")
    articles: dict[str, list[QuestionGroup]] = {}
    for g in groups:
        articles.setdefault(g.metadata.get("title", ""), []).append(g)
    rng = random.Random(seed)
    out = []
    for title, parts in articles.items():
        parts = parts[:paragraphs] if paragraphs is not None else parts
        pool = [q for g in parts for q in g.questions]
        picked = sorted(rng.sample(range(len(pool)), min(questions, len(pool))))
        out.append(QuestionGroup(
            id=f"{DATASET}/article/{title or parts[0].id}", dataset=DATASET,
            questions=[pool[i] for i in picked],
            background="\n\n".join(g.background for g in parts),
            metadata={**parts[0].metadata, "paragraphs": len(parts), "article_questions": len(pool)},
        ))
    return out
