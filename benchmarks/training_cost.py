"""What training costs: the shipped fit configs run for a few steps, with the figures they log.

Each config runs as a real ``paralleldecode fit`` process (its own model, data and trainer
settings; only ``max_steps``, the output folders and ``force`` are changed), one after the
other, never two at once. From the TensorBoard files each run writes this prints, per config,
the median over the steps after the first (which pays for warm-up) of
``train/tokens_per_s`` and ``train/samples_per_s``, seconds per optimizer step, the peak
memory (``train/peak_memory_mb``: RSS on CPU, allocated memory on CUDA) and the size of the
resumable ``last.ckpt``.

    PARALLELDECODE_DATA_DIR=../shared/data python benchmarks/training_cost.py --steps 8
    python benchmarks/training_cost.py --configs crossbatch_squad --extra --model.init_args.method lora_crossbatch

``columnar_finetune`` starts from the base model here (``init_checkpoint: null``), so it needs
no pretraining run first. Writes JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("crossbatch_squad", "columnar_pretrain", "columnar_finetune")
NEEDS_DATA = {"crossbatch_squad": ["--data.init_args.data_path", "${PARALLELDECODE_DATA_DIR}/squad/dev-v1.1.json"],
              "columnar_finetune": ["--model.init_args.init_checkpoint", "null"]}


def scalars(folder: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[float]] = {}
    for version in sorted(folder.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(version.parent))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out[tag] = [e.value for e in acc.Scalars(tag)]
    return out


def run(config: str, steps: int, extra: list[str], work: Path) -> dict:
    root = work / config
    args = [str(Path(sys.executable).parent / "paralleldecode"), "fit",
            "--config", str(ROOT / "configs" / "fit" / f"{config}.yaml"), *NEEDS_DATA.get(config, []),
            "--trainer.max_steps", str(steps), "--trainer.log_every_n_steps", "1",
            "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
            "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger",
            "--trainer.logger.save_dir", str(root),
            "--model.init_args.checkpoint_dir", str(root / "trained"), *extra]
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{config}: paralleldecode fit failed ({proc.returncode}): "
                         f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
    logged = scalars(root)
    tokens, samples = logged["train/tokens_per_s"][1:], logged["train/samples_per_s"][1:]
    # With gradient accumulation a step is several batches; the rates are per batch.
    last = root / "checkpoints" / "last.ckpt"
    return {
        "config": config,
        "steps": steps,
        "tokens_per_s": statistics.median(tokens),
        "samples_per_s": statistics.median(samples),
        "peak_memory_mb": max(logged["train/peak_memory_mb"]),
        "last_ckpt_mb": last.stat().st_size / 2**20 if last.exists() else None,
        "wall_seconds": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help="fit configs (names in configs/fit)")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per config")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="arguments added to every run")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    if not os.environ.get("PARALLELDECODE_DATA_DIR"):
        raise SystemExit("set PARALLELDECODE_DATA_DIR (e.g. ../shared/data): the shipped configs read SQuAD "
                         "and WikiText-2 from it")
    rows = []
    with tempfile.TemporaryDirectory(prefix="training-cost-") as work:
        for config in filter(None, args.configs.split(",")):
            rows.append(run(config, args.steps, args.extra, Path(work)))
            r = rows[-1]
            print(f"{config:<20} {r['tokens_per_s']:>9.1f} tokens/s {r['samples_per_s']:>7.2f} samples/s "
                  f"peak {r['peak_memory_mb']:>7.0f} MiB  last.ckpt {r['last_ckpt_mb'] or 0:>6.1f} MiB  "
                  f"({r['steps']} steps in {r['wall_seconds']:.0f} s with start-up)", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                        "cpus": os.cpu_count(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
