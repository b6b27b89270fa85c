"""``paralleldecode-layout``: show how a background and questions are laid out in columns,
and what each branch generates, for a base or trained model.

    python -m paralleldecode.columnar_layout --model smollm2-135m-instruct \\
        --background "The lighthouse was built in 1871 by Maud Feren." \\
        --question "Who built it?" --question "When was it built?" --max-new-tokens 8

The prompts are those of the ``columnar`` strategy: each question as its own
``one_question`` prompt primed with ``{"answer": "``; the background (branch 0) is their
common token prefix and each branch the rest. The first table lists every slot of the
linearised layout (branch-major, shorter branches right-padded); the second each branch's
generated tokens with their columns (all branches advance one column per step).
"""

from __future__ import annotations

import argparse
import sys

from paralleldecode.data.records import Question, QuestionGroup
from paralleldecode.decoding import DecodingEngine, GenerationConfig
from paralleldecode.decoding.columnar import columnar_layout, columnar_segments, linearise
from paralleldecode.decoding.layout import PAD
from paralleldecode.prompts import ONE_ANSWER, PromptRenderer


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="paralleldecode-layout",
        description="Print the (branch, column) layout of a background and questions, and "
                    "each branch's generated tokens with their columns.")
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="model id, local folder, .gguf file, or smollm2-135m-instruct (default)")
    p.add_argument("--checkpoint", help="a trained ColumnarModule checkpoint (.ckpt)")
    p.add_argument("--adapter", help="a peft LoRA adapter folder (save_pretrained)")
    p.add_argument("--pair-indices", type=int, nargs="*", default=None,
                   help="1-based frequency pairs on the branch axis (without a checkpoint)")
    p.add_argument("--background", required=True, help="the shared context")
    p.add_argument("--question", action="append", required=True, dest="questions",
                   help="a question (repeat for several branches)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="per branch (default 16)")
    isolate = p.add_mutually_exclusive_group()
    isolate.add_argument("--isolate", dest="isolate", action="store_true", default=None,
                         help="branches see only the background and themselves")
    isolate.add_argument("--no-isolate", dest="isolate", action="store_false",
                         help="the full column rule (default unless the checkpoint says otherwise)")
    return p


def _token(tokenizer, token_id: int) -> str:
    return repr(tokenizer.decode([token_id]))


def layout_table(tokenizer, background: list[int], branches: list[list[int]]) -> list[str]:
    """Lines of the slot table of the linearised layout (one row: no batch padding)."""
    rows = linearise([(background, branches)], tokenizer.pad_token_id or 0)
    lines = [f"{'slot':>5} {'branch':>6} {'column':>6}  token"]
    for t in range(rows.input_ids.shape[1]):
        if int(rows.owner[0, t]) == PAD:
            lines.append(f"{t:>5} {'-':>6} {'-':>6}  <pad>")
            continue
        lines.append(f"{t:>5} {int(rows.branch[0, t]):>6} {int(rows.column[0, t]):>6}  "
                     f"{_token(tokenizer, int(rows.input_ids[0, t]))}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.max_new_tokens < 1:
        _parser().error(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    # Imported here so --help stays fast.
    from paralleldecode.models.columnar import columnar_hparams
    from paralleldecode.models.loading import load_causal_lm
    from paralleldecode.models.rope2d import pair_indices_of
    from paralleldecode.models.training import read_checkpoint
    from paralleldecode.strategies.columnar import build_columnar_model

    isolate = args.isolate
    if args.checkpoint:
        hp = columnar_hparams(read_checkpoint(args.checkpoint), args.checkpoint)
        if args.pair_indices is not None and sorted(args.pair_indices) != sorted(hp["pair_indices"]):
            _parser().error(f"--pair-indices {args.pair_indices} differ from the checkpoint's "
                            f"{hp['pair_indices']}; leave them out")
        isolate = bool(hp["isolate"]) if isolate is None else isolate
    isolate = bool(isolate)

    model, tokenizer = load_causal_lm(args.model, attn_implementation="sdpa")
    build_columnar_model(model, args.checkpoint, args.adapter, args.pair_indices)
    group = QuestionGroup("layout", "demo", [Question(f"q{i + 1}", text, [])
                                             for i, text in enumerate(args.questions)],
                          background=args.background)
    background, branches = columnar_segments(PromptRenderer(tokenizer), group)
    weights = " + ".join(w for w in (args.checkpoint, args.adapter) if w) or \
        "base model (no checkpoint or adapter: untrained for this layout)"
    n = len(background)
    out = [
        f"model: {args.model}; weights: {weights}",
        f"pair_indices (branch axis): {pair_indices_of(model)}; isolate: {isolate}",
        f"background: branch 0, columns 0..{n - 1} ({n} tokens); {len(branches)} branches "
        f"start at column {n}",
        "",
        *layout_table(tokenizer, background, branches),
        "",
    ]
    engine = DecodingEngine(model, tokenizer)
    res = engine.generate(columnar_layout(background, branches, engine.pad_id, isolate),
                          GenerationConfig(max_new_tokens=args.max_new_tokens,
                                           stop_strings=(ONE_ANSWER.close,)))
    out.append(f"generated ({res.forward_passes} forward passes, {res.wall_seconds:.2f} s):")
    for b, (q, s) in enumerate(zip(args.questions, res.streams)):
        first = n + len(branches[b])
        out.append(f"branch {b + 1}: {q}")
        out.append("  " + " ".join(f"{first + j}:{_token(tokenizer, t)}" for j, t in enumerate(s.token_ids)))
        out.append(f"  reply: {ONE_ANSWER.complete(s.text, s.finish_reason)}  ({s.finish_reason})")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
