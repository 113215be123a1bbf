"""Tiny real transformers models built from configs (nothing is downloaded)."""

from __future__ import annotations

import copy

import torch
import transformers

VOCAB = 128
_COMMON = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
_DECODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=256)

# name -> (config class name, config kwargs)
ARCHITECTURES = {
    "llama": ("LlamaConfig", dict(**_DECODER, num_key_value_heads=2)),
    "qwen3": ("Qwen3Config", dict(**_DECODER, num_key_value_heads=2, head_dim=8)),
    # sliding windows far shorter than the sequences, so the window matters
    "qwen3_sliding": ("Qwen3Config", dict(**{**_DECODER, "num_hidden_layers": 3}, num_key_value_heads=2, head_dim=8,
                                          use_sliding_window=True, sliding_window=5, max_window_layers=1)),
    "mistral": ("MistralConfig", dict(**_DECODER, num_key_value_heads=2, sliding_window=6)),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=2, n_head=4, n_positions=256)),
    "glm4": ("Glm4Config", dict(**_DECODER, num_key_value_heads=2, head_dim=8)),
}


def build(arch: str, seed: int = 0, attn_implementation: str = "sdpa") -> torch.nn.Module:
    config_name, kwargs = ARCHITECTURES[arch]
    config = getattr(transformers, config_name)(**_COMMON, **kwargs)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    # Random init gives near-uniform logits; sharper ones make greedy paths (and acceptance) meaningful.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    return model.eval()


def perturbed(model: torch.nn.Module, scale: float, seed: int = 1) -> torch.nn.Module:
    """A copy of `model` with noise on every weight: a draft that agrees with it partly."""
    draft = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale * p.std().clamp(min=1e-3))
    return draft.eval()
