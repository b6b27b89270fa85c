"""The eager passes' masked attention on the CPU as blocked oneDNN matmuls.

torch's CPU flash-attention kernel does its block products with the BLAS torch was built
with (MKL), which takes a generic path on the AMD machines this package is measured on. A
prefill chunk of the embedded model (512 queries, 9 heads over 3 key/value heads, 4.7K keys)
costs it 39 ms per layer; the same attention as two oneDNN matmuls and an in-place softmax
per block of queries costs 22.5 ms (15.4 against 25.7 at 3K keys, 13.7 against 17.5 at 2K),
outputs equal to fp32 rounding (1e-7 on unit-scale values). A 4.7K-token article's prefill
spends most of its time there, so the engine's eager passes, where the steps compile, run
the model's attention through :func:`blocked_attention` on CPUs where it wins a race against
sdpa's kernel (:func:`slower_here`: on an Intel Xeon with AMX, MKL's and oneDNN's kernels
serve sdpa well and it was the faster there):

* the queries of the heads that share a key/value head form the rows of one matmul against
  that head's keys (no copy of the keys per query head);
* queries go in blocks sized so that a block's scores (at most :data:`BLOCK_SCORES` floats)
  stay in the cache between the two matmuls and the softmax;
* the mask is applied only to the span of key columns that some query may not see (for a
  causal chunk, its own last columns; for branches, from the first branch slot on), found
  once per mask tensor and reused by every layer.

bfloat16 inputs are computed in float32 (the queries, and each key/value head as its block
loop reads it, cast up; the output cast down): the kernel then rounds as sdpa's does, which
keeps its scores and softmax in float32, and oneDNN's float32 matmuls still beat torch's
bf16 flash kernel once there are enough keys (a 512-query chunk: 32 against 47 ms per layer
at 4.7K keys, 16 against 20 at 2K, 9.5 against 10.2 at 1K, but 6.4 against 5.3 at 512), so
bf16 calls with fewer than :data:`MIN_BF16_KEYS` keys stay with sdpa. Computing in bf16 was
faster still but only by 5-15% at 2K-4.7K keys, with four times the error (its scores are
rounded to bf16 before the softmax).

Everything else goes to transformers' own sdpa function unchanged: no mask (the causal
path), fewer than :data:`MIN_QUERIES` queries (the decoding steps), dtypes other than
float32 and bfloat16, other devices, gradients, dropout, soft-capping, a mask per head, a
query that sees no key.

Where the package's prefill CPU kernel is loaded (float32 models on an AVX-512 CPU,
:mod:`~paralleldecode.decoding.cpu_kernels`), the engine's eager passes take it instead of
racing this kernel: :func:`prefill_attention` sends it the causal and the masked calls of a
prefill (it beat sdpa's kernel on every shape measured on the Intel machine, 1.2-1.8x) and
the rest to sdpa; the blocked kernel then serves bfloat16 models and CPUs without the
prefill kernel.

Each block's scores are a fresh tensor of up to 8 MiB, which glibc's malloc would hand out as
fresh pages every time (the blocked attention of a 4.7K prefill took 8.5-10.6 s that way
against 5.7-6.6 s with the pages kept); the engine keeps freed memory for reuse
(:mod:`~paralleldecode.decoding.memory`), for this kernel as for every other pass.

The model is switched to this function by its attention-implementation name
(:data:`NAME`, registered with transformers next to ``sdpa``, with sdpa's masks) inside
:meth:`BlockedAttention.routed`, and back after; to :func:`prefill_attention` likewise
(:class:`PrefillAttention`). Only a model loaded with ``sdpa`` is switched.

A second attention function here serves rows that all start from one past held once
(``batch_cached``'s prefix; :class:`~paralleldecode.decoding.cache.SharedPastLayer`):
:func:`shared_past_attention` attends each row to that one copy and to the row's own slots,
and merges the two parts by their log-sum-exps (:class:`SharedPastAttention` switches it in
for those calls only).

Shapes: ``B`` rows, ``H`` query heads over ``G`` key/value heads, ``Q`` queries, ``L`` keys,
``D`` head size.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import weakref

import torch

from paralleldecode.decoding import cpu_kernels
from paralleldecode.decoding.packed import Router, version

log = logging.getLogger(__name__)

NAME = "paralleldecode_blocked"

# Fewer queries than this (a decoding step) stay with sdpa's kernel.
MIN_QUERIES = 64
# bfloat16 calls with fewer keys than this stay with sdpa (its bf16 kernel is as fast there).
MIN_BF16_KEYS = 1024
# The dtypes it takes; bfloat16 is computed in float32.
DTYPES = (torch.float32, torch.bfloat16)
# A block's scores: 2M floats (8 MiB), measured fastest at 2K-4.7K keys on a 32 MiB L3.
BLOCK_SCORES = 1 << 21

_registered: set[str] = set()
# (the mask, its version, its span): the layers of one forward share the mask tensor.
_last_span: tuple | None = None
# [(a bool mask, its version, its additive float32 form)], likewise; emptied when the mask dies.
_additive: list[tuple | None] = [None]


def unswitchable(model, kernel: str, dtypes: tuple[torch.dtype, ...] = DTYPES) -> str | None:
    """Why ``model``'s attention cannot be switched from sdpa to the CPU attention function
    ``kernel`` (named in the reason) taking ``dtypes``, or None."""
    parameter = next(model.parameters())
    config = model.config
    if parameter.device.type != "cpu":
        return f"{kernel} is a CPU kernel; the model is on {parameter.device.type}"
    if parameter.dtype not in dtypes:
        names = " or ".join(str(d).removeprefix("torch.") for d in dtypes)
        return f"{kernel} takes {names}, the model is {parameter.dtype}"
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return f"the model's attention is {getattr(config, '_attn_implementation', None)!r}, not sdpa"
    if getattr(config, "sub_configs", None):
        return "a model with sub-configs keeps its own attention"
    return None


def available(model) -> str | None:
    """Why ``model``'s attention cannot be switched to :func:`blocked_attention`, or None."""
    if next(model.parameters()).device.type == "cpu" and not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn)"
    return unswitchable(model, "blocked attention")


# Whether the engine takes the blocked kernel: "auto" races it against sdpa's once per
# process and attention shape (:func:`slower_here`); "on" and "off" decide without racing.
SETTINGS = ("auto", "on", "off")
ENV = "PARALLELDECODE_BLOCKED_ATTENTION"
# The race: a prefill chunk of this many queries over this many keys, causal over its own
# columns; the blocked kernel must be this much faster to be taken (a near tie stays sdpa).
PROBE_QUERIES, PROBE_KEYS = 512, 2048
MARGIN = 1.1

# (dtype, query heads, key/value heads, head size, threads) -> why not (None: blocked wins).
_verdicts: dict[tuple, str | None] = {}


def slower_here(model) -> str | None:
    """Why the engine leaves ``model``'s masked attention with sdpa on this machine, or None
    when :func:`blocked_attention` is to take it (a model :func:`available` accepts).

    Which kernel is faster depends on the CPU: on the AMD EPYC (Zen 5) this package was first
    measured on, torch's flash kernel runs its block products through MKL's generic path and
    the blocked kernel won by 1.3-1.7x; on an Intel Xeon with AMX, sdpa's won (a 512-query
    chunk over 2,048 keys: 12.6 against 21.4 ms per layer in float32, 4.4 against 13.7 in
    bf16), and an article's bf16 prefill took 3.4 s with sdpa against 7.7 s blocked. So under
    ``PARALLELDECODE_BLOCKED_ATTENTION=auto`` (the default) both kernels run one probe chunk
    of the model's attention shape and dtype (three timed calls each, alternating, after one
    untimed; about 0.2 s), once per process and shape, and the blocked kernel is taken only
    when its best time beats sdpa's by :data:`MARGIN`. ``on`` and ``off`` skip the race.

    Raises:
        ValueError: the environment variable holds another value.
    """
    setting = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if setting not in SETTINGS:
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: expected one of {', '.join(SETTINGS)}")
    if setting != "auto":
        return None if setting == "on" else f"{ENV}=off"
    config = model.config
    heads = config.num_attention_heads
    groups = getattr(config, "num_key_value_heads", None) or heads
    size = getattr(config, "head_dim", None) or config.hidden_size // heads
    shape = (next(model.parameters()).dtype, heads, groups, size, torch.get_num_threads())
    if shape not in _verdicts:
        sdpa, blocked = race(*shape[:4])
        _verdicts[shape] = None if blocked * MARGIN <= sdpa else (
            f"sdpa's kernel was as fast or faster on this CPU ({sdpa * 1e3:.1f} ms against "
            f"{blocked * 1e3:.1f} for {PROBE_QUERIES} queries over {PROBE_KEYS} keys)")
        log.info("blocked attention for %s: %s", shape, _verdicts[shape] or f"taken ({blocked * 1e3:.1f} ms "
                 f"against sdpa's {sdpa * 1e3:.1f})")
    return _verdicts[shape]


def race(dtype: torch.dtype, heads: int, groups: int, size: int, rounds: int = 3) -> tuple[float, float]:
    """Best seconds of sdpa's attention and of :func:`blocked_attention` on one probe chunk:
    ``PROBE_QUERIES`` queries of ``heads`` heads over ``PROBE_KEYS`` keys of ``groups``
    key/value heads of ``size``, the chunk causal over its own last columns."""
    import time
    import types

    gen = torch.Generator().manual_seed(0)
    q, n = PROBE_QUERIES, PROBE_KEYS
    query = torch.randn(1, heads, q, size, generator=gen).to(dtype)
    key, value = (torch.randn(1, groups, n, size, generator=gen).to(dtype) for _ in range(2))
    allowed = torch.ones(q, n, dtype=torch.bool).tril(n - q)
    mask = torch.zeros(q, n, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[None, None]
    module = types.SimpleNamespace(num_key_value_groups=heads // groups, is_causal=True, training=False)
    best = {_sdpa: float("inf"), blocked_attention: float("inf")}
    with torch.inference_mode():
        for i in range(rounds + 1):
            for fn in best:
                start = time.perf_counter()
                fn(module, query, key, value, mask)
                if i:
                    best[fn] = min(best[fn], time.perf_counter() - start)
    return best[_sdpa], best[blocked_attention]


def _sdpa(*args, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(*args, **kwargs)


# Keyword arguments a model may pass its attention function that change what it computes
# (a call with any of them set stays with sdpa).
_CHANGING = ("softcap", "position_bias", "sliding_window", "s_aux")


def prefill_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0,
                      scaling: float | None = None, is_causal: bool | None = None,
                      **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' sdpa attention function, but a prefill pass's call goes to the package's
    prefill CPU kernel (:func:`~paralleldecode.decoding.cpu_kernels.prefill_attention`) where
    it takes it: a plain causal call (no mask, as many keys as queries: a shared prefix, a lone
    prompt) and a masked one of at least :data:`MIN_QUERIES` queries under an additive float32
    mask (branches, a chunk over the cache, left-padded rows; the engine's masks let every
    query see at least itself) or under transformers' own bool mask (a plain chunk over the
    cache, past ``plain_chunk`` tokens of context), made additive once per forward. Fewer
    queries (the eager decoding steps), other dtypes, dropout, soft-capping, sliding windows,
    sinks and gradients go to sdpa.

    Args:
        query: ``(B, H, Q, D)``; key, value: ``(B, G, L, D)`` with ``H`` a multiple of ``G``.
        attention_mask: None for the causal path, or ``(B or 1, 1, Q, L)``.

    Returns:
        ``((B, Q, H, D)`` output, None) as transformers' sdpa function returns it.
    """
    q = query.shape[2]
    plain = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    mask = attention_mask
    if attention_mask is None:
        takes = plain and q > 1 and q == key.shape[2]
    else:
        takes = q >= MIN_QUERIES and isinstance(attention_mask, torch.Tensor)
        if takes and attention_mask.dtype == torch.bool and query.dtype == torch.float32:
            mask = _additive_once(attention_mask)  # transformers' own (a plain chunk over the cache)
    if (takes and not dropout and all(kwargs.get(k) is None for k in _CHANGING)
            and cpu_kernels.prefill_takes(query, key, value, mask)):
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        return cpu_kernels.prefill_attention(query, key, value, mask, scale), None
    return _sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                 is_causal=is_causal, **kwargs)


def _additive_once(mask: torch.Tensor) -> torch.Tensor:
    """A bool ``(B or 1, 1, Q, L)`` mask (True = may see) as the kernel's additive float32 one
    (0, or float32's minimum where hidden), made once per mask tensor: the layers of a forward
    share it."""
    seen = version(mask)
    held = _additive[0]
    if held is not None and held[0]() is mask and held[1] == seen:
        return held[2]
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(
        ~mask, torch.finfo(torch.float32).min)

    def forget(ref) -> None:  # the mask died: free its float form (unless replaced already)
        if _additive[0] is not None and _additive[0][0] is ref:
            _additive[0] = None

    _additive[0] = (weakref.ref(mask, forget), seen, out)  # one mask at a time
    return out


def _register(name: str, function) -> None:
    """Register ``function`` with transformers as attention implementation ``name``, with
    sdpa's masks (once per name)."""
    if name not in _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(name, function)
        AttentionMaskInterface.register(name, sdpa_mask)
        _registered.add(name)


def _blocked(mask: torch.Tensor) -> torch.Tensor:
    """``(..., Q, L)`` mask -> bool, True where a query may not see a key."""
    return ~mask if mask.dtype == torch.bool else mask != 0


def masked_span(mask: torch.Tensor) -> tuple[int, int] | None:
    """The key columns ``[lo, hi)`` outside which the ``(B, 1, Q, L)`` mask lets every query
    see every key, or None when some query sees no key (an additive mask's finite minimum
    counts as seen, as it does for sdpa). Computed once per mask tensor."""
    global _last_span
    seen = version(mask)
    held = _last_span
    if held is not None and held[0]() is mask and held[1] == seen:
        return held[2]
    if mask.dtype == torch.bool:
        blind = bool((~mask.any(-1)).any())
    else:
        blind = bool(torch.isneginf(mask).all(-1).any())
    span = None
    if not blind:
        columns = _blocked(mask).flatten(0, -2).any(0).nonzero()
        span = (int(columns[0]), int(columns[-1]) + 1) if len(columns) else (0, 0)
    _last_span = (weakref.ref(mask), seen, span)
    return span


def _takes(query, key, value, mask, dropout, kwargs) -> bool:
    b, h, q, _ = query.shape
    return (mask is not None and isinstance(mask, torch.Tensor) and mask.dim() == 4
            and mask.shape[1] == 1 and mask.shape[0] in (1, b) and tuple(mask.shape[2:]) == (q, key.shape[2])
            and q >= MIN_QUERIES and not torch.is_grad_enabled() and not dropout
            and query.device.type == "cpu" and query.dtype == key.dtype == value.dtype
            and query.dtype in DTYPES and (query.dtype == torch.float32 or key.shape[2] >= MIN_BF16_KEYS)
            and key.shape[0] == b and h % key.shape[1] == 0
            and kwargs.get("softcap") is None and kwargs.get("position_bias") is None)


def blocked_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0,
                      scaling: float | None = None, is_causal: bool | None = None,
                      **kwargs) -> tuple[torch.Tensor, None]:
    """Masked attention with transformers' attention-function signature.

    Args:
        query: ``(B, H, Q, D)``; key, value: ``(B, G, L, D)`` with ``H`` a multiple of ``G``;
            float32, or bfloat16 (computed in float32).
        attention_mask: ``(B or 1, 1, Q, L)``, bool (True = may see) or additive float.

    Returns:
        ``((B, Q, H, D)`` output in the query's dtype, None) as transformers' sdpa function
        returns it; calls that function itself for whatever this kernel does not take (module
        docstring).
    """
    span = masked_span(attention_mask) if _takes(query, key, value, attention_mask, dropout, kwargs) else None
    if span is None:
        return _sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                     is_causal=is_causal, **kwargs)
    lo, hi = span
    b, h, q, d = query.shape
    groups, keys = key.shape[1], key.shape[2]
    per = h // groups
    scale = scaling if scaling is not None else d ** -0.5
    rows = max(1, min(q, BLOCK_SCORES // (per * keys)))
    linear = torch.ops.mkldnn._linear_pointwise
    fp32, contiguous = torch.float32, torch.contiguous_format
    out = query.new_empty(b, q, h, d, dtype=fp32)
    scaled = (query.to(fp32) * scale).transpose(1, 2)  # (B, Q, H, D)
    for i in range(b):
        mask = attention_mask[min(i, attention_mask.shape[0] - 1), 0, :, lo:hi]  # (Q, hi - lo)
        blocked = ~mask if mask.dtype == torch.bool else None  # True where a query may not see
        for g in range(groups):
            heads = slice(g * per, (g + 1) * per)
            k = key[i, g].to(fp32, memory_format=contiguous)  # (L, D): the scores are queries @ k.T
            vt = value[i, g].t().to(fp32, memory_format=contiguous)  # (D, L): the output is scores @ vt.T
            for a in range(0, q, rows):
                z = min(a + rows, q)
                block = scaled[i, a:z, heads].transpose(0, 1).reshape(per * (z - a), d)
                scores = linear(block, k, None, "none", [], "").view(per, z - a, keys)
                if hi > lo:
                    if blocked is not None:
                        scores[:, :, lo:hi].masked_fill_(blocked[a:z], float("-inf"))
                    else:
                        scores[:, :, lo:hi].add_(mask[a:z])
                torch.softmax(scores, -1, out=scores)
                o = linear(scores.view(per * (z - a), keys), vt, None, "none", [], "")
                out[i, a:z, heads] = o.view(per, z - a, d).transpose(0, 1)
    return out.to(query.dtype), None


# The batch cache whose shared past the current thread's forward reads (see shared_past_attention).
_reading: contextvars.ContextVar = contextvars.ContextVar("paralleldecode_shared_past", default=None)


@contextlib.contextmanager
def reading_shared_past(cache):
    """Inside, :func:`shared_past_attention` finds each layer's shared past in ``cache`` (a
    :func:`~paralleldecode.decoding.cache.shared_past_cache`), for this thread only."""
    token = _reading.set(cache)
    try:
        yield
    finally:
        _reading.reset(token)


def shared_past_available(model) -> str | None:
    """Why rows of ``model`` cannot read one shared past in place (they then take copies of
    it; the past goes through torch's CPU flash kernel), or None."""
    return unswitchable(model, "shared-past attention")


def shared_past_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0,
                          scaling: float | None = None, is_causal: bool | None = None,
                          **kwargs) -> tuple[torch.Tensor, None]:
    """Attention of rows that all start from one past held once
    (:class:`~paralleldecode.decoding.cache.SharedPastLayer`), with transformers'
    attention-function signature.

    Each row's queries attend to the ``P`` past keys and to the row's own ``n`` keys as if
    they were one ``P + n`` row, without the past being copied into the rows: the past part
    goes through torch's CPU flash kernel, every row reading the one copy (its batch stride
    is 0), which also gives each query's log-sum-exp; the own part (a few dozen prompt slots
    and the answers so far) through two float32 matmuls under the mask; the two partial
    outputs are merged by their log-sum-exps. Every query of a row sees the whole past (it is
    ``SHARED`` and has no padding), so only the mask's own columns are read. Outputs equal
    sdpa's on the copied rows to float32 rounding.

    Args:
        query: ``(B, H, Q, D)``; key, value: ``(B, G, n, D)``, the rows' own slots, ``H`` a
            multiple of ``G``.
        attention_mask: ``(B or 1, 1, Q, P + n)``, bool (True = may see) or additive float.

    Returns:
        ``((B, Q, H, D)`` output in the query's dtype, None); a layer without a shared past
        goes to transformers' sdpa function.
    """
    from paralleldecode.decoding.cache import SharedPastLayer

    cache = _reading.get()
    layer = cache.layers[module.layer_idx] if cache is not None else None
    if not isinstance(layer, SharedPastLayer):
        return _sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                     is_causal=is_causal, **kwargs)
    b, h, q, d = query.shape
    groups, own, past = key.shape[1], key.shape[2], layer.past_length
    if attention_mask is None or attention_mask.dim() != 4 or attention_mask.shape[-1] != past + own:
        shape = None if attention_mask is None else tuple(attention_mask.shape)
        raise ValueError(f"shared-past attention needs a (B, 1, Q, {past} + {own}) mask, got {shape}")
    per = h // groups
    scale = scaling if scaling is not None else d ** -0.5
    fp32 = torch.float32
    # The query heads that share a key/value head become the query rows of that head.
    grouped = query.reshape(b, groups, per * q, d)
    keys = layer.past_keys[None].expand(b, -1, -1, -1)
    values = layer.past_values[None].expand(b, -1, -1, -1)
    out_past, lse_past = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        grouped, keys, values, scale=scale)  # (B, G, per * Q, D), (B, G, per * Q)
    scores = torch.matmul(grouped.to(fp32) * scale, key.to(fp32).transpose(-1, -2)).view(b, groups, per, q, own)
    mask = attention_mask[:, :, None, :, past:]  # (B or 1, 1, 1, Q, n)
    if mask.dtype == torch.bool:
        scores.masked_fill_(~mask, float("-inf"))
    else:
        scores.add_(mask.to(fp32))
    lse_own = torch.logsumexp(scores, -1)  # (B, G, per, Q)
    probs = torch.exp(scores - lse_own[..., None]).view(b, groups, per * q, own)
    out_own = torch.matmul(probs, value.to(fp32))  # (B, G, per * Q, D)
    lse_past, lse_own = lse_past.to(fp32), lse_own.view(b, groups, per * q)
    total = torch.logaddexp(lse_past, lse_own)
    out = out_past.to(fp32) * torch.exp(lse_past - total)[..., None] + out_own * torch.exp(lse_own - total)[..., None]
    return out.view(b, h, q, d).transpose(1, 2).to(query.dtype).contiguous(), None


class AttentionSwitch(Router):
    """Switches one model from sdpa to the attention function :attr:`function`, registered
    with transformers as :attr:`name`, inside :meth:`routed`, and back after. One object per
    model and subclass (:meth:`for_model`), shared by its engines; nests and holds across
    threads like :class:`~paralleldecode.decoding.packed.PackedLinears`. Only a model whose
    attention is ``sdpa`` is switched. The switch is the config's attention-implementation
    name, which compiled graphs are guarded on."""

    name: str
    function = None

    def __init__(self, model) -> None:
        super().__init__()
        self.config = model.config

    def _prepare(self) -> None:
        """Anything the first switch needs besides the registration."""

    def _route(self) -> None:
        if self.config._attn_implementation == "sdpa":
            _register(self.name, self.function)
            self._prepare()
            self.config._attn_implementation = self.name

    def _unroute(self) -> None:
        if self.config._attn_implementation == self.name:
            self.config._attn_implementation = "sdpa"


class BlockedAttention(AttentionSwitch):
    """Switches one model's attention to :func:`blocked_attention` inside :meth:`routed`. A
    compiled graph traced under ``sdpa`` must not run while it holds (the engine routes only
    its eager passes)."""

    name = NAME
    function = staticmethod(blocked_attention)


class PrefillAttention(AttentionSwitch):
    """Switches one model's attention to :func:`prefill_attention` inside :meth:`routed` (the
    engine's eager passes, float32 models on a CPU where the prefill kernel is loaded)."""

    name = "paralleldecode_prefill"
    function = staticmethod(prefill_attention)


class SharedPastAttention(AttentionSwitch):
    """Switches one model's attention to :func:`shared_past_attention` inside :meth:`routed`
    (the engine routes the forward passes of rows that read one shared past)."""

    name = "paralleldecode_shared_past"
    function = staticmethod(shared_past_attention)


__all__ = ["AttentionSwitch", "BLOCK_SCORES", "BlockedAttention", "DTYPES", "MIN_BF16_KEYS",
           "MIN_QUERIES", "NAME", "PrefillAttention", "SharedPastAttention", "available", "blocked_attention",
           "masked_span", "prefill_attention", "race", "reading_shared_past", "shared_past_attention",
           "shared_past_available", "slower_here", "unswitchable"]
