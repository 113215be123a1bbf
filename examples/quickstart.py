"""Batch speculative decoding on a small model pair built from configs: equality check and a timing table.

Run:  python examples/quickstart.py  [--batch-size 8] [--max-new-tokens 64] [--k 3]

Nothing is downloaded. The pair is synthetic (the trained demo pair comes with the benchmark): a 6-layer
Llama target whose layers after the first contribute little, and a 1-layer draft that is exactly the
target's first layer with its embeddings and head (a layer-skip draft). So the draft agrees with the target
often but not always, and costs about a sixth of it. The script checks every row against plain greedy
decoding of that prompt alone, token ids trimmed at EOS, and exits non-zero on any difference.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import LlamaConfig

import hf_batchspec
from hf_batchspec.cli.layer_skip import layer_skip_pair
from hf_batchspec.profiling import ForwardTimer

VOCAB = 512


def build_pair(layers: int = 6, width: int = 256, damping: float = 0.03, seed: int = 0):
    """The target (with the mixin) and its 1-layer layer-skip draft (`hf_batchspec.cli.layer_skip`)."""
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    target, draft = layer_skip_pair(config, draft_layers=1, damping=damping, seed=seed)
    return hf_batchspec.enable(target), draft


def make_batch(batch_size: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 48, (batch_size,), generator=generator).tolist()
    prompts = [torch.randint(3, VOCAB, (n,), generator=generator) for n in lengths]
    width = max(lengths)
    ids = torch.zeros((batch_size, width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):], mask[row, width - len(prompt):] = prompt, 1
    return prompts, ids, mask


def timed(fn):
    fn()  # warm-up, untimed
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--k", type=int, default=3, help="num_assistant_tokens")
    args = parser.parse_args()

    target, draft = build_pair()
    prompts, ids, mask = make_batch(args.batch_size)
    width = ids.shape[1]
    common = dict(max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=0, eos_token_id=2)
    spec = dict(attention_mask=mask, assistant_model=draft, num_assistant_tokens=args.k, return_dict_in_generate=True)

    def alone():
        return [target.generate(p[None], attention_mask=torch.ones(1, len(p), dtype=torch.long), **common)[0, len(p):]
                for p in prompts]

    singles, t_single = timed(alone)
    _, t_greedy = timed(lambda: target.generate(ids, attention_mask=mask, **common))
    eq, t_eq = timed(lambda: target.generate(ids, batch_spec="eqspec", **spec, **common))
    ex, t_ex = timed(lambda: target.generate(ids, batch_spec="exspec", max_batch_size=args.batch_size, **spec,
                                             **common))

    for name, out in (("eqspec", eq), ("exspec", ex)):
        for row, reference in enumerate(singles):
            new = out.sequences[row, width:width + len(reference)]
            if not torch.equal(new, reference) or int(out.spec_stats.new_tokens[row]) != len(reference):
                raise SystemExit(f"{name}: row {row} differs from plain greedy decoding")
    with ForwardTimer(target, draft) as timer:  # time inside model forwards vs the rest, measured from outside
        target.generate(ids, batch_spec="exspec", max_batch_size=args.batch_size, **spec, **common)
    tokens = sum(len(r) for r in singles)
    stats = eq.spec_stats
    print(f"batch {args.batch_size}, k={args.k}, {tokens} new tokens: every row equals plain greedy decoding "
          f"of its prompt alone (token ids)")
    print(f"{'method':<36}{'tokens/s':>10}{'vs HF greedy batch':>20}")
    rows = [("HF greedy, batch 1 (loop)", t_single), (f"HF greedy, batch {args.batch_size}", t_greedy),
            (f"hf-batchspec eqspec, batch {args.batch_size}", t_eq),
            (f"hf-batchspec exspec, batch {args.batch_size}", t_ex)]
    for name, seconds in rows:
        print(f"{name:<36}{tokens / seconds:>10.0f}{t_greedy / seconds:>19.2f}x")
    print(f"eqspec: {stats.tokens_per_round:.2f} tokens per row and round, acceptance {stats.acceptance_rate:.2f}, "
          f"{stats.target_forward_calls} target and {stats.draft_forward_calls} draft forward calls")
    print(f"exspec: {timer.bookkeeping_share:.0%} of wall time outside model forwards ({timer.calls} forward calls)")


if __name__ == "__main__":
    main()
