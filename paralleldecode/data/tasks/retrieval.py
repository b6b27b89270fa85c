"""``retrieval``: a list of invented people, one record per line; each question gives two
attributes that together match exactly one person, whose full name is the gold answer."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from paralleldecode.data.records import QuestionGroup
from paralleldecode.data.tasks.common import (
    DEFAULT_COUNT,
    FIRST_NAMES,
    LAST_NAMES,
    RETRIEVAL,
    TOWNS,
    VOCABULARY,
    Built,
    Draft,
    check_size,
    generate,
    invented_names,
)

_PROFESSIONS = VOCABULARY["professions"]
_HOBBIES = VOCABULARY["hobbies"]
_AGES = range(21, 70)
# Attributes whose values are drawn from a fixed list; construction relies on them.
_CATEGORICAL = {"city": TOWNS, "profession": _PROFESSIONS, "hobby": _HOBBIES}
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
    check_size("criteria", criteria, 1, MAX_CRITERIA)
    check_size("records", records, criteria, len(FIRST_NAMES) * len(LAST_NAMES))
    return generate(RETRIEVAL, count, seed,
                     lambda rng, _: _retrieval_group(rng, records, criteria),
                     {"records": records, "criteria": criteria})


def _retrieval_group(rng: random.Random, n_records: int, n_criteria: int) -> Built:
    people = [{"name": name, "city": rng.choice(TOWNS), "profession": rng.choice(_PROFESSIONS),
               "age": rng.choice(_AGES), "hobby": rng.choice(_HOBBIES)}
              for name in invented_names(rng, n_records)]
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

    drafts: list[Draft] = []
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
