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
from pathlib import Path

from transformers import AutoTokenizer, LlamaConfig

from hf_batchspec.cli.layer_skip import layer_skip_pair
from hf_batchspec.cli.loaders import BUNDLED_PAIR


def build(layers: int, width: int, draft_layers: int, damping: float, seed: int):
    """(target, draft, tokenizer): a Llama of `layers` x `width` with the bundled tokenizer, and its layer-skip
    draft of the first `draft_layers` layers (`hf_batchspec.cli.layer_skip`)."""
    tokenizer = AutoTokenizer.from_pretrained(BUNDLED_PAIR / "target")
    heads = max(1, width // 64)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 4),
                         max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=False)
    target, draft = layer_skip_pair(config, draft_layers, damping, seed)
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
