"""Build code-editing style prompts for prompt lookup: each prompt holds a piece of code, then asks for it again.

Why: prompt lookup pays where the output repeats the input (rewriting, editing, extraction). The bundled code
prompts do not; these do. Each prompt is one bundled prompt with the bundled target's own greedy continuation
(the "original"), a comment asking for the code with a change, and the function's first line again, so the
continuation is largely a copy of text already in the prompt. Deterministic (greedy, no randomness).

Usage: python scripts/make_edit_prompts.py [--out hf_batchspec/data/edit_prompts.jsonl] [--count 32]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hf_batchspec.cli.loaders import load_pair, load_prompts

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "hf_batchspec" / "data" / "edit_prompts.jsonl")
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--original-tokens", type=int, default=96, help="tokens of the original code per prompt")
    args = parser.parse_args()
    torch.set_num_threads(1)
    target, _, tokenizer = load_pair(None, None, torch.float32, "cpu")
    lines = []
    for index, prompt in enumerate(load_prompts(None, tokenizer, args.count)):
        out = target.generate(torch.tensor([prompt]), max_new_tokens=args.original_tokens, do_sample=False,
                              pad_token_id=tokenizer.pad_token_id)
        original = tokenizer.decode(out[0], skip_special_tokens=True)
        head = tokenizer.decode(prompt, skip_special_tokens=True)
        text = f"{original.rstrip()}\n\n\n# The same code, with the comments kept:\n{head}"
        lines.append(json.dumps({"question_id": index, "category": "edit", "turns": [text]}))
    args.out.write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} prompts -> {args.out}")


if __name__ == "__main__":
    main()
