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
    # The rest of the architectures README.md names as checked token-exact. Windows stay far shorter than
    # the sequences (prompts up to 40 + 40 new tokens), so that they matter.
    "qwen2": ("Qwen2Config", dict(**_DECODER, num_key_value_heads=2, use_sliding_window=True, sliding_window=5,
                                  max_window_layers=1)),  # layer 0 full, layer 1 sliding
    "mixtral": ("MixtralConfig", dict(**_DECODER, num_key_value_heads=2, num_local_experts=4,
                                      num_experts_per_tok=2)),
    "gptj": ("GPTJConfig", dict(n_embd=32, n_layer=2, n_head=4, n_inner=64, rotary_dim=4, n_positions=256)),
    "gpt_neox": ("GPTNeoXConfig", dict(**_DECODER, rotary_pct=0.5)),
    "gemma": ("GemmaConfig", dict(**_DECODER, num_key_value_heads=1, head_dim=8)),
    # sliding + full layers, attention and final-logit softcapping (small caps, so that they bite)
    "gemma2": ("Gemma2Config", dict(**_DECODER, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8,
                                    sliding_window=5, layer_types=["sliding_attention", "full_attention"],
                                    attn_logit_softcapping=1.0, final_logit_softcapping=3.0)),
    "gemma3": ("Gemma3TextConfig", dict(**_DECODER, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8,
                                        sliding_window=5, layer_types=["sliding_attention", "full_attention"])),
    "phi": ("PhiConfig", dict(**_DECODER)),
    "phi3": ("Phi3Config", dict(**_DECODER, num_key_value_heads=2, sliding_window=7,
                                original_max_position_embeddings=256)),
    "starcoder2": ("Starcoder2Config", dict(**_DECODER, num_key_value_heads=2, sliding_window=6)),
    "olmo": ("OlmoConfig", dict(**_DECODER, clip_qkv=8.0)),
    "olmo2": ("Olmo2Config", dict(**_DECODER, num_key_value_heads=2)),
    "opt": ("OPTConfig", dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                              max_position_embeddings=256, word_embed_proj_dim=16, dropout=0.0)),
    "falcon": ("FalconConfig", dict(hidden_size=32, ffn_hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    num_kv_heads=2, new_decoder_architecture=True, alibi=False,
                                    max_position_embeddings=256)),
    "cohere": ("CohereConfig", dict(**_DECODER, num_key_value_heads=2, use_qk_norm=True, logit_scale=0.5)),
    "granite": ("GraniteConfig", dict(**_DECODER, num_key_value_heads=2, embedding_multiplier=2.0,
                                      residual_multiplier=0.5, attention_multiplier=0.25, logits_scaling=2.0)),
    "smollm3": ("SmolLM3Config", dict(**_DECODER, num_key_value_heads=2, no_rope_layer_interval=2)),  # layer 1 NoPE
    "qwen3_moe": ("Qwen3MoeConfig", dict(**_DECODER, num_key_value_heads=2, head_dim=8, moe_intermediate_size=32,
                                         num_experts=4, num_experts_per_tok=2, norm_topk_prob=True)),
    # multi-head latent attention (compressed keys and values, a rope part of their own) and routed experts
    "deepseek_v3": ("DeepseekV3Config", dict(**_DECODER, num_key_value_heads=4, moe_intermediate_size=32,
                                             n_shared_experts=1, n_routed_experts=4, num_experts_per_tok=2, n_group=1,
                                             topk_group=1, first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=16,
                                             qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8)),
    # attention sinks, alternating sliding and full layers, experts
    "gpt_oss": ("GptOssConfig", dict(**_DECODER, num_key_value_heads=2, head_dim=8, num_local_experts=4,
                                     num_experts_per_tok=2, sliding_window=6,
                                     layer_types=["sliding_attention", "full_attention"])),
    "cohere2": ("Cohere2Config", dict(**{**_DECODER, "num_hidden_layers": 3}, num_key_value_heads=2, sliding_window=6,
                                      layer_types=["sliding_attention", "full_attention", "sliding_attention"])),
    # local layers whose window GPT-Neo applies from each forward's key length (`masks.shape_windows`): served
    # while a row's cache fits in it
    "gpt_neo": ("GPTNeoConfig", dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                                     attention_types=[[["global", "local"], 1]], window_size=64,
                                     max_position_embeddings=256)),
}
# Models whose attention has no SDPA path (Gemma-2's softcapping): `build` defaults them to eager, as it does
# any model class that has no SDPA path in the installed transformers (GPT-J before 5.2x).
_EAGER_ONLY = {"gemma2"}


def _default_attention(arch: str, config) -> str:
    model_class = transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    return "eager" if arch in _EAGER_ONLY or not getattr(model_class, "_supports_sdpa", True) else "sdpa"


def build(arch: str, seed: int = 0, attn_implementation: str | None = None, **overrides) -> torch.nn.Module:
    """`overrides` replace config fields (e.g. wider layers where a library needs them)."""
    config_name, kwargs = ARCHITECTURES[arch]
    config = getattr(transformers, config_name)(**_COMMON, **{**kwargs, **overrides})
    if attn_implementation is None:
        attn_implementation = _default_attention(arch, config)
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
