"""Build a target/draft pair of any size in seconds, for benchmarks where model time must matter (a GPU).

The target is a Llama of `--layers` x `--width` with the bundled pair's tokenizer (so the bench's prompts and
stops work); its layers after the first `--draft-layers` are damped, so they nudge the early layers'
prediction instead of overturning it. The draft is exactly the target's first `--draft-layers` layers with its
embeddings, final norm and head (a layer-skip draft): it agrees with the target often but not always, as a
distilled draft does, and costs `draft_layers / layers` of it. Nothing is trained or downloaded.

Usage: python scripts/build_layer_skip_pair.py --out pair --layers 16 --width 1024   (~200M parameters)
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

BUNDLED = Path(__file__).resolve().parents[1] / "hf_batchspec" / "demo_pair" / "target"


def build(layers: int, width: int, draft_layers: int, damping: float, seed: int):
    tokenizer = AutoTokenizer.from_pretrained(BUNDLED)
    heads = max(1, width // 64)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 4),
                         max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    target = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        target.lm_head.weight.mul_(8.0)  # sharper than random init, so greedy paths are not near-ties
        for layer in target.model.layers[draft_layers:]:
            layer.self_attn.o_proj.weight.mul_(damping)
            layer.mlp.down_proj.weight.mul_(damping)
    draft_config = copy.deepcopy(config)
    draft_config.num_hidden_layers = draft_layers
    draft = LlamaForCausalLM(draft_config).eval()
    draft.load_state_dict(target.state_dict(), strict=False)  # embeddings, the first layers, norm, head
    return target, draft, tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--draft-layers", type=int, default=2)
    parser.add_argument("--damping", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    target, draft, tokenizer = build(args.layers, args.width, args.draft_layers, args.damping, args.seed)
    for name, model in (("target", target), ("draft", draft)):
        model.save_pretrained(args.out / name)
        tokenizer.save_pretrained(args.out / name)
        print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters -> {args.out / name}")


if __name__ == "__main__":
    main()
