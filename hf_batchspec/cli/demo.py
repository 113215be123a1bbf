"""`python -m hf_batchspec demo`: batch speculative decoding on the bundled model pair, checked and timed.

Loads the bundled target/draft pair (trained by scripts/train_demo_pair on the Python standard library,
shipped with the package; `--target`/`--draft` take any HF model id or local path instead), generates for a
batch of prompts, checks every row against plain greedy decoding of its prompt alone (token ids, through the
first EOS) and prints tokens/s, tokens per round and the speedup over transformers' greedy at the same batch;
exspec also drafts by prompt lookup (no draft model) and with the bundled draft of another tokenizer. Our rows run
with the library's default `speculation="auto"` (a user's call), or with `--speculation always`, k every round.
"""

from __future__ import annotations

import argparse

import torch

from .args import K_HELP, HelpFormatter, add_source_arguments, add_threads_argument, positive_int, set_threads
from .harness import Bench
from .loaders import load_other_draft, load_pair, load_prompts
from .report import header


def main(argv=None) -> None:
    """`hf-batchspec demo`: exits non-zero if any row differs from plain greedy decoding of its prompt."""
    parser = argparse.ArgumentParser(prog="hf-batchspec demo", description=__doc__, formatter_class=HelpFormatter)
    add_source_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per batch (exspec: max_batch_size)")
    parser.add_argument("--num-prompts", type=int, default=16, help="how many prompts to take, from the first")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="new tokens per prompt at most")
    parser.add_argument("--k", type=positive_int, default=3, metavar="K", help="num_assistant_tokens (k): " + K_HELP)
    parser.add_argument("--speculation", choices=("auto", "always"), default="auto",
                        help="our rows' speculation: auto (the library's default: up to k drafts per round, as many "
                             "as pay, none when drafting does not pay) or always (k drafts every round, as "
                             "transformers' assisted generation does)")
    parser.add_argument("--other-draft", metavar="PATH",
                        help="a draft with a tokenizer of its own (model and tokenizer in one directory; default: the "
                             "bundled one)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    add_threads_argument(parser)
    args = parser.parse_args(argv)

    set_threads(args.threads)  # before the models load
    print(header(args.device, "float32"), flush=True)

    target, draft, tokenizer = load_pair(args.target, args.draft, torch.float32, args.device)
    prompts = load_prompts(args.prompts, tokenizer, args.num_prompts)
    bench = Bench(target, draft, prompts, args.max_new_tokens, args.k, args.device)
    b = args.batch_size
    speculation = None if args.speculation == "auto" else args.speculation  # None: the library's default, unpassed
    results = [bench.timed("HF greedy, batch 1 (the reference)", 1, bench.hf_greedy(1))]
    methods = [(f"HF greedy, batch {b}", bench.hf_greedy(b), False),
               (f"hf-batchspec eqspec, batch {b}", bench.ours("eqspec", b, speculation), True),
               (f"hf-batchspec exspec, max_batch_size {b}", bench.ours("exspec", b, speculation), True),
               ("  the same, prompt lookup (no draft)", bench.ours("exspec", b, speculation, source=dict(
                   prompt_lookup_num_tokens=args.k)), True)]
    other = load_other_draft(args.other_draft, torch.float32, args.device)  # the text round trip: any target
    if other is not None:
        methods.append(("  the same, a draft with its own tokenizer", bench.ours("exspec", b, speculation, source=dict(
            assistant_model=other[0], tokenizer=tokenizer, assistant_tokenizer=other[1], num_assistant_tokens=args.k)),
            True))
    results += bench.compare(methods, b)
    reference, greedy = results[0], results[1]

    drafts = f"up to k={args.k} drafts per round as pay" if speculation is None else f"k={args.k} drafts every round"
    print(f"{len(prompts)} prompts, up to {args.max_new_tokens} new tokens, speculation={args.speculation} ({drafts}), "
          f"{reference.tokens} tokens through the first EOS. First prompt and its continuation:")
    print("  " + tokenizer.decode(prompts[0] + bench.reference[0]).replace("\n", "\n  "))
    print(f"\n{'method':<44}{'tokens/s':>9}{'vs HF greedy batch':>20}{'tokens/round':>14}{'exact rows':>12}")
    for r in results:
        per_round = f"{r.tokens_per_round:.2f}" if r.tokens_per_round else "-"
        print(f"{r.method:<44}{r.tokens_per_second:>9.0f}{r.tokens_per_second / greedy.tokens_per_second:>19.2f}x"
              f"{per_round:>14}{r.exact_rows:>8}/{r.rows}")
    if any(r.exact_rows != r.rows for r in results):
        raise SystemExit("a row differs from plain greedy decoding")
    print("every row equals plain greedy decoding of its prompt alone")


if __name__ == "__main__":
    main()
