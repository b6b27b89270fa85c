"""The package's fused CPU attention kernels: the step kernel is the grouped matmuls' outputs to
float32 rounding on every shape a step hands it, the causal kernel sdpa's causal attention on
every shape a prefill hands it, and the attention function that routes the eager passes'
maskless calls to it sends it only those. That a compiled step and a prefill call them, and the
compiled engine's token-for-token parity with the eager one through them, are
tests/decoding/test_compiled.py's."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from paralleldecode.decoding import cpu_kernels
from paralleldecode.decoding.attention import causal_attention
from paralleldecode.decoding.layout import additive


@pytest.fixture(scope="module")
def kernel():
    why = cpu_kernels.load()
    if why is not None:
        pytest.skip(f"the CPU kernels are not available here: {why}")


def _inputs(shape):
    """A generator seeded by the shape, ``(B, H, Q, D)`` queries in transformers' (strided)
    layout and ``(B, G, L, D)`` keys and values for a ``(B, H, G, Q, L, D)`` shape."""
    b, h, g, q, length, d = shape
    gen = torch.Generator().manual_seed(sum(shape))
    query = torch.randn(b, q, h, d, generator=gen).transpose(1, 2)
    key, value = (torch.randn(b, g, length, d, generator=gen) for _ in range(2))
    return gen, query, key, value


def _matmuls(query, key, value, mask, scale):
    """The reference: grouped_attention's float32 path, (B, Q, H, D)."""
    b, h, q, d = query.shape
    g, length = key.shape[1], key.shape[2]
    per = h // g
    scores = torch.matmul(query.reshape(b, g, per * q, d), key.transpose(-1, -2)).view(b, g, per, q, length)
    weights = torch.softmax(scores * scale + mask[:, :, None], -1).view(b, g, per * q, length)
    return torch.matmul(weights, value).view(b, h, q, d).transpose(1, 2)


# (rows B, query heads H, key/value heads G, queries Q, keys L, head size D): a lone row of
# branches over a long buffer (keys split between threads), rows of one query (16-lane tiles),
# more than 32 rows per key/value head (several tiles), lengths that are no multiple of a block,
# one key/value head, the largest head size.
SHAPES = [(1, 9, 3, 10, 4800, 64), (5, 9, 3, 1, 333, 64), (1, 9, 3, 12, 700, 64), (3, 6, 2, 4, 50, 16),
          (2, 12, 4, 7, 1000, 32), (1, 8, 1, 5, 77, 128), (4, 4, 4, 1, 9, 16), (1, 2, 1, 3, 130, 256)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_the_kernel_is_the_grouped_matmuls_to_float32_rounding(kernel, shape):
    b, h, g, q, length, d = shape
    gen, query, key, value = _inputs(shape)
    allowed = torch.rand(b, q, length, generator=gen) > 0.3
    allowed[..., 0] = True
    allowed[..., -1] = False  # a masked last key (the block tail)
    mask = additive(allowed, torch.float32)
    with torch.inference_mode():
        ours = cpu_kernels.step_attention(query, key, value, mask, d ** -0.5)
    assert ours.shape == (b, q, h, d) and ours.is_contiguous()
    torch.testing.assert_close(ours, _matmuls(query, key, value, mask, d ** -0.5), atol=5e-6, rtol=1e-5)


def test_a_mask_for_every_row_at_once_and_the_buffers_tail(kernel):
    """A (1, 1, Q, L) mask serves every row; keys beyond the filled slots (masked) count for
    nothing, as in the engine's step buffers."""
    gen = torch.Generator().manual_seed(1)
    query = torch.randn(3, 6, 2, 16, generator=gen)
    key, value = (torch.randn(3, 2, 90, 16, generator=gen) for _ in range(2))
    allowed = torch.zeros(1, 2, 90, dtype=torch.bool)
    allowed[..., :60] = True
    mask = additive(allowed, torch.float32)
    with torch.inference_mode():
        ours = cpu_kernels.step_attention(query, key, value, mask, 0.25)
        short = cpu_kernels.step_attention(query, key[:, :, :60], value[:, :, :60], mask[..., :60], 0.25)
        strided = mask.transpose(-1, -2).contiguous().transpose(-1, -2)  # keys not adjacent in memory
        across = cpu_kernels.step_attention(query, key, value, strided, 0.25)
    torch.testing.assert_close(ours, _matmuls(query, key, value, mask, 0.25), atol=5e-6, rtol=1e-5)
    torch.testing.assert_close(ours, short, atol=5e-6, rtol=1e-5)
    torch.testing.assert_close(ours, across, atol=0, rtol=0)


def test_bad_calls_name_what_the_kernel_takes(kernel):
    query = torch.randn(1, 4, 2, 16)
    key = value = torch.randn(1, 2, 10, 16)
    mask = torch.zeros(1, 1, 2, 10)
    with pytest.raises(RuntimeError, match="float32"):
        cpu_kernels.step_attention(query.double(), key.double(), value.double(), mask.double(), 0.25)
    with pytest.raises(RuntimeError, match="multiple of 16"):
        cpu_kernels.step_attention(query[..., :8], key[..., :8], value[..., :8], mask, 0.25)
    with pytest.raises(RuntimeError, match=r"mask must be \(B, 1, Q, L\)"):
        cpu_kernels.step_attention(query, key, value, mask[..., :9], 0.25)
    # the step's attention switch sends only what the kernel takes
    assert cpu_kernels.step_takes(query, key, value, mask) == (not torch.is_grad_enabled())
    with torch.inference_mode():
        assert cpu_kernels.step_takes(query, key, value, mask)
        assert not cpu_kernels.step_takes(query.bfloat16(), key.bfloat16(), value.bfloat16(), mask.bfloat16())
        assert not cpu_kernels.step_takes(query[..., :8], key[..., :8], value[..., :8], mask)


def test_the_setting_and_its_bad_values(monkeypatch):
    monkeypatch.setenv(cpu_kernels.ENV, "off")
    assert cpu_kernels.unavailable() == f"{cpu_kernels.ENV}=off"
    monkeypatch.setenv(cpu_kernels.ENV, "fast")
    with pytest.raises(ValueError, match=f"{cpu_kernels.ENV} must be one of auto, off; got 'fast'"):
        cpu_kernels.unavailable()


def _causal_sdpa(query, key, value, scale):
    """The reference: sdpa with the causal rule of the kernel (query i at position L - Q + i),
    (B, Q, H, D)."""
    q, length = query.shape[2], key.shape[2]
    allowed = torch.ones(q, length, dtype=torch.bool).tril(length - q)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=allowed, scale=scale,
                                          enable_gqa=True).transpose(1, 2)


# (B, H, G, Q, L, D): an article's plain causal start (16-position tiles of three heads), one
# head per key/value head (48-position tiles), two and four per (24 and 12), more tiles than
# threads and fewer, lengths that are no multiple of a tile or a block, queries after earlier
# keys (a chunk over a cache), head sizes 16 to 256.
CAUSAL_SHAPES = [(1, 9, 3, 700, 700, 64), (2, 4, 4, 130, 130, 16), (1, 8, 4, 77, 77, 32), (3, 8, 2, 50, 50, 16),
                 (1, 9, 3, 1, 1, 64), (1, 9, 3, 40, 300, 64), (1, 4, 1, 33, 33, 128), (2, 2, 1, 70, 90, 256)]


@pytest.mark.parametrize("shape", CAUSAL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_the_causal_kernel_is_sdpa_to_float32_rounding(kernel, shape):
    b, h, g, q, length, d = shape
    _, query, key, value = _inputs(shape)
    with torch.inference_mode():
        ours = cpu_kernels.causal_attention(query, key, value, d ** -0.5)
    assert ours.shape == (b, q, h, d) and ours.is_contiguous()
    torch.testing.assert_close(ours, _causal_sdpa(query, key, value, d ** -0.5), atol=5e-6, rtol=1e-5)


def test_bad_causal_calls_name_what_the_kernel_takes(kernel):
    query = torch.randn(1, 4, 6, 16)
    key = value = torch.randn(1, 2, 6, 16)
    with pytest.raises(RuntimeError, match="float32"):
        cpu_kernels.causal_attention(query.double(), key.double(), value.double(), 0.25)
    with pytest.raises(RuntimeError, match="fewer keys than queries"):
        cpu_kernels.causal_attention(query, key[:, :, :5], value[:, :, :5], 0.25)
    with pytest.raises(RuntimeError, match="at most 48 query heads per key/value head"):
        cpu_kernels.causal_attention(torch.randn(1, 49, 6, 16), key[:, :1], value[:, :1], 0.25)
    with torch.inference_mode():
        assert cpu_kernels.causal_takes(query, key, value)
        assert not cpu_kernels.causal_takes(query, key[:, :, :5], value[:, :, :5])
        assert not cpu_kernels.causal_takes(query.bfloat16(), key.bfloat16(), value.bfloat16())
        assert not cpu_kernels.causal_takes(torch.randn(1, 49, 6, 16), key[:, :1], value[:, :1])
        # values of another head size than the keys' (as in latent attention): sdpa's
        assert not cpu_kernels.causal_takes(query, key, torch.randn(1, 2, 6, 32))


def test_the_eager_passes_send_only_plain_causal_calls_to_the_kernel(kernel):
    """transformers calls the attention function with no mask for a plain causal pass; masked,
    non-causal, soft-capped and sliding-window calls, and a lone query, stay with sdpa."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    gen = torch.Generator().manual_seed(3)
    module = types.SimpleNamespace(num_key_value_groups=3, is_causal=True, training=False)
    query = torch.randn(1, 20, 6, 16, generator=gen).transpose(1, 2)
    key, value = (torch.randn(1, 2, 20, 16, generator=gen) for _ in range(2))
    mask = additive(torch.rand(1, 20, 20, generator=gen) > 0.5, torch.float32)
    mask[..., 0] = 0.0

    def kernel_calls(*args, **kwargs):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out = causal_attention(module, *args, **kwargs)[0]
        calls = sum(e.count for e in prof.key_averages() if e.key == "paralleldecode_cpu::causal_attention")
        torch.testing.assert_close(out, sdpa_attention_forward(module, *args, **kwargs)[0], atol=5e-6, rtol=1e-5)
        return calls

    with torch.inference_mode():
        assert kernel_calls(query, key, value, None) == 1
        assert kernel_calls(query, key, value, mask) == 0
        assert kernel_calls(query, key, value, None, is_causal=False) == 0
        with pytest.raises(ValueError, match="softcap"):  # sdpa's own answer to it
            causal_attention(module, query, key, value, None, softcap=30.0)
        assert kernel_calls(query, key, value, None, sliding_window=8) == 0
        assert kernel_calls(query[:, :, -1:], key, value, None) == 0
    assert kernel_calls(query, key, value, None) == 0  # gradients wanted


def test_suspended_kernels_take_nothing_until_the_block_ends(kernel):
    query = torch.randn(1, 4, 6, 16)
    key = value = torch.randn(1, 2, 6, 16)
    with torch.inference_mode():
        with cpu_kernels.suspended():
            assert not cpu_kernels.loaded() and not cpu_kernels.causal_takes(query, key, value)
            assert cpu_kernels.load() == "suspended"
        assert cpu_kernels.loaded() and cpu_kernels.causal_takes(query, key, value)
