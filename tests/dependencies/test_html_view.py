"""The per-group HTML page: parseable, self-contained, escaped."""

from __future__ import annotations

import html
from html.parser import HTMLParser

import pytest

from paralleldecode.data.records import Question, QuestionGroup
from paralleldecode.dependencies import Edge, render_group_html, write_group_html

QUESTIONS = [
    "Who designed the bridge?",
    "In what year did that designer die?",
    "What did <script>alert('x')</script> & \"friends\" say?",
    "Where was the designer born?",
]


@pytest.fixture()
def group() -> QuestionGroup:
    return QuestionGroup(
        "squad/bridge<1>", "squad",
        [Question(f"q{i}", t, answers=["gold"]) for i, t in enumerate(QUESTIONS)],
        background="The bridge <b>was</b> designed by Ann & Co.",
    )


EDGES = [Edge(0, 1, 0.75, "'that designer'"), Edge(0, 3, 0.6), Edge(1, 3, 0.55)]
ANSWERS = [
    {"question_id": "q0", "answer": "Ann", "gold": ["Ann", "Ann Lee"], "em": 1, "f1": 1.0,
     "layer": 0},
    {"question_id": "q1", "answer": "1901", "gold": ["1902"], "em": 0, "f1": 0.0},
    {"question_id": "q2", "answer": "<i>hi</i>", "gold": [], "em": None},
]
COSTS = {"prompt tokens": 1234, "generated tokens": 56, "dependency tokens": 0, "layers": 3,
         "wall seconds": 1.2345, "ideal latency": 0.8}


class Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.scripts += tag == "script"

    def error(self, message):  # older Python versions call this on malformed input
        raise AssertionError(message)


def test_page_parses_and_holds_everything(group):
    page = render_group_html(group, EDGES, ANSWERS, COSTS)
    parser = Collector()
    parser.feed(page)
    parser.close()
    assert "svg" in parser.tags and "table" in parser.tags
    assert parser.scripts == 0
    assert "<svg" in page
    for text in QUESTIONS:
        assert html.escape(text) in page
    assert html.escape("Group squad/bridge<1>") in page
    for name in COSTS:
        assert name in page
    assert "1,234" in page
    assert "0.75" in page  # an edge label
    assert "not scored" in page and "incorrect" in page and "correct" in page


def test_page_is_self_contained(group):
    page = render_group_html(group, EDGES, ANSWERS, COSTS)
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "<img" not in page and "src=" not in page


def test_markup_in_text_is_escaped(group):
    page = render_group_html(group, EDGES, ANSWERS, COSTS)
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert "<i>hi</i>" not in page and "<b>was</b>" not in page


def test_title_and_no_edges(group):
    page = render_group_html(group, [], [], {}, title="My <title>")
    assert html.escape("My <title>") in page
    assert "No edges." in page


def test_cyclic_edges_are_rejected(group):
    with pytest.raises(ValueError, match="cycl"):
        render_group_html(group, [Edge(0, 1, 0.9), Edge(1, 0, 0.9)], [], {})


def test_write_creates_the_file(group, tmp_path):
    path = write_group_html(tmp_path / "deep" / "g.html", group, EDGES, ANSWERS, COSTS)
    assert path.read_text(encoding="utf-8") == render_group_html(group, EDGES, ANSWERS, COSTS)


def test_multiple_choice_correctness_falls_back_to_accuracy(group):
    answers = [{"question_id": "q0", "answer": "B", "gold": ["B"], "em": None, "accuracy": 1.0}]
    page = render_group_html(group, [], answers, {})
    assert '<tr class="correct">' in page
