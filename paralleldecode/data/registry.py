"""Data sets by name: loaders register here, runs ask for groups by data set name."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from paralleldecode.data.demo import load_demo
from paralleldecode.data.grouping import select_groups
from paralleldecode.data.records import DataError, QuestionGroup
from paralleldecode.data.squad import DEFAULT_HUB_ID, GROUP_BY, group_articles, load_squad, select_articles
from paralleldecode.data.tasks import MULTIDOC, PLANNING, RETRIEVAL, load_task

Loader = Callable[..., list[QuestionGroup]]

_LOADERS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator registering ``fn(data_path, split, *, **options) -> list[QuestionGroup]``
    under ``name``. Keyword-only parameters of ``fn`` are the data set's options (set from
    ``data.dataset_options``); a ``seed`` parameter receives the run's seed.

    Raises:
        ValueError: ``name`` is already registered (two loaders silently shadowing each other
            would make runs depend on import order).
    """
    def decorate(fn: Loader) -> Loader:
        if name in _LOADERS:
            raise ValueError(f"data set {name!r} is already registered")
        _LOADERS[name] = fn
        return fn
    return decorate


def dataset_names() -> list[str]:
    """Returns the registered data set names, sorted."""
    return sorted(_LOADERS)


def dataset_options(dataset: str) -> list[str]:
    """The options (keyword-only parameters) the loader of ``dataset`` accepts."""
    params = inspect.signature(_LOADERS[dataset]).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def check_options(dataset: str, options: Mapping[str, Any] | None, label: str = "") -> None:
    """Refuse options the loader of ``dataset`` does not take, listing the accepted ones.

    Args:
        label: how the options are named to the user (e.g. ``"data.dataset_options: "``).
    """
    accepted = dataset_options(dataset)
    unknown = sorted(set(options or {}) - set(accepted))
    if unknown:
        raise DataError(
            f"{label}data set {dataset!r} has no option {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(a for a in accepted if a != 'seed') or 'none'}"
        )


def load_groups(dataset: str, data_path: str | None = None, split: str = "validation",
                min_questions: int = 1, max_questions: int | None = None,
                context_count: int | None = None, seed: int = 0,
                options: Mapping[str, Any] | None = None) -> list[QuestionGroup]:
    """Loads a registered data set and selects groups from it (see `select_groups`).

    Args:
        dataset: a registered name (see `dataset_names`).
        data_path: a local file or hub id; each loader documents its default for None.
        split: the split to load, where the data set has splits.
        min_questions, max_questions, context_count, seed: passed to `select_groups`.
        options: data-set-specific options (see `dataset_options`).

    Raises:
        DataError: the name is unknown, or loading or selecting fails.
    """
    if dataset not in _LOADERS:
        raise DataError(f"unknown data set {dataset!r}; registered: {', '.join(dataset_names())}")
    check_options(dataset, options)
    opts = dict(options or {})
    if "seed" in dataset_options(dataset):
        opts.setdefault("seed", seed)
    groups = _LOADERS[dataset](data_path, split, **opts)
    return select_groups(groups, min_questions=min_questions, max_questions=max_questions,
                         context_count=context_count, seed=seed)


@register_dataset("demo")
def _demo(data_path: str | None, split: str) -> list[QuestionGroup]:
    # The demo set has a single split, so `split` is ignored.
    return load_demo(data_path)


@register_dataset("squad")
def _squad(data_path: str | None, split: str, *,
           articles: str | list[int] | None = None, group_by: str = "paragraph",
           article_questions: int = 10, article_paragraphs: int | None = None,
           seed: int = 0) -> list[QuestionGroup]:
    # `articles` ([start, stop] over article titles in file order) holds training articles
    # apart from evaluation ones: SQuAD's train split is not always at hand (offline).
    # `group_by: article` makes long contexts: a whole article, questions sampled from it.
    if group_by not in GROUP_BY:
        raise DataError(f"squad option group_by={group_by!r}; accepted: {', '.join(GROUP_BY)}")
    groups = select_articles(load_squad(data_path or DEFAULT_HUB_ID, split), articles)
    if group_by == "article":
        groups = group_articles(groups, article_questions, seed, article_paragraphs)
    return groups


# The generated task families have no splits, so `split` is ignored; data_path None generates
# the default groups, a path reads a user JSON-lines file (see `paralleldecode.data.tasks`).
@register_dataset(RETRIEVAL)
def _retrieval(data_path: str | None, split: str) -> list[QuestionGroup]:
    return load_task(RETRIEVAL, data_path)


@register_dataset(MULTIDOC)
def _multidoc(data_path: str | None, split: str) -> list[QuestionGroup]:
    return load_task(MULTIDOC, data_path)


@register_dataset(PLANNING)
def _planning(data_path: str | None, split: str) -> list[QuestionGroup]:
    return load_task(PLANNING, data_path)


# Adapters that register themselves; imported here so that asking the registry for any
# data set name works without importing its module first.
import paralleldecode.data.cmb  # noqa: E402,F401
import paralleldecode.data.drop  # noqa: E402,F401
import paralleldecode.data.hotpot  # noqa: E402,F401
import paralleldecode.data.quac  # noqa: E402,F401
import paralleldecode.data.quality  # noqa: E402,F401
import paralleldecode.data.triviaqa  # noqa: E402,F401
