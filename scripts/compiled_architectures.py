"""The whole-step compiled programs on every test architecture: exact against plain greedy, every round fused.

Why: the test suite compiles the programs on three architectures (Llama, Qwen3 with sliding layers, GPT-2);
compiling all 24 takes ~5 minutes on 2 CPU cores, too long for the default suite, so this script is the check.
Usage (from the repository root): `PYTHONPATH=. python scripts/compiled_architectures.py [ARCH ...]`.
"""

from __future__ import annotations

import sys
import time

import torch
from transformers import CompileConfig

import hf_batchspec
from tests.reference import left_pad, plain_greedy
from tests.tiny_models import ARCHITECTURES, build, perturbed

PROMPTS = [[5, 6, 7], [9] * 6, [3, 4], [8], [11, 12, 13, 14], [15]]
MAX_NEW = 12


def check(arch: str) -> tuple[int, int, int]:  # (exact rows, fused rounds, rounds)
    target = hf_batchspec.enable(build(arch, seed=0))
    draft = perturbed(target, 0.05)
    ids, mask = left_pad(PROMPTS, 0)
    out = target.generate(ids, attention_mask=mask, assistant_model=draft, max_new_tokens=MAX_NEW, do_sample=False,
                          eos_token_id=None, pad_token_id=0, return_dict_in_generate=True,
                          speculation="always", num_assistant_tokens=3,
                          max_batch_size=4, compile_config=CompileConfig())
    exact = sum(out.sequences[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, MAX_NEW, None)
                for row, prompt in enumerate(PROMPTS))
    return exact, out.spec_stats.fused_rounds, out.spec_stats.rounds


def main() -> int:
    torch.set_num_threads(1)
    failed = 0
    for arch in sys.argv[1:] or list(ARCHITECTURES):
        start = time.perf_counter()
        try:
            exact, fused, rounds = check(arch)
            line = f"exact {exact}/{len(PROMPTS)}, fused rounds {fused}/{rounds}"
            failed += exact < len(PROMPTS) or fused < rounds or rounds == 0
        except Exception as error:  # report every architecture, then fail
            line, failed = f"ERROR {type(error).__name__}: {error}"[:300], failed + 1
        print(f"{arch:<14} {line} ({time.perf_counter() - start:.0f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
