"""Tiny models with multi-token-prediction layers, saved as checkpoints the way transformers loads MTP layers
(`MtpModel.from_pretrained` reads them from the target's files): DeepSeek-V3-style and GLM-4-MoE-style configs,
random weights, each MTP block initialised from the target's last decoder layer (plus a little noise) and the head
narrowed to a few tokens, so that MTP drafts are often accepted."""

from __future__ import annotations

import re

import torch
import transformers
from safetensors.torch import load_file, save_file

VOCAB = 128
HEAD_TOKENS = (3, 7, 11, 20)  # the only ids the narrowed head scores: random weights then agree often


def config(arch: str, mtp_layers: int, vocab: int = VOCAB):
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                  num_hidden_layers=2, num_attention_heads=4, n_routed_experts=4, n_shared_experts=1,
                  num_experts_per_tok=2, n_group=1, topk_group=1, first_k_dense_replace=1,
                  max_position_embeddings=256, num_mtp_layers=mtp_layers, bos_token_id=0, eos_token_id=1,
                  pad_token_id=0)
    if arch == "deepseek_v3":
        return transformers.DeepseekV3Config(num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=32,
                                             qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, **common)
    return transformers.Glm4MoeConfig(num_key_value_heads=2, head_dim=16, **common)


def build(arch: str, mtp_layers: int, directory, seed: int = 0, vocab: int = VOCAB,
          head_scale: float | None = None) -> torch.nn.Module:
    """A target with `mtp_layers` MTP layers in its checkpoint at `directory`, loaded from there. Its head scores
    `HEAD_TOKENS` mostly (the other rows shrunk 100x rarely win the argmax), unless `head_scale` is given: then every
    row of the head is scaled by it (a spread of probabilities for sampling tests)."""
    cls = transformers.DeepseekV3ForCausalLM if arch == "deepseek_v3" else transformers.Glm4MoeForCausalLM
    torch.manual_seed(seed)
    model = cls(config(arch, mtp_layers, vocab)).eval()
    with torch.no_grad():
        head = model.lm_head.weight
        if head_scale is not None:
            head.mul_(head_scale)
        else:  # the other rows shrunk, not zeroed: zero logits would tie (and top_k=1 sampling keeps every tie)
            keep = head[list(HEAD_TOKENS)].clone()
            head.mul_(0.01)
            head[list(HEAD_TOKENS)] = keep * 4
    model.save_pretrained(directory)
    weights = load_file(f"{directory}/model.safetensors")
    layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    last = f"model.layers.{layers - 1}."
    generator = torch.Generator().manual_seed(seed + 1)
    for j in range(mtp_layers):
        prefix = f"model.layers.{layers + j}."
        for key, value in list(weights.items()):
            if key.startswith(last):
                noise = 0.01 * torch.randn(value.shape, generator=generator).to(value.dtype)
                weights[prefix + key[len(last):]] = value.clone() + noise
        weights[prefix + "enorm.weight"] = torch.ones(hidden)
        weights[prefix + "hnorm.weight"] = torch.ones(hidden)
        eh = torch.zeros(hidden, 2 * hidden)
        eh[:, hidden:] = torch.eye(hidden)  # the projection passes the target's hidden state through
        weights[prefix + "eh_proj.weight"] = eh
        weights[prefix + "shared_head.norm.weight"] = torch.ones(hidden)
    save_file(weights, f"{directory}/model.safetensors", metadata={"format": "pt"})
    loaded = cls.from_pretrained(directory, dtype=torch.float32).eval()
    # transformers finds MTP keys by the layer numbers of the released checkpoints (61 for DeepSeek-V3): name ours
    loaded._keys_to_ignore_on_load_unexpected = [re.escape(f"model.layers.{layers + j}.") + ".*"
                                                 for j in range(mtp_layers)]
    return loaded
