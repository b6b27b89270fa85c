"""How big the run report gets, and how long it takes to build, for a large run.

Writes a synthetic run folder (the files a finished predict run leaves: ``summary.json``,
``predictions.jsonl``, ``group_costs.jsonl``, ``groups.jsonl``, ``run.json``) with
``--groups`` groups of ``--questions`` questions answered by ``--strategies`` strategies
(seeded random answers drawn from each group's context, so they agree and disagree as real
ones do), then builds its ``report.html`` and prints the sizes and times.

    python benchmarks/report_size.py --out /tmp/big-run     # 2,000 groups x 5 questions x 6 strategies

Open ``/tmp/big-run/report.html`` in a browser to see that the page opens and filters.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from paralleldecode.report import write_report

WORDS = ("river tower harbour ferry island keeper lamp market cheese sheep winter north signal morning "
         "noon cattle mail travellers caves weeks town sea wind crossing calm three red").split()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/paralleldecode-big-run")
    ap.add_argument("--groups", type=int, default=2000)
    ap.add_argument("--questions", type=int, default=5)
    ap.add_argument("--strategies", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    names = ["all_in_one", "sequential", "sequential_cached", "batch", "batch_cached", "one_sequence",
             "collab_llm", "columnar"][: args.strategies]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    groups, records, units = [], [], []
    for g in range(args.groups):
        context = " ".join(rng.choice(WORDS) for _ in range(110)).capitalize() + "."
        qs = [{"id": f"q{g}-{j}", "text": f"Which word comes after number {j} in passage {g}?",
               "context": None, "options": None} for j in range(args.questions)]
        groups.append({"index": g, "id": f"group-{g}", "dataset": "synthetic", "background": context,
                       "title": f"Passage {g}", "questions": qs})
        golds = [rng.choice(WORDS) for _ in qs]
        for name in names:
            unit = {"strategy": name, "group_id": f"group-{g}", "group_index": g, "cost": {}, "extras": {},
                    "details": {}}
            units.append(unit)
            for q, gold in zip(qs, golds):
                answer = gold if rng.random() < 0.4 else rng.choice(WORDS)
                ok = rng.random() < 0.9
                records.append({
                    "strategy": name, "dataset": "synthetic", "group_id": f"group-{g}", "group_index": g,
                    "question_id": q["id"], "question": q["text"], "answer": answer,
                    "raw": json.dumps({"answer": answer}) if ok else answer, "gold": [gold],
                    "format_ok": ok, "finish_reason": "stop_string", "prompt_tokens": 300,
                    "generated_tokens": 4, "forward_passes": 5, "latency_s": 1.0, "answer_type": "short",
                    "options": None, "error": None, "em": float(answer == gold), "f1": float(answer == gold),
                    "lenient": float(answer == gold)})
    summary = {}
    for i, name in enumerate(names):
        mine = [r for r in records if r["strategy"] == name]
        summary[name] = {"em": 100 * sum(r["em"] for r in mine) / len(mine),
                         "f1": 100 * sum(r["f1"] for r in mine) / len(mine),
                         "format_rate": 100 * sum(r["format_ok"] for r in mine) / len(mine),
                         "questions": len(mine), "prompt_tokens": 300 * len(mine) // (i + 1),
                         "generated_tokens": 4 * len(mine), "forward_passes": 5 * len(mine),
                         "wall_seconds": 1.0 * len(mine) / (i + 1), "failed_questions": 0}
    (out / "summary.json").write_text(json.dumps(summary))
    for name, rows in (("predictions.jsonl", records), ("group_costs.jsonl", units), ("groups.jsonl", groups)):
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "run.json").write_text(json.dumps({"command": ["paralleldecode", "predict", "(synthetic)"], "version": "-",
                                              "started": "-", "resumed": [], "settings": {"model": {}, "data": {}}}))
    start = time.perf_counter()
    page = write_report(out)
    took = time.perf_counter() - start
    questions = args.groups * args.questions
    print(f"{questions:,} questions x {len(names)} strategies: predictions.jsonl "
          f"{(out / 'predictions.jsonl').stat().st_size / 2**20:.1f} MiB, report.html "
          f"{page.stat().st_size / 2**20:.1f} MiB, built in {took:.1f} s -> {page}")


if __name__ == "__main__":
    main()
