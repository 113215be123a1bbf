"""Which of transformers' logits processors the batch loop applies, and how.

Sampling warpers (temperature, top-k, top-p, min-p, typical, epsilon, eta) look at each row's scores only,
never at its tokens: they apply to any stack of positions of any rows at once. They shape both the draft's
distribution q and the target's p, as in transformers' assisted generation. Processors that read the prefix
(repetition penalty, n-gram bans, min length, ...) are refused for now (validation.py).
"""

from __future__ import annotations

import torch
from transformers.generation.logits_process import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

ROW_LOCAL_WARPERS = (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, MinPLogitsWarper,
                     TypicalLogitsWarper, EpsilonLogitsWarper, EtaLogitsWarper)


def prefix_processors(logits_processor) -> list:
    """The processors that read the tokens before each position (those the loop cannot apply yet)."""
    return [p for p in logits_processor or [] if not isinstance(p, ROW_LOCAL_WARPERS)]


def warp(logits: torch.Tensor, warpers) -> torch.Tensor:  # [..., V] -> [..., V] float32
    """The processed scores at every position (what transformers reports as `scores` when sampling)."""
    shape = logits.shape
    scores = logits.reshape(-1, shape[-1]).float()
    no_ids = torch.empty((scores.shape[0], 0), dtype=torch.long, device=scores.device)
    for warper in warpers:
        scores = warper(no_ids, scores)
    return scores.reshape(shape)


def probabilities(logits: torch.Tensor, warpers) -> torch.Tensor:  # [..., V] -> [..., V] float32
    """The sampling distribution at every position: warpers applied row by row, then softmax."""
    return torch.softmax(warp(logits, warpers), -1)
