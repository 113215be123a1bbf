"""Positions and attention masks for the per-row slot layout.

In the ragged cache a token's slot is its position (see `cache.py`), so everything a forward needs is derived
from the positions of its query tokens: a query at position p may read slots 0..p (and, on a sliding-window
layer, only slots with p - slot < window). Stale keys beyond a row's length are never read, which is what
makes rollback free.

The masks are additive float tensors `[B, 1, q, S]`. transformers passes an already built 4D mask through its
mask builders unchanged; under eager attention a *boolean* 4D mask would be silently wrong, so we never build one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import UnsupportedModelError

FULL = "full_attention"
SLIDING = "sliding_attention"


@dataclass(frozen=True)
class AttentionLayout:
    """What masks a model's decoder wants: one per layer type, each with its window (None = full attention).

    `as_dict` is True when the model selects a mask per layer type (models with `config.layer_types` that mix
    sliding and full layers); then the forward gets `{layer_type: mask}`, which those models pass through.
    """

    windows: dict[str, int | None]
    as_dict: bool


def attention_layout(config) -> AttentionLayout:
    """Read the attention pattern off a config, or refuse it with a clear error.

    Sliding windows are counted in tokens; in the slot layout slots are positions, so a window is exact.
    Linear/recurrent and chunked layers cannot be expressed as a mask over slots and are refused.
    """
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if (getattr(config, "n_recurrent_loops", None) or 1) > 1 and getattr(config, "n_recurrent_layers", None):
        raise UnsupportedModelError(
            f"This model ({config.model_type}) runs {config.n_recurrent_layers} of its layers "
            f"{config.n_recurrent_loops} times per token, adding cache layers of its own during a forward; its "
            "cache cannot be laid out per row.")
    if config.model_type == "doge":
        raise UnsupportedModelError(
            "Doge's dynamic mask adds a bias computed from each forward's value states and keeps the top "
            "keep_window_size keys over the forward's key length, so a row's attention depends on the batch's layout "
            "(under transformers 5.17 even within the window): it cannot be decoded per row.")
    layer_types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if layer_types:
        unknown = sorted(set(layer_types) - {FULL, SLIDING})
        if unknown:
            raise UnsupportedModelError(
                f"hf-batchspec supports full and sliding-window attention layers only; this model "
                f"({config.model_type}) has layer types {unknown}, whose state cannot be rolled back per row."
            )
        if SLIDING in layer_types:
            if not window:
                raise UnsupportedModelError(
                    f"config.layer_types names sliding_attention layers but config.sliding_window is {window!r}."
                )
            return AttentionLayout(windows={FULL: None, SLIDING: int(window)}, as_dict=True)
        return AttentionLayout(windows={FULL: None}, as_dict=False)
    # No per-layer types: models such as Mistral apply `config.sliding_window` to every layer when it is set.
    return AttentionLayout(windows={FULL: int(window) if window else None}, as_dict=False)


def shape_windows(config) -> dict[str, int]:
    """Windows a model applies from the shape of each forward rather than from the mask it is given: GPT-Neo's
    local layers slice their own mask buffer as if every row's queries were the newest keys. Exact here only while
    a row's keys all fit in the window: a cache no longer than it (`check_cache_length`)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if config.model_type == "gpt_neo" and "local" in (getattr(config, "attention_layers", None) or ()):
        return {"window_size": int(config.window_size)}
    return {}


def check_cache_length(config, length: int, role: str = "model") -> None:
    """Refuse, before any forward, a cache longer than a window the model applies from the forward's shape."""
    for name, window in shape_windows(config).items():
        if length > window:
            raise UnsupportedModelError(
                f"The {role} ({config.model_type}) applies config.{name}={window} from each forward's key length, "
                f"not from the per-row mask, so rows of different lengths are exact only while a row's cache fits "
                f"in it; this call needs {length} cache positions (prompt width + max_new_tokens, rounded up for "
                f"static shapes): shorten it to fit, or call without batch_spec.")


def additive_mask(
    positions: torch.Tensor,  # [B, q] slot (= position) of each query token
    kv_len: int,
    dtype: torch.dtype,
    window: int | None = None,
    first: torch.Tensor | None = None,  # [B] slot of each row's position 0, in a left-padded layout
) -> torch.Tensor:  # [B, 1, q, kv_len]
    """0 where a query may attend, the dtype's minimum elsewhere."""
    slots = torch.arange(kv_len, device=positions.device)  # [S]
    pos = positions.unsqueeze(-1)  # [B, q, 1]
    allowed = slots <= pos  # [B, q, S]
    if first is not None:  # the left padding before a row's first token
        allowed &= slots >= first[:, None, None]
    if window is not None:
        # transformers' sliding_window_overlay: kv_idx > q_idx - window
        allowed &= slots > pos - window
    mask = torch.zeros(allowed.shape, dtype=dtype, device=positions.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.unsqueeze(1)


def common_start(first: np.ndarray) -> int | None:  # [b] host position of each row's first query
    """The first query position every row of a forward shares (a batch of one, rows of one length), else None. With
    it the forward's cache writes are one slice and a decode step's mask one `zeros` (`ModelRunner.forward`)."""
    first = np.asarray(first)
    return int(first[0]) if len(first) and (first == first[0]).all() else None


def reads_all(start: int | None, q: int, kv_len: int, window: int | None) -> bool:
    """Whether a forward's every query may read every one of its `kv_len` slots: one query per row, at the host-known
    slot `start` = kv_len - 1 of every row, and no window that reaches back less far (a decode step of one row, or of
    rows of one length)."""
    return start is not None and q == 1 and kv_len == start + 1 and (window is None or kv_len <= window)


def build_masks(
    layout: AttentionLayout, slots: torch.Tensor, kv_len: int, dtype: torch.dtype, first: torch.Tensor | None = None,
    start: int | None = None,  # host-known first slot of every row's queries (`ModelRunner.forward`), or None
) -> torch.Tensor | dict[str, torch.Tensor]:
    """The `attention_mask` argument for one forward, from the slots its queries write (= their positions,
    unless the cache is left-aligned: then `first` gives each row's first slot). A mask that hides nothing is one
    `zeros` (a batch-one decode step's), not the seven ops of `additive_mask`."""
    b, q = slots.shape
    masks = {kind: torch.zeros((b, 1, 1, kv_len), dtype=dtype, device=slots.device)
             if reads_all(start, q, kv_len, window) else additive_mask(slots, kv_len, dtype, window, first)
             for kind, window in layout.windows.items()}
    return masks if layout.as_dict else masks[FULL]


def packed_positions(rows: int, width: int, device) -> torch.Tensor:  # [rows, width]
    """Positions of a right-packed block: column t holds position t for every row (pads included)."""
    return torch.arange(width, device=device).expand(rows, width)


def right_pack(
    input_ids: torch.Tensor,  # [B, W] left-padded
    lengths: torch.Tensor,  # [B] real tokens per row
    fill: int,
) -> torch.Tensor:  # [B, max(lengths)]
    """Move each row's real tokens to columns 0..len-1: the prompt then sits in slots that equal its positions.

    This is the left-padding realignment done once, on token ids, before any KV exists.
    """
    batch, width = input_ids.shape
    longest = int(lengths.max())
    cols = torch.arange(longest, device=input_ids.device)  # [P]
    src = (width - lengths).unsqueeze(1) + cols  # [B, P]
    valid = cols < lengths.unsqueeze(1)
    packed = input_ids.gather(1, src.clamp(max=width - 1))
    return packed.masked_fill(~valid, fill)
