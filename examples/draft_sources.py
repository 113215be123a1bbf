"""Every draft source on the bundled pair, batched: a draft model, prompt lookup, early exit, a draft with another
tokenizer, and n samples per prompt. Each greedy row is checked against plain greedy decoding of its prompt
alone (token ids, trimmed at EOS); the script exits non-zero on any difference.

Run:  python examples/draft_sources.py  [--batch-size 8] [--max-new-tokens 48]

Nothing is downloaded: the target, its 1-layer draft and a draft with a tokenizer of its own ship with the package
(made by scripts/train_demo_pair). The same keyword arguments work on any transformers causal LM.
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_batchspec

PAIR = Path(hf_batchspec.__file__).parent / "demo_pair"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    load = lambda path: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()  # noqa: E731
    tokenizer = AutoTokenizer.from_pretrained(PAIR / "target", padding_side="left")
    target = hf_batchspec.enable(load(PAIR / "target"))
    draft, other = load(PAIR / "draft"), load(PAIR / "draft_other_tokenizer")
    other_tokenizer = AutoTokenizer.from_pretrained(PAIR / "draft_other_tokenizer")

    lines = resources.files("hf_batchspec").joinpath("data/code_prompts.jsonl").read_text().splitlines()
    texts = [json.loads(line)["turns"][0] for line in lines[: args.batch_size]]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    common = dict(**batch, max_new_tokens=args.max_new_tokens, do_sample=False, return_dict_in_generate=True)
    alone = [target.generate(**tokenizer(text, return_tensors="pt", add_special_tokens=False), do_sample=False,
                             max_new_tokens=args.max_new_tokens)[0] for text in texts]

    sources = {
        "a draft model": dict(assistant_model=draft, num_assistant_tokens=3),
        "prompt lookup": dict(prompt_lookup_num_tokens=3),
        "early exit (first 2 layers)": dict(assistant_early_exit=2, num_assistant_tokens=3),
        "a draft with its own tokenizer": dict(assistant_model=other, tokenizer=tokenizer,
                                               assistant_tokenizer=other_tokenizer, num_assistant_tokens=3),
    }
    width, eos = batch["input_ids"].shape[1], tokenizer.eos_token_id
    trim = lambda ids: ids[: ids.index(eos) + 1] if eos in ids else ids  # noqa: E731
    failed = False
    print(f"{len(texts)} prompts, up to {args.max_new_tokens} new tokens, batch_spec='exspec'")
    for name, source in sources.items():
        out = target.generate(**common, **source)
        exact = sum(trim(out.sequences[row, width:].tolist()) == trim(alone[row][len(ids):].tolist())
                    for row, ids in enumerate(tokenizer(texts, add_special_tokens=False)["input_ids"]))
        stats = out.spec_stats
        print(f"  {name:<32} tokens/round {stats.tokens_per_round:.2f}, acceptance {stats.acceptance_rate:.2f}, "
              f"exact rows {exact}/{len(texts)}")
        failed |= exact != len(texts)

    # n samples per prompt (RL rollouts): each prompt prefilled once, its cache copied into its n slots
    out = target.generate(**{**common, "do_sample": True}, num_return_sequences=4, assistant_model=draft,
                          generator=torch.Generator().manual_seed(0))
    print(f"  4 samples per prompt: {tuple(out.sequences.shape)} rows, {out.spec_stats.target_prefill_calls} "
          f"target prefill call(s); first prompt's samples:")
    for row in range(2):
        print("    " + repr(tokenizer.decode(out.sequences[row, width:], skip_special_tokens=True)[:70]))
    if failed:
        raise SystemExit("a greedy row differs from plain greedy decoding")


if __name__ == "__main__":
    main()
