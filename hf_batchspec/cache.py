"""A KV cache whose rows have their own lengths: per-row rollback, row selection and realignment.

Layout: every layer keeps `keys`/`values` as `[B, H, S, D]`, preallocated, and **a token's slot is its
position** in its own row: row b's prompt fills slots 0..len_b-1, its first new token goes to slot len_b,
and so on. Rows never share an offset, so nothing ever needs left padding inside the cache.

Invariants (what makes the output equal plain greedy decoding):
1. Slots 0..lengths[b]-1 of row b hold the keys/values of row b's tokens at those positions, computed with
   exactly that prefix.
2. A forward writes its query tokens at their positions (`begin(slots=...)`), which start at the row's
   length: rows have no gaps.
3. A query at position p reads slots 0..p only (see `masks.py`), so whatever lies beyond a row's length
   (rejected drafts, another forward's scratch) is never read and is simply overwritten later.

Rollback is therefore a change of `lengths[b]`: O(1), no copy. Dropping finished rows is one `index_select`
per layer (with static addresses, for a compiled forward, an in-place copy into the first rows); converting a
left-padded cache into this layout (`realign`) is one `gather` per layer. `lengths` live on the host: they are
scheduling metadata that the decode loop already knows, and reading them never costs a device sync.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .scheduling import to_device


def _copy_slots(
    cache: torch.Tensor,  # [B, H, S, D] one layer's keys or values, contiguous, written in place
    flat: torch.Tensor,  # [b * H * q] each new entry's row in cache.view(-1, D) (`_ForwardPlan.flat`)
    new: torch.Tensor,  # [b, H, q, D]
) -> None:
    """Row b's q new entries into its own slots, eagerly: one `index_copy_` of D-wide rows, by an index that every
    layer of the forward shares. A per-row `scatter_` with the slot index expanded to [b, H, q, D] costs 1.5x (batch
    1, one token) to 2.7x (64 rows x 4 tokens) as much on CPU, and it ran twice per layer and forward."""
    cache.view(-1, cache.shape[-1]).index_copy_(0, flat, new.reshape(-1, new.shape[-1]))


def _index_slots(
    cache: torch.Tensor,  # [B, H, S, D] one layer's keys or values, written in place
    slots: torch.Tensor,  # [b, q] slot of each query token, for the first b rows
    new: torch.Tensor,  # [b, H, q, D]
) -> None:
    """The same write as an `index_put_`, for torch.compile. Inductor writes an `index_put_` into a graph input in
    place, while the same per-row `scatter_` is functionalised into a copy of the whole cache tensor on every call
    (measured on CPU, one [8, 2, S, 64] layer: 25 us at S = 128 and at S = 8192 against 57 us and 28 ms for the
    scatter); it also costs less than an operator of our own with a Python kernel (38-49 us), which a compiled
    forward would call for every layer's keys and values."""
    b, h = new.shape[:2]
    rows = torch.arange(b, device=new.device).view(b, 1, 1)
    heads = torch.arange(h, device=new.device).view(1, h, 1)
    cache.index_put_((rows, heads, slots[:, None, :]), new)


class _ForwardPlan:
    """Where the current forward writes, shared by the layers of one cache.

    Set once per forward by `RaggedCache.begin`; layers on other devices (accelerate `device_map`) get a
    copy of the slot index made once per device and forward.
    """

    def __init__(self) -> None:
        self.slots: torch.Tensor | None = None  # [b, q] slot of each query token
        self.rows: torch.Tensor | None = None  # [b] cache rows the forward touches; None = all rows in order
        self.kv_len = 0
        self.batch = 0  # rows of the current forward
        # host-known: every row's queries sit at slots start..start+q-1 (a batch of one row, rows of one length, a
        # prefill's packed block); None when rows write at their own slots
        self.start: int | None = None
        self._per_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._flat: dict[tuple, torch.Tensor] = {}  # (device, heads, slots per row) -> `flat`

    def set(self, slots: torch.Tensor | None, kv_len: int, rows: torch.Tensor | None, start: int | None = None) -> None:
        self.slots, self.rows, self.kv_len, self.start = slots, rows, kv_len, start
        self.batch = 0 if slots is None else int(slots.shape[0])
        self._per_device = {} if slots is None else {slots.device: (slots, rows)}
        self._flat = {}

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        if device not in self._per_device:
            rows = None if self.rows is None else self.rows.to(device)
            self._per_device[device] = (self.slots.to(device), rows)
        return self._per_device[device]

    def flat(self, device: torch.device, heads: int, slots_per_row: int) -> torch.Tensor:  # [b * heads * q]
        """Where the forward's new entries go in a contiguous [B, heads, S, D] cache seen as [B * heads * S, D]:
        entry (b, h, j) at (b * heads + h) * S + slots[b, j]. Made once per forward for the layers that share it."""
        key = (device, heads, slots_per_row)
        if key not in self._flat:
            slots, _ = self.on(device)
            b = slots.shape[0]
            rows = torch.arange(b * heads, device=device).view(b, heads, 1)  # b * heads + h
            self._flat[key] = (rows * slots_per_row + slots.unsqueeze(1)).view(-1)
        return self._flat[key]


class RaggedLayer(CacheLayerMixin):
    """One layer's preallocated `[B, H, S, D]` keys and values, written at per-row slots."""

    is_sliding = False  # windows are applied by the mask, over slots that are positions
    is_croppable = True

    def __init__(self, batch_size: int, max_cache_len: int, plan: _ForwardPlan, static_addresses: bool = False):
        super().__init__()
        self.batch_size = batch_size
        self.max_cache_len = max_cache_len
        self._plan = plan
        self.static_addresses = static_addresses  # a compiled forward (CUDA graphs) reads these very tensors

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        # Heads and head dims come from the first write, as HF's StaticLayer does (tensor parallel, MLA).
        self.device = key_states.device
        heads = key_states.shape[1]
        self.keys = key_states.new_zeros((self.batch_size, heads, self.max_cache_len, key_states.shape[-1]))
        self.values = value_states.new_zeros((self.batch_size, heads, self.max_cache_len, value_states.shape[-1]))
        self.is_initialized = True
        if self.static_addresses and not torch.compiler.is_compiling():
            # as transformers' StaticLayer: CUDA graphs may keep pointing at these tensors between calls
            torch._dynamo.mark_static_address(self.keys)
            torch._dynamo.mark_static_address(self.values)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        # key_states: [b, H, q, D]; returns [b, H, kv_len, D] views (or gathered rows for a subset forward)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        plan = self._plan
        kv_len, b = plan.kv_len, key_states.shape[0]
        if plan.start is not None and plan.rows is None:  # one block of slots for every row: a slice's copy
            keys, values = (self.keys, self.values) if b == self.keys.shape[0] else (self.keys[:b], self.values[:b])
            keys.narrow(2, plan.start, key_states.shape[2]).copy_(key_states)
            values.narrow(2, plan.start, value_states.shape[2]).copy_(value_states)
            return keys.narrow(2, 0, kv_len), values.narrow(2, 0, kv_len)
        slots, rows = plan.on(key_states.device)
        if rows is None:  # the first b rows, in order (all of them, unless a static cache was narrowed)
            if torch.compiler.is_compiling():  # an index_put_, written in place (see _index_slots)
                _index_slots(self.keys, slots, key_states)
                _index_slots(self.values, slots, value_states)
            else:
                _copy_slots(self.keys, plan.flat(self.device, self.keys.shape[1], self.max_cache_len), key_states)
                _copy_slots(self.values, plan.flat(self.device, self.values.shape[1], self.max_cache_len), value_states)
            if b < self.keys.shape[0]:
                return self.keys[:b, :, :kv_len], self.values[:b, :, :kv_len]
            return self.keys.narrow(2, 0, kv_len), self.values.narrow(2, 0, kv_len)  # one op each
        # A forward over some rows only (a refill's prefill): advanced indexing puts [b, q] first.
        self.keys[rows[:, None], :, slots] = key_states.transpose(1, 2)
        self.values[rows[:, None], :, slots] = value_states.transpose(1, 2)
        return self.keys[rows, :, :kv_len], self.values[rows, :, :kv_len]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._plan.kv_len, 0

    def get_seq_length(self) -> int:
        return self._plan.kv_len

    def get_max_length(self) -> int:
        return self.max_cache_len

    def select_rows(self, indices: torch.Tensor) -> None:
        if self.static_addresses:
            # A compiled forward (CUDA graphs) reads these very tensors: they never move or shrink. The kept rows
            # are copied, in place, into the first len(indices) rows, which the next forwards cover.
            if self.is_initialized:
                indices = indices.to(self.keys.device)
                self.keys[: len(indices)] = self.keys[indices]
                self.values[: len(indices)] = self.values[indices]
            return
        if self.is_initialized:
            indices = indices.to(self.keys.device)
            self.keys = self.keys.index_select(0, indices)
            self.values = self.values.index_select(0, indices)
        self.batch_size = int(indices.shape[0])

    def shift_rows(self, shift: torch.Tensor) -> None:
        """Row b's slot s takes the content of its slot s + shift[b] (one gather per tensor)."""
        if not self.is_initialized:
            return
        slots = torch.arange(self.max_cache_len, device=self.keys.device)
        src = (slots + shift.to(self.keys.device)[:, None]).clamp(0, self.max_cache_len - 1)  # [B, S]
        b, h, s, _ = self.keys.shape
        self.keys = self.keys.gather(2, src[:, None, :, None].expand(b, h, s, self.keys.shape[-1]))
        self.values = self.values.gather(2, src[:, None, :, None].expand(b, h, s, self.values.shape[-1]))

    # HF's layer API, so generic code that reorders caches keeps working
    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.select_rows(indices)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.select_rows(beam_idx)

    def reset(self) -> None:
        if self.is_initialized:
            self.keys.zero_()
            self.values.zero_()


class RaggedCache(Cache):
    """A `transformers` cache for a batch whose rows have different lengths.

    The decode loop calls `begin(slots, kv_len)` before each forward; the model then writes its new keys and
    values at those slots and attends over the first `kv_len` slots with a mask built from the same
    positions. `lengths` record how many slots of each row are valid; `rollback` moves them back.
    """

    def __init__(self, num_layers: int, batch_size: int, max_cache_len: int, static_addresses: bool = False,
                 staging: int = 0):
        self._plan = _ForwardPlan()
        super().__init__(layers=[RaggedLayer(batch_size + staging, max_cache_len, self._plan, static_addresses)
                                 for _ in range(num_layers)])
        self.num_slots = max_cache_len  # (not `max_cache_len`: a read-only property of Cache in some 5.x)
        self.lengths = np.zeros(batch_size, dtype=np.int64)  # valid slots per row (host)
        # Staging rows: `staging` more rows after the batch's, which forwards over the batch (its first rows) never
        # touch: prompts prefilled ahead of a free slot wait there (rows batch_size.., their lengths here) until
        # `copy_rows` moves them into a slot.
        self.staged_lengths = np.zeros(staging, dtype=np.int64)
        # Slot of each row's position 0. None: slot = position (the ragged layout, the normal case). Set by
        # `left_align` only, to reproduce the paper's left-padded layout for comparison.
        self.offsets: np.ndarray | None = None
        # An encoder-decoder model's cross-attention keys and values per row (`cross_cache.CrossStore`), which move
        # with the rows (`copy_rows`, `select_rows`) and are never rolled back; None for a decoder-only model.
        self.cross = None
        self.static_addresses = static_addresses

    @property
    def batch_size(self) -> int:
        return int(self.lengths.shape[0])

    def begin(self, slots: torch.Tensor, kv_len: int, rows: torch.Tensor | None = None,
              start: int | None = None) -> None:
        """Announce the next forward: query token j of row b goes to slot `slots[b, j]`; attention reads the
        first `kv_len` slots. With `rows`, the forward covers only those cache rows (a refill's prefill). `start`,
        when the host knows that every row's slots are start, start+1, ..: the layers write one slice (two ops
        instead of an index and a copy; not inside a compiled program, where an int would be a constant)."""
        if kv_len > self.num_slots:
            raise ValueError(f"kv_len {kv_len} exceeds the cache's {self.num_slots} slots")
        self._plan.set(slots, kv_len, rows, start)

    def end(self) -> None:
        """Forget the last forward's plan. After a compiled program, its slot index is one of the program's output
        buffers, which the program's next CUDA graph replay overwrites: nothing should keep it alive."""
        self._plan.set(None, 0, None)

    def copy_rows(self, sources: np.ndarray, targets: np.ndarray) -> None:  # [n], [n] cache rows (host)
        """Row targets[i] takes row sources[i]'s keys, values and length (one gather per tensor, in place, so a
        compiled forward's static addresses stay valid). The rows come as host arrays: the lengths are host
        metadata, and reading device indices back would be a host sync."""
        index = {}  # device -> (sources, targets) there: one copy per device, not per layer
        for layer in self.layers:
            if layer.is_initialized:
                device = layer.keys.device
                if device not in index:
                    index[device] = (to_device(sources, device), to_device(targets, device))
                src, dst = index[device]
                layer.keys[dst] = layer.keys[src]
                layer.values[dst] = layer.values[src]
        if self.cross is not None:
            self.cross.copy_rows(sources, targets)
        self.set_lengths(self.lengths_of(sources), rows=targets)

    def lengths_of(self, rows: np.ndarray) -> np.ndarray:  # [n] valid slots of cache rows, staging rows included
        return np.concatenate((self.lengths, self.staged_lengths))[rows]

    def top_slot(self, ends: np.ndarray) -> int:
        """max over rows of the slot that position `ends[b]` takes (the position itself, unless left-aligned)."""
        return int((ends if self.offsets is None else ends + self.offsets).max())

    def set_lengths(self, lengths: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Valid slots of every batch row, or of cache `rows` (staging rows beyond the batch's included)."""
        if rows is None:
            self.lengths = np.asarray(lengths, dtype=np.int64).copy()
            return
        rows, lengths = np.asarray(rows), np.broadcast_to(np.asarray(lengths, dtype=np.int64), np.shape(rows))
        batch = rows < len(self.lengths)
        self.lengths[rows[batch]] = lengths[batch]
        self.staged_lengths[rows[~batch] - len(self.lengths)] = lengths[~batch]

    def rollback(self, lengths: np.ndarray) -> None:
        """Shorten rows to `lengths` (e.g. drop rejected drafts). Nothing is copied: the stale slots are
        masked from now on and overwritten by the next tokens."""
        lengths = np.asarray(lengths, dtype=np.int64)
        if (lengths > self.lengths).any() or (lengths < 0).any():
            raise ValueError("rollback can only shorten rows")
        self.lengths = lengths.copy()

    def select_rows(self, indices: torch.Tensor | np.ndarray) -> None:
        """Keep only these rows, in this order (finished rows leave the batch). A cache with static addresses
        keeps its tensors: the rows are copied into its first rows, and forwards then cover only those."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        for layer in self.layers:
            layer.select_rows(idx)
        if self.cross is not None:
            self.cross.select_rows(idx)
        kept = idx.cpu().numpy()
        self.lengths = self.lengths[kept]
        if self.offsets is not None:
            self.offsets = self.offsets[kept]

    def left_align(self, offsets: np.ndarray) -> None:
        """The paper's EQSPEC layout: row b's position 0 moves to slot `offsets[b]` (every row ending at the
        same slot, left padding before it). Moving rows is one gather per layer, into fresh tensors; this is
        the per-round realignment the ragged layout exists to avoid, kept to measure what it costs."""
        old = self.offsets if self.offsets is not None else np.zeros_like(offsets)
        shift = old - offsets  # row b's new slot s takes old slot s + shift[b]
        if shift.any():
            for layer in self.layers:
                layer.shift_rows(torch.as_tensor(shift, dtype=torch.long))
        self.offsets = np.asarray(offsets, dtype=np.int64).copy()

    def realign(self, shift: torch.Tensor | np.ndarray) -> None:
        """Move row b's content `shift[b]` slots to the left, as one gather per layer.

        Used to bring a left-padded cache (row b's tokens at slots pad_b..W-1) into the slot = position
        layout (`shift = pad`).
        """
        shift_t = torch.as_tensor(shift, dtype=torch.long)
        if (shift_t < 0).any():
            raise ValueError("realign shifts rows to the left only (shift >= 0)")
        for layer in self.layers:
            layer.shift_rows(shift_t)
        self.lengths = np.maximum(self.lengths - shift_t.cpu().numpy(), 0)

    @classmethod
    def from_left_padded(cls, cache: Cache, attention_mask: torch.Tensor, max_cache_len: int) -> "RaggedCache":
        """Build a ragged cache from a left-padded HF cache (e.g. `DynamicCache` of a padded prefill).

        `attention_mask` `[B, W]` must be left padding (zeros then ones); row b's W - pad_b tokens end up in
        slots 0..W-pad_b-1.
        """
        mask = attention_mask.long()
        if bool((mask[:, 1:] < mask[:, :-1]).any()):
            raise ValueError("from_left_padded expects left padding: zeros then ones in every row")
        batch, width = mask.shape
        if width > max_cache_len:
            raise ValueError(f"max_cache_len {max_cache_len} is shorter than the cache's {width} slots")
        ragged = cls(len(cache.layers), batch, max_cache_len)
        for src, dst in zip(cache.layers, ragged.layers):
            dst.lazy_initialization(src.keys, src.values)
            dst.keys[:, :, :width] = src.keys
            dst.values[:, :, :width] = src.values
        ragged.lengths = np.full(batch, width, dtype=np.int64)
        ragged.realign(width - mask.sum(-1))
        return ragged

    # HF's Cache API in terms of per-row lengths
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.lengths.max()) if self.lengths.size else 0

    def crop(self, max_length: int) -> None:
        """transformers' contract, per row: a negative argument removes that many tokens from every row (0
        removes none, as transformers' generate calls it); a positive one keeps at most that many (the meaning it
        has had since transformers 4.x, deprecated but still served in 5.17): rows already shorter are
        untouched. Like `rollback`, nothing is copied."""
        if max_length <= 0:
            self.rollback(np.maximum(self.lengths + max_length, 0))
        else:
            self.rollback(np.minimum(self.lengths, max_length))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.select_rows(indices)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.select_rows(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.select_rows(torch.arange(self.batch_size).repeat_interleave(repeats))

    def reset(self) -> None:
        super().reset()
        self.lengths[:] = 0
