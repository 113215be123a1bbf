"""Stopping criteria beyond EOS and max length, evaluated after every kept token with that row's own prefix.

transformers' criteria (stop strings, max_time, custom `StoppingCriteria`) look at a rectangular `input_ids`
after each step. A round keeps several tokens per row, so each candidate position j of row b is checked on
row b's exact sequence up to and including candidate j; the first position that stops a row cuts the row
there, and nothing after it is kept. Criteria are called once per distinct sequence length, only when the
call has such criteria. EOS and the token budget are handled natively (acceptance.truncate_at_stop).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria


def extra_criteria(stopping_criteria) -> list:
    """The criteria the loop must call (EOS and max length it applies itself, per row)."""
    return [c for c in stopping_criteria or [] if not isinstance(c, (EosTokenCriteria, MaxLengthCriteria))]


def stop_matrix(
    criteria: list,
    tokens: torch.Tensor,  # [N, S] token ids by original row and position, candidates already written
    ids: np.ndarray,  # [B] original rows
    lengths: np.ndarray,  # [B] committed tokens before the first candidate
    positions: int,  # T candidates per row
) -> torch.Tensor:  # [B, T] candidate j of row b ends the row
    seq_lengths = (lengths[:, None] + np.arange(1, positions + 1)).reshape(-1)  # [B*T] including the candidate
    rows = np.repeat(ids, positions)
    stops = torch.zeros(seq_lengths.shape[0], dtype=torch.bool, device=tokens.device)
    for length in np.unique(seq_lengths):
        where = np.flatnonzero(seq_lengths == length)
        input_ids = tokens[torch.as_tensor(rows[where], device=tokens.device), :length]
        hit = torch.zeros(len(where), dtype=torch.bool, device=tokens.device)
        for criterion in criteria:
            hit |= criterion(input_ids, None).to(tokens.device).bool()
        stops[torch.as_tensor(where, device=tokens.device)] = hit
    return stops.view(len(ids), positions)
