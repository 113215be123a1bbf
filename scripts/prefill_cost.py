"""What an admission's prefill costs by the number of prompts in it: the reason for EXSPEC's staging rows.

Why: slots free one or two at a time, and a prefill of one short prompt is mostly per-call work (an eager
forward's ops), so a prefill of a few prompts costs little more than one. Runs the bundled target and draft
through `ModelRunner.forward(prefill=True)` into some rows of an 8-row cache, as `_Decoder._prefill` does, and
prints the median of 10 calls per prompt count.

Usage: python scripts/prefill_cost.py [--counts 1,2,4,8] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from hf_batchspec.cli.loaders import load_pair, load_prompts
from hf_batchspec.masks import packed_positions
from hf_batchspec.runner import ModelRunner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,2,4,8")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    target, draft, tokenizer = load_pair(None, None, torch.float32, "cpu")
    counts = [int(n) for n in args.counts.split(",")]
    prompts = load_prompts(None, tokenizer, max(counts))
    for n in counts:
        lengths = np.array([len(p) for p in prompts[:n]])
        width = int(lengths.max())
        tokens = torch.zeros((n, width), dtype=torch.long)  # right-packed, as the decode loop packs them
        for row, prompt in enumerate(prompts[:n]):
            tokens[row, : len(prompt)] = torch.tensor(prompt)
        for name, model in (("target", target), ("draft", draft)):
            runner = ModelRunner(model, 8, 128)
            call = dict(keep=torch.as_tensor(np.unique(lengths - 1)), rows=torch.arange(n), prefill=True)
            args_ = (tokens, packed_positions(n, width, "cpu"), torch.full((n,), 127), width)
            for _ in range(3):  # first-call costs
                runner.forward(*args_, **call)
            seconds = []
            for _ in range(10):
                start = time.perf_counter()
                runner.forward(*args_, **call)
                seconds.append(time.perf_counter() - start)
            print(f"{name}: {n} prompt(s), {int(lengths.sum())} tokens ({n * width} padded): "
                  f"{np.median(seconds) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
