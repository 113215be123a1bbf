"""Which drafted tokens a round keeps: pure functions over the whole batch.

Names (used across the package): the draft proposes `k` tokens per row (`draft_tokens`, `[B, k]`); the
target scores the pending token and the k drafts in one forward and its greedy choice at each of those
k+1 positions is `target_tokens` (`[B, k+1]`). Draft token i is **accepted** while it equals target token i;
the target's token right after the accepted prefix is kept too: a **correction** at the first mismatch, the
**bonus** token when every draft was accepted. Since accepted drafts equal the target's tokens, a row's
emitted tokens are always `target_tokens[:, :n + 1]`.
"""

from __future__ import annotations

import torch


def greedy_accept(
    draft_tokens: torch.Tensor,  # [B, k]
    target_tokens: torch.Tensor,  # [B, k+1]
    budget: torch.Tensor,  # [B] drafts each row may use (<= k); the rest of its drafts are padding
) -> torch.Tensor:  # [B] accepted drafts per row
    k = draft_tokens.shape[1]
    matches = draft_tokens == target_tokens[:, :k]  # [B, k]
    usable = torch.arange(k, device=budget.device) < budget.unsqueeze(1)  # [B, k]
    # length of the all-True prefix of each row: count positions before the first failure
    return ((~(matches & usable)).cumsum(-1) == 0).sum(-1)


def truncate_at_stop(
    tokens: torch.Tensor,  # [B, T] emitted candidates, the first `count[b]` of row b are real
    count: torch.Tensor,  # [B]
    stop_ids: torch.Tensor | None,  # [E] token ids that end a row
) -> tuple[torch.Tensor, torch.Tensor]:  # ([B] new count, [B] row hit a stop id)
    """Cut each row just after its first stop id within its first `count` tokens: tokens after an EOS inside
    an accepted block must not leak into the output."""
    if stop_ids is None or stop_ids.numel() == 0:
        return count, torch.zeros_like(count, dtype=torch.bool)
    cols = torch.arange(tokens.shape[1], device=tokens.device)  # [T]
    is_stop = torch.isin(tokens, stop_ids) & (cols < count.unsqueeze(1))  # [B, T]
    hit = is_stop.any(-1)
    first = torch.where(is_stop, cols, tokens.shape[1]).min(-1).values  # [B]
    return torch.where(hit, first + 1, count), hit
