"""CMB adapter (Chinese medical benchmark): CMB-Clin cases and CMB-Exam questions.

One registered data set, ``cmb``, reads three record layouts, told apart by their keys (never
by a file's extension), in any container :func:`~paralleldecode.data.sources.read_source`
reads (JSON list, JSON lines, parquet, ``datasets.Dataset``, hub):

* CMB-Clin: ``{id, title, description, QA_pairs: [{question, answer}]}``, one clinical case
  per record. A case is one group: the description is the background, the QA pairs are its
  questions, answered in long free text.
* CMB-Exam: ``{exam_type, exam_class, exam_subject, question, answer, question_type,
  option: {"A": .., "B": .., ...}}``, one multiple-choice question per record (``answer``
  holds one letter, or several for multi-answer questions). The questions share no text, so
  the ``grouping`` option makes the groups.
* Grouped CMB-Exam (``fzkuji/CMB-Exam-Grouped``): ``{context | background, questions:
  [CMB-Exam question, ...]}``, one group per record with the record's text as background.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Mapping
from string import ascii_uppercase
from typing import Any

from paralleldecode.data.records import DataError, Question, QuestionGroup
from paralleldecode.data.registry import register_dataset
from paralleldecode.data.sources import field, optional_field, read_source, text_field, with_id

DATASET = "cmb"
HUB_ID = "FreedomIntelligence/CMB"
GROUPED_HUB_ID = "fzkuji/CMB-Exam-Grouped"
SUBSETS = ("clin", "exam")
GROUPINGS = ("random", "subdomain", "context")
HUB_CONFIGS = {"clin": "CMB-Clin", "exam": "CMB-Exam"}
EXAM_METADATA = ("exam_type", "exam_class", "exam_subject", "question_type")

# Layouts as detected from a record's keys.
CLIN, EXAM, GROUPED = "CMB-Clin", "CMB-Exam", "grouped CMB-Exam"
ACCEPTED_LAYOUTS = (
    f"{CLIN} cases {{id, title, description, QA_pairs: [{{question, answer}}]}}, "
    f"{EXAM} questions {{exam_type, exam_class, exam_subject, question, answer, question_type, "
    f"option: {{A, B, ...}}}}, or {GROUPED} rows {{context or background, questions: "
    f"[{EXAM} question, ...]}}"
)

# A parsed exam question with where it came from, so grouping errors can point at it.
_Located = tuple[str, Question]


@register_dataset(DATASET)
def load_cmb(data_path: str | os.PathLike[str] | Iterable[Mapping[str, Any]] | None,
             split: str, *, subset: str | None = None, grouping: str = "random",
             group_size: int = 5, seed: int = 0) -> list[QuestionGroup]:
    """Loads CMB-Clin or CMB-Exam as question groups.

    Args:
        data_path: a local file, a hub id, or a ``datasets.Dataset`` / iterable of records.
            None loads from the hub: ``FreedomIntelligence/CMB`` (configuration ``CMB-Clin``
            or ``CMB-Exam`` by ``subset``), or ``fzkuji/CMB-Exam-Grouped`` for
            ``grouping="context"``.
        split: the hub split (``FreedomIntelligence/CMB`` names them ``test``, ``val`` and
            ``train``); ignored for files and in-memory records.
        subset: ``"clin"`` or ``"exam"``; None detects it from the records' keys.
        grouping: CMB-Exam only. ``"random"``: a seeded shuffle of all questions cut into
            groups of ``group_size`` without background; ``"subdomain"``: the same within
            each ``exam_subject`` (``exam_class`` where the subject is empty), so a group
            stays in one field of medicine; ``"context"``: one group per grouped-layout
            record, its text as background. The last group of a cut may be smaller.
        group_size: questions per group for ``random`` and ``subdomain``.
        seed: seed of the shuffles (the run's seed), so groups are reproducible.

    Returns:
        CMB-Clin: one group per case (``cmb/clin/<case id>``), questions in source order,
        ``answer_type="long"``, the reference answer as gold (none where it is empty).
        CMB-Exam: groups of multiple-choice questions (``cmb/exam/random/<n>``,
        ``cmb/exam/<subdomain>/<n>`` or ``cmb/exam/context/<record id>``); options in letter
        order, gold the upper-cased answer letter(s) as given (``["B"]``, ``["ACD"]``), or
        none where the answer is empty; question metadata keeps exam_type, exam_class,
        exam_subject, question_type.

    Raises:
        DataError: an option value is not accepted; ``subset`` is needed but missing or
            contradicts the records; a record is malformed (the message names the file,
            the record and the key); or the source cannot be read.
    """
    _check_options(subset, grouping, group_size)
    # Both non-random groupings exist only for exam questions, so they settle the subset.
    wanted = subset or ("exam" if grouping != "random" else None)
    location, hub_config = _source_location(data_path, wanted, grouping)
    source = read_source(location, DATASET, split, hub_config)
    records = source.rows(single_record=True, non_empty=True)
    layout = _layout(*records[0], source.origin)
    _check_layout(layout, wanted, grouping, source.origin)
    if layout == CLIN:
        return _clin_groups(records, source.origin)
    if layout == GROUPED:
        return _context_groups(records, source.origin)
    questions = _exam_questions(records, source.origin)
    if grouping == "random":
        return _random_groups(questions, group_size, seed, source.origin)
    return _subdomain_groups(questions, group_size, seed, source.origin)


def _check_options(subset: str | None, grouping: str, group_size: int) -> None:
    if subset is not None and subset not in SUBSETS:
        raise DataError(f"cmb: subset {subset!r} is not accepted; accepted: "
                        f"{', '.join(SUBSETS)}, or None to detect it from the records")
    if grouping not in GROUPINGS:
        raise DataError(f"cmb: grouping {grouping!r} is not accepted; accepted: "
                        f"{', '.join(GROUPINGS)}")
    if subset == "clin" and grouping != "random":
        raise DataError(f"cmb: grouping {grouping!r} applies to CMB-Exam only; CMB-Clin "
                        f"groups are its cases (leave grouping at 'random')")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise DataError(f"cmb: group_size must be a positive integer, got {group_size!r}")


def _source_location(data_path: Any, subset: str | None,
                     grouping: str) -> tuple[Any, str | None]:
    """What to read and, for the CMB hub repository, its configuration name."""
    if data_path is None and grouping == "context":
        return GROUPED_HUB_ID, None
    location = HUB_ID if data_path is None else data_path
    # The CMB repository holds both subsets as configurations; the hub cannot pick one.
    if isinstance(location, str) and location == HUB_ID:
        if subset is None:
            raise DataError(f"cmb: loading {HUB_ID} needs subset ({' or '.join(SUBSETS)}); "
                            f"or give a data_path, whose records tell the subset")
        return location, HUB_CONFIGS[subset]
    return location, None


def _layout(location: str, record: Any, origin: str) -> str:
    """The layout of the first record, which all others must then follow."""
    if isinstance(record, Mapping):
        if "QA_pairs" in record:
            return CLIN
        if "questions" in record and ("context" in record or "background" in record):
            return GROUPED
        if "question" in record and "option" in record:
            return EXAM
    raise DataError(f"{origin}: {location} matches no CMB layout; expected {ACCEPTED_LAYOUTS}")


def _check_layout(layout: str, subset: str | None, grouping: str, origin: str) -> None:
    found = "clin" if layout == CLIN else "exam"
    if subset is not None and subset != found:
        wanted = CLIN if subset == "clin" else EXAM
        raise DataError(f"{origin} holds {layout} records, but the options (subset, grouping "
                        f"{grouping!r}) ask for {wanted} records")
    # Regrouping grouped records would discard their background; refuse rather than guess.
    if layout == GROUPED and grouping != "context":
        raise DataError(f"{origin} holds {GROUPED} records (shared background + questions); "
                        f"load them with grouping 'context', not {grouping!r}")
    if layout == EXAM and grouping == "context":
        raise DataError(f"{origin} holds {EXAM} records without a shared background; grouping "
                        f"'context' needs {GROUPED} rows {{context or background, questions}}")


def _clin_groups(records: list[tuple[str, Any]], origin: str) -> list[QuestionGroup]:
    groups, seen = [], {}
    for location, record in records:
        where = with_id(f"{origin}: {location}", record)
        case_id = str(field(record, "id", (str, int), where))
        _claim(seen, case_id, where, "case id")
        title = field(record, "title", str, where)
        description = text_field(record, "description", where)
        pairs = field(record, "QA_pairs", list, where)
        if not pairs:
            raise DataError(f"{where}: 'QA_pairs' is empty")
        questions = []
        for k, pair in enumerate(pairs):
            at = f"{where} QA_pairs[{k}]"
            answer = field(pair, "answer", str, at)
            questions.append(Question(id=f"{case_id}-{k}",
                                      text=text_field(pair, "question", at),
                                      answers=[answer] if answer.strip() else [],
                                      answer_type="long"))
        groups.append(_group(f"clin/{case_id}", questions, origin, background=description,
                             subset="clin", title=title))
    return groups


def _exam_questions(records: list[tuple[str, Any]], origin: str) -> list[_Located]:
    located, seen = [], {}
    for n, (location, record) in enumerate(records):
        where = with_id(f"{origin}: {location}", record)
        question = _exam_question(record, _record_id(record, n, where), where)
        _claim(seen, question.id, where, "question id")
        located.append((where, question))
    return located


def _exam_question(record: Any, qid: str, where: str) -> Question:
    options = _options(record, where)
    given = field(record, "answer", str, where)
    letters = "".join(given.split()).upper()
    if any(letter not in ascii_uppercase[:len(options)] for letter in letters):
        raise DataError(f"{where}: 'answer' {given!r} names a letter outside the options "
                        f"{ascii_uppercase[:len(options)]}")
    metadata = {key: field(record, key, str, where) for key in EXAM_METADATA}
    return Question(id=qid, text=text_field(record, "question", where), options=options,
                    answers=[letters] if letters else [], metadata=metadata)


def _options(record: Any, where: str) -> list[str]:
    """The option texts in letter order, without the unused (empty) trailing letters.

    Options are addressed by letter, so dropping an empty option in the middle would shift
    every later letter away from the gold answer; such a gap is an error instead.
    """
    option = field(record, "option", Mapping, where)
    keys = list(option)
    if not keys or any(not (isinstance(k, str) and len(k) == 1 and k in ascii_uppercase)
                       for k in keys):
        raise DataError(f"{where}: 'option' keys should be capital letters A, B, ..., "
                        f"got {keys!r}")
    texts = []
    for letter in ascii_uppercase[:ascii_uppercase.index(max(keys)) + 1]:
        # Tables (parquet, datasets) fill letters a record lacks with None.
        text = option.get(letter)
        if text is not None and not isinstance(text, str):
            raise DataError(f"{where}: 'option' {letter!r} should be str, got "
                            f"{type(text).__name__}")
        texts.append(text.strip() if text else "")
    used = next((i for i, text in enumerate(texts) if not text), len(texts))
    late = [ascii_uppercase[i] for i in range(used, len(texts)) if texts[i]]
    if late:
        raise DataError(f"{where}: 'option' {late[0]!r} follows the empty option "
                        f"{ascii_uppercase[used]!r}; options must fill A, B, ... without gaps")
    if used == 0:
        raise DataError(f"{where}: 'option' has no option text")
    return texts[:used]


def _random_groups(questions: list[_Located], size: int, seed: int,
                   origin: str) -> list[QuestionGroup]:
    order = [question for _, question in questions]
    random.Random(seed).shuffle(order)
    return [_group(f"exam/random/{n}", chunk, origin, subset="exam", grouping="random")
            for n, chunk in enumerate(_chunks(order, size))]


def _subdomain_groups(questions: list[_Located], size: int, seed: int,
                      origin: str) -> list[QuestionGroup]:
    by_domain: dict[str, list[Question]] = {}
    for where, question in questions:
        by_domain.setdefault(_subdomain(question, where), []).append(question)
    rng = random.Random(seed)
    groups = []
    for domain, members in by_domain.items():
        rng.shuffle(members)
        groups += [_group(f"exam/{domain}/{n}", chunk, origin, subset="exam",
                          grouping="subdomain", subdomain=domain)
                   for n, chunk in enumerate(_chunks(members, size))]
    return groups


def _subdomain(question: Question, where: str) -> str:
    domain = question.metadata["exam_subject"].strip() or question.metadata["exam_class"].strip()
    if not domain:
        raise DataError(f"{where}: both 'exam_subject' and 'exam_class' are empty; grouping "
                        f"'subdomain' needs one of them")
    return domain


def _context_groups(records: list[tuple[str, Any]], origin: str) -> list[QuestionGroup]:
    groups, seen = [], {}
    for n, (location, record) in enumerate(records):
        where = with_id(f"{origin}: {location}", record)
        row_id = _record_id(record, n, where)
        _claim(seen, row_id, where, "record id")
        # Tables holding both spellings fill the one a record lacks with None.
        key = "context" if isinstance(record, Mapping) and record.get("context") is not None \
            else "background"
        background = text_field(record, key, where)
        items = field(record, "questions", list, where)
        if not items:
            raise DataError(f"{where}: 'questions' is empty")
        questions = [_exam_question(item, f"{row_id}-{k}", f"{where} questions[{k}]")
                     for k, item in enumerate(items)]
        groups.append(_group(f"exam/context/{row_id}", questions, origin,
                             background=background, subset="exam", grouping="context"))
    return groups


def _group(local_id: str, questions: list[Question], origin: str, *,
           background: str | None = None, **metadata: Any) -> QuestionGroup:
    return QuestionGroup(id=f"{DATASET}/{local_id}", dataset=DATASET, questions=questions,
                         background=background, metadata={**metadata, "source": origin})


def _chunks(items: list[Question], size: int) -> list[list[Question]]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def _record_id(record: Any, position: int, where: str) -> str:
    """The record's own ``id`` where it has one, else its position among the records.

    Positions, unlike locations (``line 3``, ``row 2``), are the same in every container.
    """
    own = optional_field(record, "id", (str, int), where)
    return str(position) if own is None else str(own)


def _claim(seen: dict[str, str], key: str, where: str, what: str) -> None:
    # Ids name groups and answers in every output, so a repeated one would merge two records.
    if key in seen:
        raise DataError(f"{where}: {what} {key!r} was already used by {seen[key]}")
    seen[key] = where
