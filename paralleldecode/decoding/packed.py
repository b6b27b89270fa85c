"""The model's linear layers through oneDNN with their weights packed once (CPU).

On a CPU, an eager ``nn.Linear`` in float32 goes to the BLAS torch was built with (MKL);
on the AMD machines this package is measured on, MKL takes a generic path and reaches
150-190 GFLOP/s on the embedded model's shapes, where oneDNN's kernel over a weight
reordered once into its blocked layout reaches 330-420 (2 cores, AVX-512; outputs equal to
fp32 rounding). The prefill is a stack of such matmuls over hundreds of rows, so the engine
runs its eager forward passes (the prefill, and the steps the compiled graph does not take)
with every plain ``nn.Linear`` of the model calling ``mkldnn._linear_pointwise`` on its
packed weight. The compiled decoding step does not use them: inductor packs its own.

A weight is packed the first time it is used and again whenever it changed (a new tensor,
or the same one written in place, e.g. by an optimizer step), so training between calls
needs nothing. The output embedding goes through the same kernel on its own, unpacked weight:
the prefill computes a few rows of it, so packing it would copy the largest matrix for
nothing, but MKL's matmul is slow even there (18 ms for 5 rows of the embedded model's
49152 x 576 head, oneDNN's 4.3). Modules that are not exactly ``nn.Linear`` keep their own
forward (quantised layers, a PEFT LoRA wrapper: its base layer and its two low-rank
projections are plain ones and are packed, the wrapper adds them up as before), as do modules
whose ``forward`` someone else already replaced. The packed copies cost the weights' bytes once more.

Shapes: a linear layer maps ``(..., I)`` to ``(..., O)`` with its ``(O, I)`` weight.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import weakref

import torch

log = logging.getLogger(__name__)

# oneDNN's linear kernel packs for these dtypes; others keep the module's own forward.
PACKED_DTYPES = (torch.float32, torch.bfloat16)


def available(model) -> str | None:
    """Why ``model``'s linears cannot be packed, or None when they can."""
    parameter = next(model.parameters())
    if parameter.device.type != "cpu":
        return f"packed linears are a CPU kernel; the model is on {parameter.device.type}"
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn)"
    if parameter.dtype not in PACKED_DTYPES:
        return f"packed linears take float32 or bfloat16 weights, not {parameter.dtype}"
    return None


def version(tensor: torch.Tensor) -> int:
    """``tensor``'s version counter (it counts in-place writes), or -1 for an inference
    tensor, which has none: then only a new tensor is seen as a change."""
    try:
        return tensor._version
    except RuntimeError:
        return -1


class Router:
    """A routing that holds while any caller is inside :meth:`routed`: nested, and across
    threads (one lock; the first caller in routes, the last one out undoes it). One
    instance per model and subclass (:meth:`for_model`), shared by the model's engines."""

    _shared: weakref.WeakKeyDictionary

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls._shared = weakref.WeakKeyDictionary()

    def __init__(self) -> None:
        self._depth = 0
        self._lock = threading.Lock()

    @classmethod
    def for_model(cls, model, *args, **kwargs):
        """The model's shared instance (made with these arguments the first time)."""
        if model not in cls._shared:
            cls._shared[model] = cls(model, *args, **kwargs)
        return cls._shared[model]

    def _route(self) -> None:
        raise NotImplementedError

    def _unroute(self) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def routed(self):
        """Inside, the routing holds (for :class:`PackedLinears`: the model's linears
        compute with their packed weights, without autograd)."""
        with self._lock:
            if self._depth == 0:
                self._route()
            self._depth += 1
        try:
            yield self
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    self._unroute()


class ModuleRouter(Router):
    """A :class:`Router` that gives modules another ``forward`` while routed:
    :meth:`forward_of` each, set on the instance; a module whose ``forward`` someone else
    already replaced keeps it."""

    def __init__(self) -> None:
        super().__init__()
        self._routed: list[torch.nn.Module] = []

    def forward_of(self, module: torch.nn.Module):
        raise NotImplementedError

    def _patch(self, modules) -> None:
        for m in modules:
            if "forward" not in m.__dict__:
                m.forward = self.forward_of(m)
                self._routed.append(m)

    def _unroute(self) -> None:
        for m in self._routed:
            del m.forward
        self._routed = []


class PackedLinears(ModuleRouter):
    """Packed weights for one model's linear layers, and a context that routes them there.

    One object per model (:meth:`for_model`), shared by every engine over it; the context
    nests and is safe across threads (the modules stay routed while any caller is inside).

    Args:
        model: the causal LM whose ``nn.Linear`` modules to route.
        rows_hint: the rows a call usually has (the prefill chunk); oneDNN picks the packed
            layout for it, any row count is still computed correctly.
    """

    def __init__(self, model, rows_hint: int = 512) -> None:
        self.modules = [m for m in model.modules()
                        if type(m) is torch.nn.Linear and m.weight.dtype in PACKED_DTYPES]
        self.head = model.get_output_embeddings()  # routed to the kernel, never packed
        super().__init__()
        self.rows_hint = rows_hint
        self._packed: dict[int, tuple[tuple, torch.Tensor]] = {}
        self.failed: str | None = None

    def weight(self, module: torch.nn.Linear) -> torch.Tensor:
        """``module``'s packed weight, packed again when the weight changed since."""
        w = module.weight
        key = (w.data_ptr(), version(w), tuple(w.shape), w.dtype)
        held = self._packed.get(id(module))
        if held is None or held[0] != key:
            with torch.no_grad():
                held = (key, torch.ops.mkldnn._reorder_linear_weight(w.detach(), self.rows_hint))
            self._packed[id(module)] = held
        return held[1]

    def _forward(self, module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        w = module.weight
        if (torch.is_grad_enabled() or x.dtype != w.dtype or w.dtype not in PACKED_DTYPES
                or x.device.type != "cpu" or w.device.type != "cpu"):  # moved or cast since
            return torch.nn.functional.linear(x, w, module.bias)
        weight = w if module is self.head else self.weight(module)
        return torch.ops.mkldnn._linear_pointwise(x, weight, module.bias, "none", [], "")

    def _route(self) -> None:
        if self.failed is None:
            try:  # one small pack shows whether the kernel exists here at all
                packable = [m for m in self.modules if m is not self.head]
                if packable:
                    self.weight(packable[0])
            except (RuntimeError, NotImplementedError) as err:
                self.failed = f"{type(err).__name__}: {str(err).splitlines()[0]}"
                log.warning("packed linears: keeping the modules' own matmuls (%s)", self.failed)
        if self.failed is None:
            self._patch(self.modules)

    def forward_of(self, module: torch.nn.Linear):
        return functools.partial(self._forward, module)


__all__ = ["PACKED_DTYPES", "ModuleRouter", "PackedLinears", "Router", "available", "version"]
