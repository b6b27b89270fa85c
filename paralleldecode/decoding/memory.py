"""glibc's malloc told to keep the memory the engine's CPU passes free.

A forward pass on the CPU allocates and frees tensors of a few hundred KiB to tens of MiB
every layer (a prefill's MLP intermediates and attention blocks, a step's scores and
logits). With glibc's defaults such a block comes from the heap, and when it is freed the
heap's free top above 128 KiB is given back to the kernel (the trim threshold), and blocks
over the mmap threshold (adapting up to 32 MiB) are mapped for each allocation and unmapped
on free. Every reuse then touches fresh pages: a page fault and the kernel zeroing 4 KiB for
each. Measured on the embedded model (2-core Intel Xeon, fp32, `one_sequence` on an article
group of ten questions over a 4.7K-token context, compile off, two runs each): about 900,000
minor faults per group (3.5 GiB of fresh pages), a prefill of 8.5-8.6 s and 10.9-11.0 s per
group with the defaults; about none, 7.4-7.6 s and 9.7-9.9 s with the thresholds below (the
decoding steps, 100-102 ms, did not change). On an AMD EPYC the blocked attention's prefill
of the same context took 8.5-10.6 s against 5.7-6.6 s.

So an engine on the CPU raises glibc's mmap threshold to :data:`MMAP_THRESHOLD` and its trim
threshold to :data:`TRIM_THRESHOLD` for the whole process, once (:func:`keep_freed_memory`):
freed blocks stay in the heap for the next pass, at the cost of up to 512 MiB of freed memory
kept resident. Where ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` is set in the
environment the user's choice stands (``MALLOC_TRIM_THRESHOLD_=131072`` keeps glibc's
default); on another C library nothing changes.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

# glibc's mallopt parameters, and the values set.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 512 << 20
ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_tuned: bool | None = None


def _glibc():
    """The process's C library when it is glibc, else None."""
    if "CS_GNU_LIBC_VERSION" not in getattr(os, "confstr_names", {}) or not os.confstr("CS_GNU_LIBC_VERSION"):
        return None
    try:
        return ctypes.CDLL(None)
    except (OSError, TypeError):
        return None


def keep_freed_memory() -> bool:
    """Raise glibc malloc's mmap and trim thresholds (once per process; see the module
    docstring). Returns whether they are raised: False on another C library or where the
    ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment chose already."""
    global _tuned
    if _tuned is None:
        _tuned = False
        libc = _glibc()
        if libc is not None and not any(k in os.environ for k in ENV):
            _tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                          and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
            log.info("glibc malloc keeps freed memory (mmap threshold %d MiB, trim threshold %d MiB): %s",
                     MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20, _tuned)
    return _tuned


__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]
