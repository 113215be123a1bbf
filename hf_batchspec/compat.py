"""The one place that knows which transformers 5.x minor we run on.

The cache API moves between 5.x minors (the forward keyword `past_key_values` became `cache` in 5.24, outputs
followed). Everything else in the package asks this module instead of checking versions itself.
"""

from __future__ import annotations

import contextlib
import inspect
from functools import lru_cache

import torch


@lru_cache(maxsize=None)
def _forward_parameters(model_class: type) -> frozenset[str]:
    # The class's forward, not the instance's: accelerate hooks replace `model.forward` with a wrapper whose
    # signature is `(*args, **kwargs)`.
    return frozenset(inspect.signature(model_class.forward).parameters)


def cache_kwarg(model: torch.nn.Module) -> str:
    """Name of the forward keyword that takes the KV cache (`cache` from 5.24, `past_key_values` before)."""
    params = _forward_parameters(type(model))
    return "cache" if "cache" in params else "past_key_values"


def accepts(model: torch.nn.Module, name: str) -> bool:
    """Whether the model's forward takes keyword `name` explicitly."""
    return name in _forward_parameters(type(model))


def user_cache_kwargs(kwargs: dict) -> list[str]:
    """Names under which a caller handed `generate` a cache of its own (both spellings are accepted by HF)."""
    return [name for name in ("cache", "past_key_values") if kwargs.get(name) is not None]


def compile_obstacle(model: torch.nn.Module) -> str | None:
    """Why transformers would not compile this model's forward (it falls back to eager with a warning; we
    refuse instead), or None."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and not getattr(quantizer, "is_compileable", False):
        return f"its {type(quantizer).__name__} quantization does not support torch.compile"
    devices = set(getattr(model, "hf_device_map", {}).values())
    if "disk" in devices or ("cpu" in devices and len(devices) > 1):
        return "it is offloaded to CPU or disk by accelerate"
    return None


# Compiled graphs one generate call may need: (draft first step, draft step, verify, plain step) per row and
# cache bucket, for two models whose forwards share one code object (and transformers' own compiled calls).
_RECOMPILE_LIMIT = 64


def static_compile_settings():
    """dynamo settings for the static-shape decode loop: for the duration of a call every size change is a new
    static graph (the shapes come from a few buckets by design), never a switch to dynamic shapes; and the
    per-code-object limit leaves room for the buckets of both models (dynamo's default of 8 would otherwise make
    later buckets fall back to eager).

    The one size that is dynamic by design, the row count (`runner.rows_dynamic`: the inputs' rows and the caches'
    rows, slots plus staging rows), gets no duck shaping: dynamo would otherwise give two sizes that happen to be
    equal at the first compile one symbol (a cache without staging rows, R = B), and the first call whose live rows
    no longer fill the cache (B < R) would compile again."""
    import torch._dynamo.config as dynamo
    import torch.fx.experimental._config as shapes

    # Raised for good, not for the call only: a frame that once hit the limit (e.g. in transformers' own compiled
    # generate on the same model class) stays eager for the rest of the process.
    limit = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"
    setattr(dynamo, limit, max(getattr(dynamo, limit), _RECOMPILE_LIMIT))
    patches = [dynamo.patch(automatic_dynamic_shapes=False)]
    if hasattr(shapes, "use_duck_shape"):
        patches.append(shapes.patch(use_duck_shape=False))
    return _entered_together(patches)


@contextlib.contextmanager
def _entered_together(patches: list):
    # entered on `with`, not when built: a settings object that is never entered changes nothing
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        yield
