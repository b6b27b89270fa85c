"""The engine's decoding step as one function over fixed-shape buffers, compiled once.

Eager decoding of a small model is bound by the host: every step walks the modeling code op
by op. :func:`slot_step` is the step the engine takes for a 1D layout, written so that
nothing in it depends on how far the sequence has grown, which is what lets
``torch.compile`` turn it into one graph that later steps reuse:

* every layer's keys and values live in a buffer reserved for the whole call (the prefill's
  :class:`~paralleldecode.decoding.cache.GrowingLayer` buffers, the unused tail zeroed); the
  step writes its ``K`` new slots per row at slot ``at`` in place (:class:`SlotCache`);
* a ``(B, L)`` owner buffer says whose every slot is (``PAD`` beyond the filled part), and
  the mask is computed inside the graph from it, by the same rule as the eager
  :func:`~paralleldecode.decoding.layout.step_mask`: a query sees its own stream's and the
  shared slots, and itself;
* the buffers' length, the rows and the width (slots fed per row) are dynamic dimensions:
  one graph serves every group, and on the CPU the engine narrows a call's steps as its
  streams finish (a row feeds only its live streams, finished rows are dropped once half are
  done) without compiling again; torch specialises a dimension of size 1, so one row, several
  rows of one stream and several rows of several streams are the three graphs, and a lone
  row feeds two slots at least (:func:`step_width`). On CUDA a call keeps its first width
  and rows (finished streams feed padding): its steps replay one captured graph.

On CPU inductor compiles with ``freezing`` (the weights become constants and are prepacked
for the matmul kernels; measured 38 ms per step instead of 56-71 eager on the embedded model
at one row) and concatenates the linears that share an input (a layer's query, key and value
projections, its gate and up projections: 3-9% off a paragraph-sized step, nothing on an
article's), so the weights must not change while an engine decodes with it: call
:meth:`StepCompiler.reset` after training them. Columnar layouts (2D positions) and
cross-batch mixers stay eager. On the CPU a step computes its attention in
:func:`grouped_attention`, not in torch's flash kernel, which repacks the whole key/value
buffer of a bf16 call for the step's few queries and, in float32, was slower than grouped
matmuls at every step shape measured: a float32 step goes to the fused flash-decoding kernel
of :mod:`~paralleldecode.decoding.cpu_kernels` where it builds (an AVX-512 CPU; the article
step 64 against 87 ms), other dtypes to two grouped matmuls. Where that module builds, a
float32 step's linears go to its few-row kernel too (:class:`StepLinears`: each weight read
once per step, packed by freezing; paragraph steps 25-30 against 35-41 ms on the AMD EPYC),
in place of inductor's oneDNN linears and their concatenation. A call's steps after its
first skip dynamo's guard checks, the inputs being the ones the guards passed
(:meth:`StepCompiler._call`: 1-1.5 ms off every step on the 2-core CPUs).

On CUDA the compiled step is also captured as a CUDA graph at a call's second step and
replayed for the rest of the call (:class:`StepGraph`): a step of a small model is otherwise
bound by launching its few hundred kernels. On an H200 (bf16, the embedded model) one row's
step took 21.9 ms eager, 9.2 compiled and 1.7 replayed.

Shapes: ``B`` rows, ``K`` slots fed per row in a step, ``L`` buffer slots per row, ``H``
key/value heads, ``D`` head size, ``V`` vocabulary.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import time
import weakref

import torch

from paralleldecode.decoding import cpu_kernels
from paralleldecode.decoding.attention import AttentionSwitch, unswitchable
from paralleldecode.decoding.layout import PAD, visibility
from paralleldecode.decoding.packed import ModuleRouter

log = logging.getLogger(__name__)

COMPILE_SETTINGS = ("auto", "on", "off")
ENV = "PARALLELDECODE_COMPILE"
# "off" keeps compiled CUDA steps out of CUDA graphs (for measuring what the graphs give).
GRAPHS_ENV = "PARALLELDECODE_CUDA_GRAPHS"
GRAPHS_SETTINGS = ("on", "off")

# Below this size a step is a few milliseconds eager and compiling (tens of seconds on a CPU)
# never pays back: "auto" leaves such models eager (the test suite's tiny models among them).
AUTO_MIN_PARAMETERS = 50_000_000

# On the CPU each compiled graph holds a packed copy of the weights (inductor's freezing) and
# the eager passes hold one more: "auto" compiles there only where the two graphs every
# unpacked strategy uses, that copy and the compiler's own state (about 700 MiB measured)
# fit in the memory available.
AUTO_WEIGHT_COPIES = 3
AUTO_COMPILER_BYTES = 1 << 30

# Every StepCompiler's step is one code object to dynamo, so the graphs of all models in a
# process count against one recompile limit (torch's default 8); three graphs per model
# would leave the third model eager. This one serves about twenty models.
RECOMPILE_LIMIT = 64


def unavailable(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot build kernels for ``device``, or None when it can."""
    if device.type == "cpu":
        if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            return "no C++ compiler (g++, c++ or clang++) on PATH, which inductor needs on the CPU"
        return None
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "triton is not installed, which inductor needs on CUDA"
    return f"compiled steps are built for CPU and CUDA, not {device.type!r}"


def available_memory() -> int | None:
    """Bytes this process may still take: the kernel's ``MemAvailable``, or less where a
    cgroup (v2) limit leaves less; None where neither can be read."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def short_of_memory(weights: int, available: int | None) -> str | None:
    """Why ``compile: auto`` leaves a CPU model of ``weights`` bytes eager when ``available``
    bytes are free (None: unknown, no reason), or None when its compiled steps fit."""
    need = AUTO_WEIGHT_COPIES * weights + AUTO_COMPILER_BYTES
    if available is None or need <= available:
        return None
    return (f"compile: auto keeps the steps eager: on the CPU the compiled graphs and packed weights would "
            f"take about {need / 2**30:.1f} GiB, {available / 2**30:.1f} GiB is available (compile: on "
            "compiles anyway)")


def cuda_graphs() -> bool:
    """Whether compiled CUDA steps are replayed as CUDA graphs (``PARALLELDECODE_CUDA_GRAPHS``,
    ``on`` unless set to ``off``)."""
    value = os.environ.get(GRAPHS_ENV, "on")
    if value not in GRAPHS_SETTINGS:
        raise ValueError(f"{GRAPHS_ENV} must be one of {', '.join(GRAPHS_SETTINGS)}; got {value!r}")
    return value == "on"


def resolve(setting: str | bool | None, model) -> tuple[bool, str]:
    """Whether an engine over ``model`` compiles its steps, and why (for the notice line).

    Args:
        setting: ``"auto"`` (on for a model of at least :data:`AUTO_MIN_PARAMETERS`
            parameters where inductor can build: a CPU with a C++ compiler, a CUDA device
            with triton; on the CPU only where :data:`AUTO_WEIGHT_COPIES` copies of the
            weights and the compiler fit in the memory available, :func:`short_of_memory`),
            ``"on"`` (wherever inductor can build), ``"off"``; True/False/None read as
            on/off/off.
    """
    if setting is True:
        setting = "on"
    elif setting in (False, None):
        setting = "off"
    if setting not in COMPILE_SETTINGS:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_SETTINGS)}; got {setting!r}")
    if setting == "auto" and os.environ.get(ENV):
        setting = os.environ[ENV]
        if setting not in COMPILE_SETTINGS:
            raise ValueError(f"{ENV} must be one of {', '.join(COMPILE_SETTINGS)}; got {setting!r}")
    if setting == "off":
        return False, "compile: off"
    device = next(model.parameters()).device
    why = unavailable(device)
    if why is not None:
        return False, why
    if setting == "auto":
        size = sum(p.numel() for p in model.parameters())
        if size < AUTO_MIN_PARAMETERS:
            return False, (f"compile: auto keeps a model of {size:,} parameters eager (compiling "
                           "costs more than it saves)")
        if device.type == "cpu":
            weights = sum(p.numel() * p.element_size() for p in model.parameters())
            why = short_of_memory(weights, available_memory())
            if why is not None:
                log.warning("%s", why)  # unlike a small model's, a surprise worth a line
                return False, why
    graphs = ", replayed as CUDA graphs" if device.type == "cuda" and cuda_graphs() else ""
    return True, f"decoding steps compiled with torch.compile on {device.type}{graphs}"


class SlotCache:
    """The cache object handed to the modeling code inside :func:`slot_step`: each layer's
    ``update`` writes the step's keys and values at slots ``at..at+K-1`` of that layer's
    buffer and returns the whole buffer (the mask hides the slots not yet written).

    Args:
        keys: per layer, a ``(B, H, L, D)`` buffer.
        values: per layer, a ``(B, H, L, D)`` buffer.
        at: 0-dim long tensor, the first slot this step writes.
    """

    is_compileable = True

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], at: torch.Tensor) -> None:
        self.keys, self.values, self.at = keys, values, at

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        slots = self.at + torch.arange(key_states.shape[-2], device=key_states.device)
        self.keys[layer_idx].index_copy_(2, slots, key_states)
        self.values[layer_idx].index_copy_(2, slots, value_states)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:  # never asked: positions are explicit
        return 0


# The attention-function name a model's step runs under on the CPU, and the dtypes it takes.
STEP_ATTENTION = "paralleldecode_step"
STEP_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@torch.library.custom_op("paralleldecode::softmax", mutates_args=())
def softmax(scores: torch.Tensor) -> torch.Tensor:
    """``torch.softmax`` over the last dimension, opaque to inductor: compiled, its float32
    sum over the keys made inductor guard the graph on at most 4,096 keys (it sums longer
    rows in chunks), so every longer context compiled each graph again mid-run."""
    return torch.softmax(scores, -1)


@softmax.register_fake
def _(scores: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(scores)


def grouped_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """The decoding step's attention on the CPU, with transformers' attention-function
    signature. float32 calls the fused kernel takes (:func:`~paralleldecode.decoding.
    cpu_kernels.step_takes`) go to it; the others are two matmuls in the model's dtype with the
    query heads of each key/value head as the rows of one, and the softmax in float32 (as
    transformers' ``eager`` attention rounds, without its copy of the keys per query head).

    torch's CPU flash kernel repacks the keys and values of a bf16 call whatever its query
    count, so a step, a few queries over the whole buffer, pays for the buffer's packing:
    measured eagerly in bf16, five rows of one query over 1,000 keys took 2.5 ms per layer in
    the flash kernel against 0.22 ms as matmuls, ten rows over 4,800 keys 26 against 2.6 ms.
    In float32 the flash kernel took 0.31 ms for the first; the embedded model's compiled
    float32 step, sdpa against these matmuls: one row of ten branches over 4,800 keys 118
    against 90 ms, five rows over 330 keys 58 against 47, one row of five branches over 330
    keys 42.5 against 42.0.

    Args:
        query: ``(B, H, Q, D)``; key, value: ``(B, G, L, D)`` with ``H`` a multiple of ``G``.
        attention_mask: ``(B, 1, Q, L)`` additive.

    Returns:
        ``((B, Q, H, D)`` output, None); anything else (another dtype, no mask, a mask per
        head, dropout, soft-capping, a position bias) goes to transformers' sdpa function.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, h, q, d = query.shape
    groups, length = key.shape[1], key.shape[2]
    if (query.dtype not in STEP_DTYPES or attention_mask is None or attention_mask.dtype == torch.bool
            or attention_mask.dim() != 4 or attention_mask.shape[1] != 1 or dropout or h % groups
            or kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    per = h // groups
    scale = scaling if scaling is not None else d ** -0.5
    if cpu_kernels.step_takes(query, key, value, attention_mask):
        return cpu_kernels.step_attention(query, key, value, attention_mask, scale), None
    scores = torch.matmul(query.reshape(b, groups, per * q, d), key.transpose(-1, -2))  # (B, G, per Q, L)
    scores = scores.view(b, groups, per, q, length).float() * scale + attention_mask[:, :, None].float()
    weights = softmax(scores).to(query.dtype).view(b, groups, per * q, length)
    out = torch.matmul(weights, value).view(b, h, q, d)
    return out.transpose(1, 2).contiguous(), None


class StepAttention(AttentionSwitch):
    """Switches a model's attention to :func:`grouped_attention` around its compiled steps.
    Only an sdpa model on the CPU is switched (:meth:`takes`); the graphs are traced, and
    guarded, under the switched name."""

    name = STEP_ATTENTION
    function = staticmethod(grouped_attention)

    @staticmethod
    def takes(model) -> bool:
        return unswitchable(model, "the step's grouped attention", STEP_DTYPES) is None


def _few_forward(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return cpu_kernels.few_linear(x, cpu_kernels.pack_linear(module.weight), module.bias, module.out_features)


class StepLinears(ModuleRouter):
    """Routes a float32 model's plain ``nn.Linear`` modules (its output head too) to the
    package's few-row kernel (:func:`~paralleldecode.decoding.cpu_kernels.few_linear`) while
    its compiled CPU steps are traced and run. In the frozen graph ``pack_linear(weight)`` is a
    constant, so inductor's freezing packs every weight once when it compiles the graph (in
    place of its own oneDNN packing), and a step reads each weight once. The forwards are
    made once and reused: dynamo guards on them."""

    def __init__(self, model) -> None:
        super().__init__()
        self.modules = [m for m in model.modules() if cpu_kernels.linear_takes(m)]
        self._forwards = {id(m): functools.partial(_few_forward, m) for m in self.modules}

    def forward_of(self, module: torch.nn.Linear):
        return self._forwards[id(module)]

    def _route(self) -> None:
        self._patch(self.modules)


def step_width(rows: int, per_row: int) -> int:
    """The slots each row feeds per compiled step, for a call of ``rows`` rows whose fullest
    row holds ``per_row`` streams: ``per_row``, except that a lone row feeds at least 2.

    torch specialises a dimension of size 1, so the width and the rows each make a graph of
    their own at 1. Three graphs serve every layout: one row (``sequential``, ``all_in_one``,
    ``one_sequence``), several rows of one stream each (``batch``, ``batch_cached``) and
    several rows of several streams (packed branches). A lone row of one stream feeds one
    padding slot instead of a fourth graph: on the embedded model one row of one token
    compiled apart measured slower (47 ms per step) than one row of two (30 ms), while rows
    of one stream fed as two slots each doubled the step's tokens (5 rows: 49 against 36 ms).
    On the CPU the engine asks with ``per_row`` 1, for the narrowest step a call of ``rows``
    rows may take, and feeds more slots where a row has more live streams.
    """
    if per_row == 1 and rows > 1:
        return 1
    return max(per_row, 2)


def slot_step(model, ids: torch.Tensor, positions: torch.Tensor, query_owner: torch.Tensor,
              key_owner: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor],
              at: torch.Tensor) -> torch.Tensor:
    """One decoding step of ``model`` over slot buffers.

    Args:
        ids: ``(B, K)`` token ids fed this step (the pad id in padding slots).
        positions: ``(B, K)`` their positions.
        query_owner: ``(B, K)`` their owners (``PAD`` for padding slots).
        key_owner: ``(B, L)`` the owner of every buffer slot, this step's already written at
            ``at..at+K-1`` and ``PAD`` beyond.
        keys, values: per layer ``(B, H, L, D)`` buffers, written in place.
        at: 0-dim long tensor, the first slot of this step.

    Returns:
        ``(B, K, V)`` float logits.
    """
    k, length = ids.shape[1], key_owner.shape[1]
    own_slot = at + torch.arange(k, device=ids.device)
    itself = torch.arange(length, device=ids.device)[None, None, :] == own_slot[None, :, None]
    allowed = visibility(query_owner, key_owner) | itself
    dtype = keys[0].dtype
    mask = torch.zeros(allowed.shape, dtype=dtype, device=ids.device).masked_fill(~allowed, torch.finfo(dtype).min)
    out = model(input_ids=ids, position_ids=positions, attention_mask=mask[:, None],
                cache=SlotCache(keys, values, at), use_cache=True)
    return out.logits.float()


class SlotBuffers:
    """A call's slot buffers: each layer's KV buffer (the prefill's
    :class:`~paralleldecode.decoding.cache.GrowingLayer` buffers), and the owner and token id
    of every slot, filled up to ``length``; :meth:`step` appends one step in place.

    Attributes:
        owner: ``(B, L)`` owner of every slot (``PAD`` beyond ``length``).
        ids: ``(B, L)`` token id of every slot.
        length: slots filled per row.
    """

    def __init__(self, layers: list, owner: torch.Tensor, ids: torch.Tensor, pad_id: int) -> None:
        self.layers = layers
        self.keys = [layer.buffers[0] for layer in layers]
        self.values = [layer.buffers[1] for layer in layers]
        self.length = n = owner.shape[1]
        room = self.keys[0].shape[-2]
        for t in (*self.keys, *self.values):
            t[..., n:, :].zero_()  # masked slots are multiplied by 0: they must not hold NaN
        self.owner = owner.new_full((owner.shape[0], room), PAD)
        self.owner[:, :n] = owner
        self.ids = ids.new_full((ids.shape[0], room), pad_id)
        self.ids[:, :n] = ids

    @classmethod
    def of(cls, cache, owner: torch.Tensor, ids: torch.Tensor, pad_id: int) -> SlotBuffers | None:
        """The buffers of an engine cache after its prefill, or None when a layer is not a
        growing full-attention layer (a sliding window: such a model decodes eagerly)."""
        from paralleldecode.decoding.cache import GrowingLayer

        layers = list(getattr(cache, "layers", []))
        if not layers or any(not isinstance(x, GrowingLayer) or x.buffers is None for x in layers):
            return None
        return cls(layers, owner, ids, pad_id)

    def filled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the ``(B, length)`` owners and ids filled so far."""
        return self.owner[:, : self.length], self.ids[:, : self.length]

    def step(self, run, ids: torch.Tensor, positions: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """Feed one step through ``run`` (a :class:`StepCompiler`) and advance.

        Args:
            ids, positions, owner: ``(B, K)`` of the step's slots.

        Returns:
            ``(B, K, V)`` float logits.
        """
        a, k = self.length, ids.shape[1]
        if a + k > self.owner.shape[1]:
            raise RuntimeError(f"slot buffers of {self.owner.shape[1]} slots cannot take {k} more after {a}")
        self.owner[:, a:a + k] = owner
        self.ids[:, a:a + k] = ids
        out = run(ids, positions, owner, self.owner, self.keys, self.values,
                  torch.tensor(a, device=ids.device))
        self.length = a + k
        for layer, key, value in zip(self.layers, self.keys, self.values):
            layer.keys, layer.values = key[..., : self.length, :], value[..., : self.length, :]
        return out


class StepCompiler:
    """:func:`slot_step` for one model, compiled on first use (eager where it cannot be).

    A compile that fails (an unusual model, an operator inductor lacks) leaves the engine
    eager for good, with one warning naming why; the step in flight is taken again eagerly,
    so no answer is lost or changed.

    The engine calls it under ``torch.inference_mode`` whatever mode its caller is in
    (Lightning predicts in inference mode, scripts under ``no_grad``): tensors of the two kinds
    fail each other's guards, and every graph would compile twice.

    Attributes:
        compile_seconds: time spent in calls that compiled a new graph (compile plus that
            one step), summed.
        fallback: why compiling was given up, or None.
        kernel_note: on the CPU, whether a float32 step's attention and linears run in the
            fused kernels (:mod:`~paralleldecode.decoding.cpu_kernels`) or why not; None elsewhere.
    """

    _shared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __init__(self, model) -> None:
        self.model = model
        self.compile_seconds = 0.0
        self.fallback: str | None = None
        self._fn = None
        device = next(model.parameters()).device
        self._freeze = device.type == "cpu"
        # On CUDA the compiled step is also captured as a CUDA graph (`StepGraph`).
        self.graphs = device.type == "cuda" and cuda_graphs()
        self.graph_fallback: str | None = None
        self._graph: StepGraph | None = None
        self._seen: tuple | None = None
        # The inputs of the last call whose guards passed without compiling (see `_call`).
        self._guarded: tuple | None = None
        # A float32 step on the CPU runs its linears (any model) and its attention (an sdpa
        # model) in the fused kernels where they build.
        self.kernel_note: str | None = None
        self._linears: StepLinears | None = None
        if self._freeze and next(model.parameters()).dtype == torch.float32:
            why, attention = cpu_kernels.load(), StepAttention.takes(model)
            if why is None:
                self._linears = StepLinears.for_model(model)
                self.kernel_note = ("step attention and linears in the fused CPU kernels" if attention
                                    else "step linears in the fused CPU kernel")
            elif attention:
                self.kernel_note = f"step attention as grouped matmuls ({why})"

    @classmethod
    def for_model(cls, model) -> StepCompiler:
        """The one compiler of ``model``: every engine over it shares the compiled graphs."""
        if model not in cls._shared:
            cls._shared[model] = cls(model)
        return cls._shared[model]

    def reset(self) -> None:
        """Forget the compiled graphs (their frozen weights), e.g. after training."""
        self._fn = None
        self._graph = self._seen = self._guarded = None
        torch._dynamo.reset()

    def _compiled(self):
        if self._fn is None:
            def step(ids, positions, query_owner, key_owner, keys, values, at):
                return slot_step(self.model, ids, positions, query_owner, key_owner, keys, values, at)

            self._fn = torch.compile(step, fullgraph=True)
        return self._fn

    def __call__(self, ids, positions, query_owner, key_owner, keys, values, at) -> torch.Tensor:
        """:func:`slot_step`, compiled unless compiling failed before; the model's
        attention on the CPU through :func:`grouped_attention` (:class:`StepAttention`)."""
        routing = StepAttention.for_model(self.model).routed() if StepAttention.takes(self.model) else (
            contextlib.nullcontext())
        with routing:
            return self._step(ids, positions, query_owner, key_owner, keys, values, at)

    def _step(self, ids, positions, query_owner, key_owner, keys, values, at) -> torch.Tensor:
        args = (ids, positions, query_owner, key_owner, keys, values, at)
        if self.fallback is not None:
            return slot_step(self.model, *args)
        if self.graphs and self.graph_fallback is None:
            key = StepGraph.key(ids, key_owner, keys, values)
            if self._graph is not None and self._graph.matches(key):
                return self._graph.replay(ids, positions, query_owner, at)
            if self._seen == key:  # this call's second step: its shape is compiled
                try:
                    self._graph, out = StepGraph.capture(key, self._call, *args)
                    return out
                except Exception as err:  # noqa: BLE001 - a capture failure leaves steps compiled
                    self._graph = None
                    reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
                    self.graph_fallback = f"{type(err).__name__}: {reason}"
                    log.warning("compile: CUDA graphs off, capturing a step failed (%s)", self.graph_fallback)
                    torch.cuda.synchronize()
                    # The warm-up before the capture may have run this step already; running
                    # it again writes the same keys and values and gives the same logits.
            self._seen = key
        from torch._dynamo.utils import counters

        before = counters["stats"]["unique_graphs"]
        start = time.perf_counter()
        try:
            out = self._call(*args)
        except Exception as err:  # noqa: BLE001 - any compile failure falls back to eager
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            self.fallback = f"{type(err).__name__}: {reason}"
            model_type = getattr(self.model.config, "model_type", type(self.model).__name__)
            log.warning("compile: decoding %s eagerly, torch.compile failed (%s)", model_type, self.fallback)
            return slot_step(self.model, *args)
        if counters["stats"]["unique_graphs"] != before:
            self.compile_seconds += time.perf_counter() - start
        return out

    @staticmethod
    def _inputs(ids, positions, query_owner, key_owner, keys, values, at) -> tuple:
        """What dynamo's guards read of a step's inputs: every tensor's kind, shape, strides
        and address (the buffers' addresses: no other tensors aliasing them), and the mode."""
        return (torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
                *((t.dtype, t.device, t.shape, t.stride(), t.data_ptr())
                  for t in (key_owner, *keys, *values)),
                *((t.dtype, t.device, t.shape, t.stride()) for t in (ids, positions, query_owner, at)))

    def _call(self, ids, positions, query_owner, key_owner, keys, values, at) -> torch.Tensor:
        """The compiled step itself (compiling a new shape first); errors propagate.

        A call's steps after its first feed the same buffers and shapes, so what dynamo's
        guards check (about 4,000 checks for the embedded model, 1-1.5 ms per step on the
        2-core CPUs, 5-8% of a paragraph step) holds as it did for the call before: when a
        call's inputs match those of the last call whose guards passed without compiling,
        the guards are skipped (``skip_guard_eval_unsafe``: dynamo only tells its graphs
        apart). A graph the skip would need to compile is refused by dynamo with an error,
        and the call is made again with the guards."""
        inputs = self._inputs(ids, positions, query_owner, key_owner, keys, values, at)
        if inputs == self._guarded:
            linears = self._linears.routed() if self._linears is not None else contextlib.nullcontext()
            try:
                with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True), linears:
                    return self._compiled()(ids, positions, query_owner, key_owner, keys, values, at)
            except RuntimeError as err:
                if "skip_guard_eval_unsafe" not in str(err):
                    raise
                self._guarded = None
        from torch._dynamo.utils import counters

        graphs = counters["stats"]["unique_graphs"]
        out = self._guarded_call(ids, positions, query_owner, key_owner, keys, values, at)
        self._guarded = inputs if counters["stats"]["unique_graphs"] == graphs else None
        return out

    def _guarded_call(self, ids, positions, query_owner, key_owner, keys, values, at) -> torch.Tensor:
        """:meth:`_call` with dynamo's guards (compiling a new shape first)."""
        # Rows, width and buffer length vary between calls: mark them dynamic (a size-1
        # dimension cannot be, torch specialises it).
        for t in (ids, positions, query_owner, key_owner, *keys, *values):
            for dim in range(min(t.dim(), 3)):
                if dim != 1 or t.dim() != 4:  # a buffer's second dimension is its heads
                    if t.shape[dim] > 1:
                        torch._dynamo.mark_dynamic(t, dim)
        # Freezing is read when a graph compiles (inside the first call for a shape);
        # torch.compile's `options` do not reach it, the config must be patched. Frozen CPU
        # graphs also concatenate the linears that read one input (a layer's query, key and
        # value projections; its gate and up projections) into one packed matmul each.
        limit = max(RECOMPILE_LIMIT, torch._dynamo.config.recompile_limit)
        with (torch._inductor.config.patch({"freezing": self._freeze, "cpp.enable_concat_linear": self._freeze}),
              torch._dynamo.config.patch(recompile_limit=limit),
              self._linears.routed() if self._linears is not None else contextlib.nullcontext()):
            return self._compiled()(ids, positions, query_owner, key_owner, keys, values, at)


class StepGraph:
    """One call's compiled step, captured as a CUDA graph and replayed for the call's later
    steps: a step of a small model is otherwise bound by launching its kernels one by one.

    A graph is bound to the addresses of what it reads and writes: the call's KV and owner
    buffers (fixed for the call, see :class:`SlotBuffers`) and its own copies of the step's
    inputs (``ids``, ``positions``, ``query_owner``, ``at``), which :meth:`replay` fills. So a
    call's first step runs the compiled graph plainly (compiling it if the shape is new), its
    second step runs it once more on a side stream and then captures it, and every later
    step replays it; the next call, with other buffers, captures its own.
    """

    def __init__(self, key: tuple, graph, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        self._key, self._graph, self._inputs, self._out = key, graph, inputs, out

    @staticmethod
    def key(ids: torch.Tensor, key_owner: torch.Tensor, keys: list[torch.Tensor],
            values: list[torch.Tensor]) -> tuple:
        """What a graph is bound to: the step's shape and every buffer's address."""
        return (tuple(ids.shape), tuple(key_owner.shape), key_owner.data_ptr(),
                tuple(t.data_ptr() for t in (*keys, *values)), tuple(keys[0].shape), keys[0].dtype)

    def matches(self, key: tuple) -> bool:
        return key == self._key

    @classmethod
    def capture(cls, key: tuple, run, ids, positions, query_owner, key_owner, keys, values,
                at) -> tuple[StepGraph, torch.Tensor]:
        """Run this step through ``run`` (the compiled step) on a side stream, as the warm-up
        that CUDA graph capture asks for, then capture it; returns the graph and the step's
        ``(B, K, V)`` logits (the warm-up's)."""
        inputs = tuple(t.clone() for t in (ids, positions, query_owner, at))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = run(*inputs[:3], key_owner, keys, values, inputs[3]).clone()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = run(*inputs[:3], key_owner, keys, values, inputs[3])
        return cls(key, graph, inputs, static_out), out

    def replay(self, ids, positions, query_owner, at) -> torch.Tensor:
        """The step for these inputs: ``(B, K, V)`` float logits (a copy: the graph's own
        output is overwritten by the next replay)."""
        for static, t in zip(self._inputs, (ids, positions, query_owner, at)):
            static.copy_(t)
        self._graph.replay()
        return self._out.clone()
