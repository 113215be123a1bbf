"""Cross-attention keys and values kept per cache row, for encoder-decoder models (Whisper, BART and kin).

A decoder's cross-attention reads, per layer, `K = k_proj(encoder output)` and `V = v_proj(...)`: `[B, H, S, D]`
that never change while a row decodes. transformers computes them on a row's first decoder forward and keeps them
in the `cross_attention_cache` of an `EncoderDecoderCache`, for a batch that starts and ends together. Here rows
come and go (EXSPEC refills a slot with the next input while the others decode), so the store is one preallocated
tensor per layer over the cache's rows (slots and staging rows), written when an input is admitted to a row
(`CrossStore.admit`: one batched projection per layer for the admitted rows) and moved with the rows by
`copy_rows` / `select_rows`, exactly as the self-attention side (`cache.RaggedCache`). Nothing is ever rolled back:
rollback is a matter of self-attention lengths.

What the model reads: with `EncoderDecoderCache.is_updated[layer]` set (it is, since the store's length is S > 0),
an attention layer reads `cross_attention_cache.layers[layer].keys` / `.values` and nothing else; `CrossLayer`
answers with the rows the current forward covers, read from the self-attention cache's plan (`RaggedCache.begin`):
the first b rows for a forward over the batch, the refill's rows for a prefill into some slots. The encoder output
passed to the forward is then only a placeholder (its contents are never read).

Invariant: cache row r's store holds the projections of the encoder output of the input decoded in row r.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .scheduling import to_device


class CrossLayer(CacheLayerMixin):
    """One decoder layer's cross-attention keys and values `[R, H, S, D]` for the cache's R rows."""

    is_sliding = False
    is_croppable = False

    def __init__(self, plan, static_addresses: bool = False):
        # not CacheLayerMixin.__init__: it assigns `keys` / `values`, which are row views here
        self._plan = plan
        self.store_k: torch.Tensor | None = None
        self.store_v: torch.Tensor | None = None
        self.is_initialized = False
        self.static_addresses = static_addresses

    def allocate(self, rows: int, keys: torch.Tensor, values: torch.Tensor) -> None:  # [n, H, S, D] each
        # not zero-filled (for Whisper large, 246 MB per row): a row is written at admission before any forward
        # reads it as live; an idle row's outputs are discarded, and rows never mix in attention
        self.store_k = keys.new_empty((rows, *keys.shape[1:]))
        self.store_v = values.new_empty((rows, *values.shape[1:]))
        self.device = keys.device
        self.is_initialized = True
        if self.static_addresses and not torch.compiler.is_compiling():
            torch._dynamo.mark_static_address(self.store_k)
            torch._dynamo.mark_static_address(self.store_v)

    def _rows(self, store: torch.Tensor) -> torch.Tensor:
        rows = self._plan.rows
        if rows is None:  # a forward over the batch: its first b rows, in order
            return store[: self._plan.batch]
        return store[rows.to(store.device)]

    @property
    def keys(self) -> torch.Tensor:  # [b, H, S, D] the rows of the current forward
        return self._rows(self.store_k)

    @property
    def values(self) -> torch.Tensor:
        return self._rows(self.store_v)

    def update(self, *args, **kwargs):
        raise RuntimeError("cross-attention keys and values are written when an input is admitted "
                           "(CrossStore.admit), never by a forward")

    def lazy_initialization(self, key_states, value_states) -> None:
        pass

    def get_seq_length(self) -> int:
        return 0 if self.store_k is None else int(self.store_k.shape[-2])

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length(), 0

    def get_max_length(self) -> int:
        return self.get_seq_length()

    def reset(self) -> None:
        pass


class CrossStore(Cache):
    """The cross-attention side of a ragged encoder-decoder cache: one `CrossLayer` per decoder layer, rows as the
    self-attention cache's (`RaggedCache`, whose forward plan it shares), plus each row's encoder mask `[R, S]`
    when the encoder output is padded (BART and kin; Whisper's is not)."""

    def __init__(self, num_layers: int, rows: int, plan, static_addresses: bool = False):
        super().__init__(layers=[CrossLayer(plan, static_addresses) for _ in range(num_layers)])
        self.rows = rows
        self._plan = plan
        self.static_addresses = static_addresses  # a compiled forward reads these very tensors: they never move
        self.mask: torch.Tensor | None = None  # [R, S] 1 where a row's encoder output is real

    def __bool__(self) -> bool:  # what an attention layer's `if cache and is_updated` asks
        return True

    def admit(self, projections, encoder_states: torch.Tensor,  # [n, S, E]
              cache_rows: torch.Tensor,  # [n] rows the admitted inputs take
              encoder_mask: torch.Tensor | None = None) -> None:  # [n, S]
        """Write the admitted inputs' cross keys and values into their rows: `projections[l](states)` gives
        layer l's `([n, H, S, D], [n, H, S, D])`."""
        for layer, project in zip(self.layers, projections):
            keys, values = project(encoder_states)
            if not layer.is_initialized:
                layer.allocate(self.rows, keys, values)
            index = cache_rows.to(layer.store_k.device)
            layer.store_k[index] = keys.to(layer.store_k.dtype)
            layer.store_v[index] = values.to(layer.store_v.dtype)
        if encoder_mask is not None:
            if self.mask is None:
                self.mask = encoder_mask.new_zeros((self.rows, encoder_mask.shape[1]))
            self.mask[cache_rows.to(self.mask.device)] = encoder_mask

    def row_mask(self) -> torch.Tensor | None:  # [b, S] the encoder mask of the current forward's rows
        if self.mask is None:
            return None
        rows = self._plan.rows
        return self.mask[: self._plan.batch] if rows is None else self.mask[rows.to(self.mask.device)]

    def tensors(self) -> list[torch.Tensor]:  # every [R, ...] tensor of the store (allocated ones)
        tensors = [t for layer in self.layers if layer.is_initialized for t in (layer.store_k, layer.store_v)]
        return tensors + ([self.mask] if self.mask is not None else [])

    def copy_rows(self, sources: np.ndarray, targets: np.ndarray) -> None:  # [n], [n] cache rows (host)
        for tensor in self.tensors():
            src, dst = to_device(sources, tensor.device), to_device(targets, tensor.device)
            tensor[dst] = tensor[src]

    def select_rows(self, indices: torch.Tensor) -> None:  # [b] rows that stay, in order
        if self.static_addresses:  # the tensors never move: the kept rows go into the first rows
            for tensor in self.tensors():
                index = indices.to(tensor.device)
                tensor[: len(index)] = tensor[index]
            return
        for layer in self.layers:
            if layer.is_initialized:
                layer.store_k = layer.store_k.index_select(0, indices.to(layer.store_k.device))
                layer.store_v = layer.store_v.index_select(0, indices.to(layer.store_v.device))
        if self.mask is not None:
            self.mask = self.mask.index_select(0, indices.to(self.mask.device))
        self.rows = int(indices.shape[0])

    def get_seq_length(self, layer_idx: int = 0) -> int:
        # > 0 once allocated: `EncoderDecoderCache` then marks every layer updated, so attention reads the store
        return self.layers[layer_idx].get_seq_length() if self.layers else 0
