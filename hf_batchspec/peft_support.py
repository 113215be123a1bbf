"""Per-row LoRA adapters (PEFT's `adapter_names=`) in a batch whose rows come and go.

`PeftModel.generate(adapter_names=[...])` pops the list and installs forward pre-hooks on every LoRA layer
that pass the whole list to each forward, which assumes every forward sees the full batch in its original
order. Ours see the active rows only (finished rows leave, waiting prompts enter). So while our decode loop
runs, a hook of ours registered after PEFT's replaces the list with the names of the rows in the current
forward. PEFT itself is not imported: its hooks are recognised by their function's name.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from .errors import BatchSpecError

_PEFT_HOOK = "_adapter_names_pre_forward_hook"


def _peft_adapter_hooks(module: torch.nn.Module):
    return [h for h in module._forward_pre_hooks.values()
            if isinstance(h, functools.partial) and getattr(h.func, "__name__", "") == _PEFT_HOOK]


class RowAdapters:
    """Context manager: feeds each LoRA forward the adapter names of the rows it computes."""

    def __init__(self, modules: list[torch.nn.Module], names: list[str]):
        self.modules = modules
        self.names = np.asarray(names, dtype=object)
        self.current: list[str] | None = None
        self._handles = []

    def select(self, row_ids: np.ndarray) -> None:
        """Called before every forward with the original indices of its rows, in batch order."""
        self.current = self.names[row_ids].tolist()

    def _hook(self, module, args, kwargs):
        kwargs["adapter_names"] = self.current
        return args, kwargs

    def __enter__(self) -> "RowAdapters":
        self._handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True) for m in self.modules]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()


def row_adapters(model: torch.nn.Module, batch_size: int) -> RowAdapters | None:
    """The per-row adapters PEFT was asked for in this call, or None."""
    modules, names = [], None
    for module in model.modules():
        hooks = _peft_adapter_hooks(module)
        if hooks:
            modules.append(module)
            names = hooks[-1].keywords["adapter_names"]
    if names is None:
        return None
    if len(names) != batch_size:
        raise BatchSpecError(f"adapter_names has {len(names)} entries but the batch has {batch_size} prompts.")
    return RowAdapters(modules, list(names))


def unwrapped_draft(draft):
    """A PEFT-wrapped `assistant_model` as the decode loop drives it: its base model, whose layers PEFT's LoRA
    (and other weight adapters) already replace, so its forwards are the wrapper's (transformers' assisted
    generation also calls the draft's base forward through the wrapper). A prompt-learning adapter (prefix or
    prompt tuning) lives in the wrapper's forward instead, and is refused rather than dropped."""
    if draft is None or not hasattr(draft, "get_base_model"):
        return draft
    config = getattr(draft, "active_peft_config", None)
    if getattr(config, "is_prompt_learning", False):
        raise BatchSpecError(f"assistant_model: a PEFT {type(config).__name__} (prompt learning) adds virtual tokens "
                             "in the wrapper's forward, which batch_spec does not run: merge or drop it, or use a "
                             "LoRA adapter.")
    return draft.get_base_model()
