"""Milliseconds per decoding step, the step alone: eager against compiled (and, on CUDA,
compiled and replayed as a CUDA graph), next to the bound that reading the weights once per
step sets on this machine.

The step is the engine's :func:`~paralleldecode.decoding.compiled.slot_step` over slot
buffers of the shape a strategy leaves after its prefill (random keys and values: the time of
a step does not depend on them), fed the same ids at the same slot every time, so nothing
grows while it is timed. The shapes (``--shapes``, ``ROWSxSTREAMSxKEYS``):

* ``1x1x330``: one row of one stream (``sequential``) after a paragraph's prompt;
* ``5x1x330``: five rows of one stream each (``batch``, ``batch_cached``);
* ``1x5x330``: one row of five branches (``one_sequence`` on a paragraph group of 5);
* ``1x10x4800``: one row of ten branches over an article's context.

Each setting is one row: ``eager`` (the step's modeling code run op by op), ``compiled``
(``torch.compile``, as the engine's ``compile: on`` runs it) and, on CUDA, ``graphs`` (the
compiled step captured once and replayed, :class:`~paralleldecode.decoding.compiled.StepGraph`).
A step is timed from its call until its logits are on the device and synchronised, the
median of ``--steps`` after ``--warmup`` untimed; compile time is reported apart.

The bound: the bytes of the weights over the memory's read bandwidth, measured here by
summing a 1 GiB tensor (on CUDA, a 4 GiB one).

    python benchmarks/step_speed.py
    python benchmarks/step_speed.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from paralleldecode.decoding.compiled import StepCompiler, slot_step, step_width
from paralleldecode.decoding.layout import PAD, SHARED
from paralleldecode.decoding.memory import keep_freed_memory
from paralleldecode.models.loading import DEFAULT_MODEL, load_causal_lm


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def read_bandwidth(device: torch.device) -> float:
    """Bytes per second read by a sum over a tensor much larger than any cache."""
    size = (4 if device.type == "cuda" else 1) << 30
    x = torch.ones(size // 4, dtype=torch.float32, device=device)
    x.sum()
    sync(device)
    times = []
    for _ in range(10):
        start = time.perf_counter()
        x.sum()
        sync(device)
        times.append(time.perf_counter() - start)
    del x
    return size / min(times)


def buffers(model, rows: int, streams: int, keys: int, width: int):
    """The step's inputs: ``rows`` rows, each a shared prompt of ``keys`` slots followed by
    room for the steps, ``streams`` streams per row fed ``width`` slots per step."""
    cfg = model.config
    p = next(model.parameters())
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    size = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    room = keys + 64
    gen = torch.Generator(device="cpu").manual_seed(0)
    kv = [torch.randn(rows, heads, room, size, generator=gen).to(p.device, p.dtype)
          for _ in range(2 * cfg.num_hidden_layers)]
    for t in kv:
        t[..., keys:, :].zero_()
    owner = torch.full((rows, room), PAD, dtype=torch.long, device=p.device)
    owner[:, :keys] = SHARED if streams > 1 else 0
    fed = list(range(streams)) + [PAD] * (width - streams)
    query_owner = torch.tensor([fed] * rows, device=p.device)
    owner[:, keys:keys + width] = query_owner
    ids = torch.randint(10, 1000, (rows, width), generator=gen).to(p.device)
    positions = torch.full((rows, width), keys, device=p.device)
    at = torch.tensor(keys, device=p.device)
    return ids, positions, query_owner, owner, kv[::2], kv[1::2], at


def time_steps(fn, args, device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        fn(*args)
    sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn(*args)
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--device", default=None, help="e.g. cuda (default: the CPU)")
    ap.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on CUDA), float32, bfloat16")
    ap.add_argument("--shapes", default="1x1x330,5x1x330,1x5x330,1x10x4800")
    ap.add_argument("--settings", default=None,
                    help="comma-separated among eager, compiled, graphs (default: all this device runs)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/step_speed.json")
    args = ap.parse_args()

    model, _ = load_causal_lm(args.model, dtype=args.dtype, device=args.device)
    device = next(model.parameters()).device
    if device.type == "cpu":
        keep_freed_memory()  # as the engine does on the CPU
    settings = ["eager", "compiled"] + (["graphs"] if device.type == "cuda" else [])
    if args.settings:
        chosen = args.settings.split(",")
        unknown = [s for s in chosen if s not in settings]
        if unknown:
            raise SystemExit(f"--settings: {', '.join(unknown)} not among {', '.join(settings)} on {device.type}")
        settings = chosen
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = read_bandwidth(device)
    bound = weights / bandwidth
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    print(f"{args.model}, {model.dtype}, on {name}: weights {weights / 2**20:.0f} MiB, read bandwidth "
          f"{bandwidth / 1e9:.0f} GB/s, bound {1000 * bound:.3f} ms per step", flush=True)
    compiler = StepCompiler(model)
    report = {"model": args.model, "dtype": str(model.dtype), "device": name, "weights_mib": weights / 2**20,
              "read_gb_per_s": bandwidth / 1e9, "bound_ms": 1000 * bound, "shapes": {}}
    print(f"{'shape':<12}" + "".join(f"{s + ' ms':>14}" for s in settings) + f"{'best/bound':>12}"
          + "".join(f"{'eager/' + s:>16}" for s in settings if s != "eager"))
    with torch.inference_mode():
        for shape in args.shapes.split(","):
            rows, streams, keys = (int(x) for x in shape.split("x"))
            step_args = buffers(model, rows, streams, keys, step_width(rows, streams))
            res = {}
            for setting in settings:
                if setting == "eager":
                    def fn(*a):
                        return slot_step(model, *a)
                else:
                    compiler.graphs = setting == "graphs"
                    fn = compiler
                    spent = compiler.compile_seconds
                    fn(*step_args)  # compiles this shape if it is new
                    res[f"{setting}_compile_seconds"] = compiler.compile_seconds - spent
                res[f"{setting}_ms"] = 1000 * time_steps(fn, step_args, device, args.warmup, args.steps)
            if compiler.fallback or compiler.graph_fallback:
                res["fallback"] = compiler.fallback or compiler.graph_fallback
            best = min(res[f"{s}_ms"] for s in settings)
            res["best_vs_bound"] = best / (1000 * bound)
            report["shapes"][shape] = res
            print(f"{shape:<12}" + "".join(f"{res[s + '_ms']:>14.3f}" for s in settings)
                  + f"{res['best_vs_bound']:>12.1f}"
                  + "".join(f"{res['eager_ms'] / res[s + '_ms']:>16.2f}" for s in settings
                            if s != "eager" and "eager" in settings), flush=True)
            if "fallback" in res:
                print(f"  fell back: {res['fallback']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
