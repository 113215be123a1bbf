"""Batch speculative decoding on small models built from configs: equality check and a timing table.

Run:  python examples/quickstart.py  [--batch-size 8] [--max-new-tokens 48] [--k 4]

The pair is a 4-layer Llama target and a draft that is a noisy copy of it (so that it agrees often but
not always). Nothing is downloaded. Until the bundled trained pair ships, this is the project's demo.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import hf_batchspec


def build_pair(seed: int = 0):
    config = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    target = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        target.lm_head.weight.mul_(8.0)  # sharper than random init, so greedy paths are not near-ties
    draft = copy.deepcopy(target)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn_like(p) * 0.03 * p.std())
    return hf_batchspec.enable(target), draft


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--k", type=int, default=4, help="num_assistant_tokens")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    target, draft = build_pair()
    generator = torch.Generator().manual_seed(1)
    lengths = torch.randint(4, 40, (args.batch_size,), generator=generator).tolist()
    prompts = [torch.randint(3, 512, (n,), generator=generator) for n in lengths]
    width = max(lengths)
    ids = torch.zeros((args.batch_size, width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):], mask[row, width - len(prompt):] = prompt, 1
    common = dict(max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=0, eos_token_id=2)

    target.generate(ids[:2], attention_mask=mask[:2], assistant_model=draft, batch_spec="eqspec", **common)  # warm-up
    out, t_spec = timed(lambda: target.generate(ids, attention_mask=mask, assistant_model=draft, batch_spec="eqspec",
                                                num_assistant_tokens=args.k, return_dict_in_generate=True, **common))
    batched, t_greedy = timed(lambda: target.generate(ids, attention_mask=mask, **common))
    singles = []
    _, t_single = timed(lambda: singles.extend(
        target.generate(p[None], attention_mask=torch.ones(1, len(p), dtype=torch.long), **common)[0, len(p):]
        for p in prompts))

    stats = out.spec_stats
    exact = 0
    for row, reference in enumerate(singles):
        new = int(stats.new_tokens[row])
        exact += out.sequences[row, width:width + new].tolist() == reference[:new].tolist() and new == len(
            [t for t in reference.tolist()][: new])
    tokens = int(stats.new_tokens.sum())
    print(f"batch {args.batch_size}, k={args.k}, {tokens} new tokens, rows equal to plain greedy: "
          f"{exact}/{args.batch_size}")
    print(f"{'method':<34}{'tokens/s':>10}{'speedup':>10}")
    for name, seconds in [("HF greedy, batch 1 (loop)", t_single), (f"HF greedy, batch {args.batch_size}", t_greedy),
                          (f"hf-batchspec eqspec, batch {args.batch_size}", t_spec)]:
        print(f"{name:<34}{tokens / seconds:>10.0f}{t_greedy / seconds:>9.2f}x")
    print(f"mean tokens per round {stats.tokens_per_round:.2f}, acceptance rate {stats.acceptance_rate:.2f}, "
          f"target calls {stats.target_forward_calls}, draft calls {stats.draft_forward_calls}")
    if exact != args.batch_size:
        raise SystemExit("mismatch against plain greedy")


if __name__ == "__main__":
    main()
