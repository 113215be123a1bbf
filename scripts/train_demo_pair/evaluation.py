"""Held-out measures of a draft against the target: top-1 agreement (the chance one greedy draft is accepted) and
cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from .bpe import VOCAB_SIZE


@torch.no_grad()
def evaluate(target: LlamaForCausalLM, draft: LlamaForCausalLM, windows: torch.Tensor,
             batch: int = 32) -> dict[str, float]:
    """Held-out cross-entropy of both models and draft/target top-1 agreement.

    Top-1 agreement (fraction of positions where both argmaxes coincide) is the
    quantity that governs greedy speculative decoding: it is the probability
    that a single drafted token is accepted.
    """
    target.eval()
    draft.eval()
    agree = total = 0
    ce_t = ce_d = 0.0
    for i in range(0, windows.size(0), batch):
        w = windows[i:i + batch]
        labels = w[:, 1:].reshape(-1)
        lt = target(input_ids=w[:, :-1]).logits.reshape(-1, VOCAB_SIZE)
        ld = draft(input_ids=w[:, :-1]).logits.reshape(-1, VOCAB_SIZE)
        agree += (lt.argmax(-1) == ld.argmax(-1)).sum().item()
        total += labels.numel()
        ce_t += F.cross_entropy(lt, labels, reduction="sum").item()
        ce_d += F.cross_entropy(ld, labels, reduction="sum").item()
    return {"top1_agreement": agree / total, "target_heldout_ce": ce_t / total,
            "draft_heldout_ce": ce_d / total, "heldout_tokens": total}


@torch.no_grad()
def continuation_top1(model: LlamaForCausalLM, ids: torch.Tensor, lengths: torch.Tensor,
                      cont_start: torch.Tensor, batch: int = 64) -> float:
    """Fraction of continuation tokens that ``model`` predicts (argmax) from the text before them: for greedy
    decoding, the chance that one drafted token is the target's, given that the text so far is."""
    model.eval()
    hits = total = 0
    for i in range(0, ids.size(0), batch):
        rows, n, start = ids[i:i + batch], lengths[i:i + batch], cont_start[i:i + batch]
        pred = model(input_ids=rows[:, :-1]).logits.argmax(-1)  # pred[:, j] guesses rows[:, j + 1]
        pos = torch.arange(1, rows.size(1))[None, :]
        scored = (pos >= start.clamp(min=1)[:, None]) & (pos < n[:, None])
        hits += ((pred == rows[:, 1:]) & scored).sum().item()
        total += scored.sum().item()
    return hits / max(1, total)


