"""Early exit (`assistant_early_exit=n`): the target's first n layers with its norm and head draft, LayerSkip-style
self-speculation (transformers' `EarlyExitCandidateGenerator`). The view shares every weight with the target and
drafts as a `ModelDrafter` would; its cache holds those n layers only."""

from __future__ import annotations

import copy

import torch

from ..errors import UnsupportedModelError
from ..runner import decoder_layers


def early_exit_model(target: torch.nn.Module, layers: int) -> torch.nn.Module:
    """The target's first `layers` decoder layers with its embeddings, final norm and LM head, as a model of its
    own class sharing every weight (nothing is copied): a LayerSkip-style draft. Its config says `layers`
    layers, so it gets a cache of that many layers. Refused where the decoder layers cannot be found."""
    total = decoder_layers(target.config)
    if not isinstance(layers, int) or isinstance(layers, bool) or not 1 <= layers < total:
        raise UnsupportedModelError(f"assistant_early_exit={layers!r}: the draft must keep between 1 and "
                                    f"{total - 1} of the target's {total} decoder layers.")
    stacks = [name for name, child in target.named_modules()
              if isinstance(child, torch.nn.ModuleList) and len(child) == total]
    if len(stacks) != 1 or target.config.get_text_config() is not target.config:
        raise UnsupportedModelError(
            f"assistant_early_exit: cannot find the decoder layers of {type(target).__name__} to cut (a text-only "
            "causal LM with one list of decoder layers is needed): draft with assistant_model=... instead.")
    if getattr(target.config, "hidden_size_per_layer_input", None):
        raise UnsupportedModelError(
            f"assistant_early_exit: {type(target).__name__} embeds an input per decoder layer (Gemma 3n / Gemma 4 "
            "per-layer inputs), sized and reshaped for all its layers, so its first layers cannot run alone: draft "
            "with assistant_model=... instead.")
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = layers
    for name in ("layer_types", "n_layer", "num_layers"):  # per-layer lists and other names of the layer count
        value = getattr(config, name, None)
        if isinstance(value, list):
            setattr(config, name, value[:layers])
        elif isinstance(value, int) and not isinstance(value, bool) and value == total:
            setattr(config, name, layers)
    *path, leaf = stacks[0].split(".")
    view = _shallow(target, config)
    parent = view
    for name in path:  # copies along the path to the layer list; everything beside it is shared
        child = _shallow(getattr(parent, name), config)
        setattr(parent, name, child)
        parent = child
    setattr(parent, leaf, torch.nn.ModuleList(list(getattr(parent, leaf))[:layers]))
    return view


def _shallow(module: torch.nn.Module, config) -> torch.nn.Module:
    """A copy of `module` that shares its parameters, buffers and children but not the table of children (so
    replacing a child in the copy leaves the original whole), with `config` where the module holds one."""
    twin = copy.copy(module)
    twin._modules = dict(module._modules)
    # Bound to the original, not the copy: an instance-level forward wrapper (accelerate's dispatch hook), which would
    # run the original's full stack of layers. The copy runs its class's forward; the layers it shares keep their own
    # hooks. (A compiled call the original holds is replaced when the view compiles: `runner.compiled_call`.)
    twin.__dict__.pop("forward", None)
    if getattr(module, "config", None) is not None:
        twin.config = config
    return twin
