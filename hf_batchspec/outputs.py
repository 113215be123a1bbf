"""Collecting what `output_scores` / `output_logits` ask for, kept out of the decode loop's logic.

transformers returns one `[B, V]` tensor per generation step. Here rows advance by different amounts per
round, so the recorder keeps a `[N, max_new + k + 1, V]` buffer per kind and writes each round's positions
at each row's own step index; the tuple is cut from it at the end. A row's entries after its last token
are 0 (transformers keeps computing finished rows; we do not).
"""

from __future__ import annotations

import numpy as np
import torch


class ScoreRecorder:
    def __init__(self, n_rows: int, steps: int, want_scores: bool, want_logits: bool, device):
        self.n_rows, self.steps, self.device = n_rows, steps, device
        self.want = {"scores": want_scores, "logits": want_logits}
        self.buffers: dict[str, torch.Tensor] = {}

    @property
    def active(self) -> bool:
        return any(self.want.values())

    def record(
        self,
        ids: torch.Tensor,  # [b] original rows
        start: torch.Tensor,  # [b] new tokens each row had before these positions
        logits: torch.Tensor,  # [b, T, V] the target's raw logits at the positions
        scores: torch.Tensor,  # [b, T, V] the processed scores the tokens were chosen from
    ) -> None:
        steps = start.unsqueeze(1) + torch.arange(logits.shape[1], device=start.device)  # [b, T]
        for kind, values in (("scores", scores), ("logits", logits)):
            if not self.want[kind]:
                continue
            if kind not in self.buffers:
                self.buffers[kind] = torch.zeros((self.n_rows, self.steps, values.shape[-1]), dtype=torch.float32,
                                                 device=self.device)
            self.buffers[kind][ids.unsqueeze(1), steps] = values.float().to(self.device)

    def tuples(self, new_tokens: np.ndarray) -> dict[str, tuple[torch.Tensor, ...] | None]:
        """One `[N, V]` tensor per step up to the longest row, zero past each row's end."""
        width = int(new_tokens.max())
        alive = torch.as_tensor(new_tokens, device=self.device).unsqueeze(1) > torch.arange(width, device=self.device)
        out = {}
        for kind, wanted in self.want.items():
            if not wanted:
                out[kind] = None
                continue
            rows = self.buffers[kind][: len(new_tokens), :width]  # rows past N are scratch (idle slots write there)
            buffer = torch.where(alive.unsqueeze(-1), rows, 0.0)  # (-inf * 0 is nan)
            out[kind] = tuple(buffer[:, step] for step in range(width))
        return out
