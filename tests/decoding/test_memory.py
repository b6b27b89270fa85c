"""The engine keeps the memory its CPU passes free: glibc's thresholds raised once per
process, unless the environment chose them, and a freed block reused without fresh pages."""

from __future__ import annotations

import ctypes
import resource

import pytest

from paralleldecode.decoding import DecodingEngine, memory
from paralleldecode.models.loading import load_causal_lm

pytestmark = pytest.mark.skipif(memory._glibc() is None, reason="glibc's malloc only")

BLOCK = 16 << 20  # over glibc's default trim threshold, under its largest mmap threshold


def _faults_of_a_reused_block(libc) -> int:
    """Minor page faults of writing a block malloc hands out again after it was freed."""
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    first = libc.malloc(BLOCK)
    ctypes.memset(first, 1, BLOCK)
    libc.free(first)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    again = libc.malloc(BLOCK)
    ctypes.memset(again, 2, BLOCK)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    libc.free(again)
    return faults


def test_the_environment_chooses_first(monkeypatch):
    monkeypatch.setattr(memory, "_tuned", None)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert memory.keep_freed_memory() is False  # the user's setting stands
    monkeypatch.setattr(memory, "_tuned", None)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert memory.keep_freed_memory() is True
    assert memory.keep_freed_memory() is True  # once per process


def test_an_engine_on_the_cpu_keeps_freed_blocks_for_reuse(monkeypatch, tiny_models):
    monkeypatch.setattr(memory, "_tuned", None)
    for name in memory.ENV:
        monkeypatch.delenv(name, raising=False)
    model, tok = load_causal_lm(str(tiny_models["llama"]))
    DecodingEngine(model, tok, compile="off")
    assert memory._tuned is True
    # A block freed and taken again comes back from the heap: no page is faulted in afresh
    # (with glibc's defaults the free top is trimmed and about 4,000 of its 4,096 pages fault
    # again).
    assert _faults_of_a_reused_block(memory._glibc()) < 64
