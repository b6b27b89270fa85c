"""Grammar-constrained decoding: the engine's per-stream hook on the logits before the pick.

Each stream of a call may carry a JSON schema its reply must satisfy. A
:class:`JsonConstraint` holds one xgrammar matcher per such stream (advanced first through
the part of the reply already in the prompt, e.g. ``{"answer": "``). At every step the
engine asks it to mask the logits of the streams that pick a token now (a columnar branch
still feeding its prompt does not), so greedy and sampled picks alike only choose tokens
that keep the reply inside the schema; then it tells it the token each stream picked, and a
stream that finished leaves. Once a reply is complete, only the end-of-sequence tokens are
allowed. Streams without a schema are left alone.

xgrammar works on the tokenizer's vocabulary, decoded once per tokenizer
(:class:`Grammars`, which also compiles each distinct schema once). Several calls stacked
into one (packing) stack their constraints with :func:`stack_constraints`.

Shapes: ``S`` streams, ``V`` vocabulary (the logits' width), ``W = ceil(V / 32)``.
"""

from __future__ import annotations

from typing import Any

import torch

from paralleldecode.errors import OptionError


class Grammars:
    """xgrammar's view of one tokenizer, and the schemas compiled for it.

    Args:
        tokenizer: a Hugging Face tokenizer.
        vocab_size: the width of the model's logits (may exceed the tokenizer's vocabulary).
        stop_token_ids: the ids that end a reply once the grammar is complete.
        model_name: named in the error when xgrammar cannot read the tokenizer.

    Raises:
        OptionError: xgrammar cannot read this tokenizer (the message names the model and
            says that ``structured_output: false`` runs it unconstrained).
    """

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids: list[int], model_name: str = "the model") -> None:
        import xgrammar as xgr

        try:
            self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                            stop_token_ids=sorted(stop_token_ids))
            self.compiler = xgr.GrammarCompiler(self.info, max_threads=2)
        except Exception as err:  # noqa: BLE001 - xgrammar raises several kinds
            raise OptionError(
                f"structured output: xgrammar cannot read the tokenizer of {model_name} "
                f"({type(err).__name__}: {' '.join(str(err).split())[:200]}); set "
                "--model.init_args.structured_output false to run this model unconstrained"
            ) from None
        self.vocab_size = vocab_size
        self._compiled: dict[str, Any] = {}

    def compiled(self, schema: str):
        """The compiled grammar of a JSON schema (JSON text), compiled once."""
        if schema not in self._compiled:
            # Compact separators: the replies are primed with `{"answer": "` and end in `"}`.
            self._compiled[schema] = self.compiler.compile_json_schema(schema, any_whitespace=False)
        return self._compiled[schema]

    def constraint(self, schemas: list[str | None], prefixes: list[str]) -> JsonConstraint | None:
        """A constraint for streams whose replies follow ``schemas`` (None: unconstrained)
        and whose prompts already hold ``prefixes`` of them; None when no stream has one."""
        if not any(schemas):
            return None
        return JsonConstraint([self.compiled(s) if s else None for s in schemas], prefixes, self.vocab_size)


class JsonConstraint:
    """Per-stream matchers (see the module docstring)."""

    def __init__(self, grammars: list, prefixes: list[str], vocab_size: int) -> None:
        import xgrammar as xgr

        self.matchers: list = []
        for grammar, prefix in zip(grammars, prefixes):
            if grammar is None:
                self.matchers.append(None)
                continue
            matcher = xgr.GrammarMatcher(grammar)
            if prefix and not matcher.accept_string(prefix):
                raise ValueError(f"the reply's primed opening {prefix!r} is not a start of its schema")
            self.matchers.append(matcher)
        self.bitmask = xgr.allocate_token_bitmask(max(1, len(grammars)), vocab_size)  # (S, W) int32
        self.seconds = 0.0  # time spent in the hook, for the cost figures

    @property
    def num_streams(self) -> int:
        return len(self.matchers)

    def mask(self, streams: list[int], logits: torch.Tensor) -> None:
        """Block, in place, every token that would leave the schema.

        Args:
            streams: the streams picking now, in the order of ``logits``' rows.
            logits: ``(len(streams), V)`` float logits.
        """
        import time

        import xgrammar as xgr

        start = time.perf_counter()
        rows = []
        for j, i in enumerate(streams):
            m = self.matchers[i]
            if m is not None:
                m.fill_next_token_bitmask(self.bitmask, j)
                rows.append(j)
        if rows:
            bitmask = self.bitmask[: len(streams)].to(logits.device, non_blocking=True)
            xgr.apply_token_bitmask_inplace(logits, bitmask, indices=rows)
        self.seconds += time.perf_counter() - start

    def accept(self, stream: int, token: int) -> None:
        """Advance stream ``stream``'s matcher with the token it picked."""
        m = self.matchers[stream]
        if m is not None and not m.is_terminated() and not m.accept_token(token):
            raise RuntimeError(f"stream {stream} picked token {token}, which its grammar does not allow")

    def finish(self, stream: int) -> None:
        """The stream stopped: its matcher leaves."""
        self.matchers[stream] = None


class StackedConstraints:
    """The constraints of several calls decoded as one (streams in order, parts may be None)."""

    def __init__(self, parts: list[JsonConstraint | None], counts: list[int]) -> None:
        self.owner: list[tuple[JsonConstraint | None, int]] = [
            (part, i) for part, n in zip(parts, counts) for i in range(n)]
        self.parts = [p for p in parts if p is not None]

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.parts)

    def mask(self, streams: list[int], logits: torch.Tensor) -> None:
        by_part: dict[int, tuple[JsonConstraint, list[int], list[int]]] = {}
        for j, i in enumerate(streams):
            part, local = self.owner[i]
            if part is not None:
                by_part.setdefault(id(part), (part, [], []))[1].append(local)
                by_part[id(part)][2].append(j)
        for part, locals_, rows in by_part.values():
            sub = logits[rows]
            part.mask(locals_, sub)
            logits[rows] = sub

    def accept(self, stream: int, token: int) -> None:
        part, local = self.owner[stream]
        if part is not None:
            part.accept(local, token)

    def finish(self, stream: int) -> None:
        part, local = self.owner[stream]
        if part is not None:
            part.finish(local)


def stack_constraints(parts: list[JsonConstraint | None], counts: list[int]) -> StackedConstraints | None:
    """One constraint for stacked calls with ``counts`` streams each; None if none has one."""
    if not any(p is not None for p in parts):
        return None
    return StackedConstraints(parts, counts)
