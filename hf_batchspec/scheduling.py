"""Which rows are in the forward batch, and the per-row counters the decode loop advances.

Each counter lives twice: a numpy array on the host (for decisions: draft budgets, kv lengths, which rows
finished) and a tensor on the device (for building inputs without a sync). Both are advanced from the same
per-round values, which the loop brings to the host once per round.
"""

from __future__ import annotations

import numpy as np
import torch


class ActiveRows:
    """Rows being decoded: original index, committed length, tokens generated, last allowed position.

    A row's committed tokens occupy positions 0..length-1; the newest one (at length-1) is *pending*: the
    target has chosen it but not yet run it, so it is not in the target's cache.
    """

    def __init__(self, ids: np.ndarray, lengths: np.ndarray, generated: np.ndarray, limits: np.ndarray, device):
        self.device = device
        self.ids_h = np.asarray(ids, dtype=np.int64)
        self.lengths_h = np.asarray(lengths, dtype=np.int64)
        self.generated_h = np.asarray(generated, dtype=np.int64)
        self.limits_h = np.asarray(limits, dtype=np.int64)
        self._to_device()

    def _to_device(self) -> None:
        as_t = lambda a: torch.as_tensor(a, device=self.device)  # noqa: E731
        self.ids = as_t(self.ids_h)
        self.lengths = as_t(self.lengths_h)
        self.generated = as_t(self.generated_h)
        self.limits = as_t(self.limits_h)

    def __len__(self) -> int:
        return int(self.ids_h.shape[0])

    def budgets(self, k: int, max_new_tokens: int) -> np.ndarray:  # [B] drafts each row may use this round
        """A round yields up to budget+1 tokens; no row drafts more than it still needs."""
        return np.minimum(k, max_new_tokens - self.generated_h - 1)

    def advance(self, count_h: np.ndarray, count: torch.Tensor) -> None:
        self.lengths_h = self.lengths_h + count_h
        self.generated_h = self.generated_h + count_h
        self.lengths = self.lengths + count
        self.generated = self.generated + count

    def keep(self, keep: np.ndarray) -> torch.Tensor:
        """Keep only rows `keep` (local indices, in order); returns them as a device index for the caches."""
        self.ids_h, self.lengths_h = self.ids_h[keep], self.lengths_h[keep]
        self.generated_h, self.limits_h = self.generated_h[keep], self.limits_h[keep]
        index = torch.as_tensor(keep, device=self.device)
        self.ids, self.lengths = self.ids[index], self.lengths[index]
        self.generated, self.limits = self.generated[index], self.limits[index]
        return index
