"""Every prompt the package sends, and the parsing of every answer it gets back.

Answers are requested as JSON (``{"answer": "..."}``, or ``{"answers": {"1": "...", ...}}``
for several questions in one prompt) so they can be parsed reliably. Small models often
drift from the format, so parsing is tolerant: a strict JSON parse first, then a lenient
pattern, then the raw text. Only the first counts as *format ok*; the others are kept as
answers (never dropped) and counted as format failures.

The tokenizer's chat template is used when it has one; otherwise a plain
``System:/User:/Assistant:`` transcript.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from paralleldecode.data.records import MAX_OPTIONS, Question, QuestionGroup

SYSTEM_ONE = (
    "You answer questions about a text. Give the shortest answer that is correct, "
    "preferably words copied from the text. Reply with JSON only, in the form "
    '{"answer": "..."}.'
)
SYSTEM_MANY = (
    "You answer several numbered questions about a text. Give the shortest answer to each, "
    "preferably words copied from the text. Reply with JSON only, in the form "
    '{"answers": {"1": "...", "2": "..."}} with one entry per question.'
)
SYSTEM_PLAN = (
    "You help plan a project. For the sub-task you are given, write a short, concrete plan "
    "(a few steps, within the stated constraints). Reply with JSON only, in the form "
    '{"answer": "..."}.'
)
SYSTEM_EDGES = (
    "You analyse a list of numbered questions about one text. A question depends on an "
    "earlier one when answering it needs that earlier answer (for example it refers to "
    "\"she\" or \"that year\" introduced by the earlier question). List only real "
    "dependencies. Reply with JSON only: "
    '{"edges": [{"from": 1, "to": 2, "confidence": 0.9, "reason": "..."}]} where "to" '
    'depends on "from"; use {"edges": []} when there are none.'
)
# Data sets whose questions are not extractive QA get their own instruction.
SYSTEM_BY_DATASET = {"planning": SYSTEM_PLAN}
LETTERS = "ABCDEFGHIJ"[:MAX_OPTIONS]

Message = dict[str, str]


@dataclass(frozen=True)
class ReplyFormat:
    """The JSON reply a prompt asks for.

    The opening (``prefix``) is written into the prompt after the assistant's turn starts,
    so even a small model answers in the format; generation stops at ``close``. A reply
    only counts as well-formed when the model itself wrote the closing characters.

    ``schema`` (JSON text) is the JSON schema the whole reply, prefix included, must
    satisfy; with structured output on, decoding is constrained to it (the prefix is fed to
    the grammar first, so its state matches what the prompt already holds), and API
    requests carry it as ``response_format``. The replies below are made for one question,
    a group or a dependency request by :func:`answer_reply`, :func:`answers_reply` and
    :func:`edges_reply`.
    """

    prefix: str
    close: str
    schema: str | None = None

    def complete(self, generated: str, finish_reason: str) -> str:
        """The whole reply: the prefix, what was generated, and the close if it was hit."""
        return self.prefix + generated + (self.close if finish_reason == "stop_string" else "")

    @property
    def json_schema(self) -> dict[str, Any] | None:
        return json.loads(self.schema) if self.schema else None


ONE_ANSWER = ReplyFormat('{"answer": "', '"}')
MANY_ANSWERS = ReplyFormat('{"answers": {"1": "', '"}}')
EDGES = ReplyFormat('{"edges": [', "]}")
# A dependency's reason is a short phrase; its length bounds what one edge costs to write.
REASON_CHARS = 60


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties),
            "additionalProperties": False}


def _with(reply: ReplyFormat, schema: dict[str, Any]) -> ReplyFormat:
    return ReplyFormat(reply.prefix, reply.close, json.dumps(schema, separators=(",", ":")))


def _answer_schema(question: Question | None) -> dict[str, Any]:
    if question is not None and question.options:
        return {"enum": list(option_letters(len(question.options)))}
    return {"type": "string"}


def answer_reply(question: Question | None = None) -> ReplyFormat:
    """``{"answer": string}``; for a multiple-choice question the answer is one of its
    option letters."""
    return _with(ONE_ANSWER, _object({"answer": _answer_schema(question)}))


def answers_reply(questions: list[Question]) -> ReplyFormat:
    """``{"answers": {"1": ..., "N": ...}}``: exactly the group's numbers, each a string, or
    for a multiple-choice question one of its option letters."""
    return _with(MANY_ANSWERS, _object({"answers": _object({
        str(i + 1): _answer_schema(q) for i, q in enumerate(questions)})}))


def edges_reply(n: int, max_edges: int) -> ReplyFormat:
    """``{"edges": [...]}`` with at most ``max_edges`` edges between questions ``1..n``:
    ``from`` and ``to`` two different question numbers, ``confidence`` in [0, 1], a short
    ``reason``."""
    if n < 2:
        return _with(EDGES, _object({"edges": {"type": "array", "maxItems": 0}}))
    edge = [_object({"from": {"const": i}, "to": {"enum": [j for j in range(1, n + 1) if j != i]},
                     "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                     # A pattern, not maxLength: xgrammar's maxLength rule lets control
                     # characters into the string, which JSON forbids.
                     "reason": {"type": "string", "pattern": f'^[^\\u0000-\\u001f"\\\\]{{0,{REASON_CHARS}}}$'}})
            for i in range(1, n + 1)]
    return _with(EDGES, _object({"edges": {"type": "array", "maxItems": max(0, max_edges),
                                           "items": {"anyOf": edge}}}))


def option_letters(n: int) -> str:
    """The letters of ``n`` options (a question has at most ``MAX_OPTIONS``)."""
    return LETTERS[:n]


@dataclass
class Parsed:
    """An answer pulled out of generated text.

    Attributes:
        answer: the answer text ("" when nothing could be found).
        format_ok: True only when the reply was the requested JSON.
    """

    answer: str
    format_ok: bool


def question_block(q: Question, number: int | None = None) -> str:
    """The text of one question, with its own context and options when it has them."""
    parts = []
    if q.context:
        parts.append(f"Context for this question:\n{q.context}")
    head = f"Question {number}: " if number is not None else "Question: "
    parts.append(head + q.text)
    if q.options:
        parts.append("\n".join(f"{letter}. {opt}" for letter, opt in zip(option_letters(len(q.options)), q.options)))
        parts.append("Answer with the letter of the correct option.")
    return "\n".join(parts)


def context_block(group: QuestionGroup) -> str:
    return f"Context:\n{group.background}\n\n" if group.background else ""


def single_system(group: QuestionGroup) -> str:
    """The instruction for one question of ``group``'s data set."""
    return SYSTEM_BY_DATASET.get(group.dataset, SYSTEM_ONE)


def one_question(group: QuestionGroup, q: Question, system: str | None = None,
                 parents: list[tuple[Question, str]] = ()) -> list[Message]:
    """Messages asking a single question of the group.

    Args:
        parents: earlier questions this one depends on, with their answers; they are
            placed between the context and the question.
    """
    known = ""
    if parents:
        known = "Answers to earlier questions:\n" + "\n".join(
            f"- {p.text} Answer: {a}" for p, a in parents) + "\n\n"
    return [
        {"role": "system", "content": system or single_system(group)},
        {"role": "user", "content": context_block(group) + known + question_block(q)},
    ]


def conversation(
    group: QuestionGroup, asked: list[tuple[Question, str]], q: Question, system: str | None = None
) -> list[Message]:
    """A multi-turn chat: the context with the first question, then one turn per question.

    Args:
        asked: earlier questions with the model's raw replies, in order.
        q: the question of this turn.
    """
    msgs: list[Message] = [{"role": "system", "content": system or single_system(group)}]
    for i, (prev, reply) in enumerate(asked):
        lead = context_block(group) if i == 0 else ""
        msgs.append({"role": "user", "content": lead + question_block(prev)})
        msgs.append({"role": "assistant", "content": reply})
    lead = context_block(group) if not asked else ""
    msgs.append({"role": "user", "content": lead + question_block(q)})
    return msgs


def dependency_request(group: QuestionGroup) -> list[Message]:
    """Asks which of the group's questions depend on which (numbered from 1)."""
    listing = "\n".join(f"{i + 1}. {q.text}" for i, q in enumerate(group.questions))
    return [
        {"role": "system", "content": SYSTEM_EDGES},
        {"role": "user", "content": context_block(group) + "Questions:\n" + listing},
    ]


def all_questions(group: QuestionGroup, system: str = SYSTEM_MANY) -> list[Message]:
    """One prompt carrying every question of the group, numbered from 1."""
    body = "\n\n".join(question_block(q, i + 1) for i, q in enumerate(group.questions))
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": context_block(group) + body},
    ]


class PromptRenderer:
    """Turns messages into token ids with the tokenizer's chat template (or a plain one).

    Args:
        tokenizer: a Hugging Face tokenizer.
        use_chat_template: ``"auto"`` (when the tokenizer has one), ``"always"`` or ``"never"``.
    """

    def __init__(self, tokenizer, use_chat_template: str = "auto") -> None:
        if use_chat_template not in ("auto", "always", "never"):
            raise ValueError(
                f"use_chat_template must be one of auto, always, never; got {use_chat_template!r}"
            )
        has = getattr(tokenizer, "chat_template", None) is not None
        if use_chat_template == "always" and not has:
            raise ValueError("use_chat_template='always' but the tokenizer has no chat template")
        self.tokenizer = tokenizer
        self.chat = has and use_chat_template != "never"

    def text(self, messages: list[Message], reply_prefix: str = "") -> str:
        """The prompt text, ending where the assistant's reply starts (plus ``reply_prefix``)."""
        if self.chat:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        else:
            lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
            text = "\n\n".join(lines) + "\n\nAssistant: "
        return text + reply_prefix

    def ids(self, messages: list[Message], reply_prefix: str = "") -> list[int]:
        # A chat template writes its own special tokens; a plain transcript gets the
        # tokenizer's usual ones (BOS for Llama-style tokenizers).
        text = self.text(messages, reply_prefix)
        return self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"]


_ANSWER_FIELD = re.compile(r'"answer"\s*:\s*"((?:[^"\\]|\\.)*)"?', re.S)
_NUMBERED = re.compile(r'^\s*"?(\d+)"?\s*[.):\-]?\s*:?\s*"?(.*?)"?,?\s*$')
# `"3": "text` in JSON that was cut off or broken: the text runs to its quote or the end.
_NUMBERED_FIELD = re.compile(r'"(\d+)"\s*:\s*"((?:[^"\\]|\\.)*)')


def json_objects(text: str):
    """Every JSON object that parses, scanning from each ``{`` in the text (so one wrapped
    in prose or code fences is found, and so are the objects nested in it)."""
    dec = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = dec.raw_decode(text, m.start())
        except ValueError:
            continue
        if isinstance(obj, dict):
            yield obj


def _as_text(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(_as_text(v) for v in value)
    return "" if value is None else str(value).strip()


def parse_answer(text: str) -> Parsed:
    """Parse a single-question reply: ``{"answer": ...}`` strictly, else tolerantly."""
    for obj in json_objects(text):
        if "answer" in obj:
            return Parsed(_as_text(obj["answer"]), True)
    m = _ANSWER_FIELD.search(text)
    if m:
        return Parsed(m.group(1).replace('\\"', '"').strip(), False)
    raw = text.strip().strip("{}").strip()
    return Parsed(raw.splitlines()[0].strip().strip('"') if raw else "", False)


def parse_answers(text: str, n: int) -> list[Parsed]:
    """Parse a reply to ``n`` numbered questions.

    Accepted strictly: ``{"answers": {"1": ..}}``, ``{"answers": [..]}`` or ``{"1": ..}``.
    Otherwise ``"2": "..."`` fields of broken or cut-off JSON and numbered lines
    (``1. ...``) are read; a question with no answer found gets ``""``; all of these count
    as format failures.
    """
    for obj in json_objects(text):
        table = obj.get("answers", obj)
        if isinstance(table, list):
            table = {str(i + 1): v for i, v in enumerate(table)}
        if isinstance(table, dict) and any(str(i + 1) in table for i in range(n)):
            return [
                Parsed(_as_text(table[str(i + 1)]), True) if str(i + 1) in table else Parsed("", False)
                for i in range(n)
            ]
    found: dict[int, str] = {}
    for m in _NUMBERED_FIELD.finditer(text):
        if 1 <= int(m.group(1)) <= n and m.group(2).strip():
            found.setdefault(int(m.group(1)), m.group(2).replace('\\"', '"').strip())
    for line in text.splitlines():
        m = _NUMBERED.match(line)
        if m and m.group(2) and 1 <= int(m.group(1)) <= n:
            found.setdefault(int(m.group(1)), m.group(2).strip())
    return [Parsed(found.get(i + 1, ""), False) for i in range(n)]

