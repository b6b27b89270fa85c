"""The one decoding engine: prefill, a step loop over a KV cache, sampling and stopping.

Every strategy generates through :meth:`DecodingEngine.generate`; what differs between
strategies is the :class:`~paralleldecode.decoding.layout.Layout` they hand in (how
sequences share a row and who may see whom), never the loop. Columnar layouts (2D
positions, :mod:`~paralleldecode.decoding.columnar`) run through the same loop: each step
feeds one token per live branch, all in one column; a branch may first feed the rest of its
prompt (``Layout.pending``), and a branch that stops feeds its last token once more so the
branches still running see it as they would in training.

Unlike ``model.generate`` the engine passes explicit positions and an explicit 4D mask, so
any layout works with stock Hugging Face modeling code; a row whose streams have all
finished is dropped from the cache so it stops costing compute.

The prefill is a plan, not one call: rows may start from KV computed earlier
(``Layout.past``: a shared prefix that every question's row reads, held once where the
model allows it and copied into each row elsewhere, or a conversation kept from the
previous turn), and the remaining prompt slots go through the model in chunks of
at most ``prefill_chunk`` query slots per row, so no tensor grows with rows x L x L. A
single row whose leading slots form a plain causal sequence (a shared prefix, a lone
prompt) sends those through the model's own causal path, with no explicit mask at all,
unless the whole prompt fits one chunk (then one masked pass). Stacked layouts (packing)
that are short go one after another in a single row, one masked pass without padding, each
seeing only its own slots.
Where the steps compile, these eager passes run the model's linears on packed oneDNN
weights (:mod:`~paralleldecode.decoding.packed`), its masked attention as blocked oneDNN
matmuls where they win (:mod:`~paralleldecode.decoding.attention`) or, for float32 models
on an AVX-512 CPU, its attention in the package's prefill kernel
(:mod:`~paralleldecode.decoding.cpu_kernels`).

Streams of one call may have their own token budget and stop strings (one
:class:`GenerationConfig` per stream), which is what lets several groups share a call.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from paralleldecode.decoding import cpu_kernels
from paralleldecode.decoding.attention import (
    BlockedAttention,
    PrefillAttention,
    SharedPastAttention,
    reading_shared_past,
    shared_past_available,
    slower_here,
    unswitchable,
)
from paralleldecode.decoding.attention import available as attention_available
from paralleldecode.decoding.cache import (
    GrowingLayer,
    RowCache,
    fill_left_padded,
    new_cache,
    reserved_slots,
    row_cache,
    shared_past_cache,
    shares_past,
    stack_row_caches,
)
from paralleldecode.decoding.compiled import SlotBuffers, StepCompiler, resolve, step_width
from paralleldecode.decoding.layout import (
    PAD,
    SHARED,
    Layout,
    additive,
    independent_rows,
    layout_mask,
    prefill_mask,
    shared_prefix,
    side_by_side,
    stack_layouts,
)
from paralleldecode.decoding.memory import keep_freed_memory
from paralleldecode.decoding.packed import PackedLinears, available
from paralleldecode.models.crossbatch_lm import states_to_mix
from paralleldecode.models.loading import cache_keyword

log = logging.getLogger(__name__)

# Rows share a past only from this many tokens on: below, copies cost as little and keep the
# compiled step. Eager steps of the embedded model (fp32, 2-core Intel Xeon), ms per step with
# the past shared against copied: 5 rows over a 300-token past 56.8 against 55.5, 1,000
# tokens 64.5 against 70.7, 4,700 tokens 115 against 156; 10 rows 77.4 against 79.2, 87.6
# against 104, 153 against 278.
MIN_SHARED_PAST = 512


@dataclass
class GenerationConfig:
    """How to pick and stop tokens.

    Attributes:
        max_new_tokens: per stream, including the token that stops it.
        temperature: 0 for greedy decoding; > 0 samples from the softened distribution.
        top_p: nucleus sampling: keep the smallest set of tokens whose probability reaches
            ``top_p`` (1.0 keeps all). Only used when sampling.
        seed: seeds the sampler's generator, so sampled runs repeat; None = unseeded.
        stop_strings: a stream stops once its decoded text contains one of these; the text
            is cut before it.
        eos_token_ids: ids that end a stream; None takes the model's and tokenizer's.
        output_logits: keep, for every generated token, the ``(V,)`` logits it was picked
            from (``StreamResult.logits``).
    """

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop_strings: tuple[str, ...] = ()
    eos_token_ids: tuple[int, ...] | None = None
    output_logits: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        self.stop_strings = tuple(self.stop_strings)

    def budget(self, max_new_tokens: int | None) -> GenerationConfig:
        """This config with another ``max_new_tokens`` for one call (None keeps it)."""
        return self if max_new_tokens is None else replace(self, max_new_tokens=max_new_tokens)


@dataclass
class StreamResult:
    """What one stream produced.

    Attributes:
        token_ids: generated ids, up to and including the one that stopped the stream.
        text: decoded answer (special tokens skipped, cut before a stop string).
        finish_reason: ``"eos"``, ``"stop_string"`` or ``"length"`` (a remote back-end
            may also say ``"error"``).
        prompt_tokens: tokens in this stream's prompt.
        generated_tokens: tokens generated; ``len(token_ids)`` unless given (a remote
            back-end reports a count, not ids).
        error: why the stream failed (remote back-ends), None when it did not.
        finish_seconds: time from the call's start until this stream stopped (its own
            latency within the batch; a remote request's own latency).
        logits: ``(G, V)`` float logits each generated token was picked from, when
            ``GenerationConfig.output_logits`` is set; else None.
        schema_fallback: a remote back-end refused the reply's schema and the request was
            sent again without it.
    """

    token_ids: list[int]
    text: str
    finish_reason: str
    prompt_tokens: int
    generated_tokens: int = -1
    error: str | None = None
    finish_seconds: float = 0.0
    logits: torch.Tensor | None = None
    schema_fallback: bool = False

    def __post_init__(self) -> None:
        if self.generated_tokens < 0:
            self.generated_tokens = len(self.token_ids)


@dataclass
class GenerationResult:
    """All streams of one :meth:`DecodingEngine.generate` call and what it cost.

    Attributes:
        streams: one result per stream, in the layout's stream order.
        forward_passes: model calls (the prefill counts as one).
        prompt_tokens_processed: prompt tokens the prefill computed (padding excluded).
        wall_seconds: from the prefill to the last stream's stop.
        peak_cache_bytes: largest KV-cache size seen.
        step_tokens: token slots fed over all decoding steps (padding slots included): what
            the steps after the prefill computed. A finished stream adds nothing to the
            eager steps; a compiled CUDA call feeds it padding to its end; in a compiled CPU
            call a row with no live stream feeds padding until rows are dropped (at halvings),
            and a lone row feeds two slots at least.
        prefill_seconds: wall time of the prefill (the first token of every stream included).
        caches: with ``keep_cache``, each stream's row cache at the end (its prompt and
            every generated token but the last, which was never fed); else None.
        prefill_passes: the model calls of the prefill (chunks; a plain prefix and the
            masked rest are separate calls); the other passes are decoding steps.
        share: the part of the call's passes and time that belongs to these streams when
            the call served several groups (packing); 1 otherwise.
        constraint_seconds: time spent in the constraint hook (filling and applying the
            allowed-token masks).
        compile_seconds: time spent compiling step graphs during this call (0 once they
            are compiled, e.g. by :meth:`DecodingEngine.warm_up`).
        compiled: whether the decoding steps ran compiled.
    """

    streams: list[StreamResult]
    forward_passes: int
    prompt_tokens_processed: int
    wall_seconds: float
    peak_cache_bytes: int = 0
    step_tokens: int = 0
    prefill_seconds: float = 0.0
    caches: list[RowCache] | None = None
    prefill_passes: int = 1
    share: float = 1.0
    constraint_seconds: float = 0.0
    compile_seconds: float = 0.0
    compiled: bool = False

    @property
    def generated_tokens(self) -> int:
        return sum(s.generated_tokens for s in self.streams)


@dataclass
class _State:
    """Mutable loop state; rows are renumbered when finished rows leave the cache. What the
    host decides per step (rows, positions, tokens) is kept in Python lists, so that a step
    on a GPU reads nothing back but its picked tokens."""

    stream_row: list[int]  # current row of each stream, -1 once its row is gone
    position: list[int]  # position (column) of each stream's next fed token
    cache_owner: torch.Tensor  # (R, L)
    cache_ids: torch.Tensor  # (R, L) token id of every cached slot
    cache_column: torch.Tensor | None  # (R, L) columns of a columnar layout, else None
    tokens: list[list[int]]
    done: list[bool]
    reasons: list[str]
    pending: list[list[int]]  # prompt tokens still to feed, per stream
    feed: list[int]  # the token each stream feeds next
    texts: list[str | None] = field(default_factory=list)
    finished: list[float] = field(default_factory=list)
    logits: list[list[torch.Tensor]] = field(default_factory=list)
    kept: dict[int, RowCache] = field(default_factory=dict)  # caches of streams whose row left


class DecodingEngine:
    """Generates for every stream of a layout with one model.

    Args:
        model: a Hugging Face causal LM taking ``attention_mask`` as a 4D tensor and
            explicit ``position_ids`` (Llama, Qwen2, Qwen3, Mistral, ...).
        tokenizer: its tokenizer (decoding, pad and EOS ids).
        mixer: the cross-batch hook: when set, every step takes the hidden state of each
            live stream's latest token ``(S, D)`` from layer ``mix_layer``, passes it with
            the streams' group ids ``(S,)`` through ``mixer(states, groups)`` and projects
            the result with the LM head, instead of the model's own logits. Streams that
            have finished no longer take part.
        mix_layer: which layer's output to mix (-1 = the last, after the final norm; an
            earlier layer's output gets the final norm before the LM head).
        prefill_chunk: most prompt slots per row that one prefill forward computes; longer
            prompts are prefilled in several calls (each a forward pass), so attention
            scores and masks stay ``rows x prefill_chunk x L`` instead of ``rows x L x L``.
        plain_chunk: most slots of the one prefill pass that needs no mask at all: a single
            row's plain causal start (a shared prefix, a lone prompt) over an empty cache,
            which a causal kernel (the package's prefill kernel or torch's) computes without
            keeping scores; what follows goes in ``prefill_chunk`` passes. Smaller than
            ``prefill_chunk`` means ``prefill_chunk``. Stacked short layouts (packing) are
            prefilled side by side in one masked pass of up to ``sqrt(prefill_chunk x
            plain_chunk)`` slots (2,048 by default): its mask is as large as a
            ``prefill_chunk`` pass's over ``plain_chunk`` keys.
        compile: ``"auto"``, ``"on"`` or ``"off"``: whether decoding steps of 1D layouts
            run as one compiled graph (:mod:`~paralleldecode.decoding.compiled`, which says
            what ``auto`` picks); columnar layouts and a mixer always decode eagerly. The
            ``PARALLELDECODE_COMPILE`` environment variable replaces ``auto`` for a process.
        share_past: rows that all start from one row cache of at least
            :data:`MIN_SHARED_PAST` tokens (``Layout.past``: a prefix prefilled once for
            ``batch_cached``) read its KV in place, held once
            (:class:`~paralleldecode.decoding.cache.SharedPastLayer`), where the model allows
            it (:func:`~paralleldecode.decoding.attention.shared_past_available`: an sdpa
            model on the CPU); such calls decode eagerly. False, or elsewhere: every row takes
            a copy of it.
    """

    def __init__(self, model, tokenizer, mixer=None, mix_layer: int = -1,
                 prefill_chunk: int = 512, compile: str | bool = "auto", plain_chunk: int = 8192,
                 share_past: bool = True) -> None:
        for name, value in (("prefill_chunk", prefill_chunk), ("plain_chunk", plain_chunk)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.model = model
        self.tokenizer = tokenizer
        self.mixer = mixer
        self.mix_layer = mix_layer
        self.prefill_chunk = prefill_chunk
        self.plain_chunk = max(plain_chunk, prefill_chunk)
        self.side_by_side_slots = math.isqrt(self.prefill_chunk * self.plain_chunk)
        on, self.compile_note = resolve(compile, model)
        if compile in ("on", True) and not on:
            log.warning("compile: decoding eagerly: %s", self.compile_note)
        self.steps = StepCompiler.for_model(model) if on and mixer is None else None
        if self.steps is not None and self.steps.kernel_note:
            self.compile_note += f"; {self.steps.kernel_note}"
        if self.device.type == "cpu":
            # transformers hands sdpa grouped key/value heads natively only without a mask;
            # with one (every layout here) it copies the whole cache once per query head at
            # every forward. torch's CPU kernel takes the mask with grouped heads (8x faster
            # per layer measured at 4.8K keys, same outputs), so let transformers use it.
            os.environ.setdefault("TRANSFORMERS_SDPA_FORCE_GQA", "1")
            # Every pass allocates and frees blocks of up to tens of MiB; glibc's defaults
            # hand them back to the kernel and fault fresh pages in at the next pass.
            keep_freed_memory()
        # The same setting routes the eager passes' linears through packed oneDNN weights.
        self.packed = PackedLinears.for_model(model, prefill_chunk) if on and available(model) is None else None
        # ... and their attention through the package's prefill CPU kernel (float32 sdpa
        # models), or else, where raced against sdpa's kernel on this CPU they are the faster,
        # the masked calls through blocked oneDNN matmuls (float32 and bf16).
        self.attention = None
        if self.packed is not None:
            self.compile_note += "; eager passes (prefill) with packed oneDNN linears"
            kernel = unswitchable(model, "the prefill kernel", (torch.float32,)) or cpu_kernels.load()
            why = None if kernel is None else attention_available(model) or slower_here(model)
            if kernel is None:
                self.attention = PrefillAttention.for_model(model)
                self.compile_note += " and attention in the fused CPU kernel"
            elif why is None:
                self.attention = BlockedAttention.for_model(model)
                self.compile_note += f" and blocked attention; no prefill kernel ({kernel})"
            else:
                self.compile_note += f"; masked attention left as it is ({why}); no prefill kernel ({kernel})"
        self.shared_attention = None
        if share_past and shared_past_available(model) is None:
            self.shared_attention = SharedPastAttention.for_model(model)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # Read once from the installed transformers: `cache` where it exists.
        self.cache_keyword = cache_keyword(model)

    def warm_up(self, packed: bool = False) -> float:
        """Compile the decoding step now, so that no group's time pays for it; returns the
        seconds compiling took (0 when the steps are eager or already compiled).

        Args:
            packed: also compile the graph for rows of several streams each, which only
                stacked layouts of packed groups use (``pack_groups``); the other two graphs
                (one row; rows of one stream) serve every unpacked strategy. See
                :func:`~paralleldecode.decoding.compiled.step_width`. Without it a packed call
                compiles that graph on its first step.
        """
        if self.steps is None:
            return 0.0
        spent = self.steps.compile_seconds
        token = self.pad_id if self.pad_id != self.tokenizer.eos_token_id else 0
        once = GenerationConfig(max_new_tokens=2, eos_token_ids=())
        layouts = [independent_rows([[token] * 3], self.pad_id), independent_rows([[token] * 3] * 4, self.pad_id)]
        if packed:
            try:
                self.require_branch_support()
            except ValueError:  # no layout of this model puts several streams in a row
                packed = False
        if packed:
            branches = shared_prefix([[token] * 3, [token] * 4], self.pad_id)
            layouts.append(stack_layouts([branches, branches], self.pad_id))
        for layout in layouts:
            self.generate(layout, once)
        return self.steps.compile_seconds - spent

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_positions(self) -> int | None:
        """The model's context window in tokens, when its config states one."""
        return getattr(self.model.config, "max_position_embeddings", None)

    def require_branch_support(self) -> None:
        """Refuse models that branch layouts cannot serve, naming the model type.

        Branches continue positions from a shared prefix, which is only meaningful for
        rotary position embeddings, and need attention that takes a custom 4D mask.
        """
        model_type = getattr(self.model.config, "model_type", type(self.model).__name__)
        base = getattr(self.model, "base_model", self.model)
        if not any("rotary" in type(m).__name__.lower() for m in base.children()):
            raise ValueError(
                f"branch layouts need a causal LM with rotary position embeddings (Llama, "
                f"Qwen2, Qwen3, Mistral, ...); model type {model_type!r} has none"
            )
        attn = getattr(self.model.config, "_attn_implementation", None)
        if attn not in ("sdpa", "eager"):
            raise ValueError(
                f"branch layouts need attention that takes a 4D mask (sdpa or eager); model "
                f"type {model_type!r} uses {attn!r}: set attn_implementation to sdpa or eager"
            )

    def require_rope2d(self) -> None:
        """Refuse a columnar (2D-position) layout on a model without the 2D rotary module."""
        from paralleldecode.models.rope2d import has_rope2d

        if not has_rope2d(self.model):
            model_type = getattr(self.model.config, "model_type", type(self.model).__name__)
            raise ValueError(
                f"columnar layouts pass 2D (column, branch) positions, which need the 2D rotary "
                f"module; model type {model_type!r} has the stock one: call "
                "paralleldecode.models.rope2d.install_rope2d(model, pair_indices) first"
            )

    def eos_ids(self, config: GenerationConfig) -> set[int]:
        if config.eos_token_ids is not None:
            return set(config.eos_token_ids)
        ids: set[int] = set()
        gen = getattr(self.model, "generation_config", None)
        for src in (getattr(gen, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(src, int):
                ids.add(src)
            elif src:
                ids.update(src)
        return ids

    @torch.inference_mode()
    def generate(self, layout: Layout, config: GenerationConfig | Sequence[GenerationConfig],
                 keep_cache: bool = False, constraint=None) -> GenerationResult:
        """Prefill ``layout`` then decode one token per live stream per step.

        Args:
            layout: the streams, their rows and prompts (and rows' caches, if any).
            config: one config for every stream, or one per stream (their budgets and stop
                strings may differ; sampling settings and EOS ids must agree).
            keep_cache: return each stream's row cache (``GenerationResult.caches``), to
                continue from it in a later call; every row must hold one stream.
            constraint: the per-stream hook on the logits before the pick (see
                :mod:`~paralleldecode.decoding.constraints`): ``mask(streams, logits)``
                blocks, in place, the tokens each picking stream may not take,
                ``accept(stream, token)`` is told each pick, ``finish(stream)`` each stop.

        Raises:
            ValueError: a stream's prompt plus its ``max_new_tokens`` exceeds the model's
                window, the layout shares slots between streams and the model cannot serve
                that (see :meth:`require_branch_support`), or the configs disagree.
        """
        configs = self._stream_configs(layout, config)
        self._check_window(layout, configs)
        self._check_layout(layout)
        if keep_cache and bool((layout.stream_row.bincount() > 1).any()):
            raise ValueError("keep_cache needs one stream per row; this layout shares rows between streams")
        dev = self.device
        shared = configs[0]
        eos = self.eos_ids(shared)
        gen = None
        if shared.temperature > 0 and shared.seed is not None:
            gen = torch.Generator(device=dev).manual_seed(shared.seed)
        n = layout.num_streams
        start = time.perf_counter()
        # Each step adds at most one slot per live stream of a row (and a pending token
        # before a stream answers): room for all of them is reserved up front.
        per_row = int(layout.stream_row.bincount().max())
        steps = max(c.max_new_tokens for c in configs) + max((len(p) for p in layout.pending), default=0) + 1
        # Rows reading one shared past decode eagerly: the step graph holds whole rows.
        one_past = None if keep_cache else self._shared_past(layout)
        slots = self.steps is not None and not layout.columnar and one_past is None
        width = step_width(layout.input_ids.shape[0], per_row) if slots else 1
        # On the CPU a compiled step feeds only the streams still live (a lone row at least
        # two slots, see `step_width`): the width is a dynamic dimension of the step's graph,
        # so it narrows as streams finish without compiling again, as the eager steps do. A
        # CUDA step keeps one width per call: its replayed graph is bound to its shapes.
        narrowing = slots and dev.type == "cpu"
        compiling = self.steps.compile_seconds if slots else 0.0
        # (rows dropped down to a lone one feed it two slots a step)
        room = max(per_row, width, 2 if narrowing else 1)
        cache, key_owner, key_ids, key_col, picked, passes = self._prefill(
            layout, decode_tokens=room * steps, shared=one_past)
        buffers = SlotBuffers.of(cache, key_owner, key_ids, self.pad_id) if slots else None
        prefill_passes = passes
        groups = layout.stream_group.to(dev)
        stream_logits = self._logits(picked, groups)  # (S, V)
        pending_len = torch.tensor([len(p) for p in layout.pending], dtype=torch.long)
        st = _State(
            stream_row=layout.stream_row.tolist(),
            position=(layout.next_position - pending_len).tolist(),
            cache_owner=key_owner,
            cache_ids=key_ids,
            cache_column=key_col,
            tokens=[[] for _ in range(n)],
            done=[False] * n,
            reasons=["length"] * n,
            pending=[list(p) for p in layout.pending],
            feed=[-1] * n,
            texts=[None] * n,
            finished=[0.0] * n,
            logits=[[] for _ in range(n)],
        )
        branch = layout.stream_branch.tolist() if layout.stream_branch is not None else None
        # Columnar branches see each other: a stopped branch's last token is fed once more
        # so the others see it, as in training (isolated branches never look).
        feed_last = layout.columnar and not layout.isolate
        fed = 0
        peak = _cache_bytes(cache)
        prefill_wall = time.perf_counter() - start

        while True:
            live = [i for i in range(n) if not st.done[i]]
            if constraint is not None:
                self._constrain(constraint, live, st, stream_logits)
            next_ids = self._pick(stream_logits, shared, gen).tolist()  # the step's one read-back
            stopped = []
            for j, i in enumerate(live):
                if st.pending[i]:  # still reading its prompt: the pick is not used
                    st.feed[i] = st.pending[i].pop(0)
                    continue
                if shared.output_logits:
                    st.logits[i].append(stream_logits[j].detach().float().cpu())
                self._append(st, i, next_ids[j], eos, configs[i])
                st.feed[i] = st.tokens[i][-1]
                if constraint is not None:
                    constraint.accept(i, st.tokens[i][-1])
                if st.done[i]:
                    st.finished[i] = time.perf_counter() - start
                    stopped.append(i)
                    if constraint is not None:
                        constraint.finish(i)
            live = [i for i in range(n) if not st.done[i]]
            if not live:
                break
            if buffers is None:
                cache = self._drop_finished_rows(st, cache, keep_cache)
            elif narrowing and self._halved(st):
                # Compiled steps drop finished rows once half of them are done: copying the
                # live rows' buffers costs a few steps' worth of reading them, so not at every
                # row that finishes (the eager steps' way); rows are a dynamic dimension.
                cache = self._drop_finished_rows(st, cache, keep_cache)
                buffers = SlotBuffers.of(cache, st.cache_owner, st.cache_ids, self.pad_id)
            extra = [i for i in stopped if feed_last and st.stream_row[i] >= 0]
            fed_now = live + extra
            feed_width = step_width(st.cache_owner.shape[0], 1) if narrowing else width
            step_ids, step_pos, step_owner, where = self._step_inputs(st, fed_now, branch, feed_width)
            if buffers is not None:
                out = buffers.step(self.steps, step_ids, step_pos, step_owner)
                st.cache_owner, st.cache_ids = buffers.filled()
            else:
                step_col = step_pos[..., 0] if branch is not None else None
                key_col = None
                if st.cache_column is not None:
                    key_col = torch.cat([st.cache_column, step_col], dim=1)
                key_owner = torch.cat([st.cache_owner, step_owner], dim=1)
                mask = layout_mask(step_owner, key_owner, step_col, key_col, layout.isolate)
                out = self._forward(step_ids, step_pos, mask, cache, keep=0)
                st.cache_owner, st.cache_column = key_owner, key_col
                st.cache_ids = torch.cat([st.cache_ids, step_ids], dim=1)
            rows, cols = where[0][: len(live)], where[1][: len(live)]
            stream_logits = self._logits(out[rows, cols], groups, live)
            for i in fed_now:
                st.position[i] += 1
            passes += 1
            fed += step_ids.numel()
            peak = max(peak, _cache_bytes(cache))

        wall = time.perf_counter() - start
        streams = [
            StreamResult(
                token_ids=st.tokens[i],
                text=st.texts[i] if st.texts[i] is not None else self._decode(st.tokens[i]),
                finish_reason=st.reasons[i],
                prompt_tokens=int(layout.prompt_tokens[i]),
                finish_seconds=st.finished[i],
                logits=torch.stack(st.logits[i]) if shared.output_logits else None,
            )
            for i in range(n)
        ]
        caches = None
        if keep_cache:
            caches = [st.kept[i] if i in st.kept else
                      row_cache(cache, st.cache_owner, st.cache_ids, st.stream_row[i])
                      for i in range(n)]
        return GenerationResult(streams, passes, layout.processed_tokens, wall, peak, fed,
                                prefill_wall, caches, prefill_passes,
                                constraint_seconds=getattr(constraint, "seconds", 0.0),
                                compile_seconds=self.steps.compile_seconds - compiling if slots else 0.0,
                                compiled=slots and self.steps.fallback is None)

    @torch.inference_mode()
    def prefill(self, layout: Layout) -> GenerationResult:
        """Compute the KV of ``layout``'s prompts and generate nothing: the result has no
        streams, and ``caches`` holds each stream's row cache (one stream per row), ready to
        be a later layout's ``past`` (e.g. a prefix shared by many rows)."""
        self._check_layout(layout)
        if bool((layout.stream_row.bincount() > 1).any()) or layout.pending and any(layout.pending):
            raise ValueError("prefill needs one stream per row and no pending tokens")
        start = time.perf_counter()
        cache, key_owner, key_ids, _, _, passes = self._prefill(layout, logits=False)
        caches = [row_cache(cache, key_owner, key_ids, int(r)) for r in layout.stream_row]
        wall = time.perf_counter() - start
        return GenerationResult([], passes, layout.processed_tokens, wall, _cache_bytes(cache), 0,
                                wall, caches, passes)

    # -- pieces of the loop -------------------------------------------------------------

    @staticmethod
    def _constrain(constraint, live: list[int], st: _State, logits: torch.Tensor) -> None:
        """Mask, in place, the rows of ``logits`` (one per live stream) that pick now."""
        picking = [j for j, i in enumerate(live) if not st.pending[i]]
        if len(picking) == len(live):
            constraint.mask(live, logits)
        elif picking:
            rows = logits[picking]
            constraint.mask([live[j] for j in picking], rows)
            logits[picking] = rows

    def _shared_past(self, layout: Layout) -> RowCache | None:
        """The one row cache every row of ``layout`` starts from, when there are several rows
        and they may read it in place (``share_past``, a past of at least
        :data:`MIN_SHARED_PAST` tokens), else None. Rows count as starting from one cache
        when theirs hold the same tokens in the same tensors."""
        pasts = layout.past
        if self.shared_attention is None or pasts is None or len(pasts) < 2 or layout.parts is not None:
            return None
        first = pasts[0]
        if first is None or len(first) < MIN_SHARED_PAST:
            return None
        for p in pasts[1:]:
            if p is None or p.tokens != first.tokens:
                return None
            for a, b in zip((*p.keys, *p.values), (*first.keys, *first.values)):
                if a.data_ptr() != b.data_ptr() or a.shape != b.shape or a.stride() != b.stride():
                    return None
        return first

    def _prefill(self, layout: Layout, logits: bool = True, decode_tokens: int = 0,
                 shared: RowCache | None = None, segment: torch.Tensor | None = None):
        """Run the prompt slots through the model (see the module docstring).

        Args:
            decode_tokens: the most tokens the decoding steps may add per row, reserved in
                the cache with the prompt's.
            shared: the one past every row starts from (:meth:`_shared_past`), for the rows
                to read in place instead of each holding a copy; None: copies.
            segment: ``(B, T)``, for layouts laid side by side in a row
                (:func:`~paralleldecode.decoding.layout.side_by_side`; no past): a slot
                sees only its own segment's.

        Returns:
            the cache, ``(B, L)`` owners, token ids and columns (None unless columnar) of its
            slots, ``(S, V)`` logits (hidden states with a mixer) at each stream's last
            prompt slot (None when ``logits`` is False), and the forward passes made.
        """
        if layout.parts is not None and len(layout.parts) > 1:
            return self._prefill_parts(layout.parts, logits, decode_tokens)
        dev = self.device
        ids, owner = layout.input_ids.to(dev), layout.owner.to(dev)
        positions = layout.position_ids.to(dev)
        columns = layout.columns.to(dev) if layout.columnar else None
        b = ids.shape[0]
        pasts = layout.past if layout.past is not None and layout.past_tokens else None
        longest_past = max((len(p) for p in pasts if p is not None), default=0) if pasts else 0
        cache = None if shared is None else shared_past_cache(
            self.model.config, _to(shared, dev), ids.shape[1] + decode_tokens)
        if cache is not None:  # the rows read the one past in place
            past_owner = torch.full((b, longest_past), SHARED, dtype=torch.long, device=dev)
        else:
            cache = new_cache(self.model.config, reserved_slots(longest_past + ids.shape[1] + decode_tokens, dev))
            if pasts is not None:
                past_owner = stack_row_caches([_to(p, dev) for p in pasts], cache)
        if pasts is not None:
            length = past_owner.shape[1]
            past_ids = torch.full((b, length), self.pad_id, dtype=torch.long, device=dev)
            for r, p in enumerate(pasts):
                if p is not None and len(p):
                    past_ids[r, length - len(p):] = torch.tensor(p.tokens, device=dev)
            key_owner, key_ids = torch.cat([past_owner, owner], 1), torch.cat([past_ids, ids], 1)
        else:
            key_owner, key_ids = owner, ids
        offset = key_owner.shape[1] - ids.shape[1]  # cached slots before the layout's own
        last = layout.last_slot.to(dev)
        rows = layout.stream_row.to(dev)
        picked: list[torch.Tensor | None] = [None] * layout.num_streams
        passes = 0
        for a, z, plain in self._chunks(layout, key_owner, offset, segment):
            ending = [i for i in range(layout.num_streams) if a <= int(last[i]) < z] if logits else []
            # A pass where no stream's prompt ends computes no logits (an empty index).
            keep = torch.unique(last[ending]) - a if ending else last.new_empty(0)
            if plain:
                out = self._forward(ids[:, a:z], None, None, cache, keep)
            else:
                if columns is not None:
                    from paralleldecode.decoding.columnar import column_mask

                    mask = column_mask(owner[:, a:z], columns[:, a:z], owner[:, :z], columns[:, :z],
                                       layout.isolate)
                else:
                    mask = prefill_mask(key_owner[:, : offset + z], offset + a, segment)
                out = self._forward(ids[:, a:z], positions[:, a:z], mask, cache, keep)
            passes += 1
            for i in ending:
                picked[i] = out[rows[i], int(torch.searchsorted(keep, last[i] - a))]
        stacked = torch.stack(picked) if logits else None
        return cache, key_owner, key_ids, columns, stacked, passes

    def _prefill_parts(self, parts: list[Layout], logits: bool, decode_tokens: int):
        """Prefill stacked layouts in batches (:func:`part_batches`: short one-row parts one
        after another in a single row, each seeing only its own slots; the others alone,
        each with its own plain prefix), then lay their caches side by side as the rows of
        one, each left-padded to the longest: the decoding steps then serve all of them at
        once.

        Short parts go together because one part of a few hundred slots is a call of small
        matmuls and hundreds of host-bound ops, and in one row because rows would be padded
        to the longest part (and in one pass, because passes of ``prefill_chunk`` over the
        row cost as much again as the padding saved): measured on the embedded model (fp32,
        2-core AMD EPYC, alternating in one process), two stacks of eight `one_sequence`
        SQuAD groups (2,475 and 2,537 slots) prefilled in 7.2-7.7 s as left-padded rows
        (two calls a stack, padded to at most 1.25x their slots) and in 6.3-6.8 s side by
        side in passes of at most 2,048 slots; in passes of 512 they took 6.4-7.4 s against
        the padded rows' 6.9-7.1 (two more runs)."""
        done: list = [None] * len(parts)
        passes = 0
        for batch in part_batches(parts, self.side_by_side_slots, self.prefill_chunk):
            segment = None
            if len(batch) == 1:
                together = parts[batch[0]]
            else:
                together, segment = side_by_side([parts[i] for i in batch])
            cache, owner, ids, columns, picked, n = self._prefill(together, logits, segment=segment)
            passes += n
            row = slot = stream = 0
            for i in batch:  # each part's rows or slots, its streams numbered from 0 again
                (b, t), s = parts[i].input_ids.shape, parts[i].num_streams
                # where the part is: its rows of the call, or its slots of the one row
                at = (slice(row, row + b), slice(None)) if segment is None else (slice(0, 1), slice(slot, slot + t))
                own = torch.where(owner[at] >= 0, owner[at] - stream, owner[at])
                done[i] = (cache, (at[0], slice(None), at[1]), own, ids[at],
                           None if columns is None else columns[at],
                           None if picked is None else picked[stream:stream + s])
                row, slot, stream = row + b, slot + t, stream + s
        length = max(d[2].shape[1] for d in done)
        cache = new_cache(self.model.config, reserved_slots(length + decode_tokens, self.device))

        def padded(tensors: list[torch.Tensor], fill: int) -> torch.Tensor:
            return torch.cat([torch.nn.functional.pad(t, (length - t.shape[1], 0), value=fill) for t in tensors])

        # Each part numbered its streams from 0; in the stack they follow the parts before.
        shifts = torch.tensor([0] + [p.num_streams for p in parts[:-1]]).cumsum(0).tolist()
        key_owner = padded([torch.where(d[2] >= 0, d[2] + s, d[2]) for d, s in zip(done, shifts)], PAD)
        key_ids = padded([d[3] for d in done], self.pad_id)
        columns = padded([d[4] for d in done], 0) if done[0][4] is not None else None
        fill_left_padded(cache, length, lambda i: [
            (d[2].shape[0], *(None if t is None else t[d[1]] for t in (d[0].layers[i].keys, d[0].layers[i].values)))
            for d in done])
        picked = torch.cat([d[5] for d in done]) if logits else None
        return cache, key_owner, key_ids, columns, picked, passes

    def _chunks(self, layout: Layout, key_owner: torch.Tensor, offset: int,
                segment: torch.Tensor | None = None) -> list[tuple[int, int, bool]]:
        """``(start, stop, plain)`` slot ranges of the layout's own slots, at most
        ``prefill_chunk`` long; ``plain`` ranges go through the model's causal path. The
        first plain range over an empty cache may be ``plain_chunk`` long: with nothing
        cached, the model's causal path builds no mask (torch's causal kernel skips the
        masked half and keeps no scores), where a later chunk attends over the cache
        through a ``chunk x L`` mask. Measured on the embedded model (a 4,772-token
        context, ten branches, fp32, 2-core Intel Xeon): 9.5 s in chunks of 512, 8.8 s
        with the context in one pass.

        A prompt over an empty cache that fits one ``prefill_chunk`` goes in one masked
        pass even where it starts plain: its branches alone would be a pass of a few dozen
        rows, which reads every weight for little work. Measured on ten SQuAD paragraph
        groups of `one_sequence` (257-459 slots, embedded model, fp32, 2-core AMD EPYC,
        alternating in one process): 4.6-5.3 s in one pass each against 5.0-5.7 s split."""
        t = layout.input_ids.shape[1]
        if segment is not None:  # layouts side by side: one masked pass (part_batches bounds it)
            return [(0, t, False)]
        plain_end = self._plain_length(layout, key_owner, offset)
        if offset == 0 and 0 < plain_end < t <= self.prefill_chunk:
            return [(0, t, False)]
        bounds = []
        a = 0
        if plain_end and offset == 0:
            bounds.append((0, a := min(self.plain_chunk, plain_end), True))
        for lo, hi, plain in ((a, plain_end, True), (plain_end, t, False)):
            for b in range(lo, hi, self.prefill_chunk):
                bounds.append((b, min(b + self.prefill_chunk, hi), plain))
        return bounds

    @staticmethod
    def _plain_length(layout: Layout, key_owner: torch.Tensor, offset: int) -> int:
        """How many leading slots of a single-row layout need no mask: every slot sees every
        earlier one (no pads, and once a stream's own slots begin, only that stream's
        follow) and positions count the row's slots from 0."""
        if layout.input_ids.shape[0] != 1 or layout.columnar:
            return 0
        owners = key_owner[0].tolist()
        expect = torch.arange(offset, offset + layout.input_ids.shape[1])
        positions = layout.position_ids[0].cpu() == expect
        if PAD in owners[:offset]:
            return 0
        stream = SHARED
        for j in range(offset, len(owners)):
            o = owners[j]
            if o == PAD or not bool(positions[j - offset]) or (stream != SHARED and o != stream):
                return j - offset
            if o != SHARED:
                stream = o
        return len(owners) - offset

    def _forward(self, ids, positions, mask, cache, keep):
        """One model call. ``mask`` None (with ``positions`` None) takes the model's own
        causal path; ``keep`` is ``logits_to_keep`` (0 = all, an int = the last ones, or a
        tensor of query indices). Returns ``(B, Q', V)`` logits, or with a mixer
        ``(B, Q', D)`` hidden states for :meth:`_logits` to mix."""
        kwargs = {"input_ids": ids, self.cache_keyword: cache, "use_cache": True}
        if mask is not None:
            dtype = next(self.model.parameters()).dtype
            kwargs.update(position_ids=positions, attention_mask=additive(mask, dtype))
        with contextlib.ExitStack() as kernels:
            attention = self.attention
            if shares_past(cache):
                attention = self.shared_attention
                kernels.enter_context(reading_shared_past(cache))
            for router in (self.packed, attention):
                if router is not None:
                    kernels.enter_context(router.routed())
            if self.mixer is None:
                return self.model(**kwargs, logits_to_keep=keep).logits.float()
            hidden = states_to_mix(self.model, self.mix_layer, **kwargs)
        if isinstance(keep, torch.Tensor):
            return hidden[:, keep]
        return hidden if keep == 0 else hidden[:, -keep:]

    def _logits(self, picked: torch.Tensor, groups: torch.Tensor, live: list[int] | None = None) -> torch.Tensor:
        """Per-stream rows of :meth:`_forward`'s output -> ``(S, V)`` logits; ``groups`` is
        every stream's group, ``live`` the streams ``picked`` holds (None: all)."""
        if self.mixer is None:
            return picked
        if live is not None:
            groups = groups[torch.tensor(live, device=groups.device)]
        return self.model.get_output_embeddings()(self.mixer(picked, groups)).float()

    @staticmethod
    def _pick(logits: torch.Tensor, config: GenerationConfig, gen) -> torch.Tensor:
        """``(S, V)`` logits -> ``(S,)`` next ids: argmax, or a temperature/top-p sample."""
        if config.temperature == 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / config.temperature, dim=-1)
        if config.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            # Drop a token when the mass before it already reaches top_p (keeps >= 1 token).
            drop = (sorted_p.cumsum(dim=-1) - sorted_p) >= config.top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        return torch.multinomial(probs, 1, generator=gen).squeeze(-1)

    def _append(self, st: _State, i: int, token: int, eos: set[int], config: GenerationConfig) -> None:
        st.tokens[i].append(token)
        if token in eos:
            st.done[i], st.reasons[i] = True, "eos"
            return
        if config.stop_strings:
            text = self._decode(st.tokens[i])
            hits = [text.find(s) for s in config.stop_strings if s in text]
            if hits:
                st.done[i], st.reasons[i], st.texts[i] = True, "stop_string", text[: min(hits)]
                return
        if len(st.tokens[i]) >= config.max_new_tokens:
            st.done[i], st.reasons[i] = True, "length"

    @staticmethod
    def _halved(st: _State) -> bool:
        """Whether at most half of the cache's rows (of two or more) hold a live stream."""
        rows = st.cache_owner.shape[0]
        return rows > 1 and 2 * len({st.stream_row[i] for i in range(len(st.done)) if not st.done[i]}) <= rows

    def _drop_finished_rows(self, st: _State, cache, keep_cache: bool):
        """Remove rows none of whose streams is still live from the cache (keeping their
        row caches aside when asked to)."""
        rows = st.cache_owner.shape[0]
        live_rows = sorted({st.stream_row[i] for i in range(len(st.done)) if not st.done[i]})
        if len(live_rows) == rows:
            return cache
        if keep_cache:
            for i in range(len(st.done)):
                r = st.stream_row[i]
                if r >= 0 and r not in live_rows:
                    st.kept[i] = row_cache(cache, st.cache_owner, st.cache_ids, r)
        keep = torch.tensor(live_rows, device=st.cache_owner.device)
        cache.batch_select_indices(keep)
        st.cache_owner, st.cache_ids = st.cache_owner[keep], st.cache_ids[keep]
        if st.cache_column is not None:
            st.cache_column = st.cache_column[keep]
        renumber = {r: j for j, r in enumerate(live_rows)}
        st.stream_row = [renumber.get(r, -1) for r in st.stream_row]
        return cache

    def _step_inputs(self, st: _State, fed: list[int], branch: list[int] | None, width: int = 1):
        """Tokens of one step: ``(R, K)`` ids, positions (``(R, K, 2)`` column and branch
        when ``branch`` gives each stream's branch id), owners, and each fed stream's
        ``(row, k)`` slot in the order of ``fed``; ``K`` is the most fed streams any row
        has, at least ``width``. Pad slots get position 0 (branch 0). Built on the host from
        the loop's lists and sent to the device as whole tensors (a few copies, no reads)."""
        rows = st.cache_owner.shape[0]
        per_row: list[list[int]] = [[] for _ in range(rows)]
        for i in fed:
            per_row[st.stream_row[i]].append(i)
        k = max(width, *(len(r) for r in per_row))
        empty = 0 if branch is None else [0, 0]
        ids = [[self.pad_id] * k for _ in range(rows)]
        pos = [[empty] * k for _ in range(rows)]
        own = [[PAD] * k for _ in range(rows)]
        slot: dict[int, tuple[int, int]] = {}
        for r, streams in enumerate(per_row):
            for j, i in enumerate(streams):
                ids[r][j], own[r][j] = st.feed[i], i
                pos[r][j] = st.position[i] if branch is None else [st.position[i], branch[i]]
                slot[i] = (r, j)
        dev = st.cache_owner.device

        def tensor(values) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=dev)

        # Gather indices in the order of `fed` (live streams first: the order logits are
        # picked in).
        where = (tensor([slot[i][0] for i in fed]), tensor([slot[i][1] for i in fed]))
        return tensor(ids), tensor(pos), tensor(own), where

    @staticmethod
    def _stream_configs(layout: Layout, config) -> list[GenerationConfig]:
        configs = [config] * layout.num_streams if isinstance(config, GenerationConfig) else list(config)
        if len(configs) != layout.num_streams:
            raise ValueError(f"{len(configs)} generation configs for {layout.num_streams} streams")
        shared = {(c.temperature, c.top_p, c.seed, c.eos_token_ids, c.output_logits) for c in configs}
        if len(shared) > 1:
            raise ValueError("streams of one call must share temperature, top_p, seed, eos_token_ids "
                             "and output_logits; only max_new_tokens and stop_strings may differ")
        return configs

    def _check_layout(self, layout: Layout) -> None:
        if bool((layout.owner == SHARED).any()) or layout.columnar:
            self.require_branch_support()
        if layout.columnar:
            self.require_rope2d()

    def _check_window(self, layout: Layout, configs: list[GenerationConfig]) -> None:
        limit = self.max_positions
        if limit is None:
            return
        need = [int(p) + c.max_new_tokens for p, c in zip(layout.next_position, configs)]
        worst = max(range(len(need)), key=need.__getitem__)
        if need[worst] > limit:
            raise ValueError(
                f"prompt of {int(layout.next_position[worst])} tokens plus max_new_tokens="
                f"{configs[worst].max_new_tokens} exceeds the model's context window of {limit} tokens"
            )

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def part_batches(parts: list[Layout], most_slots: int, widest: int) -> list[list[int]]:
    """Which stacked parts :meth:`DecodingEngine._prefill_parts` prefills together: indices
    into ``parts``, runs of one-row parts in their order, each run at most ``most_slots``
    slots in all (one row, no padding). Parts of several rows (already a batched call each:
    `batch` packed with its rows stacked was 1.30x unpacked against 1.39x part by part),
    wider than ``widest`` slots (one long call each, with its own plain start), starting
    from a cache (``past``) or columnar are prefilled alone."""
    alone, short = [], []
    for i, p in enumerate(parts):
        b, w = p.input_ids.shape
        together = b == 1 and p.past_tokens == 0 and not p.columnar and w <= widest
        (short if together else alone).append(i)
    batches: list[list[int]] = [[i] for i in alone]
    batch: list[int] = []
    slots = 0
    for i in short:
        w = parts[i].input_ids.shape[1]
        if batch and slots + w > most_slots:
            batches.append(batch)
            batch, slots = [], 0
        batch.append(i)
        slots += w
    if batch:
        batches.append(batch)
    return batches


def _to(past: RowCache | None, device) -> RowCache | None:
    if past is None or past.keys[0].device == device:
        return past
    return RowCache(past.tokens, [k.to(device) for k in past.keys], [v.to(device) for v in past.values])


def _cache_bytes(cache) -> int:
    """Memory the cache holds (a growing layer's whole buffer)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        if isinstance(layer, GrowingLayer):
            total += layer.held_bytes
            continue
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total
