"""What the task families share: the invented vocabulary (``vocabulary.json``: names and
towns are made up so that a model cannot answer from memory and must read the background),
size checks, and the loop that builds numbered groups from a family's group builder."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from paralleldecode.data.records import DataError, Question, QuestionGroup

RETRIEVAL = "retrieval"
MULTIDOC = "multidoc"
PLANNING = "planning"

DEFAULT_COUNT = 20

# A question before ids are assigned: (text, gold answers, question metadata).
Draft = tuple[str, list[str], dict[str, Any]]
# What one family builds for one group: (background, questions, group metadata).
Built = tuple[str, list[Draft], dict[str, Any]]

VOCABULARY: dict[str, tuple[str, ...]] = {
    key: tuple(words)
    for key, words in json.loads((Path(__file__).with_name("vocabulary.json")).read_text(encoding="utf-8")).items()
}
FIRST_NAMES = VOCABULARY["first_names"]
LAST_NAMES = VOCABULARY["last_names"]
TOWNS = VOCABULARY["towns"]


def invented_names(rng: random.Random, n: int) -> list[str]:
    """Returns ``n`` distinct full names drawn from the invented first and last names."""
    pairs = rng.sample(range(len(FIRST_NAMES) * len(LAST_NAMES)), n)
    return [f"{FIRST_NAMES[p // len(LAST_NAMES)]} {LAST_NAMES[p % len(LAST_NAMES)]}"
            for p in pairs]


def check_size(name: str, value: int, low: int, high: int | None = None) -> None:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if not is_int or value < low or (high is not None and value > high):
        limits = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise DataError(f"{name} must be an integer {limits}, got {value!r}")


def generate(dataset: str, count: int, seed: int,
             build: Callable[[random.Random, int], Built],
             sizes: Mapping[str, Any]) -> list[QuestionGroup]:
    """Builds ``count`` groups and gives them ids; the part the three families share.

    Each group has its own generator seeded from (dataset, seed, index), so group 7 is the
    same whether 10 or 100 groups are asked for, and families do not share random streams.
    Group numbers start at 0 (like list positions); question numbers start at 1, so that in
    ``multidoc`` question ``q2`` is the one about ``Document 2``.
    """
    check_size("count", count, 0)
    groups = []
    for index in range(count):
        background, drafts, metadata = build(random.Random(f"{dataset}:{seed}:{index}"), index)
        gid = f"{dataset}/{index:04d}"
        questions = [Question(id=f"{gid}/q{j}", text=text, answers=answers, metadata=meta)
                     for j, (text, answers, meta) in enumerate(drafts, start=1)]
        metadata = {**metadata, "generator": {"seed": seed, "index": index, **sizes}}
        groups.append(QuestionGroup(id=gid, dataset=dataset, questions=questions,
                                    background=background, metadata=metadata))
    return groups
