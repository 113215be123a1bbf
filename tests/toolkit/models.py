"""The one cache of tiny test models: each (architecture) target is built once per session and shared by every
module that decodes with it (building and enabling a model costs more than many of the calls made with it)."""

from __future__ import annotations

from functools import lru_cache

import torch
import transformers

import hf_batchspec
from tests.tiny_models import ARCHITECTURES, VOCAB, build, perturbed

__all__ = ["ARCHITECTURES", "DRAFTS", "VOCAB", "build", "draft_model", "perturbed", "sampling_llama", "target_model"]

# the drafts a request may name: the target itself (agrees fully), a perturbed copy (partly), an unrelated model
# of the same vocabulary (hardly)
DRAFTS = ("self", "perturbed", "unrelated")


@lru_cache(maxsize=None)
def target_model(arch: str):
    """`build(arch, seed=0)`, enabled. Shared: a test that changes it (its generation_config, an adapter) must
    build a model of its own instead."""
    return hf_batchspec.enable(build(arch, seed=0))


@lru_cache(maxsize=None)
def draft_model(arch: str, kind: str):
    """One of `DRAFTS` for `target_model(arch)`. Shared too: a test whose call writes to the draft (the heuristic
    schedule writes its k back) takes `perturbed(target, ...)` of its own."""
    target = target_model(arch)
    if kind == "self":
        return target
    if kind == "perturbed":
        return perturbed(target, 0.05)
    if kind == "unrelated":
        return build("gpt2" if arch == "llama" else "llama", seed=123)  # same vocabulary, unrelated weights
    raise ValueError(f"no draft kind {kind!r}; one of {DRAFTS}")


def sampling_llama(vocab: int, seed: int) -> torch.nn.Module:
    """A tiny Llama for the sampling tests: a vocabulary small enough to enumerate every continuation, no special
    ids in its config (no EOS ends a row: every row samples exactly the tokens asked for), its head scaled for a
    spread of probabilities (neither uniform nor one-hot)."""
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                                      pad_token_id=None, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)
    return model
