"""Cold-start warm-up of a compiled call: the first call's seconds minus the second's, in a fresh process.

Why: the bench's warm-up column reuses inductor's on-disk cache, so it hides what a first run on a new machine
pays. Run each case in its own process with an empty cache, so that nothing compiled before is reused:

    for case in "ours --k 3" "hf" "ours --k 5"; do
        TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python scripts/cold_warmup.py $case; done

ours: exspec, max_batch_size 8, compile_config (forced on CPU), 32 bundled prompts, 64 new tokens.
hf: transformers' static-cache compiled greedy on the same prompts, 8 at a time (as the bench runs it).
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import CompileConfig

from hf_batchspec.cli.loaders import left_pad, load_pair, load_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=("ours", "hf"))
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    target, draft, tokenizer = load_pair(None, None, torch.float32, "cpu")
    pad = tokenizer.pad_token_id or 0
    ids, mask, _ = left_pad(load_prompts(None, tokenizer, 32), pad, "cpu")
    config = CompileConfig()
    config._compile_all_devices = True
    common = dict(do_sample=False, pad_token_id=pad, max_new_tokens=64, compile_config=config)

    def call():
        if args.method == "ours":
            return target.generate(ids, attention_mask=mask, assistant_model=draft, batch_spec="exspec",
                                   max_batch_size=args.batch,
                                   speculation="always", num_assistant_tokens=args.k, **common)
        return [target.generate(ids[i:i + args.batch], attention_mask=mask[i:i + args.batch],
                                cache_implementation="static", **common) for i in range(0, len(ids), args.batch)]

    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    label = f"ours, k={args.k}" if args.method == "ours" else "transformers' compiled greedy"
    print(f"{label}, batch {args.batch}: first call {seconds[0]:.1f} s, second {seconds[1]:.2f} s, "
          f"warm-up {seconds[0] - seconds[1]:.1f} s")


if __name__ == "__main__":
    main()
