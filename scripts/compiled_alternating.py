"""Our compiled defaults against transformers' compiled greedy (with --eager: eager against eager), calls alternating
in one process.

Why: on a shared CPU the machine's speed drifts by tens of percent over minutes, so two methods timed minutes apart
(as a bench section of several methods is) can differ by more than what separates them. Here every method runs once
per pass, passes repeat, and each method's fastest call counts; transformers' greedy runs on its static cache with
`compile_config` (its compiled decoding), ours with the library's defaults (`speculation="auto"`, the default k)
and the same `compile_config`, one call over all prompts with `max_batch_size` = the batch. Each method warms up
first on the timed shapes (its compile), and the script prints, per timed call, the graphs it compiled (none
expected) and ours' rounds and draft widths.

Usage: python scripts/compiled_alternating.py --target pair/target --draft pair/draft [--batch 64] [--prompts 64]
       [--max-new-tokens 64] [--methods hf,default,lookup,early-exit] [--repeats 3] [--threads 2] [--eager]
       [--prompt-file hf_batchspec/data/edit_prompts.jsonl]
Methods: hf (transformers' greedy), default / lookup / early-exit (ours with the library's defaults: the draft model,
prompt_lookup_num_tokens=10, assistant_early_exit=1), and k3 / lookup-k3 / early-exit-k3 (the same sources with
speculation="always" and 3 drafts per round).
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import CompileConfig

from hf_batchspec.cli.loaders import left_pad, load_pair, load_prompts


def unique_graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=None, help="local path (default: the bundled demo target)")
    parser.add_argument("--draft", default=None, help="local path (default: the bundled demo draft)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=64, help="how many prompts, from the first")
    parser.add_argument("--prompt-file", default=None, help="Spec-Bench style JSONL (default: bundled code prompts)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--methods", default="hf,default,lookup,early-exit")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eager", action="store_true",
                        help="no compile_config: transformers' greedy on its dynamic cache, ours eager")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    target, draft, tokenizer = load_pair(args.target, args.draft, torch.float32, "cpu")
    prompts = load_prompts(args.prompt_file, tokenizer, args.prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = CompileConfig()
    config._compile_all_devices = True  # transformers compiles on CUDA only unless told
    common = dict(max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=pad)
    static = {} if args.eager else dict(cache_implementation="static")
    if not args.eager:
        common["compile_config"] = config

    def hf():
        for start in range(0, len(prompts), args.batch):
            ids, mask, _ = left_pad(prompts[start:start + args.batch], pad, "cpu")
            target.generate(ids, attention_mask=mask, **static, **common)

    def ours(**source):
        def run():
            ids, mask, _ = left_pad(prompts, pad, "cpu")
            out = target.generate(ids, attention_mask=mask, batch_spec="exspec", max_batch_size=args.batch,
                                  return_dict_in_generate=True, **common, **source)
            return out.spec_stats
        return run

    methods = {"hf": hf, "default": ours(assistant_model=draft), "lookup": ours(prompt_lookup_num_tokens=10),
               "early-exit": ours(assistant_early_exit=1),
               "k3": ours(assistant_model=draft, num_assistant_tokens=3, speculation="always"),
               "lookup-k3": ours(prompt_lookup_num_tokens=3, speculation="always"),
               "early-exit-k3": ours(assistant_early_exit=1, num_assistant_tokens=3, speculation="always")}
    names = args.methods.split(",")
    unknown = [name for name in names if name not in methods]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {sorted(methods)}")
    for name in names:
        start = time.perf_counter()
        methods[name]()
        print(f"warm-up {name}: {time.perf_counter() - start:.1f} s", flush=True)
    best = {}
    for rep in range(args.repeats):
        for name in names:
            graphs, start = unique_graphs(), time.perf_counter()
            stats = methods[name]()
            seconds = time.perf_counter() - start
            best[name] = min(best.get(name, float("inf")), seconds)
            extra = "" if stats is None else (f", {stats.rounds} rounds, widths {sorted(set(stats.draft_widths))}, "
                                              f"{stats.accepted_tokens.sum()} drafts accepted")
            print(f"pass {rep} {name}: {seconds:.2f} s, {unique_graphs() - graphs} graphs compiled{extra}", flush=True)
    if "hf" in best:
        print(f"against transformers' {'eager' if args.eager else 'compiled'} greedy (best of each):",
              ", ".join(f"{name} {best['hf'] / seconds:.3f}x" for name, seconds in best.items() if name != "hf"))


if __name__ == "__main__":
    main()
