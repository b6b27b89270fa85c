"""``multidoc``: a few short invented documents; one question per document whose gold
answer is a span copied verbatim from that document."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from paralleldecode.data.records import QuestionGroup
from paralleldecode.data.tasks.common import (
    DEFAULT_COUNT,
    MULTIDOC,
    TOWNS,
    VOCABULARY,
    Built,
    check_size,
    generate,
    invented_names,
)


@dataclass(frozen=True)
class _DocKind:
    """One kind of invented document.

    Attributes:
        kind: a label kept in metadata.
        name: format of the entity's name from an invented ``{root}``.
        text: the document, with slots ``name``, ``person``, ``year``, ``place``, ``count``.
        questions: for each fact (a slot other than ``name``) the question asking for it.
        years, counts: ranges the ``year`` and ``count`` facts are drawn from; they do not
            overlap, so the two numbers of a document never read the same.
    """

    kind: str
    name: str
    text: str
    questions: Mapping[str, str]
    years: range
    counts: range


_DOC_KINDS = (
    _DocKind(
        "company", "{root} Ropeworks",
        "{name} was founded in {year} by {person}. The firm is based in {place} and employs "
        "{count} people, most of them in its riverside workshop.",
        {"person": "Who founded {name}?", "year": "In which year was {name} founded?",
         "place": "In which town is {name} based?", "count": "How many people does {name} employ?"},
        range(1820, 1990), range(35, 900)),
    _DocKind(
        "river", "the {root} River",
        "The source of {name} lies near {place}. It runs for {count} kilometres before it meets "
        "the sea. The river was first mapped by {person} in {year}.",
        {"person": "Who first mapped {name}?", "year": "In which year was {name} first mapped?",
         "place": "Near which town does {name} have its source?",
         "count": "How many kilometres long is {name}?"},
        range(1650, 1900), range(40, 700)),
    _DocKind(
        "festival", "the {root} Lantern Festival",
        "Every autumn, {name} fills the streets of {place}. It was first held in {year}, when "
        "{person} invited neighbours to light lanterns together. About {count} visitors now come "
        "each year.",
        {"person": "Who started {name}?", "year": "In which year was {name} first held?",
         "place": "In which town is {name} held?",
         "count": "About how many visitors come to {name} each year?"},
        range(1890, 2015), range(2500, 40000)),
    _DocKind(
        "ship", "the {root}",
        "{name} was a grain ship launched at {place} in {year}. She could carry {count} tonnes "
        "of cargo, and her first captain was {person}.",
        {"person": "Who was the first captain of {name}?",
         "year": "In which year was {name} launched?", "place": "Where was {name} launched?",
         "count": "How many tonnes of cargo could {name} carry?"},
        range(1780, 1950), range(120, 1700)),
    _DocKind(
        "observatory", "the {root} Observatory",
        "{name} stands on a hill above {place}. The astronomer {person} opened it in {year}, "
        "and its main telescope has a mirror {count} centimetres wide.",
        {"person": "Which astronomer opened {name}?", "year": "In which year was {name} opened?",
         "place": "Above which town does {name} stand?",
         "count": "How wide, in centimetres, is the mirror of the main telescope at {name}?"},
        range(1840, 2000), range(30, 400)),
)
_ROOTS = VOCABULARY["roots"]
MAX_DOCUMENTS = min(len(_ROOTS), len(TOWNS))


def _sentence_start(text: str) -> str:
    # Names like "the Averlin River" open some sentences; only the first letter changes, so
    # the name still occurs verbatim (as a span) in the rest of the document.
    return text[0].upper() + text[1:]


def generate_multidoc(count: int = DEFAULT_COUNT, seed: int = 0, *,
                      documents: int = 4) -> list[QuestionGroup]:
    """Generates multi-document QA groups: one question per short invented document.

    The background is ``Document 1: ...``, ``Document 2: ...``, one per line. Each document
    (2-3 sentences) describes one invented entity (a company, river, festival, ship or
    observatory) with a person, a year, a town and a number; question ``q<j>`` asks for one
    of these facts of document ``j`` by the entity's name, and its gold answer occurs
    verbatim in that document. Entity names, people and towns differ between the documents of
    a group, so each question has one answer. ``group.metadata["documents"]`` keeps each
    document's kind, name, facts and text.

    Args:
        count: number of groups.
        seed: same seed, same groups.
        documents: documents (and questions) per group, 1 to `MAX_DOCUMENTS`.

    Returns:
        Groups with ids ``multidoc/0000``, ... and question ids ``multidoc/0000/q1``, ...

    Raises:
        DataError: a size is out of range.
    """
    check_size("documents", documents, 1, MAX_DOCUMENTS)
    return generate(MULTIDOC, count, seed, lambda rng, _: _multidoc_group(rng, documents),
                     {"documents": documents})


def _multidoc_group(rng: random.Random, n_documents: int) -> Built:
    roots = rng.sample(_ROOTS, n_documents)
    people = invented_names(rng, n_documents)
    places = rng.sample(TOWNS, n_documents)
    docs, drafts, lines = [], [], []
    for j, (root, person, place) in enumerate(zip(roots, people, places), start=1):
        kind = rng.choice(_DOC_KINDS)
        name = kind.name.format(root=root)
        facts = {"person": person, "year": str(rng.choice(kind.years)), "place": place,
                 "count": str(rng.choice(kind.counts))}
        text = _sentence_start(kind.text.format(name=name, **facts))
        asked = rng.choice(sorted(kind.questions))
        question = _sentence_start(kind.questions[asked].format(name=name))
        drafts.append((question, [facts[asked]], {"document": j, "fact": asked}))
        docs.append({"kind": kind.kind, "name": name, "facts": facts, "text": text})
        lines.append(f"Document {j}: {text}")
    return "\n".join(lines), drafts, {"documents": docs}
