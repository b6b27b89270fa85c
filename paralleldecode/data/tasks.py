"""Generated task families for parallel decoding within one sequence.

Each group has one shared ``background`` that is read once and several questions that do not
depend on each other, so every question can be decoded as its own branch:

* ``retrieval``: a list of invented people, one record per line; each question gives two
  attributes that together match exactly one person, whose full name is the gold answer.
* ``multidoc``: a few short invented documents; one question per document whose gold answer
  is a span copied verbatim from that document.
* ``planning``: a goal with constraints; each question asks for a short plan of one sub-task.
  There is no gold answer, so only speed and format can be compared.

Everything is drawn from seeded generators (no download, no model in the loop), and a user
may replace a generated set with a JSON-lines file of the same shape: one group per line,
``{"id", "background", "questions": [{"id", "question", "answers", "metadata"?}],
"metadata"?}``. `write_groups_jsonl` writes that layout, `load_groups_jsonl` reads it.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paralleldecode.data.records import DataError, Question, QuestionGroup
from paralleldecode.data.squad import require
from paralleldecode.data.sources import read_source, with_id

RETRIEVAL = "retrieval"
MULTIDOC = "multidoc"
PLANNING = "planning"

DEFAULT_COUNT = 20

# A question before ids are assigned: (text, gold answers, question metadata).
_Draft = tuple[str, list[str], dict[str, Any]]
# What one family builds for one group: (background, questions, group metadata).
_Built = tuple[str, list[_Draft], dict[str, Any]]

# ---------------------------------------------------------------------------------------------
# Invented vocabulary shared by the families. Names and towns are made up so that a model
# cannot answer from memory and must read the background.

_FIRST_NAMES = (
    "Aldra", "Bexim", "Corwen", "Daska", "Elvar", "Fenna", "Gorim", "Hesper", "Ilvo", "Jorla",
    "Kestin", "Lumi", "Marrek", "Nessa", "Orvin", "Pelka", "Quilla", "Rovan", "Sulei", "Tamsk",
)
_LAST_NAMES = (
    "Ashcombe", "Brindlow", "Corrander", "Dunmere", "Eskwith", "Farrowby", "Galloran", "Holmsk",
    "Ivensby", "Jastrow", "Kellaway", "Lindqvar", "Morrowen", "Norhaven", "Oakrin", "Pellister",
    "Quarnby", "Ravelsky", "Stellmoor", "Thornvik",
)
_TOWNS = (
    "Tarnby", "Vellmoor", "Ostwen Mill", "Kelderwick", "Brannock", "Haldersea", "Munroft",
    "Sallowdene", "Pirrin Cross", "Wexham Hollow", "Droverly", "Estmark", "Fallowgate",
    "Corrin End",
)


def _people(rng: random.Random, n: int) -> list[str]:
    """Returns ``n`` distinct full names drawn from the invented first and last names."""
    pairs = rng.sample(range(len(_FIRST_NAMES) * len(_LAST_NAMES)), n)
    return [f"{_FIRST_NAMES[p // len(_LAST_NAMES)]} {_LAST_NAMES[p % len(_LAST_NAMES)]}"
            for p in pairs]


def _check_size(name: str, value: int, low: int, high: int | None = None) -> None:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if not is_int or value < low or (high is not None and value > high):
        limits = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise DataError(f"{name} must be an integer {limits}, got {value!r}")


def _generate(dataset: str, count: int, seed: int,
              build: Callable[[random.Random, int], _Built],
              sizes: Mapping[str, Any]) -> list[QuestionGroup]:
    """Builds ``count`` groups and gives them ids; the part the three families share.

    Each group has its own generator seeded from (dataset, seed, index), so group 7 is the
    same whether 10 or 100 groups are asked for, and families do not share random streams.
    Group numbers start at 0 (like list positions); question numbers start at 1, so that in
    ``multidoc`` question ``q2`` is the one about ``Document 2``.
    """
    _check_size("count", count, 0)
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


# ---------------------------------------------------------------------------------------------
# retrieval

_PROFESSIONS = (
    "baker", "carpenter", "nurse", "architect", "beekeeper", "ferry pilot", "librarian",
    "glassblower", "surveyor", "orchard keeper", "locksmith", "translator", "potter", "engineer",
)
_HOBBIES = (
    "rowing", "chess", "birdwatching", "pottery", "choir singing", "fencing", "kite flying",
    "stargazing", "woodcarving", "orienteering", "knitting", "beekeeping", "archery", "origami",
)
_AGES = range(21, 70)
# Attributes whose values are drawn from a fixed list; construction relies on them.
_CATEGORICAL = {"city": _TOWNS, "profession": _PROFESSIONS, "hobby": _HOBBIES}
# Most criteria a group can have: construction needs one spare value in every list.
MAX_CRITERIA = min(len(pool) for pool in _CATEGORICAL.values()) - 1


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


# Each criterion names two attributes, at least one of them categorical: `_retrieval_group`
# relies on that to keep one target from matching another target's criterion.
_CRITERIA: tuple[tuple[tuple[str, str], Callable[[Mapping[str, Any]], str]], ...] = (
    (("profession", "city"), lambda r: f"Which person is {_a(r['profession'])} living in "
                                       f"{r['city']}?"),
    (("hobby", "city"), lambda r: f"Which person living in {r['city']} enjoys {r['hobby']}?"),
    (("profession", "age"), lambda r: f"Which {r['profession']} is {r['age']} years old?"),
    (("profession", "hobby"), lambda r: f"Which {r['profession']} enjoys {r['hobby']}?"),
    (("city", "age"), lambda r: f"Who lives in {r['city']} and is {r['age']} years old?"),
)


def matching_records(records: Iterable[Mapping[str, Any]],
                     criteria: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Returns the records whose values equal every value in ``criteria``."""
    return [r for r in records if all(r[key] == value for key, value in criteria.items())]


def generate_retrieval(count: int = DEFAULT_COUNT, seed: int = 0, *, records: int = 12,
                       criteria: int = 4) -> list[QuestionGroup]:
    """Generates record-lookup groups: find the one person who matches two attributes.

    The background lists ``records`` people (name, city, profession, age, hobby), one line
    each. Each question names two attributes of one person, and exactly one listed person has
    both; the gold answer is that person's full name. ``group.metadata["records"]`` keeps the
    records and ``question.metadata["criteria"]`` the attributes asked for, so the uniqueness
    can be checked with `matching_records`.

    Args:
        count: number of groups.
        seed: same seed, same groups.
        records: people per group (at least ``criteria``).
        criteria: questions per group, each about a different person (1 to `MAX_CRITERIA`).

    Returns:
        Groups with ids ``retrieval/0000``, ... and question ids ``retrieval/0000/q1``, ...

    Raises:
        DataError: a size is out of range.
    """
    _check_size("criteria", criteria, 1, MAX_CRITERIA)
    _check_size("records", records, criteria, len(_FIRST_NAMES) * len(_LAST_NAMES))
    return _generate(RETRIEVAL, count, seed,
                     lambda rng, _: _retrieval_group(rng, records, criteria),
                     {"records": records, "criteria": criteria})


def _retrieval_group(rng: random.Random, n_records: int, n_criteria: int) -> _Built:
    people = [{"name": name, "city": rng.choice(_TOWNS), "profession": rng.choice(_PROFESSIONS),
               "age": rng.choice(_AGES), "hobby": rng.choice(_HOBBIES)}
              for name in _people(rng, n_records)]
    targets = rng.sample(range(n_records), n_criteria)
    # Targets get pairwise different city, profession and hobby. Every criterion names one of
    # these, so no target can match another target's criterion.
    for attribute, pool in _CATEGORICAL.items():
        for target, value in zip(targets, rng.sample(pool, n_criteria)):
            people[target][attribute] = value
    # Cycle through a shuffled list of criterion kinds so a group mixes several kinds.
    kinds = rng.sample(_CRITERIA, len(_CRITERIA))
    asked = [(target, kinds[i % len(kinds)]) for i, target in enumerate(targets)]
    keys = [{a: people[t][a] for a in attributes} for t, (attributes, _) in asked]
    for i, person in enumerate(people):
        if i not in targets:
            _break_matches(person, keys, rng)

    drafts: list[_Draft] = []
    for (target, (_, phrase)), key in zip(asked, keys):
        matches = matching_records(people, key)
        # Construction guarantees this; the check keeps a future edit from silently breaking it.
        if len(matches) != 1:
            raise RuntimeError(f"retrieval criteria {key} match {len(matches)} records")
        drafts.append((phrase(people[target]), [people[target]["name"]], {"criteria": key}))
    lines = [f"{p['name']}; city: {p['city']}; profession: {p['profession']}; age: {p['age']}; "
             f"hobby: {p['hobby']}" for p in people]
    background = "People records, one per line:\n" + "\n".join(lines)
    return background, drafts, {"records": people}


def _break_matches(person: dict[str, Any], keys: list[dict[str, Any]],
                   rng: random.Random) -> None:
    """Changes a non-target person so that no criterion in ``keys`` matches them.

    For a matching key, one of its categorical attributes gets a value that matches no key
    using that attribute; keys not using it are unaffected, so one pass fixes every match.
    Such a value exists because at most ``len(keys)`` values are ruled out and each list has
    more values than that (see `MAX_CRITERIA`).
    """
    for key in keys:
        if not matching_records([person], key):
            continue
        attribute = rng.choice(sorted(a for a in key if a in _CATEGORICAL))
        ruled_out = {k[attribute] for k in keys if attribute in k
                     and all(person[a] == v for a, v in k.items() if a != attribute)}
        person[attribute] = rng.choice([v for v in _CATEGORICAL[attribute] if v not in ruled_out])


# ---------------------------------------------------------------------------------------------
# multidoc


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
_ROOTS = (
    "Averlin", "Brasko", "Cindermoor", "Dovreth", "Elsworn", "Falka", "Grendale", "Harrowmere",
    "Istven", "Juniper Vale", "Korrath", "Lossing", "Marivel", "Nethery", "Orrowind", "Palvane",
)
MAX_DOCUMENTS = min(len(_ROOTS), len(_TOWNS))


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
    _check_size("documents", documents, 1, MAX_DOCUMENTS)
    return _generate(MULTIDOC, count, seed, lambda rng, _: _multidoc_group(rng, documents),
                     {"documents": documents})


def _multidoc_group(rng: random.Random, n_documents: int) -> _Built:
    roots = rng.sample(_ROOTS, n_documents)
    people = _people(rng, n_documents)
    places = rng.sample(_TOWNS, n_documents)
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


# ---------------------------------------------------------------------------------------------
# planning


@dataclass(frozen=True)
class _Goal:
    """One planning goal.

    Text may use the slots ``place``, ``budget``, ``people``, ``weeks`` and ``date``, which
    are drawn per group so that groups sharing a goal still differ in their constraints.

    Attributes:
        goal: one sentence stating the goal.
        constraints: one sentence each, listed under the goal.
        subtasks: independent parts of the goal, 3 to 5 of them.
        budget: range of the budget in euros (drawn in steps of 50).
    """

    goal: str
    constraints: tuple[str, ...]
    subtasks: tuple[str, ...]
    budget: range


_GOALS = (
    _Goal("Organise a one-day book fair in the village hall of {place}.",
          ("The total budget is {budget} euros.",
           "The fair is on {date}; the hall is free from 8:00 that morning.",
           "{people} volunteers can help, none of them for more than four hours."),
          ("find and confirm at least ten book sellers", "plan the layout of stalls in the hall",
           "advertise the fair in and around {place}", "set up a children's reading corner",
           "clear and clean the hall after the fair"),
          range(800, 3000, 50)),
    _Goal("Move a six-person biology lab from the old science block to a new building in "
          "{place}.",
          ("The move must be finished within {weeks} weeks.",
           "Moving costs may not exceed {budget} euros.",
           "{people} lab members can help; freezers may be off for at most two hours."),
          ("pack and label the glassware and small instruments",
           "move the freezers and their samples without breaking the cold chain",
           "set up the computers and the network in the new rooms",
           "tell suppliers and collaborators the new delivery address"),
          range(2000, 9000, 50)),
    _Goal("Run a weekend coding workshop for teenagers at the library in {place}.",
          ("The workshop starts on {date} and lasts two days.",
           "The budget, including snacks, is {budget} euros.",
           "{people} mentors are available; at most 24 participants fit in the room."),
          ("choose a beginner-friendly project to build over the weekend",
           "prepare laptops and install the software",
           "plan the schedule of both days", "handle sign-ups and parental consent forms",
           "collect feedback from participants at the end"),
          range(300, 1500, 50)),
    _Goal("Turn an empty lot in {place} into a community garden.",
          ("Planting must start in {weeks} weeks.",
           "The neighbourhood fund gives {budget} euros.",
           "{people} neighbours have offered a few hours each weekend."),
          ("test and prepare the soil", "decide which vegetables and flowers to grow",
           "build raised beds and a compost corner", "set up a watering rota for the summer"),
          range(500, 2500, 50)),
    _Goal("Plan a family reunion for 40 relatives in {place}.",
          ("The reunion is on {date}.", "The family has pooled {budget} euros.",
           "{people} relatives have agreed to help organise."),
          ("book a venue that suits both young children and older guests",
           "plan the meals, including vegetarian options",
           "arrange places to stay for relatives travelling from far away",
           "plan activities for the afternoon"),
          range(1500, 6000, 50)),
    _Goal("Launch a small online shop for handmade candles made in {place}.",
          ("The shop must open within {weeks} weeks.",
           "{budget} euros are available for setup and the first stock.",
           "The team is {people} people, all working part time."),
          ("photograph the candles and write product descriptions",
           "choose a shop platform and set up payments",
           "work out shipping costs and packaging", "plan the launch announcement"),
          range(600, 4000, 50)),
    _Goal("Renovate a rented one-room office in {place}.",
          ("The works must be done within {weeks} weeks.", "The budget is {budget} euros.",
           "{people} staff must keep working while the room is closed.",
           "The landlord must approve any change to walls or wiring."),
          ("repaint the walls and ceiling", "replace the lighting",
           "buy and assemble new furniture",
           "arrange where staff work while the room is closed"),
          range(2500, 12000, 50)),
    _Goal("Hold a charity 5 km run through the streets of {place}.",
          ("The run is on {date}.", "Costs must stay under {budget} euros.",
           "{people} volunteers are available on the day."),
          ("get permission to close the route", "mark the course and set up a water station",
           "register runners and collect donations", "arrange first aid along the route",
           "prepare medals and publish the results"),
          range(700, 3500, 50)),
    _Goal("Digitise the photograph collection of the small town archive in {place}.",
          ("The project has {weeks} weeks.", "A grant of {budget} euros covers all costs.",
           "{people} volunteers can work two afternoons a week."),
          ("sort and number the prints", "choose a scanner and a file format",
           "write a short description for every photograph",
           "publish the collection online"),
          range(1000, 7000, 50)),
    _Goal("Organise the science fair of the secondary school in {place}.",
          ("The fair is on {date}.", "The school has set aside {budget} euros.",
           "{people} teachers can help; pupils build their own stands."),
          ("invite judges from outside the school", "plan the layout of stands in the gym",
           "write the judging criteria", "arrange prizes for each age group"),
          range(400, 2000, 50)),
)
MAX_SUBTASKS = max(len(goal.subtasks) for goal in _GOALS)
_MONTHS = ("March", "April", "May", "June", "July", "August", "September", "October")


def generate_planning(count: int = DEFAULT_COUNT, seed: int = 0, *,
                      subtasks: int | None = None) -> list[QuestionGroup]:
    """Generates planning groups: one goal with constraints, one question per sub-task.

    The background states the goal and its constraints (budget, a date or deadline, the
    people available). Each question is ``Write a short plan for the sub-task: <sub-task>``.
    Questions have no gold answers. Goals are used in a seeded order that runs through all of
    them before any repeats; the town, budget, date and headcount are drawn per group.
    ``group.metadata`` keeps the goal and the drawn values.

    Args:
        count: number of groups.
        seed: same seed, same groups.
        subtasks: sub-tasks per group; None asks every sub-task of the goal (3 to 5). A number
            picks that many and uses only goals that have enough.

    Returns:
        Groups with ids ``planning/0000``, ... and question ids ``planning/0000/q1``, ...

    Raises:
        DataError: a size is out of range.
    """
    if subtasks is not None:
        _check_size("subtasks", subtasks, 1, MAX_SUBTASKS)
    goals = [g for g in _GOALS if subtasks is None or len(g.subtasks) >= subtasks]
    # One order per seed (not per group) so that consecutive groups cycle through the goals.
    order = random.Random(f"{PLANNING}:{seed}:order").sample(goals, len(goals))
    return _generate(PLANNING, count, seed,
                     lambda rng, index: _planning_group(rng, order[index % len(order)], subtasks),
                     {"subtasks": subtasks})


def _planning_group(rng: random.Random, goal: _Goal, n_subtasks: int | None) -> _Built:
    values = {"place": rng.choice(_TOWNS), "budget": rng.choice(goal.budget),
              "people": rng.randint(3, 12), "weeks": rng.randint(3, 10),
              "date": f"{rng.randint(1, 28)} {rng.choice(_MONTHS)}"}
    picked = sorted(rng.sample(range(len(goal.subtasks)), n_subtasks or len(goal.subtasks)))
    tasks = [goal.subtasks[i].format(**values) for i in picked]
    constraints = [c.format(**values) for c in goal.constraints]
    background = (f"Goal: {goal.goal.format(**values)}\nConstraints:\n"
                  + "\n".join(f"- {c}" for c in constraints))
    drafts = [(f"Write a short plan for the sub-task: {task}", [], {"subtask": task})
              for task in tasks]
    return background, drafts, {"goal": goal.goal.format(**values), "values": values}


# ---------------------------------------------------------------------------------------------
# JSON lines and loading by name

GENERATORS: dict[str, Callable[..., list[QuestionGroup]]] = {
    RETRIEVAL: generate_retrieval, MULTIDOC: generate_multidoc, PLANNING: generate_planning,
}


def load_task(dataset: str, data_path: str | os.PathLike[str] | None = None) -> list[QuestionGroup]:
    """Loads a task family: generated (seed 0, 20 groups) or from a user JSON-lines file.

    Args:
        dataset: ``retrieval``, ``multidoc`` or ``planning``.
        data_path: None generates the default groups; otherwise a file read by
            `load_groups_jsonl`.

    Raises:
        DataError: the family is unknown or the file is not usable.
    """
    if dataset not in GENERATORS:
        raise DataError(f"unknown task family {dataset!r}; known: {', '.join(GENERATORS)}")
    if data_path is None:
        return GENERATORS[dataset]()
    return load_groups_jsonl(data_path, dataset)


def write_groups_jsonl(groups: Iterable[QuestionGroup], path: str | os.PathLike[str]) -> None:
    """Writes groups as JSON lines, one group per line, in the layout `load_groups_jsonl` reads.

    Missing parent folders are created. Metadata keys are written only when not empty.

    Raises:
        DataError: a group has no background, a question has options or its own context (the
            layout has no place for them), or metadata is not JSON-serialisable.
    """
    lines = []
    for group in groups:
        if group.background is None:
            raise DataError(f"group {group.id!r} has no background; the task layout needs one")
        questions = []
        for q in group.questions:
            if q.options is not None or q.context is not None:
                raise DataError(f"question {q.id!r} has options or its own context, which the "
                                f"task layout cannot hold")
            record: dict[str, Any] = {"id": q.id, "question": q.text, "answers": q.answers}
            if q.metadata:
                record["metadata"] = q.metadata
            questions.append(record)
        row: dict[str, Any] = {"id": group.id, "background": group.background,
                               "questions": questions}
        if group.metadata:
            row["metadata"] = group.metadata
        try:
            lines.append(json.dumps(row, ensure_ascii=False))
        except (TypeError, ValueError) as err:
            raise DataError(f"group {group.id!r} cannot be written as JSON: {err}") from err
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def load_groups_jsonl(path: str | os.PathLike[str], dataset: str) -> list[QuestionGroup]:
    """Reads groups from a JSON-lines file, one group per line (blank lines are skipped).

    Each line is ``{"id": str, "background": str, "questions": [{"id": str, "question": str,
    "answers": [str, ...], "metadata": {...}?}, ...], "metadata": {...}?}``. Metadata is kept
    as it is, so writing groups with `write_groups_jsonl` and reading them back gives equal
    groups. The file is read by :func:`~paralleldecode.data.sources.read_source`, so a JSON
    list of such groups is read too.

    Args:
        path: the file.
        dataset: the name put into each group's ``dataset``.

    Raises:
        DataError: the file is missing or unreadable, a line is not JSON, a key is missing or
            has another type, a group has no questions, or an id repeats. The message names
            the file, the line, the group id and the key.
    """
    # A Path, not a str: a missing user file must be reported, never looked up on the hub.
    source = read_source(Path(path), dataset)
    groups: list[QuestionGroup] = []
    group_lines: dict[str, str] = {}
    question_lines: dict[str, str] = {}
    for location, record in source.rows(single_record=True):
        where = with_id(f"{source.origin}: {location}", record)
        group = _read_group(record, where, dataset)
        _claim(group_lines, group.id, location, where, "group")
        for q in group.questions:
            _claim(question_lines, q.id, location, where, "question")
        groups.append(group)
    if not groups:
        raise DataError(f"{source.origin} holds no groups")
    return groups


def _claim(used: dict[str, str], key: str, location: str, where: str, what: str) -> None:
    if key in used:
        raise DataError(f"{where}: {what} id {key!r} was already used on {used[key]}")
    used[key] = location


def _read_group(record: Any, where: str, dataset: str) -> QuestionGroup:
    gid = require(record, "id", str, where)
    background = require(record, "background", str, where)
    metadata = _optional_object(record, where)
    raw_questions = require(record, "questions", list, where)
    if not raw_questions:
        raise DataError(f"{where}: 'questions' is empty; a group needs at least one question")
    questions = [_read_question(q, with_id(f"{where}: questions[{j}]", q))
                 for j, q in enumerate(raw_questions)]
    try:
        return QuestionGroup(id=gid, dataset=dataset, questions=questions,
                             background=background, metadata=metadata)
    except DataError as err:
        raise DataError(f"{where}: {err}") from None


def _read_question(record: Any, where: str) -> Question:
    qid = require(record, "id", str, where)
    text = require(record, "question", str, where)
    answers = require(record, "answers", list, where)
    if not all(isinstance(a, str) for a in answers):
        raise DataError(f"{where}: 'answers' must be a list of strings, got {answers!r}")
    metadata = _optional_object(record, where)
    try:
        return Question(id=qid, text=text, answers=answers, metadata=metadata)
    except DataError as err:
        raise DataError(f"{where}: {err}") from None


def _optional_object(record: Mapping[str, Any], where: str) -> dict[str, Any]:
    if "metadata" not in record:
        return {}
    return require(record, "metadata", dict, where)

