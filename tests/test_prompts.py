"""Prompt rendering and tolerant answer parsing."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from paralleldecode.data.records import Question, QuestionGroup
from paralleldecode.prompts import (
    MANY_ANSWERS,
    ONE_ANSWER,
    PromptRenderer,
    all_questions,
    conversation,
    one_question,
    parse_answer,
    parse_answers,
)

GROUP = QuestionGroup(
    id="g", dataset="demo", background="Maud Feren built the lighthouse in 1871.",
    questions=[Question("q1", "Who built it?", ["Maud Feren"]), Question("q2", "When?", ["1871"])],
)


@pytest.mark.parametrize("text, answer, ok", [
    ('{"answer": "Maud Feren"}', "Maud Feren", True),
    ('Sure! {"answer": 1871} hope that helps', "1871", True),
    ('{"answer": "Maud Feren", "why": "she', "Maud Feren", False),
    ('{"answer": "Maud \\"M\\" Feren', 'Maud "M" Feren', False),
    ("Maud Feren built it.\nMore text", "Maud Feren built it.", False),
    ("", "", False),
])
def test_parse_answer(text, answer, ok):
    p = parse_answer(text)
    assert (p.answer, p.format_ok) == (answer, ok)


def test_parse_answers_strict_and_tolerant():
    strict = parse_answers('{"answers": {"1": "Maud Feren", "2": "1871"}}', 2)
    assert [(p.answer, p.format_ok) for p in strict] == [("Maud Feren", True), ("1871", True)]
    as_list = parse_answers('{"answers": ["a", "b"]}', 2)
    assert [p.answer for p in as_list] == ["a", "b"]
    missing = parse_answers('{"answers": {"1": "a"}}', 2)
    assert [(p.answer, p.format_ok) for p in missing] == [("a", True), ("", False)]
    cut = parse_answers('{"answers": {"1": "Maud Feren", "2": "18', 3)
    assert [(p.answer, p.format_ok) for p in cut] == [("Maud Feren", False), ("18", False), ("", False)]
    lines = parse_answers("1. Maud Feren\n2) 1871", 2)
    assert [p.answer for p in lines] == ["Maud Feren", "1871"]


def test_reply_format_completes_only_when_closed():
    assert ONE_ANSWER.complete("x", "stop_string") == '{"answer": "x"}'
    assert ONE_ANSWER.complete("x", "length") == '{"answer": "x'
    assert parse_answer(ONE_ANSWER.complete("x", "stop_string")).format_ok
    assert not parse_answer(ONE_ANSWER.complete("x", "length")).format_ok
    assert parse_answers(MANY_ANSWERS.complete('a", "2": "b', "stop_string"), 2)[1].answer == "b"


def test_messages_carry_context_once():
    one = one_question(GROUP, GROUP.questions[1])
    assert GROUP.background in one[-1]["content"] and "When?" in one[-1]["content"]
    conv = conversation(GROUP, [(GROUP.questions[0], '{"answer": "Maud Feren"}')], GROUP.questions[1])
    assert [m["role"] for m in conv] == ["system", "user", "assistant", "user"]
    assert sum(GROUP.background in m["content"] for m in conv) == 1
    many = all_questions(GROUP)[-1]["content"]
    assert "Question 1: Who built it?" in many and "Question 2: When?" in many


def test_renderer_uses_chat_template_or_plain(tiny_models):
    chat = PromptRenderer(AutoTokenizer.from_pretrained(tiny_models["llama"]))
    text = chat.text(one_question(GROUP, GROUP.questions[0]), ONE_ANSWER.prefix)
    assert text.startswith("<|im_start|>system") and text.endswith('<|im_start|>assistant\n{"answer": "')
    plain_tok = AutoTokenizer.from_pretrained(tiny_models["llama-nochat"])
    plain = PromptRenderer(plain_tok)
    assert not plain.chat
    assert plain.text(one_question(GROUP, GROUP.questions[0])).endswith("Assistant: ")
    with pytest.raises(ValueError, match="no chat template"):
        PromptRenderer(plain_tok, "always")
    with pytest.raises(ValueError, match="auto, always, never"):
        PromptRenderer(plain_tok, "sometimes")
