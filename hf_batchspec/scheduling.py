"""Which prompts are in the forward batch: the slot pool, the waiting queue, per-row counters.

The batch has `max_batch_size` slots; slot i is cache row i of both models. EQSPEC admits every prompt at
once (as many slots as prompts). EXSPEC admits up to `max_batch_size` and, when rows finish while prompts
wait, prefills waiting prompts into the freed slots: the other rows' KV stays where it is. Once nothing
waits, finished slots are dropped from the batch (one `index_select` per layer), so the batch shrinks.

With static shapes (a compiled forward) the batch keeps a few sizes only: a slot with nothing left to admit
stays in the forward as an idle row (`live` False), pointed at a scratch row of the token buffer, drafting
nothing and committing nothing, until the live rows fit a smaller row bucket (a power of two); then they move
into the first rows of caches that themselves never move (see `decoding._Decoder._leave`).

Each per-row counter lives twice: a tensor on the device (for building inputs without a sync) and a numpy
array on the host (for decisions: draft budgets, kv lengths, which rows finished). In a device round
(`device_round`, compiled greedy rounds) the device tensors are the truth: the round's program advances them, and
the host copies follow the round's snapshot, read one round late (`ActiveRows.absorb`); elsewhere both are advanced
from the same per-round values, which the loop brings to the host once per round. Two fields live on the device
only, for the device round: `lag` (committed tokens the draft model has not run) and `caps` (each row's k).
"""

from __future__ import annotations

import numpy as np
import torch

_FIELDS = ("ids", "lengths", "generated", "limits")
_HOST_ONLY = ("draft_len", "hits", "trials")  # decisions only: each row's k and its acceptance counts
_DEVICE_ONLY = ("lag", "caps")  # read by the device round only (see the module docstring)


def to_device(values, device) -> torch.Tensor:
    """Host values (a numpy array) on the device without waiting for it. A copy from ordinary (pageable) host
    memory to a GPU makes the host wait until the GPU has finished all queued work: a host sync. Through pinned
    memory and non_blocking the copy is queued behind that work instead (the caching host allocator keeps the
    pinned block until the copy has run), so the round's one sync stays the only one."""
    tensor = torch.from_numpy(np.ascontiguousarray(values))
    device = torch.device(device)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def to_host(tensor: torch.Tensor) -> np.ndarray:
    """Device values on the host: one read (a sync on a GPU); a CPU tensor's own memory, not a copy."""
    return tensor.numpy() if tensor.device.type == "cpu" else tensor.cpu().numpy()


class PromptQueue:
    """Prompts waiting for a slot, by original index: FIFO, or shortest first with `sort_by_length`."""

    def __init__(self, prompt_lengths: np.ndarray, sort_by_length: bool = False):
        order = np.argsort(prompt_lengths, kind="stable") if sort_by_length else np.arange(len(prompt_lengths))
        self._order = order.astype(np.int64)
        self._next = 0

    def __len__(self) -> int:
        return len(self._order) - self._next

    def take(self, n: int) -> np.ndarray:
        taken = self._order[self._next : self._next + n]
        self._next += len(taken)
        return taken


class ActiveRows:
    """Per-slot state: original prompt index, committed length, tokens generated, last allowed position.

    A row's committed tokens occupy positions 0..length-1; the newest one (at length-1) is *pending*: the
    target has chosen it but not yet run it, so it is not in the target's cache.
    """

    def __init__(self, slots: int, device, scratch_id: int = 0, static_addresses: bool = False):
        self.device = device
        self.scratch_id = scratch_id  # the token-buffer row idle slots point at (static shapes)
        # inputs a compiled device round mutates: under CUDA graphs those must keep their addresses
        self.static_addresses = static_addresses
        for name in _FIELDS:
            setattr(self, name + "_h", np.zeros(slots, dtype=np.int64))
            setattr(self, name, torch.zeros(slots, dtype=torch.long, device=device))
        self.draft_len_h = np.zeros(slots, dtype=np.int64)  # each row's current k
        self.hits_h = np.zeros(slots)  # decayed accepted drafts (see speculation.Acceptance)
        self.trials_h = np.zeros(slots)  # decayed drafts tested: accepted ones plus the rejection, if any
        self.live_h = np.zeros(slots, dtype=bool)  # holds a prompt being decoded (False: empty or idle)
        self.live = torch.zeros(slots, dtype=torch.bool, device=device)
        self.lag = torch.ones(slots, dtype=torch.long, device=device)
        self.caps = torch.zeros(slots, dtype=torch.long, device=device)
        # [N + 1] tokens generated per prompt (the output's row lengths; the scratch row's entry is never read): a
        # row's entry follows its slot while it decodes and stays when it leaves. Every prompt's first token is
        # committed at admission, so 1 is right for one that ends there without ever taking a slot.
        self.generated_by_id = np.ones(scratch_id + 1, dtype=np.int64)
        # An empty slot is an idle row at position 0 with one committed (scratch) token, so that a forward
        # over every slot has valid positions before the slot is ever filled.
        self.idle(np.arange(slots))
        self._mark_static()

    def _mark_static(self) -> None:
        if self.static_addresses:
            for name in _FIELDS + ("live",) + _DEVICE_ONLY:
                torch._dynamo.mark_static_address(getattr(self, name))

    def __len__(self) -> int:
        return int(self.ids_h.shape[0])

    def place(self, slots: np.ndarray, ids: np.ndarray, lengths: np.ndarray, generated: np.ndarray,
              limits: np.ndarray, draft_len: int) -> None:
        """Put newly admitted prompts into `slots` (host and device copies alike)."""
        self.draft_len_h[slots] = draft_len
        self.hits_h[slots] = self.trials_h[slots] = 0.0
        self._set(slots, dict(ids=ids, lengths=lengths, generated=generated, limits=limits), live=True,
                  caps=draft_len)
        self.generated_by_id[ids] = generated

    def idle(self, slots: np.ndarray) -> None:
        """Slots that stay in the forward without a prompt: they draft and commit nothing; their queries write
        the scratch row's tokens and cache slots at or beyond their own length, which nothing reads."""
        lengths = np.maximum(self.lengths_h[slots], 1)
        self._set(slots, dict(ids=np.full(len(slots), self.scratch_id), lengths=lengths,
                              generated=np.zeros(len(slots), dtype=np.int64), limits=lengths), live=False, caps=0)

    def _set(self, slots: np.ndarray, values: dict, live: bool, caps: int) -> None:
        index = to_device(slots, self.device)
        for name in _FIELDS:
            getattr(self, name + "_h")[slots] = values[name]
            getattr(self, name)[index] = to_device(np.asarray(values[name], dtype=np.int64), self.device)
        self.live_h[slots] = live
        self.live[index] = live
        # a placed row's prefill ran its prompt, so its draft lacks the pending first token only; an idle row's draft
        # input starts at its own length - 1 >= 0
        self.lag[index] = 1
        self.caps[index] = caps

    def budgets(self, max_new_tokens: int) -> np.ndarray:  # [B] drafts each row may use this round
        """A round yields up to budget+1 tokens; no row drafts more than it still needs; idle rows draft nothing."""
        return np.where(self.live_h, np.minimum(self.draft_len_h, max_new_tokens - self.generated_h - 1), 0)

    def adapt(self, accepted: np.ndarray, planned: np.ndarray, schedule: str, cap: int) -> None:
        """transformers' heuristic draft length, per row: +2 after a fully accepted draft, -1 otherwise (>= 1).

        `planned` is the round's budget before a confidence threshold cut it: a draft stopped for low
        confidence counts as not fully accepted, as in transformers. A row planned to draft nothing this
        round (speculation off, or its last token) keeps its k."""
        if schedule in ("heuristic", "heuristic_transient"):
            grown = np.where(accepted >= planned, self.draft_len_h + 2, self.draft_len_h - 1)
            self.draft_len_h = np.where(planned > 0, np.clip(grown, 1, cap), self.draft_len_h)

    def set_caps(self) -> None:
        """Each row's k on the device, after the heuristic schedule changed it on the host."""
        self.caps.copy_(to_device(self.draft_len_h, self.device))  # in place: a compiled round's input

    def absorb(self, count_h: np.ndarray, finished_h: np.ndarray) -> None:
        """The host copies follow a device round (whose program advanced the device tensors itself)."""
        self.lengths_h = self.lengths_h + count_h
        self.generated_h = self.generated_h + count_h
        self.live_h = self.live_h & ~finished_h.astype(bool)
        self.generated_by_id[self.ids_h] = self.generated_h

    def advance(self, count_h: np.ndarray, count: torch.Tensor) -> None:  # [B], [B]: tokens each row kept
        self.lengths_h = self.lengths_h + count_h
        self.generated_h = self.generated_h + count_h
        if self.static_addresses:  # in place: inputs of a compiled program (CUDA graphs) keep their addresses
            self.lengths.add_(count)
            self.generated.add_(count)
        else:
            self.lengths = self.lengths + count
            self.generated = self.generated + count
        self.generated_by_id[self.ids_h] = self.generated_h

    def keep(self, keep: np.ndarray) -> torch.Tensor:
        """Keep only slots `keep` (in order); returns them as a device index for the caches."""
        index = torch.as_tensor(keep, device=self.device)
        self.live_h, self.live = self.live_h[keep], self.live[index]
        for name in _HOST_ONLY:
            setattr(self, name + "_h", getattr(self, name + "_h")[keep])
        for name in _FIELDS:
            setattr(self, name + "_h", getattr(self, name + "_h")[keep])
            setattr(self, name, getattr(self, name)[index])
        for name in _DEVICE_ONLY:
            setattr(self, name, getattr(self, name)[index])
        self._mark_static()
        return index
