"""The package's fused CPU kernels: the step kernel is the grouped matmuls' outputs to
float32 rounding on every shape a step hands it, the prefill kernel sdpa's attention on every
causal and masked shape a prefill hands it, the attention function that routes the eager
passes' calls to it sends it only those, and the few-row linear kernel is the linear's
outputs to float32 rounding. That a compiled step and a prefill call them, and the
compiled engine's token-for-token parity with the eager one through them, are
tests/decoding/test_compiled.py's."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from paralleldecode.decoding import DecodingEngine, GenerationConfig, cpu_kernels, shared_prefix
from paralleldecode.decoding.attention import MIN_QUERIES, prefill_attention
from paralleldecode.decoding.columnar import columnar_layout
from paralleldecode.decoding.compiled import StepCompiler
from paralleldecode.decoding.layout import additive
from paralleldecode.models.loading import load_causal_lm
from paralleldecode.models.rope2d import install_rope2d


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


# Tiles of at most 8 rows go one row at a time (head sizes 64 and 128): rows of one query,
# a lone row of two slots (keys split between threads), 8 rows of the largest narrow head
# size, a length that ends 5 keys into a block of 16.
NARROW_SHAPES = [(5, 9, 3, 1, 394, 64), (1, 9, 3, 2, 1000, 64), (2, 8, 2, 2, 300, 128), (3, 4, 4, 1, 37, 128)]


@pytest.mark.parametrize("strided", [False, True], ids=["contiguous-mask", "strided-mask"])
@pytest.mark.parametrize("shape", NARROW_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_rows_too_few_for_the_lanes_are_the_grouped_matmuls_too(kernel, shape, strided):
    b, h, g, q, length, d = shape
    gen, query, key, value = _inputs(shape)
    allowed = torch.rand(b, q, length, generator=gen) > 0.3
    allowed[..., 0] = True
    allowed[..., length // 2: length // 2 + 40] = False  # blocks no query sees: skipped
    mask = additive(allowed, torch.float32)
    if strided:  # the keys' entries of a query apart in memory
        mask = torch.stack([mask, torch.zeros_like(mask)], -1)[..., 0]
        assert mask.stride(-1) == 2
    with torch.inference_mode():
        ours = cpu_kernels.step_attention(query, key, value, mask, d ** -0.5)
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
def test_the_causal_prefill_kernel_is_sdpa_to_float32_rounding(kernel, shape):
    b, h, g, q, length, d = shape
    _, query, key, value = _inputs(shape)
    with torch.inference_mode():
        ours = cpu_kernels.prefill_attention(query, key, value, None, d ** -0.5)
    assert ours.shape == (b, q, h, d) and ours.is_contiguous()
    torch.testing.assert_close(ours, _causal_sdpa(query, key, value, d ** -0.5), atol=5e-6, rtol=1e-5)


def _prefill_mask(kind: str, b: int, q: int, length: int) -> torch.Tensor:
    """``(B, 1, Q, L)`` additive masks of the engine's prefill layouts: ``branches``, a
    context every query sees then four branches that see their own slots causally (whole
    blocks of other branches' slots hidden); ``chunk``, a chunk over a cache, causal over its
    own columns; ``padded``, rows left-padded by different amounts, pads seeing themselves."""
    if kind == "branches":
        allowed = torch.zeros(q, length, dtype=torch.bool)
        context, width = length - q, q // 4
        allowed[:, :context] = True
        for i in range(4):
            a, z = i * width, q if i == 3 else (i + 1) * width
            allowed[a:z, context + a:context + z] = torch.ones(z - a, z - a, dtype=torch.bool).tril()
        allowed = allowed.expand(b, q, length)
    elif kind == "chunk":
        allowed = torch.ones(q, length, dtype=torch.bool).tril(length - q).expand(b, q, length)
    else:
        allowed = torch.ones(b, q, length, dtype=torch.bool).tril(length - q).clone()
        for r in range(b):
            pad = r * 37
            allowed[r, :, :pad] = False
            allowed[r, torch.arange(min(pad, q)), torch.arange(min(pad, q)) + length - q] = True
    return additive(allowed, torch.float32)


# (B, H, G, Q, L, D, mask): branches after a context (blocks of 64 keys hidden from whole
# tiles), a chunk over a cache, left-padded rows, a mask shared by the rows, 48-row tiles.
MASKED_SHAPES = [(1, 9, 3, 200, 700, 64, "branches"), (2, 9, 3, 130, 400, 64, "chunk"),
                 (3, 8, 2, 150, 150, 16, "padded"), (1, 4, 1, 100, 300, 32, "branches")]


@pytest.mark.parametrize("shape", MASKED_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_the_masked_prefill_kernel_is_sdpa_to_float32_rounding(kernel, shape):
    b, h, g, q, length, d, kind = shape
    _, query, key, value = _inputs(shape[:6])
    mask = _prefill_mask(kind, b, q, length)
    shared = mask[:1] if kind != "padded" else mask
    with torch.inference_mode():
        ours = cpu_kernels.prefill_attention(query, key, value, shared, d ** -0.5)
    ref = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=d ** -0.5, enable_gqa=True)
    torch.testing.assert_close(ours, ref.transpose(1, 2), atol=5e-6, rtol=1e-5)


def test_a_tile_that_sees_no_key_gets_zeros(kernel):
    """The engine's masks let every query see at least itself; a tile whose mask hides every
    key (here all queries) gets zeros, never NaN."""
    _, query, key, value = _inputs((1, 4, 2, 20, 30, 16))
    mask = torch.full((1, 1, 20, 30), torch.finfo(torch.float32).min)
    with torch.inference_mode():
        assert cpu_kernels.prefill_attention(query, key, value, mask, 0.25).eq(0).all()


def test_bad_prefill_calls_name_what_the_kernel_takes(kernel):
    query = torch.randn(1, 4, 6, 16)
    key = value = torch.randn(1, 2, 6, 16)
    mask = torch.zeros(1, 1, 6, 6)
    with pytest.raises(RuntimeError, match="float32"):
        cpu_kernels.prefill_attention(query.double(), key.double(), value.double(), None, 0.25)
    with pytest.raises(RuntimeError, match="fewer keys than queries"):
        cpu_kernels.prefill_attention(query, key[:, :, :5], value[:, :, :5], None, 0.25)
    with pytest.raises(RuntimeError, match="at most 48 query heads per key/value head"):
        cpu_kernels.prefill_attention(torch.randn(1, 49, 6, 16), key[:, :1], value[:, :1], None, 0.25)
    with pytest.raises(RuntimeError, match=r"mask must be \(B, 1, Lq, Lk\)"):
        cpu_kernels.prefill_attention(query, key, value, mask[..., :5], 0.25)
    with torch.inference_mode():
        assert cpu_kernels.prefill_takes(query, key, value) and cpu_kernels.prefill_takes(query, key, value, mask)
        assert not cpu_kernels.prefill_takes(query, key[:, :, :5], value[:, :, :5])
        assert not cpu_kernels.prefill_takes(query, key, value, mask.bool())
        assert not cpu_kernels.prefill_takes(query, key, value, mask[..., :5])
        assert not cpu_kernels.prefill_takes(query.bfloat16(), key.bfloat16(), value.bfloat16())
        assert not cpu_kernels.prefill_takes(torch.randn(1, 49, 6, 16), key[:, :1], value[:, :1])
        # values of another head size than the keys' (as in latent attention): sdpa's
        assert not cpu_kernels.prefill_takes(query, key, torch.randn(1, 2, 6, 32))


def test_the_eager_passes_send_the_kernel_only_what_it_takes(kernel):
    """transformers calls the attention function with no mask for a plain causal pass, with
    its own bool mask for a plain chunk over the cache and with the engine's additive mask
    otherwise; all go to the kernel from MIN_QUERIES queries on (the maskless one from two),
    and non-causal, soft-capped and sliding-window calls, a lone query, fewer masked queries,
    bfloat16 and gradients stay with sdpa."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    gen = torch.Generator().manual_seed(3)
    module = types.SimpleNamespace(num_key_value_groups=3, is_causal=True, training=False)
    q = MIN_QUERIES
    query = torch.randn(1, q, 6, 16, generator=gen).transpose(1, 2)
    key, value = (torch.randn(1, 2, q, 16, generator=gen) for _ in range(2))
    allowed = (torch.rand(1, q, q, generator=gen) > 0.5) | torch.eye(q, dtype=torch.bool)
    mask = additive(allowed, torch.float32)

    def kernel_calls(*args, **kwargs):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out = prefill_attention(module, *args, **kwargs)[0]
        calls = sum(e.count for e in prof.key_averages() if e.key == "paralleldecode_cpu::prefill_attention")
        torch.testing.assert_close(out, sdpa_attention_forward(module, *args, **kwargs)[0], atol=5e-6, rtol=1e-5)
        return calls

    with torch.inference_mode():
        assert kernel_calls(query, key, value, None) == 1
        assert kernel_calls(query, key, value, mask) == 1
        assert kernel_calls(query, key, value, None, is_causal=False) == 0
        with pytest.raises(ValueError, match="softcap"):  # sdpa's own answer to it
            prefill_attention(module, query, key, value, None, softcap=30.0)
        assert kernel_calls(query, key, value, None, sliding_window=8) == 0
        assert kernel_calls(query, key, value, allowed[:, None]) == 1
        # a chunk over the cache: the bottom-right causal bool mask of Q queries over 2Q keys
        over = torch.ones(q, 2 * q, dtype=torch.bool).tril(q)[None, None]
        longer = [torch.cat([t, torch.randn(t.shape, generator=gen)], 2) for t in (key, value)]
        assert kernel_calls(query, *longer, over) == 1
        assert kernel_calls(query.bfloat16(), *(t.bfloat16() for t in longer), over) == 0
        assert kernel_calls(query[:, :, -1:], key, value, None) == 0
        assert kernel_calls(query[:, :, 1:], key, value, mask[:, :, 1:]) == 0
    assert kernel_calls(query, key, value, None) == 0  # gradients wanted


def test_suspended_kernels_take_nothing_until_the_block_ends(kernel):
    query = torch.randn(1, 4, 6, 16)
    key = value = torch.randn(1, 2, 6, 16)
    with torch.inference_mode():
        with cpu_kernels.suspended():
            assert not cpu_kernels.loaded() and not cpu_kernels.prefill_takes(query, key, value)
            assert cpu_kernels.load() == "suspended"
        assert cpu_kernels.loaded() and cpu_kernels.prefill_takes(query, key, value)


# (rows M, inputs K, outputs N): one row, six (one full group of rows), seven and thirteen
# (a remainder group), forty (a packed step); outputs that are no multiple of 16 or of 64.
LINEAR_SHAPES = [(1, 576, 576), (6, 576, 192), (7, 1536, 576), (13, 64, 1000), (40, 96, 130), (2, 48, 17)]


@pytest.mark.parametrize("shape", LINEAR_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_the_linear_kernel_is_the_linear_to_float32_rounding(kernel, shape):
    m, k, n = shape
    gen = torch.Generator().manual_seed(sum(shape))
    x, weight, bias = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen), torch.randn(n, generator=gen)
    packed = cpu_kernels.pack_linear(weight)
    assert packed.shape == ((n + 15) // 16, k, 16)
    for b in (None, bias):
        ours = cpu_kernels.few_linear(x, packed, b, n)
        exact = F.linear(x.double(), weight.double(), None if b is None else b.double()).float()
        torch.testing.assert_close(ours, exact, atol=2e-5 * k ** 0.5, rtol=1e-5)
    # leading dimensions are kept: (B, Q, K) -> (B, Q, N)
    batched = x[: m - m % 2].view(-1, 2, k) if m > 1 else x.view(1, 1, k)
    assert cpu_kernels.few_linear(batched, packed, None, n).shape == (*batched.shape[:2], n)


def test_bad_linear_calls_name_what_the_kernel_takes(kernel):
    weight = torch.randn(20, 32)
    packed = cpu_kernels.pack_linear(weight)
    with pytest.raises(RuntimeError, match="pack_linear"):
        cpu_kernels.few_linear(torch.randn(3, 32), weight, None, 20)
    with pytest.raises(RuntimeError, match="pack_linear"):
        cpu_kernels.few_linear(torch.randn(3, 16), packed, None, 20)
    with pytest.raises(RuntimeError, match="N elements"):
        cpu_kernels.few_linear(torch.randn(3, 32), packed, torch.randn(19), 20)
    with pytest.raises(RuntimeError, match="float32"):
        cpu_kernels.few_linear(torch.randn(3, 32).double(), packed, None, 20)
    # only plain float32 linears on the CPU are routed to it
    assert cpu_kernels.linear_takes(torch.nn.Linear(4, 4))
    assert not cpu_kernels.linear_takes(torch.nn.Linear(4, 4).bfloat16())
    assert not cpu_kernels.linear_takes(torch.nn.Conv1d(4, 4, 1))


@pytest.fixture(scope="module")
def llama(tiny_models):
    return load_causal_lm(str(tiny_models["llama"]), attn_implementation="sdpa")


def _same_as_plain(model, tok, layout, cfg, **chunks):
    """Tokens and logits of a compile-on engine's prefill against the plain engine's; returns
    the prefill kernel's calls (the steps are not compiled: one new token, or columnar)."""
    plain = DecodingEngine(model, tok, compile="off", **chunks).generate(layout, cfg)
    engine = DecodingEngine(model, tok, compile="on", **chunks)
    assert "and attention in the fused CPU kernel" in engine.compile_note
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        ours = engine.generate(layout, cfg)
    assert [s.token_ids for s in ours.streams] == [s.token_ids for s in plain.streams]
    for x, y in zip(plain.streams, ours.streams):
        torch.testing.assert_close(y.logits, x.logits, atol=1e-4, rtol=1e-4)
    return sum(e.count for e in prof.key_averages() if e.key == "paralleldecode_cpu::prefill_attention")


def test_an_engine_prefill_through_the_kernel_gives_the_plain_tokens(kernel, llama):
    """A shared prefix in chunks of 96 (the first through the causal path, the next two over
    the cache under transformers' bool masks, all in the kernel; the last 12 tokens' chunk
    sdpa's) and ten branches of 8 (one pass of 80 queries under the engine's mask, the
    kernel's)."""
    model, tok = llama
    gen = torch.Generator().manual_seed(3)
    base = torch.randint(20, 400, (300,), generator=gen).tolist()
    seqs = [base + torch.randint(20, 400, (8,), generator=gen).tolist() for _ in range(10)]
    cfg = GenerationConfig(max_new_tokens=1, eos_token_ids=(), output_logits=True)
    calls = _same_as_plain(model, tok, shared_prefix(seqs, 0), cfg, prefill_chunk=96, plain_chunk=96)
    assert calls == model.config.num_hidden_layers * 4


def test_a_columnar_prefill_through_the_kernel_gives_the_plain_tokens(kernel, tiny_models):
    """Columnar layouts stay eager throughout: their column masks go through the kernel."""
    model, tok = load_causal_lm(str(tiny_models["llama"]), attn_implementation="sdpa")
    install_rope2d(model, [7, 8])
    gen = torch.Generator().manual_seed(4)
    bg = torch.randint(20, 400, (40,), generator=gen).tolist()
    branches = [torch.randint(20, 400, (n,), generator=gen).tolist() for n in (30, 25, 20)]
    cfg = GenerationConfig(max_new_tokens=6, eos_token_ids=(), output_logits=True)
    assert _same_as_plain(model, tok, columnar_layout(bg, branches, 0, False), cfg) > 0


def test_the_compiled_steps_note_names_the_kernels_they_take(kernel, tiny_models):
    """sdpa models take the step's attention and linears kernels; a model with transformers'
    eager attention keeps it, and its linears still go to the kernel."""
    for implementation, note in [("sdpa", "step attention and linears in the fused CPU kernels"),
                                 ("eager", "step linears in the fused CPU kernel")]:
        model, _ = load_causal_lm(str(tiny_models["llama"]), attn_implementation=implementation)
        compiler = StepCompiler(model)
        assert compiler.kernel_note == note
        assert len(compiler._linears.modules) == 7 * model.config.num_hidden_layers + 1
