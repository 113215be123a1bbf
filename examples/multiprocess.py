"""Batch speculative generation across processes with accelerate: each process takes a share of the prompts.

Run on one machine with two CPU processes (gloo) or two GPUs:

    accelerate launch --multi_gpu --num_processes 2 examples/multiprocess.py --output results.json  # no GPU: 2 CPU processes (gloo)
    accelerate launch --multi_gpu --num_processes 2 examples/multiprocess.py  # with GPUs: one per process

Across machines, start the same command on each with `--num_machines N --machine_rank R
--main_process_ip HOST --main_process_port PORT` (see docs/api.md). `PartialState().split_between_processes`
hands each process a contiguous slice of the prompt list; `gather_object` collects the results in process
order, so the output is in prompt order and equals a single-process run (`--single`).
"""

from __future__ import annotations

import argparse
import json

import torch
from accelerate import PartialState
from accelerate.utils import gather_object

from quickstart import VOCAB, build_pair  # examples/ is on sys.path when this file runs


def prompts(count: int, seed: int = 7) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (int(n),), generator=generator).tolist()
            for n in torch.randint(2, 30, (count,), generator=generator)]


def generate(target, draft, batch: list[list[int]], device, max_new_tokens: int) -> list[list[int]]:
    """Left-pad, run batch speculative generate, return each row's new tokens (through EOS)."""
    if not batch:
        return []
    width = max(len(p) for p in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(batch):
        ids[row, width - len(p):], mask[row, width - len(p):] = torch.tensor(p), 1
    out = target.generate(ids.to(device), attention_mask=mask.to(device), assistant_model=draft,
                          batch_spec="exspec", max_batch_size=4, num_assistant_tokens=3,
                          max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0, eos_token_id=2,
                          return_dict_in_generate=True)
    return [out.sequences[row, width:width + n].tolist() for row, n in enumerate(out.spec_stats.new_tokens)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--output", help="write the gathered results (prompt order) as JSON")
    parser.add_argument("--single", action="store_true", help="run every prompt in this process")
    args = parser.parse_args()

    state = PartialState(cpu=not torch.cuda.is_available())  # no GPU: gloo processes on the CPU
    target, draft = build_pair()  # seeded: every process builds the same pair
    target.to(state.device), draft.to(state.device)
    all_prompts = prompts(args.prompts)
    if args.single:
        results = generate(target, draft, all_prompts, state.device, args.max_new_tokens)
    else:
        with state.split_between_processes(all_prompts) as mine:
            results = gather_object(generate(target, draft, mine, state.device, args.max_new_tokens))
    if state.is_main_process:
        print(f"{state.num_processes} process(es), {len(results)} prompts, "
              f"{sum(len(r) for r in results)} new tokens")
        if args.output:
            with open(args.output, "w") as f:
                json.dump(results, f)
    # Leave the process group before the interpreter exits: a gloo group torn down at exit can abort the process
    # ("terminate called without an active exception", seen once in a full test run).
    state.wait_for_everyone()
    state.destroy_process_group()


if __name__ == "__main__":
    main()
