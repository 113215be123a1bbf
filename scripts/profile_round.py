"""What one verify round of exspec costs, from the torch profiler: wall time, host-side launches (kernels and
CUDA graph replays), device-to-host syncs, the GPU's busy time, compiled calls and the host time dynamo spends
checking their guards (`TorchDynamo Cache Lookup`), per round, beside transformers' greedy step.

Why: on a GPU a compiled forward is one CUDA graph launch, so what is left per round is the loop's own work
(masks, gathers, scatters, acceptance, the one host sync) and the launch gaps it leaves on the GPU. Prefill and
first-call costs are taken out by difference: each figure is (a call of --long tokens) minus (a call of --short
tokens), over the difference in rounds (or in steps, for transformers' greedy). No EOS stops a row, so every row
runs its whole budget.

Usage: python scripts/profile_round.py [--target PATH --draft PATH] [--batch 8] [--compile] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

from hf_batchspec.cli.args import DTYPES
from hf_batchspec.cli.loaders import left_pad, load_pair, load_prompts

LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC")
GRAPHS = ("cudaGraphLaunch",)
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def profiled(call, cuda: bool) -> dict:
    """Run `call()` under the profiler; the counts of what it launched, its wall seconds and its GPU busy time."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        steps = call()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    names = Counter(event.name for event in prof.events())
    gpu_us = sum(event.device_time for event in prof.events() if event.device_type == torch.autograd.DeviceType.CUDA
                 ) if cuda else 0.0
    top_level_ops = sum(1 for event in prof.events() if event.name.startswith("aten::") and event.cpu_parent is None)
    compiled = sum(1 for event in prof.events() if event.name.startswith("Torch-Compiled Region")
                   and event.cpu_parent is None)
    guard_us = sum(event.cpu_time_total for event in prof.events() if event.name == "TorchDynamo Cache Lookup")
    return {"steps": steps, "wall_ms": wall * 1e3, "gpu_ms": gpu_us / 1e3, "compiled calls": compiled,
            "guard_ms": guard_us / 1e3,
            "kernel launches": sum(names[n] for n in LAUNCHES), "graph launches": sum(names[n] for n in GRAPHS),
            "host syncs": sum(names[n] for n in SYNCS), "copies": names["cudaMemcpyAsync"],
            "top-level aten ops": top_level_ops}


def per_step(long: dict, short: dict) -> dict:
    steps = long["steps"] - short["steps"]
    return {key: (long[key] - short[key]) / steps for key in long if key != "steps"} | {"steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target")
    parser.add_argument("--draft")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--long", type=int, default=64)
    parser.add_argument("--short", type=int, default=16)
    parser.add_argument("--compile", action="store_true", help="compile_config=CompileConfig() (forced on CPU)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    from transformers import CompileConfig

    cuda = args.device.startswith("cuda")
    target, draft, tokenizer = load_pair(args.target, args.draft, DTYPES[args.dtype], args.device)
    prompts = load_prompts(None, tokenizer, args.batch)
    ids, mask, width = left_pad(prompts, tokenizer.pad_token_id or 0, args.device)
    common = dict(attention_mask=mask, do_sample=False, eos_token_id=None, pad_token_id=tokenizer.pad_token_id or 0)
    compiled = {}
    if args.compile:
        config = CompileConfig()
        config._compile_all_devices = not cuda
        compiled = dict(compile_config=config)

    def ours(max_new):
        def call():
            out = target.generate(ids, assistant_model=draft, batch_spec="exspec",
                                  speculation="always", num_assistant_tokens=args.k,
                                  max_new_tokens=max_new, return_dict_in_generate=True, **compiled, **common)
            return out.spec_stats.rounds
        return call

    def greedy(max_new):
        static = dict(cache_implementation="static", max_cache_len=width + args.long, **compiled) if compiled else {}
        def call():  # noqa: E306
            target.generate(ids, max_new_tokens=max_new, **static, **common)
            return max_new - 1  # decode steps after the prefill
        return call

    label = "compiled" if compiled else "eager"
    print(f"{args.batch} rows, k={args.k}, {args.dtype} on {args.device}, {label}; per round (ours) or step (HF), "
          f"from a {args.long}-token call minus a {args.short}-token one")
    for name, method in ((f"exspec {label}", ours), (f"HF greedy {label}" + (" (static cache)" if compiled else ""),
                                                     greedy)):
        for max_new in (args.long, args.short):  # warm-up: compile every shape, first-call costs
            method(max_new)()
        row = per_step(profiled(method(args.long), cuda), profiled(method(args.short), cuda))
        print(f"  {name:<36} " + ", ".join(f"{key} {value:.2f}" if isinstance(value, float) else f"{key} {value}"
                                          for key, value in row.items() if cuda or key in (
                                              "steps", "wall_ms", "top-level aten ops", "compiled calls",
                                              "guard_ms")))


if __name__ == "__main__":
    main()
