"""Seconds per prefill, the prefill alone: the engine's eager passes with and without the
package's causal CPU kernel, against the plain eager engine, side by side in one process.

The workload is ``one_sequence``'s: one row holding a context of ``--lengths`` tokens (random
ids: the time does not depend on them) and ``--branches`` questions of ``--question-tokens``
each after it, prefilled into a cache with one new token generated from the prefill's logits
(no decoding step, so nothing is compiled). The context goes through the model's plain causal
path (no mask), the branches through one masked pass. Each setting is one row, run
alternately, the median of ``--repeats``:

* ``eager``: ``compile: off``, the plain reference (MKL linears, sdpa attention);
* ``packed``: ``compile: on``'s eager passes with packed oneDNN linears and the package's CPU
  kernels suspended (:func:`~paralleldecode.decoding.cpu_kernels.suspended`): the attention
  left with sdpa, as the engine ran it on the Intel machine before 2026-12-05 (evening);
* ``kernels``: ``compile: on``'s eager passes as the engine runs them: packed linears and the
  attention (the context's causal pass, the branches' masked one) in
  :func:`~paralleldecode.decoding.cpu_kernels.prefill_attention` where it is built (the
  engine's compile note says which).

    python benchmarks/prefill_speed.py
    python benchmarks/prefill_speed.py --lengths 1000,2000,4700 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import time
from pathlib import Path

import torch

from paralleldecode.decoding import DecodingEngine, GenerationConfig, cpu_kernels, shared_prefix
from paralleldecode.models.loading import DEFAULT_MODEL, load_causal_lm

SETTINGS = ("eager", "packed", "kernels")


def timed(name: str, e: DecodingEngine, layout, config: GenerationConfig) -> float:
    """Seconds of one prefill by engine ``e`` in setting ``name``."""
    with cpu_kernels.suspended() if name == "packed" else contextlib.nullcontext():
        start = time.perf_counter()
        e.generate(layout, config)
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--lengths", default="300,1000,4700", help="context tokens, comma-separated")
    ap.add_argument("--branches", type=int, default=10)
    ap.add_argument("--question-tokens", type=int, default=15)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/prefill_speed.json")
    args = ap.parse_args()

    model, tok = load_causal_lm(args.model)
    names = [s for s in args.settings.split(",") if s]
    for name in names:
        if name not in SETTINGS:
            raise SystemExit(f"--settings: unknown {name!r}; choose from {', '.join(SETTINGS)}")
    engines = {name: DecodingEngine(model, tok, compile="off" if name == "eager" else "on") for name in names}
    note = engines.get("kernels", next(iter(engines.values()))).compile_note
    print(f"engine (compile on): {note}")
    rng = random.Random(0)
    one = GenerationConfig(max_new_tokens=1, eos_token_ids=())
    report = {"model": args.model, "dtype": str(model.dtype), "threads": torch.get_num_threads(), "engine": note,
              "branches": args.branches, "question_tokens": args.question_tokens, "lengths": {}}
    print(f"{'context':>8} {'setting':>8} {'s':>7} {'tok/s':>7} {'vs eager':>8}")
    for length in (int(x) for x in args.lengths.split(",") if x):
        context = [rng.randrange(100, 30000) for _ in range(length)]
        prompts = [context + [rng.randrange(100, 30000) for _ in range(args.question_tokens)]
                   for _ in range(args.branches)]
        layout = shared_prefix(prompts, next(iter(engines.values())).pad_id)
        tokens = length + args.branches * args.question_tokens
        times: dict[str, list[float]] = {n: [] for n in names}
        with torch.inference_mode():
            for name, e in engines.items():  # untimed: first-use work (packing, page faults)
                timed(name, e, layout, one)
            for _ in range(args.repeats):
                for name, e in engines.items():
                    times[name].append(timed(name, e, layout, one))
        rows = {n: statistics.median(t) for n, t in times.items()}
        base = rows.get("eager")
        report["lengths"][length] = {n: {"seconds": s, "tokens_per_s": tokens / s,
                                         "vs_eager": base / s if base else None} for n, s in rows.items()}
        for n, s in rows.items():
            ratio = f"{base / s:8.2f}" if base else f"{'-':>8}"
            print(f"{length:>8} {n:>8} {s:7.2f} {tokens / s:7.0f} {ratio}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
