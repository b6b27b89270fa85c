"""Speed and memory of the strategies side by side, on the same groups, in one process.

Two kinds of workload, both from the same data file:

* **paragraph groups** (G = 1, 2, 4, 5, 8): G questions of one SQuAD paragraph, the shared
  context a few hundred tokens;
* **article groups** (G = 10, 20, ``--article-sizes``): G questions sampled from a whole
  SQuAD article, all its paragraphs as the context (articles of up to
  ``--article-max-tokens``, 6,000 by default, that fit the model's window with the answers).

For each workload the same groups go through every strategy with the same model, greedy
decoding and ``max_new_tokens``. Strategies run alternately (A B C on a group, then the next
group, the order rotated each repeat) so that drift on a shared machine hits all alike. The
strategies are the package's (default ``sequential, sequential_cached, batch, batch_cached,
one_sequence``) plus a reference row, ``hf_generate``: ``model.generate`` on ``batch``'s
left-padded prompts, stopping at the reply's close, which is what a user writes by hand. Each
row reports wall time per group, where it went (prefill vs decoding), peak memory above what
the process held before the run (RSS on CPU, ``max_memory_allocated`` on CUDA) next to the
KV cache it held, and its ratio to ``sequential``, ``batch`` and ``batch_cached``.

The peer users really run is a row too: ``vllm`` is vLLM with automatic prefix caching
serving ``batch``'s exact token-id prompts (greedy, the same budget and stop string), and
``vllm_sequential`` serves ``sequential``'s turns, one conversation whose earlier turns its
prefix cache keeps. Both are the package's own strategies run on a
:class:`~paralleldecode.backends.vllm_server.VLLMEngine` (a vLLM server on 127.0.0.1 started
from ``.venv-vllm``, ``make vllm``; ``--vllm-python`` for another), so their prompts cannot
differ; their replies are compared with ``batch``'s and ``sequential``'s, every table has a
``vs vllm`` ratio, and the server's start-up (compile included) is reported apart, never in
per-group time. vLLM's prefix cache is emptied before each of its rows' groups (and before
each throughput pass): its rows reuse a prefix within a group as ``batch_cached`` and
``sequential_cached`` do, never one that another row or an earlier repeat computed. The
server is up only while its rows run: the engine's rows go first, alternating among
themselves, then vLLM's (see :func:`server_up` for why). Without ``.venv-vllm`` the rows are
skipped with one line saying how to get it.

The engine's decoding steps are compiled (``--compile auto``, the package's default; see
``docs/engine.md``) before the first group, and the seconds that took are printed apart from
every row. A row named ``<strategy>:eager`` is that strategy with compiled steps off, in the
same run, its replies compared with the compiled row's. ``--dtype bfloat16`` runs every row
in bf16 (the ``vllm`` rows too), and ``--agree-with`` JSONs of earlier runs (the fp32 ones;
comma-separated, e.g. a paragraph run and an article run) counts, per row, the replies equal
to those runs'.

A *ceiling* is measured on paragraph workloads: the plain model decoding G identical rows
with no strategy logic, against the engine decoding exactly that workload; their ratio is the
engine's per-step overhead.

``--throughput N`` measures questions per second over N paragraph groups, unpacked against
packed (``--pack 4,8``: that many groups share every engine call, as
``--model.init_args.pack_groups true --data.init_args.batch_size K`` does in a predict run);
the modes alternate chunk by chunk over the same groups.

    python benchmarks/strategy_speed.py --data ../shared/data/squad/dev-v1.1.json
    python benchmarks/strategy_speed.py --data ../shared/data/squad/dev-v1.1.json --sizes '' \\
        --article-sizes 10,20 --article-groups 2 --repeats 1
    python benchmarks/strategy_speed.py --data ../shared/data/squad/dev-v1.1.json --sizes '' \\
        --article-sizes '' --throughput 40 --pack 4,8
    # against vLLM (after `make vllm`), paragraphs and articles:
    python benchmarks/strategy_speed.py --data ../shared/data/squad/dev-v1.1.json --sizes 5 \
        --article-sizes 10 \\
        --strategies sequential,sequential_cached,batch,batch_cached,one_sequence,vllm,vllm_sequential
    # compiled against eager, then bf16 against that fp32 run:
    python benchmarks/strategy_speed.py --data ../shared/data/squad/dev-v1.1.json --sizes 5 \
        --article-sizes '' --strategies batch_cached,one_sequence,one_sequence:eager,vllm --out fp32.json
    python benchmarks/strategy_speed.py --data ../shared/data/squad/dev-v1.1.json --sizes 5 \
        --article-sizes '' --strategies batch_cached,one_sequence,vllm --dtype bfloat16 --agree-with fp32.json
    # the columnar branch decoder against one_sequence on one workload:
    python benchmarks/strategy_speed.py --sizes 5 --strategies batch,one_sequence,columnar \\
        --strategy-options '{"columnar": {"isolate": true}}'

Prints a table per workload and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import json
import os
import platform
import random
import statistics
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

from paralleldecode.data.records import QuestionGroup
from paralleldecode.data.registry import load_groups
from paralleldecode.decoding import DecodingEngine, GenerationConfig, independent_rows
from paralleldecode.models.loading import DEFAULT_MODEL, cache_keyword, load_causal_lm
from paralleldecode.prompts import ONE_ANSWER, PromptRenderer, one_question
from paralleldecode.strategies import Cost, GroupRun, RunContext, get_strategy
from paralleldecode.strategies.base import Timer
from paralleldecode.strategies.packing import Packer

BASES = ("sequential", "batch", "batch_cached", "vllm")
PEERS = {"sequential_cached": "sequential", "sequential": None, "all_in_one": None, "vllm_sequential": "sequential"}
# The peer rows: the package's strategy whose prompts vLLM serves.
VLLM_ROWS = {"vllm": "batch", "vllm_sequential": "sequential"}
# A row named "<strategy>:eager" is that strategy with the engine's compiled steps off.
EAGER = ":eager"


class PeerRow:
    """A package strategy run on another engine: the same prompts. On vLLM its memory is the
    server's, not this process's, so the row reports none (``external``); an ``:eager`` row
    is the strategy on this process's engine with compiled steps off."""

    def __init__(self, name: str, strategy, ctx: RunContext, external: bool = True) -> None:
        self.name, self.strategy, self.ctx, self.external = name, strategy, ctx, external

    def run(self, group: QuestionGroup, _ctx: RunContext) -> GroupRun:
        if not self.external:
            return self.strategy.run(group, self.ctx)
        server = self.ctx.engine.server
        server.reset_prefix_cache()  # start cold, as the package's engine does: no prefix from another row
        run = self.strategy.run(group, self.ctx)
        server.settle()  # vLLM keeps a core busy for about a second: not into the next row's time
        return run


@contextlib.contextmanager
def server_up(rows):
    """The vLLM server of ``rows`` (if any is a vLLM row) running for the block, stopped after.

    The engine's rows run while no server is up. On the 2-core development VM, with a vLLM
    server alive, allocating and touching 2.2 GB in this process after a pause took 6.4-7.7 s
    against 0.4 s without it (memory the guest hands back to its host when freed, touched
    afresh), and the engine allocates its KV buffers per call: the article rows of
    ``batch_cached`` took 24.7-26.3 s per group beside the server against 14.4-15.0 s alone.
    vLLM allocates its KV space once at start-up and never pays this."""
    servers = {id(r.ctx.engine.server): r.ctx.engine.server for r in rows if getattr(r, "external", False)}
    for server in servers.values():
        server.start()
    try:
        yield
    finally:
        for server in servers.values():
            server.stop()


def phases(strategies) -> list[list]:
    """The engine's own rows, then the vLLM rows: each phase runs under :func:`server_up`."""
    own = [s for s in strategies if not getattr(s, "external", False)]
    return [p for p in (own, [s for s in strategies if s not in own]) if p]


def start_vllm(names: list[str], args, model, tok, ctx: RunContext):
    """The vLLM server and a run context on it, or (None, None) after saying why not."""
    from paralleldecode.backends.vllm_server import VLLMEngine, VLLMServer, VLLMUnavailable, vllm_version

    if not any(n in VLLM_ROWS for n in names):
        return None, None
    try:
        version = vllm_version(args.vllm_python)
        dtype = str(model.dtype).removeprefix("torch.")
        server = VLLMServer(args.model, python=args.vllm_python, dtype=dtype, kv_cache_gib=args.vllm_kv_gib,
                            resettable=True).start()
    except VLLMUnavailable as err:
        print(f"vllm rows skipped: {err}")
        return None, None
    atexit.register(server.stop)
    print(f"vLLM {version} server ready in {server.startup_seconds:.1f} s (start-up and compile, not counted in "
          f"any row; log {server.log_file}); up only while its rows run")
    server.stop()
    engine = VLLMEngine(server, tok, ctx.engine.max_positions)
    return server, dataclasses.replace(ctx, engine=engine)


def groups_of_size(groups: list[QuestionGroup], g: int, count: int, seed: int) -> list[QuestionGroup]:
    """``count`` groups with exactly ``g`` questions (the first ``g`` of larger contexts)."""
    fit = [grp for grp in groups if len(grp) >= g]
    random.Random(seed).shuffle(fit)
    return [replace(grp, id=f"{grp.id}@{g}", questions=grp.questions[:g]) for grp in fit[:count]]


def article_groups(data: str, g: int, count: int, seed: int, ctx: RunContext,
                   max_tokens: int) -> list[QuestionGroup]:
    """``count`` article groups of ``g`` questions whose context has at most ``max_tokens``
    tokens and whose longest prompt fits the window."""
    pool = load_groups("squad", data_path=data, seed=seed,
                       options={"group_by": "article", "article_questions": g})
    random.Random(seed).shuffle(pool)
    limit = ctx.engine.max_positions or 10**9
    fit = []
    for grp in pool:
        if len(grp) < g:
            continue
        longest = max(len(ctx.renderer.ids(one_question(grp, q), ONE_ANSWER.prefix)) for q in grp.questions)
        context = len(ctx.renderer.tokenizer(grp.background)["input_ids"])
        # sequential's history grows by a question and a reply per turn
        if context <= max_tokens and longest + (ctx.generation.max_new_tokens + 40) * g <= limit:
            fit.append(replace(grp, id=f"{grp.id}@{g}"))
        if len(fit) == count:
            break
    return fit


def cpu_name() -> str:
    """The CPU's model name (timings differ between machines: one kernel wins on one CPU and
    loses on another), from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


class PeakMemory:
    """Peak memory above the level at the start, while the block runs: resident set size,
    sampled every few milliseconds from /proc (CPU), or the allocator's peak (CUDA).

    Where the blocked attention runs, glibc's malloc keeps freed memory resident, so a block
    may find at its start memory an earlier one freed and count less than it used. Neither
    trimming the heap before each block (every group then faults its pages in again: 0.5-1 s
    of a 4.7K-token group) nor sampling malloc's bytes in use (its lock nearly doubled a
    prefill) measures without changing the time, so the resident set stays."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.peak = 0

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        self.start = self.top = self.rss()
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.003):
                self.top = max(self.top, self.rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.top, self.rss()) - self.start


class HFGenerate:
    """The reference row: ``model.generate`` on ``batch``'s prompts, left-padded, greedy,
    stopping at the reply's close; not a strategy of the package."""

    name = "hf_generate"

    def run(self, group: QuestionGroup, ctx: RunContext) -> GroupRun:
        from transformers import StoppingCriteria, StoppingCriteriaList

        tok, model = ctx.renderer.tokenizer, ctx.engine.model
        ids = ctx.fit(group, lambda g: [one_question(g, q) for q in g.questions],
                      ctx.generation.max_new_tokens, ONE_ANSWER.prefix)
        width = max(len(i) for i in ids)
        pad = ctx.engine.pad_id
        input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids], device=ctx.engine.device)
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=ctx.engine.device)
        first: list[float] = []

        class FirstToken(StoppingCriteria):  # called after every step: the first call ends the prefill
            def __call__(self, input_ids, scores, **kwargs):
                if not first:
                    first.append(time.perf_counter())
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        clock = Timer()
        start = time.perf_counter()
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=ctx.generation.max_new_tokens,
                             do_sample=False, pad_token_id=pad, stop_strings=[ONE_ANSWER.close], tokenizer=tok,
                             stopping_criteria=StoppingCriteriaList([FirstToken()]))
        wall = clock()
        new = out[:, width:]
        texts, generated = [], 0
        for row in new.tolist():
            row = [t for t in row if t != pad]
            generated += len(row)
            text = tok.decode(row, skip_special_tokens=True)
            cut = text.find(ONE_ANSWER.close)
            texts.append(ONE_ANSWER.prefix + (text[:cut] + ONE_ANSWER.close if cut >= 0 else text))
        prefill = (first[0] - start) if first else wall
        cost = Cost(prompt_tokens=sum(len(i) for i in ids), generated_tokens=generated,
                    forward_passes=new.shape[1], decode_passes=new.shape[1] - 1, wall_seconds=wall,
                    decode_seconds=wall - prefill,
                    peak_cache_bytes=2 * model.config.num_hidden_layers * len(ids) * (width + new.shape[1])
                    * model.config.num_key_value_heads * _head_dim(model.config)
                    * next(model.parameters()).element_size())
        return GroupRun([_Answer(t) for t in texts], cost)


@dataclasses.dataclass
class _Answer:
    raw: str


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


@torch.no_grad()
def bare_step_seconds(model, prompt_ids: list[int], g: int, steps: int) -> float:
    """Seconds per decoding step of the bare model on ``g`` identical rows."""
    from transformers import DynamicCache

    ids = torch.tensor([prompt_ids] * g, device=next(model.parameters()).device)
    cache = DynamicCache(config=model.config)
    kw = cache_keyword(model)
    out = model(input_ids=ids, **{kw: cache}, use_cache=True, logits_to_keep=1)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    start = time.perf_counter()
    for _ in range(steps):
        out = model(input_ids=nxt, **{kw: cache}, use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    return (time.perf_counter() - start) / steps


def engine_step_seconds(engine: DecodingEngine, prompt_ids: list[int], g: int, steps: int) -> float:
    """Seconds per decoding step of the engine on the same workload (no stop possible)."""
    res = engine.generate(independent_rows([prompt_ids] * g, engine.pad_id),
                          GenerationConfig(max_new_tokens=steps + 1, eos_token_ids=()))
    return (res.wall_seconds - res.prefill_seconds) / steps


def ceiling(engine: DecodingEngine, prompt_ids: list[int], g: int, steps: int) -> tuple[float, float]:
    """Median (bare, engine) seconds per step, measured alternately three times."""
    bare, eng = [], []
    for _ in range(3):
        bare.append(bare_step_seconds(engine.model, prompt_ids, g, steps))
        eng.append(engine_step_seconds(engine, prompt_ids, g, steps))
    return statistics.median(bare), statistics.median(eng)


def measure(groups: list[QuestionGroup], strategies, ctx: RunContext, repeats: int):
    """Every strategy on every group, alternating within each of :func:`phases` (the
    engine's rows with no vLLM server up, then the vLLM rows); per strategy its costs, peak
    memory and answers (of the first pass)."""
    rows = {s.name: [] for s in strategies}
    peaks = {s.name: [] for s in strategies}
    answers = {s.name: [] for s in strategies}
    for phase in phases(strategies):
        with server_up(phase):
            for rep in range(repeats):
                for grp in groups:
                    for strat in phase[rep % len(phase):] + phase[: rep % len(phase)]:
                        with PeakMemory(ctx.engine.device) as mem:
                            run = strat.run(grp, ctx)
                        rows[strat.name].append(run.cost)
                        peaks[strat.name].append(None if getattr(strat, "external", False) else mem.peak)
                        if rep == 0:
                            answers[strat.name].extend(r.raw for r in run.results)
    return rows, peaks, answers


def summarise(rows, peaks, answers, n_groups: int, weights: int, chunk_activation: int) -> dict:
    figures = {}
    for name, costs in rows.items():
        wall = sum(c.wall_seconds for c in costs)
        decode = sum(c.decode_seconds for c in costs)
        steps = sum(c.decode_passes for c in costs)
        kv = max(c.peak_cache_bytes for c in costs)
        peak = None if None in peaks[name] else max(peaks[name])
        figures[name] = {
            "wall_per_group_s": wall / len(costs),
            "prefill_per_group_s": (wall - decode) / len(costs),
            "decode_per_group_s": decode / len(costs),
            "tokens_per_s": sum(c.generated_tokens for c in costs) / wall,
            "forward_passes": sum(c.forward_passes for c in costs) / len(costs),
            "prompt_tokens": sum(c.prompt_tokens for c in costs) / len(costs),
            "peak_kv_mib": kv / 2**20,
            "peak_memory_mib": None if peak is None else peak / 2**20,
            # Peak memory (weights included) against weights + KV + one prefill chunk's activations.
            "memory_vs_budget": None if peak is None else (weights + peak) / (weights + kv + chunk_activation),
            # Decoding time per decoding step: every call's prefill passes (several for a
            # chunked prefill) are left out of both.
            "decode_ms_per_step": 1000 * decode / max(steps, 1),
        }
    for fig in figures.values():
        for base in BASES:
            if base in figures:
                fig[f"speedup_vs_{base}"] = figures[base]["wall_per_group_s"] / fig["wall_per_group_s"]
    for name in answers:
        # Each strategy against the one whose replies it must equal: a cached peer against
        # its plain counterpart, the other batch-prompt strategies against batch (or, when
        # batch did not run, against a strategy that equals it).
        peer = name.removesuffix(EAGER) if name.endswith(EAGER) else PEERS.get(name, "batch")
        if peer == "batch" and "batch" not in answers:
            peer = next((p for p in ("batch_cached", "one_sequence") if p in answers and p != name), None)
        if peer in answers and name != peer:
            same = sum(a == b for a, b in zip(answers[peer], answers[name]))
            figures[name]["same_answers"] = f"{same}/{len(answers[peer])} as {peer}"
    return {"groups": n_groups, "strategies": figures, "replies": answers}


def print_table(title: str, res: dict) -> None:
    print(f"\n{title}  ({res['groups']} groups)")
    if "ceiling_ms_per_step" in res:
        print(f"ceiling: bare model {res['ceiling_ms_per_step']:.1f} ms/step, engine "
              f"{res['engine_ms_per_step']:.1f} ms/step (overhead {100 * res['engine_overhead']:+.1f}%)")
    head = (f"{'strategy':<20} {'s/group':>8} {'prefill':>8} {'decode':>7} {'tok/s':>7} {'fwd':>6} "
            f"{'prompt tok':>10} {'KV MiB':>8} {'peak MiB':>8} {'vs seq':>7} {'vs batch':>8} "
            f"{'vs b_cached':>11} {'vs vllm':>7}  same replies")
    print(head)
    print("-" * len(head))
    nan = float("nan")
    for name, f in res["strategies"].items():
        print(f"{name:<20} {f['wall_per_group_s']:>8.2f} {f['prefill_per_group_s']:>8.2f} "
              f"{f['decode_per_group_s']:>7.2f} {f['tokens_per_s']:>7.1f} {f['forward_passes']:>6.1f} "
              f"{f['prompt_tokens']:>10.0f} {f['peak_kv_mib']:>8.1f} "
              f"{'-' if f['peak_memory_mib'] is None else format(f['peak_memory_mib'], '.0f'):>8} "
              f"{f.get('speedup_vs_sequential', nan):>7.2f} {f.get('speedup_vs_batch', nan):>8.2f} "
              f"{f.get('speedup_vs_batch_cached', nan):>11.2f} {f.get('speedup_vs_vllm', nan):>7.2f}  "
              f"{f.get('same_answers', '')}")


def print_agreement(other: dict | None, workload: str, g: int, res: dict) -> None:
    """Each row's replies against the same row of another run of this script (``--agree-with``,
    e.g. bf16 against fp32), stored in ``res`` as ``agreement``."""
    if other is None:
        return
    theirs = other.get(workload, {}).get(str(g), {}).get("replies", {})
    res["agreement"] = {}
    for name, mine in res["replies"].items():
        if name in theirs:
            same = sum(a == b for a, b in zip(mine, theirs[name]))
            res["agreement"][name] = [same, min(len(mine), len(theirs[name]))]
    if res["agreement"]:
        shown = ", ".join(f"{n} {a}/{b}" for n, (a, b) in res["agreement"].items())
        print(f"replies equal to {other.get('dtype', 'the other run')}'s: {shown}")


def read_agreement(paths: str | None) -> dict | None:
    """The earlier runs named by ``--agree-with`` (comma-separated JSONs) as one: each
    workload and group size from the first file that has it."""
    if not paths:
        return None
    merged: dict = {}
    for path in (p for p in paths.split(",") if p):
        try:
            run = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise SystemExit(f"--agree-with {path}: not a JSON written by this script ({err})") from None
        merged.setdefault("dtype", run.get("dtype"))
        for workload in ("paragraph", "article"):
            for g, res in run.get(workload, {}).items():
                merged.setdefault(workload, {}).setdefault(g, res)
    return merged


def throughput(groups: list[QuestionGroup], strategies, ctx: RunContext, packs: list[int]) -> dict:
    """Questions per second per strategy, unpacked and packed by each of ``packs``; the modes
    alternate chunk by chunk over the same groups. A peer row (vLLM) runs one group at a time
    and then every group at once, as a server's clients would send them; every row gets its
    ratio to that."""
    chunk = max(packs + [1])
    out = {}
    for strat in strategies:
        if getattr(strat, "external", False):
            with server_up([strat]):
                out[strat.name] = peer_throughput(groups, strat)
            continue
        seconds = {1: 0.0, **{k: 0.0 for k in packs}}
        answers = {k: [] for k in seconds}
        for start in range(0, len(groups), chunk):
            part = groups[start:start + chunk]
            for k in seconds:
                clock = Timer()
                if k == 1:
                    runs = [strat.run(g, ctx) for g in part]
                else:
                    runs = []
                    for i in range(0, len(part), k):
                        packer = Packer()
                        pctx = dataclasses.replace(ctx, packer=packer)
                        runs += packer.run([lambda g=g, s=strat, c=pctx: s.run(g, c) for g in part[i:i + k]])
                seconds[k] += clock()
                answers[k].extend(_replies(runs))
        fig = {"questions": sum(len(g) for g in groups)}
        for k, s in seconds.items():
            label = "unpacked" if k == 1 else f"packed_{k}"
            fig[f"{label}_questions_per_s"] = fig["questions"] / s
            if k != 1:
                fig[f"{label}_vs_unpacked"] = seconds[1] / s
                fig[f"{label}_same_answers"] = _same(answers[1], answers[k])
        out[strat.name] = fig
    peer = out.get("vllm", {}).get("all_at_once_questions_per_s")
    for name, fig in out.items():
        if peer:
            for key in [k for k in fig if k.endswith("_questions_per_s")]:
                fig[key.replace("_questions_per_s", "_vs_vllm")] = fig[key] / peer
        print(f"{name:<20} " + "  ".join(
            f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}" for k, v in fig.items()), flush=True)
    return out


def peer_throughput(groups: list[QuestionGroup], row: PeerRow) -> dict:
    from paralleldecode.backends.vllm_server import run_many

    # Each group one at a time from an empty prefix cache, and all at once from an empty one
    # again (not reading what the first pass left), as the package's engine keeps nothing.
    reset = row.ctx.engine.server.reset_prefix_cache
    one, one_s = [], 0.0
    for g in groups:
        reset()
        clock = Timer()
        one.append(row.strategy.run(g, row.ctx))
        one_s += clock()
    reset()
    clock = Timer()
    together = run_many([lambda g=g: row.strategy.run(g, row.ctx) for g in groups])
    together_s = clock()
    row.ctx.engine.server.settle()
    questions = sum(len(g) for g in groups)
    return {"questions": questions, "unpacked_questions_per_s": questions / one_s,
            "all_at_once_questions_per_s": questions / together_s, "all_at_once_vs_unpacked": one_s / together_s,
            "all_at_once_same_answers": _same(_replies(one), _replies(together))}


def _replies(runs) -> list[str]:
    out = []
    for run in runs:
        if isinstance(run, BaseException):
            raise run
        out.extend(r.raw for r in run.results)
    return out


def _same(a: list[str], b: list[str]) -> str:
    return f"{sum(x == y for x, y in zip(a, b))}/{len(a)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--data", default=None, help="a SQuAD file (default: the bundled demo set)")
    ap.add_argument("--sizes", default="1,2,4,5,8", help="paragraph group sizes G ('' for none)")
    ap.add_argument("--article-sizes", default="10,20", help="article group sizes G ('' for none; needs --data)")
    ap.add_argument("--groups", type=int, default=3, help="paragraph groups per size")
    ap.add_argument("--article-groups", type=int, default=2, help="article groups per size")
    ap.add_argument("--repeats", type=int, default=3,
                    help="passes over the paragraph groups; each rotates the strategy order")
    ap.add_argument("--article-repeats", type=int, default=1, help="passes over the article groups")
    ap.add_argument("--article-max-tokens", type=int, default=6000, help="longest article context used")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--strategies",
                    default="sequential,sequential_cached,batch,batch_cached,one_sequence,hf_generate,vllm,vllm_sequential")
    ap.add_argument("--strategy-options", default="{}",
                    help='JSON options per strategy, e.g. \'{"columnar": {"isolate": true}}\'')
    ap.add_argument("--throughput", type=int, default=0, help="paragraph groups for the throughput mode (0: off)")
    ap.add_argument("--throughput-strategies",
                    default="all_in_one,sequential,sequential_cached,batch,batch_cached,one_sequence,vllm")
    ap.add_argument("--pack", default="4,8", help="groups per packed call in the throughput mode")
    ap.add_argument("--prefill-chunk", type=int, default=512)
    ap.add_argument("--plain-chunk", type=int, default=8192,
                    help="most slots of the one maskless prefill pass (a plain causal start)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--dtype", default="auto", help="auto (fp32 on CPU), float32, bfloat16 (the vllm rows too)")
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                    help="the engine's compiled decoding steps (compiled before the first group, not timed)")
    ap.add_argument("--agree-with", default=None,
                    help="JSONs this script wrote, comma-separated (e.g. the fp32 paragraph and article "
                         "runs): count the replies equal to their rows'")
    ap.add_argument("--device", default=None, help="e.g. cuda (default: the CPU)")
    ap.add_argument("--vllm-python", default=None,
                    help="the Python with vLLM for the vllm rows (default: .venv-vllm, from `make vllm`)")
    ap.add_argument("--vllm-kv-gib", type=int, default=4, help="vLLM's KV cache space on a CPU, whole GiB")
    ap.add_argument("--out", default="benchmarks/results/strategy_speed.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tok = load_causal_lm(args.model, dtype=args.dtype, device=args.device)
    chunks = {"prefill_chunk": args.prefill_chunk, "plain_chunk": args.plain_chunk}
    ctx = RunContext(DecodingEngine(model, tok, compile=args.compile, **chunks),
                     PromptRenderer(tok), GenerationConfig(max_new_tokens=args.max_new_tokens))
    eager_ctx = dataclasses.replace(ctx, engine=DecodingEngine(model, tok, compile="off", **chunks))
    compile_seconds = ctx.engine.warm_up(packed=bool(args.throughput and args.pack))
    gpu = torch.cuda.get_device_name(ctx.engine.device) if ctx.engine.device.type == "cuda" else None
    print(f"cpu: {cpu_name()}" + (f"\ngpu: {gpu}" if gpu else "") + f"\ndecoding steps: {ctx.engine.compile_note}" +
          (f"; compiled in {compile_seconds:.1f} s (not counted in any row)" if ctx.engine.steps else ""))
    agree = read_agreement(args.agree_with)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    cfg = model.config
    dataset = "squad" if args.data else "demo"
    pool = load_groups(dataset, data_path=args.data)
    options = json.loads(args.strategy_options)
    names = [n for n in args.strategies.split(",") if n]
    throughput_names = [n for n in args.throughput_strategies.split(",") if n] if args.throughput else []
    server, vctx = start_vllm(names + throughput_names, args, model, tok, ctx)

    def make(n: str):
        if n == "hf_generate":
            return HFGenerate()
        if n in VLLM_ROWS:
            return PeerRow(n, get_strategy(VLLM_ROWS[n], options.get(VLLM_ROWS[n])), vctx) if vctx else None
        if n.endswith(EAGER):
            base = n.removesuffix(EAGER)
            return PeerRow(n, get_strategy(base, options.get(base)), eager_ctx, external=False)
        return get_strategy(n, options.get(n))

    strategies = [s for s in map(make, names) if s is not None]
    # Warm up kernels and caches once so the first measured strategy is not penalised.
    for phase in phases(strategies):
        with server_up(phase):
            for s in phase:
                s.run(groups_of_size(pool, 1, 1, args.seed)[0], ctx)

    report = {"model": args.model, "data": args.data or "demo", "max_new_tokens": args.max_new_tokens,
              "strategy_options": options, "dtype": str(model.dtype), "device": str(ctx.engine.device),
              "torch_threads": torch.get_num_threads(), **chunks,
              "compile": args.compile, "compiled": ctx.engine.steps is not None,
              "compile_seconds": compile_seconds, "engine": ctx.engine.compile_note, "cpu": cpu_name(), "gpu": gpu,
              "weights_mib": weights / 2**20, "paragraph": {}, "article": {},
              "vllm": {"startup_seconds": server.startup_seconds, "python": str(server.python)} if server else None}

    def chunk_activation(rows: int, length: int) -> int:
        """Bytes of one prefill pass's largest transient tensors, for ``rows`` rows against
        ``length`` keys: a masked chunk's MLP intermediate and one layer's attention scores,
        or the one maskless pass's MLP intermediate (its causal kernel keeps no scores)."""
        q = min(args.prefill_chunk, length)
        masked = rows * q * cfg.intermediate_size * 3 + rows * cfg.num_attention_heads * q * length
        plain = min(max(args.plain_chunk, args.prefill_chunk), length) * cfg.intermediate_size * 3
        return max(masked, plain) * next(model.parameters()).element_size()

    for g in (int(x) for x in args.sizes.split(",") if x):
        groups = groups_of_size(pool, g, args.groups, args.seed)
        if not groups:
            print(f"G={g}: no context has {g} questions in {report['data']}; skipped")
            continue
        rows, peaks, answers = measure(groups, strategies, ctx, args.repeats)
        prompt = ctx.renderer.ids([{"role": "user", "content": groups[0].background or ""}])
        res = summarise(rows, peaks, answers, len(groups), weights, chunk_activation(g, len(prompt) + 80))
        bare, eng = ceiling(ctx.engine, prompt, g, args.max_new_tokens)
        res.update(ceiling_ms_per_step=1000 * bare, engine_ms_per_step=1000 * eng, engine_overhead=eng / bare - 1)
        report["paragraph"][g] = res
        print_table(f"paragraph groups, G={g}", res)
        print_agreement(agree, "paragraph", g, res)

    for g in (int(x) for x in args.article_sizes.split(",") if x and args.data):
        groups = article_groups(args.data, g, args.article_groups, args.seed, ctx, args.article_max_tokens)
        rows, peaks, answers = measure(groups, strategies, ctx, args.article_repeats)
        length = max(len(ctx.renderer.ids([{"role": "user", "content": grp.background}])) for grp in groups)
        res = summarise(rows, peaks, answers, len(groups), weights, chunk_activation(g, length))
        res["context_tokens"] = length
        report["article"][g] = res
        print_table(f"article groups, G={g}, contexts up to {length} tokens", res)
        print_agreement(agree, "article", g, res)

    if args.throughput:
        groups = [g for g in pool if len(g) >= 3]
        random.Random(args.seed).shuffle(groups)
        groups = groups[: args.throughput]
        packs = [int(k) for k in args.pack.split(",") if k]
        print(f"\nthroughput over {len(groups)} paragraph groups ({sum(len(g) for g in groups)} questions)")
        rows = [s for s in map(make, throughput_names) if s is not None]
        report["throughput"] = {"groups": len(groups), "packs": packs,
                                "strategies": throughput(groups, rows, ctx, packs)}
    if server is not None:
        server.stop()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
