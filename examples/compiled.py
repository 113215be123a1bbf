"""Compiled batch speculative decoding beside transformers' fastest greedy (a static cache and torch.compile).

Both run the bundled pair on the same prompts with the same `CompileConfig`; each is called twice (the first
call compiles, the second is timed). Every row of ours is checked against plain greedy decoding of its prompt
alone (token ids, trimmed at EOS); the script exits non-zero on any difference.

Run:  python examples/compiled.py  [--batch-size 8] [--num-prompts 32] [--max-new-tokens 64] [--k 4] [--threads N]

On a CPU, transformers compiles only when asked (`CompileConfig._compile_all_devices`); on CUDA
`cache_implementation="static"` compiles by itself and captures CUDA graphs, for transformers and for us.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import resources
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, CompileConfig

import hf_batchspec

PAIR = Path(hf_batchspec.__file__).parent / "demo_pair"


def timed(call):
    call()  # compiles every shape the timed call meets
    start = time.perf_counter()
    out = call()
    return out, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--k", type=int, default=4, help="num_assistant_tokens (4: the best measured at batch 8)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    load = lambda path: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()  # noqa: E731
    tokenizer = AutoTokenizer.from_pretrained(PAIR / "target", padding_side="left")
    target, draft = hf_batchspec.enable(load(PAIR / "target")), load(PAIR / "draft")
    lines = resources.files("hf_batchspec").joinpath("data/code_prompts.jsonl").read_text().splitlines()
    texts = [json.loads(line)["turns"][0] for line in lines[: args.num_prompts]]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    config = CompileConfig()
    config._compile_all_devices = True  # transformers compiles on CUDA only, unless told
    common = dict(max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                  compile_config=config)

    ours, ours_s = timed(lambda: target.generate(**batch, assistant_model=draft, batch_spec="exspec",
                                                 max_batch_size=args.batch_size, num_assistant_tokens=args.k,
                                                 return_dict_in_generate=True, **common))
    chunks = [{key: value[i:i + args.batch_size] for key, value in batch.items()}
              for i in range(0, len(texts), args.batch_size)]
    _, hf_s = timed(lambda: [target.generate(**chunk, cache_implementation="static", **common) for chunk in chunks])

    width, eos = batch["input_ids"].shape[1], tokenizer.eos_token_id
    exact = 0
    for row in range(len(texts)):
        prompt = batch["input_ids"][row][batch["attention_mask"][row] == 1].unsqueeze(0)
        alone = target.generate(prompt, max_new_tokens=args.max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)[0, prompt.shape[1]:].tolist()
        mine = ours.sequences[row, width:].tolist()
        trim = lambda ids: ids[: ids.index(eos) + 1] if eos in ids else ids  # noqa: E731
        exact += trim(mine) == trim(alone)
    tokens = int(ours.spec_stats.new_tokens.sum())
    stats = ours.spec_stats
    print(f"{len(texts)} prompts, batch {args.batch_size}, k={args.k}, on {device}; {tokens} new tokens")
    print(f"  transformers' static cache + compile: {hf_s:.2f} s")
    print(f"  hf-batchspec exspec, compile_config:  {ours_s:.2f} s ({hf_s / ours_s:.2f}x), "
          f"{stats.tokens_per_round:.2f} tokens per round, {stats.fused_rounds} of {stats.rounds} rounds as "
          f"whole-step compiled programs")
    print(f"  rows equal to plain greedy decoding of their prompt alone: {exact}/{len(texts)}")
    return 0 if exact == len(texts) else 1


if __name__ == "__main__":
    sys.exit(main())
