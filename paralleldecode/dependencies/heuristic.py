"""A model-free dependency generator built on surface cues of the question text.

It is the fallback of model-based generators and the baseline they are compared with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from paralleldecode.data.records import QuestionGroup
from paralleldecode.dependencies.graph import DependencyResult, Edge

PERSON, PLACE, TIME, THING, ANY = "person", "place", "time", "thing", "any"

# Back-referring pronouns and determiners, with the kind of referent each one needs and
# its base confidence. "that" is lower: it is just as often a relative pronoun ("the
# river that flows ...") as a back-reference.
_BACK_REFS: dict[str, tuple[str, float]] = {
    **{w: (PERSON, 0.6) for w in ("he", "she", "him", "her", "his")},
    **{w: (ANY, 0.6) for w in ("it", "its", "they", "them", "their", "this", "these", "those")},
    "that": (ANY, 0.45),
    "there": (PLACE, 0.6),
    "then": (TIME, 0.6),
}
_DEMONSTRATIVES = frozenset({"this", "that", "these", "those"})
# Demonstrative + noun whose stem occurs in an earlier question ("that designer" after
# "Who designed ...") points at that question.
_NOUN_MATCH_BASE = 0.75
# A candidate whose answer type does not match the pronoun but whose text names a
# possible referent (a name for "he", a year for "then") is less likely.
_TEXT_MATCH_FACTOR = 0.75
# The question itself names an entity before the pronoun: the referent may be in it.
_OWN_ANTECEDENT_FACTOR = 0.5
_BE = frozenset({"is", "are", "was", "were", "be", "been", "being"})

# Ordinals are usually superlatives ("the first president"), hence the lower confidence.
_SEQUENCE_REFS: dict[str, float] = {
    **{p: 0.35 for p in ("the first", "the second", "the third")},
    **{p: 0.5 for p in (
        "the other", "the same", "the former", "the latter", "also", "next", "after that",
        "another",
    )},
}
_SEQUENCE_RE = re.compile(
    r"\b(" + "|".join(sorted(map(re.escape, _SEQUENCE_REFS), key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)

# A cue's confidence falls for a candidate that is not the nearest one (second nearest:
# x0.7) and for every question between the two (x0.9 each), so the immediately preceding
# question is preferred.
_RANK_DECAY = 0.7
_DISTANCE_DECAY = 0.9
# Pronoun and sequence cues look this many questions back and, per cue, pick the nearest
# two candidates; shared entities look at every earlier question.
_WINDOW = 5
_NEAREST = 2
_SHARED_PER_ENTITY = 0.2
# Shared entities alone stay below the default selection threshold (0.5): two questions
# about the same entity are usually answerable independently.
_SHARED_MAX = 0.4

_STOP_WORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having here how i if in into is it its itself just me more most my no
    nor not now of off on once only or other our out over own same should so some such than
    that the their them then there these they this those through to too under until up very
    was we were what when where which while who whom whose why will with would you your he
    she him her his also next""".split()
)

_ANSWER_TYPE_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (PERSON, re.compile(
        r"\b(who|whom|whose)\b|\b(what|which) (person|man|woman|king|queen|president|leader|"
        r"author|writer|composer|architect|designer|engineer|scientist|player|founder)\b")),
    (PLACE, re.compile(
        r"\bwhere\b|\b(what|which) (city|country|town|place|state|region|continent|location|"
        r"island)\b")),
    (TIME, re.compile(
        r"\bwhen\b|\bhow long ago\b|\b(what|which) (year|date|century|decade|month|day|period|"
        r"era)\b")),
]

_WORD_RE = re.compile(r"[^\W\d_][\w'’-]*|\d+(?:[.,]\d+)*")
_QUOTED_RE = re.compile(r"\"([^\"]+)\"|“([^”]+)”")
_SUFFIXES = ("ings", "ers", "ing", "ion", "ed", "er", "es", "s")


@dataclass(frozen=True)
class _Word:
    text: str  # lowercased, possessive "'s" removed
    start: int  # character offset in the question
    entity: bool  # a name (capitalised, not sentence-initial, not a stop word) or a number
    number: bool


@dataclass(frozen=True)
class _Analysis:
    words: tuple[_Word, ...]
    entities: frozenset[str]  # names, numbers, quoted strings (lowercased)
    stems: frozenset[str]  # stems of the content words
    answer_type: str


def _stem(word: str) -> str:
    """Crude suffix stripping, enough to match "designer" with "designed"."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _decay(rank: int, distance: int) -> float:
    """Confidence factor for the ``rank``-th nearest candidate, ``distance`` questions back."""
    return _RANK_DECAY ** rank * _DISTANCE_DECAY ** (distance - 1)


def _answer_type(text: str) -> str:
    """The kind of answer asked for, from the earliest wh-phrase: person/place/time/thing."""
    lowered = text.lower()
    found = [(m.start(), kind) for kind, rx in _ANSWER_TYPE_PATTERNS if (m := rx.search(lowered))]
    return min(found)[1] if found else THING


def _analyse(text: str) -> _Analysis:
    """Words, entities, content-word stems and answer type of one question."""
    words = []
    for m in _WORD_RE.finditer(text):
        raw = m.group()
        lowered = re.sub(r"['’]s$", "", raw.lower())
        # A capital at the start of a sentence says nothing about the word being a name.
        before = text[: m.start()].rstrip().rstrip("\"'“‘([")
        sentence_start = not before or before[-1] in ".!?:;"
        number = raw[0].isdigit()
        name = raw[0].isupper() and not sentence_start and lowered not in _STOP_WORDS
        words.append(_Word(lowered, m.start(), name or number, number))
    quoted = {(a or b).strip().lower() for a, b in _QUOTED_RE.findall(text)}
    return _Analysis(
        words=tuple(words),
        entities=frozenset({w.text for w in words if w.entity} | (quoted - {""})),
        stems=frozenset(_stem(w.text) for w in words
                        if not w.number and len(w.text) >= 3 and w.text not in _STOP_WORDS),
        answer_type=_answer_type(text),
    )


def _referent_factor(candidate: _Analysis, category: str) -> tuple[float, str] | None:
    """How well an earlier question could introduce a referent of ``category``.

    Returns:
        ``(factor, note)``: 1.0 when the question asks for that kind of thing (or the
        pronoun takes any referent), ``_TEXT_MATCH_FACTOR`` when only its text names a
        possible referent; None when it introduces none.
    """
    if category == ANY:
        return 1.0, ""
    if candidate.answer_type == category:
        return 1.0, f"asks for a {category}"
    if category == TIME:
        has_referent = any(w.number for w in candidate.words)
    else:
        has_referent = any(w.entity and not w.number for w in candidate.words)
    return (_TEXT_MATCH_FACTOR, "names one") if has_referent else None


class _Cues:
    """The cues found for one later question, by earlier question and kind of cue."""

    _KINDS = ("back", "sequence", "shared")

    def __init__(self) -> None:
        self._by_source: dict[int, dict[str, tuple[float, str]]] = {}

    def offer(self, source: int, kind: str, score: float, note: str) -> None:
        """Records a cue; within one kind only the strongest counts, so repeating a
        pronoun does not add confidence."""
        kinds = self._by_source.setdefault(source, {})
        if score > kinds.get(kind, (0.0, ""))[0]:
            kinds[kind] = (score, note)

    def edges(self, target: int) -> list[Edge]:
        """Edges to ``target``, ascending by source; kinds combine as a noisy-or."""
        out = []
        for source in sorted(self._by_source):
            kinds = self._by_source[source]
            miss = 1.0
            for score, _ in kinds.values():
                miss *= 1 - score
            notes = [kinds[k][1] for k in self._KINDS if k in kinds]
            out.append(Edge(source, target, round(1 - miss, 4), "; ".join(notes)))
        return out


def _back_references(
    analyses: list[_Analysis], j: int, skip_spans: list[tuple[int, int]], cues: _Cues
) -> None:
    """Offers the back-reference cues of question ``j`` to earlier questions.

    Words inside ``skip_spans`` (sequence phrases such as "after that") are left to the
    sequence cue.
    """
    words = analyses[j].words
    for pos, word in enumerate(words):
        if word.text not in _BACK_REFS or any(a <= word.start < b for a, b in skip_spans):
            continue
        category, base = _BACK_REFS[word.text]
        prev_w = words[pos - 1].text if pos else ""
        next_w = words[pos + 1].text if pos + 1 < len(words) else ""
        if word.text == "there" and (prev_w in _BE or next_w in _BE):
            continue
        # The question names an entity before the word: the referent may be that entity.
        own = _OWN_ANTECEDENT_FACTOR if any(w.entity for w in words[:pos]) else 1.0
        window = range(max(0, j - _WINDOW), j)
        if word.text in _DEMONSTRATIVES and next_w and next_w not in _STOP_WORDS:
            for i in window:
                if _stem(next_w) in analyses[i].stems:
                    cues.offer(i, "back", _NOUN_MATCH_BASE * own * _decay(0, j - i),
                               f"'{word.text} {next_w}' refers to question {i}")
        fits = {i: fit for i in window if (fit := _referent_factor(analyses[i], category))}
        for rank, i in enumerate(sorted(fits, reverse=True)[:_NEAREST]):
            factor, note = fits[i]
            cues.offer(i, "back", base * own * factor * _decay(rank, j - i),
                       f"back-reference '{word.text}'" + (f" (question {i} {note})" if note else ""))


class HeuristicGenerator:
    """Infers dependencies from surface cues; no model, deterministic, 0 tokens.

    Edges only go from an earlier question ``i`` to a later one ``j``. Cues, each giving a
    confidence for the pair, combined as a noisy-or (``1 - prod(1 - c)``):

    * Back-reference: ``j`` contains, as a whole word (any case), he, she, him, her, his
      (need a person), it, its, they, them, their, this, that, these, those (any referent),
      there (a place; not existential "there is/was/...") or then (a time). Candidates are
      the earlier questions, at most 5 back, that could introduce the referent: any
      question for the neutral words; for the others, one asking for that kind of answer
      (who / where / when or "what year" ...) or, at 0.75x, one whose text names one (a
      capitalised name; a number for "then"). The nearest two candidates get an edge:
      0.6 (0.45 for "that", often a relative pronoun), times 0.7 for the second nearest
      and 0.9 per question in between, so the immediately preceding question is
      preferred. A demonstrative followed by a noun whose stem is in an earlier question
      ("that designer" after "Who designed ...") gives that question 0.75 (times 0.9 per
      question in between) instead. When ``j`` names an entity before the word,
      the referent may be in ``j`` itself: half the confidence. Several back-references
      count as the strongest one.
    * Sequence reference: "the first/second/third" (0.35: often superlatives), "the other",
      "the same", "the former", "the latter", "also", "next", "after that", "another"
      (0.5) to the two preceding questions, with the same decay.
    * Shared entities: names (capitalised words not at a sentence start, minus stop
      words), numbers and double-quoted strings found in both questions: 0.2 each,
      combined, at most 0.4, so on their own they stay below the default selection
      threshold but they raise the confidence of the other cues.

    The ``reason`` of an edge names the cues that produced it.

    Attributes:
        name: ``"heuristic"``.
    """

    name = "heuristic"

    def generate(self, group: QuestionGroup) -> DependencyResult:
        """Returns the cue-based edges of ``group`` (unselected; ``tokens`` 0).

        Args:
            group: the questions, in the order they are asked.

        Returns:
            A :class:`DependencyResult` whose edges go from earlier to later questions,
            sorted by (target, source), each with confidence in (0, 1).
        """
        analyses = [_analyse(q.text) for q in group.questions]
        edges = []
        for j in range(1, len(analyses)):
            cues = _Cues()
            sequence = [(m.span(), m.group().lower())
                        for m in _SEQUENCE_RE.finditer(group.questions[j].text)]
            _back_references(analyses, j, [span for span, _ in sequence], cues)
            for _, phrase in sequence:
                for rank, i in enumerate(range(j - 1, max(-1, j - 1 - _NEAREST), -1)):
                    cues.offer(i, "sequence", _SEQUENCE_REFS[phrase] * _decay(rank, j - i),
                               f"sequence reference '{phrase}'")
            for i in range(j):
                shared = sorted(analyses[i].entities & analyses[j].entities)
                if shared:
                    score = min(_SHARED_MAX, 1 - (1 - _SHARED_PER_ENTITY) ** len(shared))
                    cues.offer(i, "shared", score, "shared entities: " + ", ".join(shared))
            edges.extend(cues.edges(j))
        return DependencyResult(edges=edges)
