"""Shaping loaded groups for a run: split large groups, drop small ones, sample contexts."""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import replace

from paralleldecode.data.records import DataError, QuestionGroup


def select_groups(groups: list[QuestionGroup], *, min_questions: int = 1,
                  max_questions: int | None = None, context_count: int | None = None,
                  seed: int = 0) -> list[QuestionGroup]:
    """Splits, filters and samples groups, keeping their original order.

    Args:
        groups: the loaded groups.
        min_questions: groups (after splitting) with fewer questions are left out.
        max_questions: a larger group is split into consecutive chunks of nearly equal size,
            none larger than this; chunk ids get ``#1``, ``#2``, ... appended.
        context_count: keep a seeded random sample of this many groups; all of them (with a
            warning) when fewer exist.
        seed: seed of the sample, so runs are reproducible.

    Returns:
        The selected groups in input order.

    Raises:
        DataError: an option is out of range, or no group is left.
    """
    _check_options(min_questions, max_questions, context_count)
    chunks = [chunk for group in groups for chunk in _split(group, max_questions)]
    kept = [chunk for chunk in chunks if len(chunk) >= min_questions]
    if not kept:
        raise DataError(_nothing_left(len(groups), len(chunks), min_questions, max_questions))
    if context_count is None or context_count == len(kept):
        return kept
    if context_count > len(kept):
        warnings.warn(f"context_count={context_count} asked for, but only {len(kept)} groups "
                      f"exist after filtering; using all {len(kept)}", stacklevel=2)
        return kept
    picked = sorted(random.Random(seed).sample(range(len(kept)), context_count))
    return [kept[i] for i in picked]


def _check_options(min_questions: int, max_questions: int | None,
                   context_count: int | None) -> None:
    if min_questions < 1:
        raise DataError(f"min_questions must be at least 1, got {min_questions}")
    if max_questions is not None and max_questions < min_questions:
        raise DataError(f"max_questions ({max_questions}) must be at least "
                        f"min_questions ({min_questions})")
    if context_count is not None and context_count < 1:
        raise DataError(f"context_count must be at least 1, got {context_count}")


def even_chunks(items: list, size: int) -> list[list]:
    """``items`` in ``ceil(len / size)`` consecutive chunks of nearly equal length: the first
    ``len % chunks`` take one extra item, so 7 by at most 5 gives 4 + 3, not 5 + 2 (no chunk
    is needlessly small). An empty list gives no chunks."""
    parts = math.ceil(len(items) / size)
    base, extra = divmod(len(items), max(parts, 1))
    out, start = [], 0
    for part in range(parts):
        end = start + base + (part < extra)
        out.append(items[start:end])
        start = end
    return out


def _split(group: QuestionGroup, max_questions: int | None) -> list[QuestionGroup]:
    if max_questions is None or len(group) <= max_questions:
        return [group]
    chunks = even_chunks(group.questions, max_questions)
    return [replace(group, id=f"{group.id}#{part}", questions=questions,
                    metadata={**group.metadata, "chunk": part, "chunks": len(chunks)})
            for part, questions in enumerate(chunks, start=1)]


def _nothing_left(n_groups: int, n_chunks: int, min_questions: int,
                  max_questions: int | None) -> str:
    if n_groups == 0:
        return "no groups to select from: the data set gave 0 groups"
    split_note = ""
    if n_chunks != n_groups:
        split_note = f" (split by max_questions={max_questions} into {n_chunks})"
    return (f"no groups left: all {n_groups} groups{split_note} have fewer than "
            f"min_questions={min_questions} questions")
