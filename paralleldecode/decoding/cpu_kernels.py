"""The package's fused CPU kernels (``cpu_kernels.cpp``), built at run time.

Three float32 kernels for AVX-512 CPUs, one C++ source, one build, registered as operators of
the ``paralleldecode_cpu`` library:

* ``step_attention`` (:func:`step_attention`): the compiled CPU step's attention. A
  decoding step's attention is a few queries per key/value head (one per stream and query
  head) against the whole key/value buffer. As the two grouped matmuls of
  :func:`~paralleldecode.decoding.compiled.grouped_attention` it is small-row products, which
  MKL and oneDNN compute at about a third of their large-matmul rate, with the scores written
  out and read back by the mask, the softmax and the second product. The kernel reads each
  block of keys and values once: scores, mask, online softmax and the value product per block
  of 64 keys, the queries of a key/value head as the 16 or 32 lanes of AVX-512 registers, the
  next blocks prefetched (into L2 where the L1 data cache is 32 KiB or less: there a tile's
  own block fills L1), and the keys split between threads when there are fewer tiles than
  threads (the parts merged by their maxima and sums, as flash-decoding does). A tile of at
  most 8 rows (rows of one query) would fill few of the lanes: for head sizes 64 and 128 it
  goes one row at a time, the lanes over 16 keys for the scores and over the head for the
  value product (five rows of one query, 30 layers over 394 keys: 3.9 against 6.9 ms).
* ``prefill_attention`` (:func:`prefill_attention`): the eager passes' attention over many
  queries (a prefill's shared prefix or lone prompt through transformers' maskless causal
  path; branches, chunks over the cache and left-padded rows under the engine's mask). The
  same tile loop over tiles of consecutive queries: each tile of ``T`` positions of the
  heads that share a key/value head (at most 48 rows, three registers wide); a causal tile
  reads the keys up to its last query only, so of the causal triangle only the tile's own
  ``T x T`` corner is computed and masked (torch's flash kernel computes whole 256 x 512
  blocks across the diagonal), and a masked tile skips every block of 64 keys its mask hides
  from all its queries (other branches' slots, padding); tiles are handed to threads longest
  first.
* ``few_linear`` over ``pack_linear``'s weight (:func:`few_linear`): the compiled CPU step's
  linear layers (:class:`~paralleldecode.decoding.compiled.StepLinears`). A step feeds a few
  rows through every weight, so it is bound by reading the weights; oneDNN's packed kernel,
  which inductor's freezing uses, read them at 15-20 GB/s on the AMD EPYC VM where its memory
  gives 29-38. The weight is packed in blocks of 16 outputs (each block's weights of one input
  element contiguous); an input element is broadcast against 64 outputs' weights, up to six
  rows at a time, the next six reading the same blocks from the cache, so each weight is read
  once per call and no sum crosses lanes. 30 layers' seven linears of the embedded model
  (distinct weights, 2 threads of the AMD EPYC, alternating in one process): one row 14.4-15.6
  against oneDNN's 22.9-24.9 ms, two 15.8-16.0 against 25.3-25.6, five 16.1-16.7 against
  20.1-21.6, ten 20.1-21.7 against 25.3-27.3, forty 48.7-49.2 against 54.3-65.8.

Measured on the embedded model's shapes (30 layers of 9 query heads over 3 key/value heads of
64, float32, 2 threads of an Intel Xeon with AMX). The step kernel against the eager grouped
matmuls (cold buffers): one row of ten branches over 4,800 keys 21.2 against 45.6 ms; over
2,400 keys 10.9 against 24.3; one row of five branches over 400 keys 2.1 against 4.3; five
rows of one query 9.3 against 9.3; eight rows of five branches 16.7 against 21.2. FlexAttention
compiled for the same step measured 92.9 ms at 4,800 keys (see docs/results.md), so the field
library is not the faster one here. The prefill kernel against sdpa's flash kernel, per
layer: causal over 4,800 tokens 102 against 123 ms (259 against 215 GFLOP/s), over 1,000
tokens 5.0 against 7.4; masked, ten 15-slot branches over a 4,850-token context 6.9 against
9.1, a 512-query chunk over 4,800 keys 20.4 against 26.4, eight left-padded rows of 400 8.8
against 15.5.

The attention kernels are taken for float32 tensors on a CPU with AVX-512 (``torch.backends.cpu.
get_cpu_capability()``) and a head size that is a multiple of 16 (at most 256); bfloat16 and
other CPUs keep the matmuls and sdpa; the linear kernel for every plain float32
``nn.Linear`` of a model whose steps compile on such a CPU (other CPUs keep inductor's oneDNN
linears). ``PARALLELDECODE_CPU_KERNELS=off`` keeps them all out (for measuring what the
kernels give). The first build takes about 20 s and is cached on disk by
``torch.utils.cpp_extension`` (``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``);
a build that fails leaves the matmuls and sdpa, with one warning naming why.

Sums are taken in another order than the matmuls' and sdpa's (per block of keys, then
merged), so outputs differ from them by float32 rounding (about 1e-7 on unit-scale values);
greedy replies are tested equal to the eager engine's (``tests/decoding/test_compiled.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

import torch

log = logging.getLogger(__name__)

ENV = "PARALLELDECODE_CPU_KERNELS"
SETTINGS = ("auto", "off")
SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
NAME = "paralleldecode_cpu_kernels"
# The head sizes the kernel takes: multiples of 16 up to this.
MAX_HEAD = 256

_state: dict[str, str | None] = {}  # "why": None once loaded, a reason when it cannot be


def unavailable() -> str | None:
    """Why the kernels cannot be built here (the setting, the CPU, the toolchain), or None."""
    setting = os.environ.get(ENV, "auto")
    if setting not in SETTINGS:
        raise ValueError(f"{ENV} must be one of {', '.join(SETTINGS)}; got {setting!r}")
    if setting == "off":
        return f"{ENV}=off"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "AVX512":
        return f"it needs AVX-512, this CPU's best is {capability}"
    if not any(shutil.which(c) for c in ("g++", "c++")):
        return "no C++ compiler (g++ or c++) on PATH"
    return None


def load() -> str | None:
    """Build (first use on a machine) and load the kernels once per process; returns why they
    are not available, or None when the ``torch.ops.paralleldecode_cpu`` operators are loaded."""
    if "why" in _state:
        return _state["why"]
    why = unavailable()
    if why is None:
        try:
            _build()
        except Exception as err:  # noqa: BLE001 - any build failure keeps the matmuls
            lines = str(err).strip().splitlines() or [""]
            first = next((line for line in lines if "error:" in line), lines[0]).strip()[:200]
            why = f"building it failed ({type(err).__name__}: {first})"
            log.warning("compile: the fused CPU attention kernels are off, %s", why)
    _state["why"] = why
    return why


def _build() -> None:
    from torch.utils.cpp_extension import load as build

    ninja = _ninja_dir()
    if ninja and ninja not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = ninja + os.pathsep + os.environ.get("PATH", "")
    # AVX-512 F only (no -march=native: the cached build may serve another AVX-512 machine).
    build(NAME, [str(SOURCE)], extra_cflags=["-O3", "-mavx512f", "-mfma", "-fopenmp"],
          extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False)

    @torch.library.register_fake("paralleldecode_cpu::step_attention")
    def _(query, key, value, mask, scale):
        b, h, q, d = query.shape
        return query.new_empty((b, q, h, d))

    @torch.library.register_fake("paralleldecode_cpu::prefill_attention")
    def _(query, key, value, mask, scale):
        b, h, q, d = query.shape
        return query.new_empty((b, q, h, d))

    @torch.library.register_fake("paralleldecode_cpu::pack_linear")
    def _(weight):
        n, k = weight.shape
        return weight.new_empty(((n + 15) // 16, k, 16))

    @torch.library.register_fake("paralleldecode_cpu::few_linear")
    def _(x, packed, bias, out_features):
        return x.new_empty((*x.shape[:-1], out_features))


def _ninja_dir() -> str | None:
    """The folder of the ``ninja`` the pip package installs (torch's builder runs ``ninja``
    from PATH, which a virtual environment's scripts folder is not on unless activated)."""
    try:
        import ninja
    except ImportError:
        return None
    return getattr(ninja, "BIN_DIR", None)


@contextlib.contextmanager
def suspended():
    """Inside, no call goes to the kernels, as if they had not loaded (for measuring them
    against the paths they replace in one process: ``benchmarks/prefill_speed.py``). Engines
    made inside note them as not taken; the compiled graphs that already call the step
    kernel keep calling it."""
    held = dict(_state)
    _state["why"] = "suspended"
    try:
        yield
    finally:
        _state.clear()
        _state.update(held)


def loaded() -> bool:
    """Whether :func:`load` succeeded in this process."""
    return "why" in _state and _state["why"] is None


def _fits(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
    """Loaded, float32 CPU tensors of 4 dimensions, keys and values of one shape and the
    queries' head size (a size the kernels take), contiguous in the head dimension, no
    gradient wanted."""
    d = query.shape[-1]
    return (loaded() and query.device.type == "cpu" and query.dtype == key.dtype == value.dtype == torch.float32
            and query.dim() == key.dim() == 4 and key.shape == value.shape and key.shape[0] == query.shape[0]
            and key.shape[-1] == d and d % 16 == 0 and d <= MAX_HEAD and key.stride(-1) == 1
            and value.stride(-1) == 1 and not torch.is_grad_enabled())


def step_takes(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor) -> bool:
    """Whether a step's attention call goes to :func:`step_attention`: it is loaded, the tensors
    are float32 on the CPU, the head size a multiple of 16 (at most :data:`MAX_HEAD`), keys and
    values contiguous in the head dimension and the mask additive ``(B or 1, 1, Q, L)``."""
    return (_fits(query, key, value) and mask.dtype == torch.float32 and mask.dim() == 4
            and mask.shape[1] == 1)


def step_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                   scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v with grouped key/value heads, in the step kernel.

    Args:
        query: ``(B, H, Q, D)`` float32.
        key, value: ``(B, G, L, D)`` float32, ``H`` a multiple of ``G``, unit stride in ``D``.
        mask: ``(B, 1, Q, L)`` (or ``(1, 1, Q, L)``) additive float32.

    Returns:
        ``(B, Q, H, D)`` contiguous (transformers' attention output layout).
    """
    return torch.ops.paralleldecode_cpu.step_attention(query, key, value, mask, scale)


# The prefill kernel's tiles hold at most this many rows (query heads per key/value head x positions).
MAX_GROUP = 48


def prefill_takes(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  mask: torch.Tensor | None = None) -> bool:
    """Whether a prefill pass's call goes to :func:`prefill_attention`: as :func:`step_takes`
    for the tensors, at most :data:`MAX_GROUP` query heads per key/value head, and either no
    mask and at least as many keys as queries (causal) or an additive float32
    ``(B or 1, 1, Q, L)`` mask."""
    h, g = query.shape[1], key.shape[1]
    if not (_fits(query, key, value) and g > 0 and h % g == 0 and h // g <= MAX_GROUP):
        return False
    if mask is None:
        return key.shape[2] >= query.shape[2]
    return (mask.dtype == torch.float32 and mask.device.type == "cpu" and mask.dim() == 4 and mask.shape[1] == 1
            and mask.shape[0] in (1, query.shape[0]) and tuple(mask.shape[2:]) == (query.shape[2], key.shape[2]))


def prefill_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                      scale: float) -> torch.Tensor:
    """A prefill pass's attention with grouped key/value heads, in the prefill kernel.

    Without a mask it is causal: query ``i`` is at position ``L - Q + i`` and sees keys
    ``0 .. L - Q + i`` (for ``Q == L``, sdpa's ``is_causal``). With one it is
    ``softmax(q k^T * scale + mask) v``, the blocks of keys the mask hides from a whole tile of
    queries skipped; a query whose mask hides every key gets zeros (sdpa: the mean of the values).

    Args:
        query: ``(B, H, Q, D)`` float32, any strides.
        key, value: ``(B, G, L, D)`` float32, ``H`` a multiple of ``G`` (at most
            :data:`MAX_GROUP` times), unit stride in ``D``; ``L >= Q`` without a mask.
        mask: None, or ``(B or 1, 1, Q, L)`` additive float32 (entries below -1e30 hide).

    Returns:
        ``(B, Q, H, D)`` contiguous (transformers' attention output layout).
    """
    return torch.ops.paralleldecode_cpu.prefill_attention(query, key, value, mask, scale)


def linear_takes(module: torch.nn.Module) -> bool:
    """Whether :func:`few_linear` computes ``module``: loaded, a plain ``nn.Linear`` with a
    float32 CPU weight."""
    return (loaded() and type(module) is torch.nn.Linear and module.weight.dtype == torch.float32
            and module.weight.device.type == "cpu")


def pack_linear(weight: torch.Tensor) -> torch.Tensor:
    """An ``(N, K)`` float32 weight as :func:`few_linear` reads it: ``(ceil(N / 16), K, 16)``,
    blocks of 16 outputs (the last zero-padded), each block's weights of one input element
    contiguous."""
    return torch.ops.paralleldecode_cpu.pack_linear(weight)


def few_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    """``x w^T + bias`` for the few rows of a decoding step, over :func:`pack_linear`'s ``w``.

    Each weight is read once per call: an input element is broadcast against the weights of
    64 outputs, up to six rows at a time (the next six read the same blocks from the cache),
    the output blocks split between threads.

    Args:
        x: ``(..., K)`` float32.
        packed: ``pack_linear(w)`` of an ``(out_features, K)`` weight.
        bias: ``(out_features,)`` or None.

    Returns:
        ``(..., out_features)``.
    """
    return torch.ops.paralleldecode_cpu.few_linear(x, packed, bias, out_features)
