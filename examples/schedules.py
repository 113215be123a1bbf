"""When does drafting pay? Draft lengths and schedules side by side, at several batch sizes.

Run:  python examples/schedules.py  [--batch-sizes 1,8,32] [--num-prompts 32] [--max-new-tokens 64]

On the bundled pair (or `--target/--draft`), for each batch size: transformers' greedy at that batch, then
exspec with a constant k of 1, 2, 3 and 5, transformers' "heuristic" schedule (per row, starting at 3), and
`speculation="auto"` (k up to 5 chosen per round from a cost model; `--calibrate` measures the model here
instead of estimating it). Every row of every run is checked against batch-1 greedy; the script exits
non-zero on any difference. Output: one table, and `--json` for the numbers.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from hf_batchspec.cli.args import add_source_arguments
from hf_batchspec.cli.harness import Bench
from hf_batchspec.cli.loaders import load_pair, load_prompts
from hf_batchspec.profiling import calibrate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_source_arguments(parser)
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--calibrate", action="store_true", help="measure the cost model on this machine")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    target, draft, tokenizer = load_pair(args.target, args.draft, torch.float32, args.device)
    prompts = load_prompts(args.prompts, tokenizer, args.num_prompts)
    bench = Bench(target, draft, prompts, args.max_new_tokens, 3, args.device, repeats=3)
    cost = calibrate(target, draft, rows=max(args.batch_sizes)) if args.calibrate else "auto"
    # The reference rows come from HF greedy at batch 1, the first method timed.
    results = [] if args.batch_sizes[0] == 1 else [bench.timed("hf-greedy", 1, bench.hf_greedy(1))]
    for b in args.batch_sizes:
        plan = [("hf-greedy", bench.hf_greedy(b), False)]
        plan += [(f"constant k={k}", bench.ours("exspec", b, k=k), True) for k in (1, 2, 3, 5)]
        plan.append(("heuristic (from k=3)", bench.ours("exspec", b, num_assistant_tokens_schedule="heuristic_transient"),
                     True))
        plan.append(("auto (k <= 5)", bench.ours("exspec", b, speculation=cost, k=5), True))
        results += bench.compare(plan, b)  # taking turns, so a slow spell on the machine hits all alike

    greedy = {r.batch_size: r.tokens_per_second for r in results if r.method == "hf-greedy"}
    print(f"{'batch':>5}  {'method':<22}{'tokens/s':>9}{'vs HF greedy':>14}{'tokens/round':>14}{'draft calls':>13}"
          f"{'outside fwd':>13}{'bound':>8}")
    for r in results:
        per_round = f"{r.tokens_per_round:.2f}" if r.tokens_per_round else "-"
        speedup = r.tokens_per_second / greedy[r.batch_size]
        # bound: the speedup if everything outside model forwards cost nothing (same forwards, same HF greedy)
        print(f"{r.batch_size:>5}  {r.method:<22}{r.tokens_per_second:>9.0f}{speedup:>13.2f}x{per_round:>14}"
              f"{r.draft_calls or '-':>13}{r.bookkeeping:>12.0%}{speedup / (1 - r.bookkeeping):>7.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
    if any(r.exact_rows != r.rows for r in results):
        raise SystemExit("a row differs from plain greedy decoding")


if __name__ == "__main__":
    main()
