"""Prompt lookup drafts for a whole batch: a pure function, no model, no host sync.

Prompt lookup decoding (transformers' `PromptLookupCandidateGenerator`, batched) drafts by copying: a row whose
last n tokens occurred earlier in its own committed tokens proposes what followed that occurrence.
"""

from __future__ import annotations

import torch


def ngram_drafts(
    tokens: torch.Tensor,  # [N, T] token buffer: row r's committed tokens are tokens[r, :length]
    ids: torch.Tensor,  # [B] buffer row each batch row reads
    lengths: torch.Tensor,  # [B] committed tokens per batch row, 1 <= lengths[b] <= T
    k: int,  # drafts wanted per row
    max_ngram: int,  # longest n-gram matched (transformers' max_matching_ngram_size)
    budget: torch.Tensor | None = None,  # [B] at most this many drafts for row b (0 = none); None = k for all rows
) -> tuple[torch.Tensor, torch.Tensor]:  # ([B, k] drafts, [B] counts in 0..k)
    """Propose up to k drafts per row by matching the row's suffix n-gram against its earlier tokens.

    For n = max_ngram..1 the suffix t[L-n:L] is looked up among earlier windows t[s:s+n] with s + n <= L - 1
    (at least one committed token follows); the most recent match (largest s) of the largest n wins, and the
    draft is t[s+n : s+n+c], c = min(k, L - (s+n), budget). The continuation may overlap the suffix.

    Why this shape: a row with no match drafts nothing this round (count 0) instead of guessing, so the target
    verifies only its pending token; drafts past a row's count repeat its last token, a valid id that callers
    ignore. The draft is a deterministic copy, so when sampling its distribution q is one-hot on the draft.
    Everything is masks and reductions over the batch (a Python loop over n only), so it runs on any device.
    """
    rows = tokens[ids].long()  # [B, T]
    B, T = rows.shape
    starts = torch.arange(T, device=rows.device)  # [T]
    found = torch.zeros(B, dtype=torch.bool, device=rows.device)  # [B] a larger n already matched
    begin = torch.zeros(B, dtype=torch.long, device=rows.device)  # [B] first proposed column, s + n
    for n in range(min(max_ngram, T - 1), 0, -1):  # an earlier window needs s + n <= L - 1 <= T - 1
        offsets = torch.arange(n, device=rows.device)  # [n]
        suffix = rows.gather(1, (lengths.unsqueeze(1) - n + offsets).clamp(min=0))  # [B, n] (junk where L <= n)
        windows = rows.unfold(1, n, 1)  # [B, T-n+1, n] windows[b, s] = t[s:s+n]
        valid = starts[: T - n + 1] <= (lengths - 1 - n).unsqueeze(1)  # [B, T-n+1] none when L <= n
        match = (windows == suffix.unsqueeze(1)).all(-1) & valid  # [B, T-n+1]
        last = torch.where(match, starts[: T - n + 1], -1).max(-1).values  # [B] most recent start, -1 = none
        hit = (last >= 0) & ~found  # [B]
        begin = torch.where(hit, last + n, begin)
        found |= hit
    cap = torch.full_like(lengths, k) if budget is None else budget.clamp(max=k)  # [B]
    counts = torch.where(found, torch.minimum(lengths - begin, cap), 0).clamp(min=0)  # [B]
    cols = torch.arange(k, device=rows.device)  # [k]
    use = cols < counts.unsqueeze(1)  # [B, k]
    index = torch.where(use, begin.unsqueeze(1) + cols, (lengths - 1).unsqueeze(1))  # [B, k] past count: last token
    return rows.gather(1, index), counts
