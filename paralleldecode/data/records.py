"""The records every other part of the package speaks: `Question` and `QuestionGroup`.

Data set adapters map raw rows to these; strategies, metrics and writers never see raw rows.
A group has either one shared ``background`` (SQuAD: the paragraph) or per-question
``context`` (HotpotQA: each question keeps its own paragraphs), or neither (TriviaQA).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from paralleldecode.errors import UserError

ANSWER_TYPES = ("short", "choice", "long")
# Options are shown with the letters A-J: a question may have at most this many.
MAX_OPTIONS = 10


class DataError(UserError, ValueError):
    """A data file, record or grouping option is not usable; the message says which."""


@dataclass
class Question:
    """One question of a group.

    Attributes:
        id: unique within the data set (SQuAD's question id, for instance).
        text: the question as asked.
        answers: gold answers; any one of them counts as correct. May be empty when a data
            set has no gold (then quality metrics are not computed for it).
        options: answer options for multiple choice (the prompt then asks for a letter).
        context: this question's own context, for data sets without a shared background.
        metadata: anything else the adapter keeps (answer offsets, question type, ...).
        answer_type: how answers are scored: ``"short"`` (EM, F1, lenient), ``"choice"``
            (accuracy on the option letter; set automatically when ``options`` are given;
            ``answers`` then holds the gold letter) or ``"long"`` (BLEU-4, ROUGE-1/2/L and,
            when configured, an LLM judge).
    """

    id: str
    text: str
    answers: list[str] = field(default_factory=list)
    options: list[str] | None = None
    context: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    answer_type: str = "short"

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise DataError(f"question {self.id!r}: the question text is empty")
        self.answers = [str(a) for a in self.answers]
        if self.options:
            self.answer_type = "choice"
            if len(self.options) > MAX_OPTIONS:
                raise DataError(f"question {self.id!r} has {len(self.options)} options; prompts label at "
                                f"most {MAX_OPTIONS} (A-J)")
        if self.answer_type not in ANSWER_TYPES:
            raise DataError(
                f"question {self.id!r}: answer_type {self.answer_type!r} is not one of {', '.join(ANSWER_TYPES)}"
            )


@dataclass
class QuestionGroup:
    """Questions answered together.

    Attributes:
        id: unique within the run (e.g. ``"squad/56be4db0"``).
        dataset: the data set's registered name.
        questions: at least one question, in the order they are asked.
        background: the shared context, or None when questions carry their own.
        metadata: title, split, source file, grouping method, ...
    """

    id: str
    dataset: str
    questions: list[Question]
    background: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.questions:
            raise DataError(f"group {self.id!r} ({self.dataset}) has no questions")
        seen: set[str] = set()
        for q in self.questions:
            if q.id in seen:
                raise DataError(f"group {self.id!r}: question id {q.id!r} appears twice")
            seen.add(q.id)

    def __len__(self) -> int:
        return len(self.questions)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuestionGroup:
        d = dict(d)
        d["questions"] = [Question(**q) for q in d["questions"]]
        return cls(**d)
