"""A compiled greedy round as one program (`decoding.greedy_round`) against the same round as two (the draft's
steps, then the verify), on the same calls, interleaved.

Why: the two forms run the same kernels; what one program saves is a compiled call per round (its guard
evaluation and wrapper on the host, a CUDA graph replay on a GPU). That is a few percent of a round on this CPU,
below the drift between two bench runs, so the two are timed in turns inside one process (the order alternating
every pass) and compared call by call.

Usage: python scripts/round_program_ab.py [--k 4] [--batch 8] [--num-prompts 32] [--passes 12] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from transformers import CompileConfig

from hf_batchspec import decoding
from hf_batchspec.bench import _left_pad, load_pair, load_prompts
from hf_batchspec.drafters import greedy_steps
from hf_batchspec.runner import rows_dynamic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--passes", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = CompileConfig()
    config._compile_all_devices = not args.device.startswith("cuda")
    # The two-program form: the draft's steps and the verify compiled apart, called one after the other where
    # the decoder calls its one program.
    steps = torch.compile(greedy_steps, **config.to_dict())
    verify = torch.compile(decoding.verify_greedy, **config.to_dict())

    def two_programs(draft, target, k, first_input, positions, lengths, limits, pick, pending, generated, live,
                     budget, stop_ids, max_new_tokens):
        drafts = steps(draft, first_input, positions, lengths, limits, pick, max(k, 1))[:, :k]
        rows_dynamic(drafts)  # as the decoder marks the program's inputs: one graph for every row bucket
        return verify(target, pending, lengths, limits, generated, live, drafts, budget, stop_ids, max_new_tokens)

    one_program = {"on": True}
    build = decoding._Decoder.__init__

    def init(self, *a, **kw):
        build(self, *a, **kw)
        if not one_program["on"]:
            self._greedy_round = two_programs

    decoding._Decoder.__init__ = init
    target, draft, tokenizer = load_pair(None, None, torch.float32, args.device)
    pad = tokenizer.pad_token_id or 0
    ids, mask, _ = _left_pad(load_prompts(None, tokenizer, args.num_prompts), pad, args.device)

    def call(on: bool) -> float:
        one_program["on"] = on
        start = time.perf_counter()
        out = target.generate(ids, attention_mask=mask, assistant_model=draft, batch_spec="exspec",
                              max_batch_size=args.batch,
                              speculation="always", num_assistant_tokens=args.k, do_sample=False,
                              pad_token_id=pad, max_new_tokens=args.max_new_tokens, compile_config=config,
                              return_dict_in_generate=True)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        assert out.spec_stats.fused_rounds == out.spec_stats.rounds
        return seconds

    for on in (True, False, True, False):  # warm-up: every shape of both forms compiled
        call(on)
    seconds = {True: [], False: []}
    for i in range(args.passes):
        for on in ((True, False) if i % 2 else (False, True)):
            seconds[on].append(call(on))
    one, two = np.array(seconds[True]) * 1e3, np.array(seconds[False]) * 1e3
    print(f"batch {args.batch}, k={args.k}, {args.num_prompts} prompts, {args.passes} passes on {args.device}")
    for name, ms in (("one program per round ", one), ("two programs per round", two)):
        print(f"  {name}: min {ms.min():.0f} ms, median {np.median(ms):.0f} ms")
    print(f"  two / one, median of the paired calls: {np.median(two / one):.3f}")


if __name__ == "__main__":
    main()
