"""A layer-skip Llama pair built from a config in seconds: nothing trained, nothing downloaded.

The target's layers after the first `draft_layers` are damped, so they nudge the early layers' prediction instead of
overturning it; the draft is exactly the target's first `draft_layers` layers with its embeddings, final norm and
head. It then agrees with the target often but not always, as a distilled draft does, and costs
`draft_layers / layers` of it: a pair for examples and for benchmarks where model time must matter.
`examples/quickstart.py` and `scripts/build_layer_skip_pair.py` both build theirs here.
"""

from __future__ import annotations

import copy

import torch


def layer_skip_pair(config, draft_layers: int, damping: float, seed: int):
    """(target, draft), both in eval mode, from a `LlamaConfig` of the target; seeded with `torch.manual_seed(seed)`,
    so the same arguments give the same weights."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    target = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        target.lm_head.weight.mul_(8.0)  # sharper than random init, so greedy paths are not near-ties
        for layer in target.model.layers[draft_layers:]:  # deep layers nudge the first layers' prediction
            layer.self_attn.o_proj.weight.mul_(damping)
            layer.mlp.down_proj.weight.mul_(damping)
    draft_config = copy.deepcopy(config)
    draft_config.num_hidden_layers = draft_layers
    draft = LlamaForCausalLM(draft_config).eval()
    draft.load_state_dict(target.state_dict(), strict=False)  # embeddings, the first layers, norm, head
    return target, draft
