"""Packed oneDNN linears: the model's own outputs, packed again when weights change, routed
only inside the context, and the engine's eager passes giving the plain engine's tokens."""

from __future__ import annotations

import threading

import pytest
import torch

from paralleldecode.decoding import DecodingEngine, GenerationConfig, cpu_kernels, shared_prefix
from paralleldecode.decoding.attention import ENV, BlockedAttention, PrefillAttention
from paralleldecode.decoding.columnar import columnar_layout
from paralleldecode.decoding.packed import PackedLinears, available
from paralleldecode.models.loading import load_causal_lm
from paralleldecode.models.rope2d import install_rope2d

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch without oneDNN")


@pytest.fixture()
def llama(tiny_models):
    return load_causal_lm(str(tiny_models["llama"]), attn_implementation="sdpa")


def _chunks(n: int) -> dict:
    """Prefill chunks of n slots, the plain start's included."""
    return {"prefill_chunk": n, "plain_chunk": n}


def _logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits


def _routed_modules(model):
    return [m for m in model.modules() if "forward" in m.__dict__]


def test_routed_forward_equals_the_plain_one_and_is_undone(llama):
    model, _ = llama
    ids = torch.randint(5, 200, (3, 40))
    plain = _logits(model, ids)
    packed = PackedLinears.for_model(model, rows_hint=64)
    assert packed is PackedLinears.for_model(model)  # one per model
    head = model.get_output_embeddings()
    assert packed.modules and head in packed.modules and packed.head is head
    with packed.routed():
        assert set(_routed_modules(model)) == set(packed.modules)
        inside = _logits(model, ids)
    assert _routed_modules(model) == []
    torch.testing.assert_close(inside, plain, atol=1e-4, rtol=1e-4)
    # Every linear is packed but the output embedding, which the kernel reads as it is.
    assert packed.failed is None and len(packed._packed) == len(packed.modules) - 1 and id(head) not in packed._packed


def test_a_changed_weight_is_packed_again(llama):
    model, _ = llama
    ids = torch.randint(5, 200, (1, 30))
    packed = PackedLinears.for_model(model)
    with packed.routed():
        before = _logits(model, ids)
    with torch.no_grad():  # in place, as an optimizer step writes it
        model.model.layers[0].mlp.down_proj.weight.mul_(3.0)
        model.model.layers[1].self_attn.q_proj.weight = torch.nn.Parameter(
            model.model.layers[1].self_attn.q_proj.weight * -1.0)
    plain = _logits(model, ids)
    with packed.routed():
        after = _logits(model, ids)
    assert not torch.allclose(after, before, atol=1e-3)
    torch.testing.assert_close(after, plain, atol=1e-4, rtol=1e-4)


def test_weights_cast_or_made_in_inference_mode(llama):
    model, _ = llama
    ids = torch.randint(5, 200, (2, 16))
    packed = PackedLinears.for_model(model)
    with packed.routed():
        _logits(model, ids)  # packed in fp32
    model.to(torch.bfloat16)  # cast after packing: packed again in bf16
    with packed.routed():
        bf16 = _logits(model, ids)
    torch.testing.assert_close(bf16, _logits(model, ids), atol=0.05, rtol=0.05)
    with torch.inference_mode():  # a weight made here is an inference tensor (no version counter)
        layer = model.model.layers[0].mlp.gate_proj
        layer.weight = torch.nn.Parameter(layer.weight * 0.5, requires_grad=False)
    with packed.routed():
        halved = _logits(model, ids)
    assert not torch.allclose(halved, bf16, atol=0.05)
    torch.testing.assert_close(halved, _logits(model, ids), atol=0.05, rtol=0.05)


def test_nested_and_concurrent_callers_keep_the_modules_routed(llama):
    model, _ = llama
    packed = PackedLinears.for_model(model)
    inside = threading.Event()
    release = threading.Event()

    def other():
        with packed.routed():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=other)
    t.start()
    assert inside.wait(10)
    with packed.routed():
        with packed.routed():
            pass
        assert _routed_modules(model)  # the inner exit unrouted nothing
    assert _routed_modules(model)  # the other thread is still inside
    release.set()
    t.join()
    assert _routed_modules(model) == []


def test_gradients_flow_through_the_modules_own_forward(llama):
    model, _ = llama
    ids = torch.randint(5, 200, (1, 12))
    with PackedLinears.for_model(model).routed():
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert model.model.layers[0].mlp.up_proj.weight.grad is not None


def test_unavailable_dtypes_are_named(llama):
    model, _ = llama
    assert available(model) is None
    assert "float16" in available(model.half())


def test_engine_packs_and_switches_attention_where_it_compiles(monkeypatch, llama):
    model, tok = llama
    monkeypatch.setenv(ENV, "on")  # the race between the kernels is test_attention's
    off = DecodingEngine(model, tok, compile="off")
    assert off.packed is None and off.attention is None
    with cpu_kernels.suspended():  # where the package's prefill kernel would take its place
        on = DecodingEngine(model, tok, compile="on")
    assert on.packed is PackedLinears.for_model(model)
    assert on.attention is BlockedAttention.for_model(model)
    assert "packed oneDNN linears and blocked attention; no prefill kernel (suspended)" in on.compile_note
    if cpu_kernels.load() is None:
        on = DecodingEngine(model, tok, compile="on")
        assert on.packed is PackedLinears.for_model(model)
        assert on.attention is PrefillAttention.for_model(model)
        assert "packed oneDNN linears and attention in the fused CPU kernel" in on.compile_note


@pytest.mark.parametrize("isolate", [False, True])
def test_eager_steps_with_packed_linears_give_the_plain_tokens(tiny_models, isolate):
    """Columnar layouts decode eagerly even with compile on: prefill and every step run with
    packed linears, and give the plain engine's tokens (no compiling needed to check it)."""
    model, tok = load_causal_lm(str(tiny_models["llama"]), attn_implementation="sdpa")
    install_rope2d(model, [7, 8])
    plain, packed = DecodingEngine(model, tok, compile="off"), DecodingEngine(model, tok, compile="on")
    bg, branches = [11, 12, 13, 14, 15], [[21, 22, 23], [31, 32, 33, 34, 35, 36], [41, 42]]
    cfg = GenerationConfig(max_new_tokens=8, eos_token_ids=(), output_logits=True)
    a = plain.generate(columnar_layout(bg, branches, 0, isolate), cfg)
    b = packed.generate(columnar_layout(bg, branches, 0, isolate), cfg)
    assert [s.token_ids for s in b.streams] == [s.token_ids for s in a.streams]
    for x, y in zip(a.streams, b.streams):
        torch.testing.assert_close(y.logits, x.logits, atol=1e-4, rtol=1e-4)
    assert not b.compiled


def test_chunked_shared_prefix_prefill_with_packed_linears(tiny_models):
    """A shared-prefix layout's prefill through packed linears: the same first tokens."""
    model, tok = load_causal_lm(str(tiny_models["llama"]), attn_implementation="sdpa")
    base = list(range(20, 80))
    seqs = [base + [90 + i, 91, 92] for i in range(4)]
    once = GenerationConfig(max_new_tokens=1, eos_token_ids=(), output_logits=True)
    a = DecodingEngine(model, tok, compile="off", **_chunks(16)).generate(shared_prefix(seqs, 0), once)
    b = DecodingEngine(model, tok, compile="on", **_chunks(16)).generate(shared_prefix(seqs, 0), once)
    assert [s.token_ids for s in b.streams] == [s.token_ids for s in a.streams]
    torch.testing.assert_close(torch.stack([s.logits for s in b.streams]),
                               torch.stack([s.logits for s in a.streams]), atol=1e-4, rtol=1e-4)


def test_a_peft_adapter_keeps_its_low_rank_part(llama):
    """LoRA wraps the plain linear as its base layer: the base is packed, the adapter added."""
    from peft import LoraConfig, get_peft_model

    model, _ = llama
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ids = torch.randint(5, 200, (2, 20))
    plain = _logits(lora, ids)
    packed = PackedLinears.for_model(lora)
    with packed.routed():
        inside = _logits(lora, ids)
    torch.testing.assert_close(inside, plain, atol=1e-4, rtol=1e-4)
    bases = {m.base_layer for m in lora.modules() if hasattr(m, "lora_A")}
    assert bases and bases <= set(packed.modules)
    with torch.no_grad():
        lora.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight.mul_(5.0)
    with packed.routed():
        changed = _logits(lora, ids)
    torch.testing.assert_close(changed, _logits(lora, ids), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(changed, inside, atol=1e-3)
