"""The one decoding engine: prefill, a step loop over a KV cache, sampling and stopping.

Every strategy generates through :meth:`DecodingEngine.generate`; what differs between
strategies is the :class:`~paralleldecode.decoding.layout.Layout` they hand in (how
sequences share a row and who may see whom), never the loop. Columnar layouts (2D
positions, :mod:`~paralleldecode.decoding.columnar`) run through the same loop: each step
feeds one token per live branch, all in one column; a branch may first feed the rest of its
prompt (``Layout.pending``), and a branch that stops feeds its last token once more so the
branches still running see it as they would in training.

Unlike ``model.generate`` the engine always passes explicit positions and an explicit 4D
mask, so any layout works with stock Hugging Face modeling code; a row whose streams have
all finished is dropped from the cache so it stops costing compute.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch

from paralleldecode.decoding.layout import PAD, SHARED, Layout, additive, layout_mask
from paralleldecode.models.crossbatch_lm import states_to_mix


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
    """

    token_ids: list[int]
    text: str
    finish_reason: str
    prompt_tokens: int
    generated_tokens: int = -1
    error: str | None = None
    finish_seconds: float = 0.0
    logits: torch.Tensor | None = None

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
            the steps after the prefill computed. Finished streams add nothing.
        prefill_seconds: wall time of the prefill (the first token of every stream included).
    """

    streams: list[StreamResult]
    forward_passes: int
    prompt_tokens_processed: int
    wall_seconds: float
    peak_cache_bytes: int = 0
    step_tokens: int = 0
    prefill_seconds: float = 0.0

    @property
    def generated_tokens(self) -> int:
        return sum(s.generated_tokens for s in self.streams)


@dataclass
class _State:
    """Mutable loop state; rows are renumbered when finished rows leave the cache."""

    stream_row: torch.Tensor  # (S,) current row of each stream, -1 once its row is gone
    position: torch.Tensor  # (S,) position (column) of the stream's next fed token
    cache_owner: torch.Tensor  # (R, L)
    cache_column: torch.Tensor | None  # (R, L) columns of a columnar layout, else None
    tokens: list[list[int]]
    done: list[bool]
    reasons: list[str]
    pending: list[list[int]]  # prompt tokens still to feed, per stream
    feed: list[int]  # the token each stream feeds next
    texts: list[str | None] = field(default_factory=list)
    finished: list[float] = field(default_factory=list)
    logits: list[list[torch.Tensor]] = field(default_factory=list)


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
    """

    def __init__(self, model, tokenizer, mixer=None, mix_layer: int = -1) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.mixer = mixer
        self.mix_layer = mix_layer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

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

    @torch.no_grad()
    def generate(self, layout: Layout, config: GenerationConfig) -> GenerationResult:
        """Prefill ``layout`` then decode one token per live stream per step.

        Raises:
            ValueError: a stream's prompt plus ``max_new_tokens`` exceeds the model's window,
                or the layout shares slots between streams and the model cannot serve that
                (see :meth:`require_branch_support`).
        """
        from transformers import DynamicCache

        self._check_window(layout, config)
        if bool((layout.owner == SHARED).any()) or layout.columnar:
            self.require_branch_support()
        if layout.columnar:
            self.require_rope2d()
        dev = self.device
        eos = self.eos_ids(config)
        gen = None
        if config.temperature > 0 and config.seed is not None:
            gen = torch.Generator(device=dev).manual_seed(config.seed)
        n = layout.num_streams
        pending_len = torch.tensor([len(p) for p in layout.pending], dtype=torch.long)
        columns = layout.columns
        st = _State(
            stream_row=layout.stream_row.to(dev).clone(),
            position=(layout.next_position - pending_len).to(dev),
            cache_owner=layout.owner.to(dev),
            cache_column=columns.to(dev) if columns is not None else None,
            tokens=[[] for _ in range(n)],
            done=[False] * n,
            reasons=["length"] * n,
            pending=[list(p) for p in layout.pending],
            feed=[-1] * n,
            texts=[None] * n,
            finished=[0.0] * n,
            logits=[[] for _ in range(n)],
        )
        branch = layout.stream_branch
        branch = branch.to(dev) if branch is not None else None
        # Columnar branches see each other: a stopped branch's last token is fed once more
        # so the others see it, as in training (isolated branches never look).
        feed_last = layout.columnar and not layout.isolate
        cache = DynamicCache(config=self.model.config)
        start = time.perf_counter()

        owner = layout.owner.to(dev)
        needed = torch.unique(layout.last_slot).to(dev)
        mask = layout_mask(owner, owner, st.cache_column, st.cache_column, layout.isolate)
        logits = self._forward(
            layout.input_ids.to(dev), layout.position_ids.to(dev),
            mask, cache, logits_to_keep=needed,
        )  # (B, len(needed), V)
        col = torch.searchsorted(needed, layout.last_slot.to(dev))
        groups = layout.stream_group.to(dev)
        stream_logits = self._logits(logits[st.stream_row, col], groups)  # (S, V)
        passes, fed = 1, 0
        peak = _cache_bytes(cache)
        prefill_wall = time.perf_counter() - start

        while True:
            live = [i for i in range(n) if not st.done[i]]
            next_ids = self._pick(stream_logits, config, gen)
            stopped = []
            for j, i in enumerate(live):
                if st.pending[i]:  # still reading its prompt: the pick is not used
                    st.feed[i] = st.pending[i].pop(0)
                    continue
                if config.output_logits:
                    st.logits[i].append(stream_logits[j].detach().float().cpu())
                self._append(st, i, int(next_ids[j]), eos, config)
                st.feed[i] = st.tokens[i][-1]
                if st.done[i]:
                    st.finished[i] = time.perf_counter() - start
                    stopped.append(i)
            live = [i for i in range(n) if not st.done[i]]
            if not live:
                break
            cache = self._drop_finished_rows(st, cache)
            extra = [i for i in stopped if feed_last and int(st.stream_row[i]) >= 0]
            fed_now = live + extra
            step_ids, step_pos, step_owner, where = self._step_inputs(st, fed_now, branch)
            step_col = step_pos[..., 0] if branch is not None else None
            key_col = None
            if st.cache_column is not None:
                key_col = torch.cat([st.cache_column, step_col], dim=1)
            key_owner = torch.cat([st.cache_owner, step_owner], dim=1)
            mask = layout_mask(step_owner, key_owner, step_col, key_col, layout.isolate)
            logits = self._forward(step_ids, step_pos, mask, cache, logits_to_keep=0)
            st.cache_owner, st.cache_column = key_owner, key_col
            live_t = torch.tensor(live, device=dev)
            rows, cols = where[0][: len(live)], where[1][: len(live)]
            stream_logits = self._logits(logits[rows, cols], groups[live_t])
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
                logits=torch.stack(st.logits[i]) if config.output_logits else None,
            )
            for i in range(n)
        ]
        return GenerationResult(streams, passes, layout.processed_tokens, wall, peak, fed,
                                prefill_wall)

    # -- pieces of the loop -------------------------------------------------------------

    def _forward(self, ids, positions, mask, cache, logits_to_keep):
        """One model call; returns ``(B, Q', V)`` logits for the kept query positions, or
        with a mixer ``(B, Q', D)`` hidden states for :meth:`_logits` to mix."""
        dtype = next(self.model.parameters()).dtype
        kwargs = dict(input_ids=ids, position_ids=positions, attention_mask=additive(mask, dtype),
                      past_key_values=cache, use_cache=True)
        if self.mixer is None:
            return self.model(**kwargs, logits_to_keep=logits_to_keep).logits.float()
        hidden = states_to_mix(self.model, self.mix_layer, **kwargs)
        if isinstance(logits_to_keep, torch.Tensor):
            return hidden[:, logits_to_keep]
        return hidden if logits_to_keep == 0 else hidden[:, -logits_to_keep:]

    def _logits(self, picked: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """Per-stream rows of :meth:`_forward`'s output -> ``(S, V)`` logits."""
        if self.mixer is None:
            return picked
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

    def _append(self, st: _State, i: int, token: int, eos: set[int], config) -> None:
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

    def _drop_finished_rows(self, st: _State, cache):
        """Remove rows none of whose streams is still live from the cache."""
        rows = st.cache_owner.shape[0]
        live_rows = sorted({int(st.stream_row[i]) for i in range(len(st.done)) if not st.done[i]})
        if len(live_rows) == rows:
            return cache
        keep = torch.tensor(live_rows, device=st.cache_owner.device)
        cache.batch_select_indices(keep)
        st.cache_owner = st.cache_owner[keep]
        remap = torch.full((rows,), -1, dtype=torch.long, device=keep.device)
        remap[keep] = torch.arange(len(live_rows), device=keep.device)
        st.stream_row = remap[st.stream_row.clamp(min=0)].where(st.stream_row >= 0, st.stream_row)
        return cache

    def _step_inputs(self, st: _State, fed: list[int], branch: torch.Tensor | None):
        """Tokens of one step: ``(R, K)`` ids, positions (``(R, K, 2)`` column and branch
        when ``branch`` gives each stream's branch id), owners, and each fed stream's
        ``(row, k)`` slot in the order of ``fed``; ``K`` is the most fed streams any row
        has. Pad slots get position 0 (branch 0)."""
        rows = st.cache_owner.shape[0]
        per_row: list[list[int]] = [[] for _ in range(rows)]
        for i in fed:
            per_row[int(st.stream_row[i])].append(i)
        k = max(len(r) for r in per_row)
        dev = st.cache_owner.device
        ids = torch.full((rows, k), self.pad_id, dtype=torch.long, device=dev)
        pos = torch.zeros((rows, k) if branch is None else (rows, k, 2), dtype=torch.long, device=dev)
        own = torch.full((rows, k), PAD, dtype=torch.long, device=dev)
        slot: dict[int, tuple[int, int]] = {}
        for r, streams in enumerate(per_row):
            for j, i in enumerate(streams):
                ids[r, j] = st.feed[i]
                if branch is None:
                    pos[r, j] = st.position[i]
                else:
                    pos[r, j, 0], pos[r, j, 1] = st.position[i], branch[i]
                own[r, j] = i
                slot[i] = (r, j)
        # Gather indices in the order of `fed` (live streams first: the order logits are
        # picked in).
        where = (
            torch.tensor([slot[i][0] for i in fed], device=dev),
            torch.tensor([slot[i][1] for i in fed], device=dev),
        )
        return ids, pos, own, where

    def _check_window(self, layout: Layout, config: GenerationConfig) -> None:
        limit = self.max_positions
        if limit is None:
            return
        need = int(layout.next_position.max()) + config.max_new_tokens
        if need > limit:
            raise ValueError(
                f"prompt of {int(layout.next_position.max())} tokens plus max_new_tokens="
                f"{config.max_new_tokens} exceeds the model's context window of {limit} tokens"
            )

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _cache_bytes(cache) -> int:
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total
