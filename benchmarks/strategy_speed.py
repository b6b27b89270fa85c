"""Speed of the strategies side by side, on the same groups, in one process.

For each group size G, the same G questions of the same contexts go through every strategy
with the same model, greedy decoding and ``max_new_tokens``. Strategies run alternately
(A B C on a group, then the next group, with the order rotated each repeat) so that drift
on a shared machine hits all of them alike. A *ceiling* is measured the same way: the plain
model decoding G identical rows with no strategy logic (no explicit masks or positions, no
stopping, no bookkeeping), against the engine decoding exactly the same workload: their
ratio is the engine's per-step overhead.

    python benchmarks/strategy_speed.py                                   # demo set
    python benchmarks/strategy_speed.py --data ../shared/data/squad/dev-v1.1.json
    # the columnar branch decoder (2D RoPE, column mask) against one_sequence on one workload:
    python benchmarks/strategy_speed.py --sizes 5 --strategies batch,one_sequence,columnar \
        --strategy-options '{"columnar": {"isolate": true}}'

Prints a table per G with ratios against ``sequential`` and ``batch`` and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from paralleldecode.data.records import QuestionGroup
from paralleldecode.data.registry import load_groups
from paralleldecode.decoding import DecodingEngine, GenerationConfig, independent_rows
from paralleldecode.models.loading import DEFAULT_MODEL, cache_keyword, load_causal_lm
from paralleldecode.prompts import PromptRenderer
from paralleldecode.strategies import RunContext, get_strategy


def groups_of_size(groups: list[QuestionGroup], g: int, count: int, seed: int) -> list[QuestionGroup]:
    """``count`` groups with exactly ``g`` questions (the first ``g`` of larger contexts)."""
    fit = [grp for grp in groups if len(grp) >= g]
    random.Random(seed).shuffle(fit)
    return [replace(grp, id=f"{grp.id}@{g}", questions=grp.questions[:g]) for grp in fit[:count]]


@torch.no_grad()
def bare_step_seconds(model, prompt_ids: list[int], g: int, steps: int) -> float:
    """Seconds per decoding step of the bare model on ``g`` identical rows."""
    from transformers import DynamicCache

    ids = torch.tensor([prompt_ids] * g)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--data", default=None, help="a SQuAD file (default: the bundled demo set)")
    ap.add_argument("--sizes", default="1,2,4,5,8", help="group sizes G")
    ap.add_argument("--groups", type=int, default=3, help="groups per size")
    ap.add_argument("--repeats", type=int, default=3,
                    help="passes over the groups; each rotates the strategy order")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--strategies", default="sequential,batch,one_sequence")
    ap.add_argument("--strategy-options", default="{}",
                    help='JSON options per strategy, e.g. \'{"columnar": {"isolate": true}}\'')
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--dtype", default="auto", help="auto (fp32 on CPU), float32, bfloat16")
    ap.add_argument("--out", default="benchmarks/results/strategy_speed.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tok = load_causal_lm(args.model, dtype=args.dtype)
    ctx = RunContext(DecodingEngine(model, tok), PromptRenderer(tok),
                     GenerationConfig(max_new_tokens=args.max_new_tokens))
    dataset = "squad" if args.data else "demo"
    pool = load_groups(dataset, data_path=args.data)
    names = args.strategies.split(",")
    options = json.loads(args.strategy_options)
    strategies = [get_strategy(n, options.get(n)) for n in names]
    # Warm up kernels and caches once so the first measured strategy is not penalised.
    strategies[0].run(groups_of_size(pool, 1, 1, args.seed)[0], ctx)

    report = {"model": args.model, "data": args.data or "demo", "max_new_tokens": args.max_new_tokens,
              "strategy_options": options,
              "dtype": str(model.dtype), "torch_threads": torch.get_num_threads(), "sizes": {}}
    for g in (int(x) for x in args.sizes.split(",")):
        groups = groups_of_size(pool, g, args.groups, args.seed)
        if not groups:
            print(f"G={g}: no context has {g} questions in {report['data']}; skipped")
            continue
        rows = {n: [] for n in names}
        answers = {n: [] for n in names}
        for rep in range(args.repeats):
            for grp in groups:
                order = strategies[rep % len(strategies):] + strategies[: rep % len(strategies)]
                for strat in order:
                    run = strat.run(grp, ctx)
                    rows[strat.name].append(run.cost)
                    if rep == 0:
                        answers[strat.name].extend(r.raw for r in run.results)
        prompt = ctx.renderer.ids([{"role": "user", "content": groups[0].background or ""}])
        bare, eng = ceiling(ctx.engine, prompt, g, args.max_new_tokens)
        report["sizes"][g] = summarise(rows, answers, bare, eng, len(groups))
        print_table(g, report["sizes"][g])

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")


def summarise(rows, answers, bare: float, eng: float, n_groups: int) -> dict:
    figures = {}
    for name, costs in rows.items():
        wall = sum(c.wall_seconds for c in costs)
        steps = sum(c.forward_passes for c in costs) - sum(1 for _ in costs)
        figures[name] = {
            "wall_per_group_s": wall / len(costs),
            "tokens_per_s": sum(c.generated_tokens for c in costs) / wall,
            "forward_passes": sum(c.forward_passes for c in costs) / len(costs),
            "prompt_tokens": sum(c.prompt_tokens for c in costs) / len(costs),
            "peak_kv_mib": max(c.peak_cache_bytes for c in costs) / 2**20,
            # Decoding time per model call after prefills (sequential's calls each have a
            # prefill too, so its figure is a per-call average of the decode phase).
            "decode_ms_per_step": 1000 * sum(c.decode_seconds for c in costs) / max(steps, 1),
        }
    for name, fig in figures.items():
        for base in ("sequential", "batch"):
            if base in figures:
                fig[f"speedup_vs_{base}"] = figures[base]["wall_per_group_s"] / fig["wall_per_group_s"]
    for name in answers:
        if "batch" in answers and name != "batch":
            same = sum(a == b for a, b in zip(answers["batch"], answers[name]))
            figures[name]["same_answers_as_batch"] = f"{same}/{len(answers['batch'])}"
    return {"groups": n_groups, "ceiling_ms_per_step": 1000 * bare, "engine_ms_per_step": 1000 * eng,
            "engine_overhead": eng / bare - 1, "strategies": figures}


def print_table(g: int, res: dict) -> None:
    print(f"\nG={g}  ({res['groups']} groups)  ceiling at batch {g}: bare model "
          f"{res['ceiling_ms_per_step']:.1f} ms/step, engine {res['engine_ms_per_step']:.1f} ms/step "
          f"(overhead {100 * res['engine_overhead']:+.1f}%)")
    head = (f"{'strategy':<13} {'s/group':>8} {'tok/s':>7} {'fwd':>6} {'prompt tok':>10} "
            f"{'KV MiB':>7} {'ms/step':>8} {'vs seq':>7} {'vs batch':>8}  same as batch")
    print(head)
    print("-" * len(head))
    for name, f in res["strategies"].items():
        print(f"{name:<13} {f['wall_per_group_s']:>8.2f} {f['tokens_per_s']:>7.1f} {f['forward_passes']:>6.1f} "
              f"{f['prompt_tokens']:>10.0f} {f['peak_kv_mib']:>7.2f} {f['decode_ms_per_step']:>8.1f} "
              f"{f.get('speedup_vs_sequential', float('nan')):>7.2f} "
              f"{f.get('speedup_vs_batch', float('nan')):>8.2f}  {f.get('same_answers_as_batch', '')}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
