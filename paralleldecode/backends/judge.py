"""An LLM judge: a chat model rates answers against reference answers on four criteria.

Each answer gets an integer score from 1 to 5 for fluency, relevance, completeness and
domain proficiency (correct use of the field's knowledge, e.g. medicine). The judge is any
:class:`~paralleldecode.backends.openai_api.OpenAIClient`; its reply is parsed tolerantly
(the first JSON object holding the scores, wherever it sits in the text), and a reply that
cannot be read becomes a :class:`JudgeScore` with ``error`` set, never an exception.

Successful scores can be cached in a JSON-lines file keyed by the judge model, question,
reference and answer, so rerunning an evaluation costs no further requests.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from paralleldecode.backends.openai_api import ChatResult, OpenAIClient, one_line
from paralleldecode.prompts import json_objects

CRITERIA: tuple[str, ...] = ("fluency", "relevance", "completeness", "proficiency")

_LOW, _HIGH = 1, 5

_SYSTEM_PROMPT = (
    "You grade answers for an evaluation. You compare a candidate answer with a reference "
    "answer written by an expert and give four integer scores from 1 (very poor) to 5 "
    "(excellent):\n"
    "- fluency: is the candidate well-formed, readable language?\n"
    "- relevance: does it address the question that was asked, without drifting?\n"
    "- completeness: does it cover the points the reference makes?\n"
    "- proficiency: does it use the knowledge of the field (medicine, law, ...) correctly, "
    "with no errors of fact or reasoning?\n"
    "Judge the content, not the length; the reference is correct by assumption. Reply with "
    "a single JSON object and nothing else, in the form "
    '{"fluency": n, "relevance": n, "completeness": n, "proficiency": n}.'
)

Item = tuple[str, str, str]


@dataclass
class JudgeScore:
    """The judge's verdict on one answer.

    Attributes:
        fluency: 1-5, or None when the answer could not be scored.
        relevance: 1-5, or None.
        completeness: 1-5, or None.
        proficiency: 1-5 (correct use of domain knowledge), or None.
        error: None when scored; otherwise why not, with an excerpt of the judge's reply.
        cached: True when the score came from the cache rather than a request.
    """

    fluency: float | None = None
    relevance: float | None = None
    completeness: float | None = None
    proficiency: float | None = None
    error: str | None = None
    cached: bool = False


def _find_scores_object(reply: str) -> dict | None:
    """The first JSON object in the reply that names a criterion, or None.

    Judges wrap their JSON in code fences or a sentence of preamble often enough that
    demanding a bare object would throw good verdicts away.
    """
    return next((obj for obj in json_objects(reply) if any(name in obj for name in CRITERIA)), None)


def _criterion_value(value: object) -> float | None:
    """A score as a float clamped to 1..5; None when it is not a finite number.

    Numeric strings are accepted ("4"); booleans are not, though Python counts them as ints.
    """
    if isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    return float(min(max(number, _LOW), _HIGH))


def parse_judge_reply(reply: str) -> JudgeScore:
    """Reads the four scores from a judge's reply.

    Args:
        reply: the judge's text.

    Returns:
        The scores (each clamped to 1..5), or a score with every criterion None and
        ``error`` naming what was missing, with an excerpt of the reply.
    """
    found = _find_scores_object(reply)
    if found is None:
        return JudgeScore(error=f"no JSON object with scores in judge reply: {one_line(reply)!r}")
    scores = {name: _criterion_value(found.get(name)) for name in CRITERIA}
    bad = [name for name, value in scores.items() if value is None]
    if bad:
        return JudgeScore(
            error=f"missing or invalid {', '.join(bad)} in judge reply: {one_line(reply)!r}"
        )
    return JudgeScore(**scores)


class LLMJudge:
    """Scores answers with a chat model, caching successful scores on disk.

    Args:
        client: the judge model's client; its ``model`` name is part of every cache key.
        cache_path: a JSON-lines file of earlier scores, created when missing; None keeps
            no cache.
        max_tokens: the most tokens the judge may reply with.
    """

    def __init__(
        self,
        client: OpenAIClient,
        cache_path: str | os.PathLike | None = None,
        max_tokens: int = 200,
    ) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.client = client
        self.max_tokens = max_tokens
        self.cache_path = Path(cache_path) if cache_path is not None else None
        # Guards the in-memory cache and the file when score_many runs on several threads.
        self._lock = threading.Lock()
        self._cache: dict[str, dict[str, float]] = {}
        if self.cache_path is not None and self.cache_path.exists():
            self._cache = self._read_cache(self.cache_path)

    def score(self, question: str, gold: str, answer: str) -> JudgeScore:
        """Scores one answer against its reference; see :meth:`score_many`."""
        return self.score_many([(question, gold, answer)])[0]

    def score_many(self, items: Sequence[Item]) -> list[JudgeScore]:
        """Scores many answers, asking the judge only about those not cached.

        Args:
            items: ``(question, gold, answer)`` triples; identical triples cost one request.

        Returns:
            One score per item, in input order; a failed request or unreadable reply gives
            that item a score with ``error`` set.
        """
        keys = [self._key(*item) for item in items]
        with self._lock:
            known = {key: self._cache[key] for key in keys if key in self._cache}
        pending = {key: item for key, item in zip(keys, items) if key not in known}
        fresh = self._ask(pending)
        results = []
        for key in keys:
            if key in known:
                results.append(JudgeScore(**known[key], cached=True))
            else:
                results.append(fresh[key])
        return results

    @staticmethod
    def averages(scores: Iterable[JudgeScore]) -> dict[str, float]:
        """The mean of each criterion over the scored items, with counts.

        Args:
            scores: judge results; those with ``error`` set count as failures only.

        Returns:
            ``{criterion: mean}`` for the four criteria (NaN when nothing was scored), plus
            ``judged`` (items scored) and ``judge_failures`` (items not scored).
        """
        scores = list(scores)
        judged = [score for score in scores if score.error is None]
        out: dict[str, float] = {
            name: (
                sum(getattr(score, name) for score in judged) / len(judged)
                if judged
                else math.nan
            )
            for name in CRITERIA
        }
        out["judged"] = len(judged)
        out["judge_failures"] = len(scores) - len(judged)
        return out

    def _ask(self, pending: dict[str, Item]) -> dict[str, JudgeScore]:
        """Requests scores for the pending items and caches the successful ones."""
        if not pending:
            return {}
        keys = list(pending)
        replies = self.client.chat_many(
            [self._messages(*pending[key]) for key in keys],
            max_tokens=self.max_tokens,
            temperature=0.0,
        )
        fresh = {key: self._verdict(reply) for key, reply in zip(keys, replies)}
        self._remember({key: score for key, score in fresh.items() if score.error is None})
        return fresh

    @staticmethod
    def _verdict(reply: ChatResult) -> JudgeScore:
        if reply.error is not None:
            return JudgeScore(error=f"judge request failed: {reply.error}")
        return parse_judge_reply(reply.text)

    @staticmethod
    def _messages(question: str, gold: str, answer: str) -> list[dict[str, str]]:
        user = (
            f"Question:\n{question}\n\n"
            f"Reference answer:\n{gold}\n\n"
            f"Candidate answer:\n{answer}\n\n"
            "Rate the candidate answer. Reply with the JSON object only."
        )
        return [
            {"role": "system", "content": _SYSTEM_PROMPT},
            {"role": "user", "content": user},
        ]

    def _key(self, question: str, gold: str, answer: str) -> str:
        # A JSON list keeps the fields apart: ("ab", "c") and ("a", "bc") hash differently.
        fields = json.dumps([self.client.model, question, gold, answer], ensure_ascii=False)
        return hashlib.sha256(fields.encode("utf-8")).hexdigest()

    def _remember(self, scores: dict[str, JudgeScore]) -> None:
        if not scores:
            return
        entries = {
            key: {name: getattr(score, name) for name in CRITERIA}
            for key, score in scores.items()
        }
        with self._lock:
            self._cache.update(entries)
            if self.cache_path is not None:
                self._append_cache(self.cache_path, entries)

    def _append_cache(self, path: Path, entries: dict[str, dict[str, float]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [
            (json.dumps({"key": key, "model": self.client.model, **values}) + "\n").encode()
            for key, values in entries.items()
        ]
        # Unbuffered, so each line goes to the file in one write call: entries land whole
        # even when another process appends to the same cache.
        with open(path, "a+b", buffering=0) as handle:
            # A run killed mid-write leaves a line without its newline; start on a fresh line
            # so the next entry is not glued to the broken one.
            if handle.seek(0, os.SEEK_END) > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    lines[0] = b"\n" + lines[0]
            for line in lines:
                handle.write(line)

    @staticmethod
    def _read_cache(path: Path) -> dict[str, dict[str, float]]:
        """Earlier scores by key; lines that do not parse (a write cut short) are skipped."""
        cache: dict[str, dict[str, float]] = {}
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                    values = {name: float(entry[name]) for name in CRITERIA}
                    cache[str(entry["key"])] = values
                except (ValueError, KeyError, TypeError):
                    continue
        return cache
