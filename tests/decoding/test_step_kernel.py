"""The compiled CPU step's fused attention kernel: the grouped matmuls' outputs to float32
rounding on every shape a step hands it. That a compiled step calls it, and the compiled
steps' token-for-token parity with the eager engine through it, are tests/decoding/test_compiled.py's."""

from __future__ import annotations

import pytest
import torch

from paralleldecode.decoding import step_kernel
from paralleldecode.decoding.layout import additive


@pytest.fixture(scope="module")
def kernel():
    why = step_kernel.load()
    if why is not None:
        pytest.skip(f"the step kernel is not available here: {why}")


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
    gen = torch.Generator().manual_seed(sum(shape))
    query = torch.randn(b, q, h, d, generator=gen).transpose(1, 2)  # transformers' (strided) layout
    key, value = (torch.randn(b, g, length, d, generator=gen) for _ in range(2))
    allowed = torch.rand(b, q, length, generator=gen) > 0.3
    allowed[..., 0] = True
    allowed[..., -1] = False  # a masked last key (the block tail)
    mask = additive(allowed, torch.float32)
    with torch.inference_mode():
        ours = step_kernel.attention(query, key, value, mask, d ** -0.5)
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
        ours = step_kernel.attention(query, key, value, mask, 0.25)
        short = step_kernel.attention(query, key[:, :, :60], value[:, :, :60], mask[..., :60], 0.25)
    torch.testing.assert_close(ours, _matmuls(query, key, value, mask, 0.25), atol=5e-6, rtol=1e-5)
    torch.testing.assert_close(ours, short, atol=5e-6, rtol=1e-5)


def test_bad_calls_name_what_the_kernel_takes(kernel):
    query = torch.randn(1, 4, 2, 16)
    key = value = torch.randn(1, 2, 10, 16)
    mask = torch.zeros(1, 1, 2, 10)
    with pytest.raises(RuntimeError, match="float32"):
        step_kernel.attention(query.double(), key.double(), value.double(), mask.double(), 0.25)
    with pytest.raises(RuntimeError, match="multiple of 16"):
        step_kernel.attention(query[..., :8], key[..., :8], value[..., :8], mask, 0.25)
    with pytest.raises(RuntimeError, match=r"mask must be \(B, 1, Q, L\)"):
        step_kernel.attention(query, key, value, mask[..., :9], 0.25)
    # the step's attention switch sends only what the kernel takes
    assert step_kernel.takes(query, key, value, mask) == (not torch.is_grad_enabled())
    with torch.inference_mode():
        assert step_kernel.takes(query, key, value, mask)
        assert not step_kernel.takes(query.bfloat16(), key.bfloat16(), value.bfloat16(), mask.bfloat16())
        assert not step_kernel.takes(query[..., :8], key[..., :8], value[..., :8], mask)


def test_the_setting_and_its_bad_values(monkeypatch):
    monkeypatch.setenv(step_kernel.ENV, "off")
    assert step_kernel.unavailable() == f"{step_kernel.ENV}=off"
    monkeypatch.setenv(step_kernel.ENV, "fast")
    with pytest.raises(ValueError, match=f"{step_kernel.ENV} must be one of auto, off; got 'fast'"):
        step_kernel.unavailable()
