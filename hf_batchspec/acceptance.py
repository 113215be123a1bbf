"""Which drafted tokens a round keeps: pure functions over the whole batch, greedy and sampling.

Names (used across the package): the draft proposes `k` tokens per row (`draft_tokens`, `[B, k]`); the
target scores the pending token and the k drafts in one forward, `k+1` positions per row. A row's first
`accepted` drafts are kept, then one token of the target's own right after them: a **correction** at the first
rejection, the **bonus** token when every draft was accepted.

- Greedy (`greedy_accept`): draft i is accepted while it equals the target's argmax at position i
  (`target_tokens`, `[B, k+1]`), so a row's kept tokens are always `target_tokens[:, :accepted + 1]`.
- Sampling (`speculative_sample`): draft i is accepted with probability min(1, p_i(d_i) / q_i(d_i)); the token
  after the accepted prefix is drawn from the residual max(0, p - q) after a rejection, or from p after a fully
  accepted budget, so the kept tokens are distributed as sampling from the target alone.
- `truncate_at_stop` then cuts each row just after its first stop.
"""

from __future__ import annotations

import torch


def greedy_accept(
    draft_tokens: torch.Tensor,  # [B, k]
    target_tokens: torch.Tensor,  # [B, k+1]
    budget: torch.Tensor,  # [B] drafts each row may use (<= k); the rest of its drafts are padding
) -> torch.Tensor:  # [B] accepted drafts per row
    k = draft_tokens.shape[1]
    if k == 0:  # a plain step (speculation off): nothing to compare
        return torch.zeros_like(budget)
    matches = draft_tokens == target_tokens[:, :k]  # [B, k]
    usable = torch.arange(k, device=budget.device) < budget.unsqueeze(1)  # [B, k]
    # length of the all-True prefix of each row: count positions before the first failure
    return ((~(matches & usable)).cumsum(-1) == 0).sum(-1)


def truncate_at_stop(
    tokens: torch.Tensor,  # [B, T] emitted candidates, the first `count[b]` of row b are real
    count: torch.Tensor,  # [B]
    stop_ids: torch.Tensor | None,  # [E] token ids that end a row
    stops: torch.Tensor | None = None,  # [B, T] other reasons a candidate ends its row (stopping criteria)
) -> tuple[torch.Tensor, torch.Tensor]:  # ([B] new count, [B] row stopped)
    """Cut each row just after its first stop within its first `count` tokens: tokens after an EOS (or a
    completed stop string) inside an accepted block must not leak into the output."""
    if (stop_ids is None or stop_ids.numel() == 0) and stops is None:
        return count, torch.zeros_like(count, dtype=torch.bool)
    if tokens.shape[1] == 1 and stops is None:  # a plain step: a stop is the row's one token, which it keeps
        return count, torch.isin(tokens[:, 0], stop_ids) & (count > 0)
    cols = torch.arange(tokens.shape[1], device=tokens.device)  # [T]
    is_stop = torch.zeros_like(tokens, dtype=torch.bool) if stops is None else stops.clone()
    if stop_ids is not None and stop_ids.numel():
        is_stop |= torch.isin(tokens, stop_ids)
    is_stop &= cols < count.unsqueeze(1)  # [B, T]
    hit = is_stop.any(-1)
    first = torch.where(is_stop, cols, tokens.shape[1]).min(-1).values  # [B]
    return torch.where(hit, first + 1, count), hit


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:  # [..., V] -> [...]
    """One draw per row from (unnormalised) `probs`, without a host sync: argmax of p / E with E ~ Exp(1)
    (the exponential race; scale-free, so residuals need no normalisation)."""
    noise = torch.empty_like(probs, dtype=torch.float32).exponential_(generator=generator)
    return (probs / noise.clamp_(min=torch.finfo(torch.float32).tiny)).argmax(-1)


def one_hot(drafts: torch.Tensor, vocab: int, dtype: torch.dtype) -> torch.Tensor:  # [B, k] -> [B, k, V]
    """q of a deterministic drafter (prompt lookup): all mass on the draft. Speculative sampling then accepts a
    draft with probability p(d) and draws a rejection's replacement from p without d: still exact."""
    q = torch.zeros((*drafts.shape, vocab), dtype=dtype, device=drafts.device)
    return q.scatter_(-1, drafts.unsqueeze(-1), 1.0)


def speculative_sample(
    draft_tokens: torch.Tensor,  # [B, k] sampled from draft_probs
    draft_probs: torch.Tensor,  # [B, k, V] q: the draft's distribution at each drafted position
    target_probs: torch.Tensor,  # [B, k+1, V] p: the target's distribution at the pending token and each draft
    budget: torch.Tensor,  # [B] drafts each row may use (<= k)
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # ([B] accepted drafts, [B] the token that follows them)
    """Speculative rejection sampling, every row at once: the kept tokens are distributed as sampling from the
    target alone.

    Draft i is accepted with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection the next token is
    drawn from the residual max(0, p - q) (renormalised); after a fully accepted budget, the bonus token is
    drawn from p. Drafts beyond a row's budget count as not offered.
    """
    batch, k = draft_tokens.shape
    rows = torch.arange(batch, device=draft_tokens.device)
    p_draft = target_probs[:, :k].gather(-1, draft_tokens.unsqueeze(-1)).squeeze(-1)  # [B, k]
    q_draft = draft_probs.gather(-1, draft_tokens.unsqueeze(-1)).squeeze(-1)  # [B, k]
    u = torch.rand((batch, k), generator=generator, device=draft_tokens.device)
    offered = torch.arange(k, device=budget.device) < budget.unsqueeze(1)  # [B, k]
    accept = (u * q_draft < p_draft) & offered  # u < p/q without dividing by q
    accepted = ((~accept).cumsum(-1) == 0).sum(-1)  # [B] length of the accepted prefix
    p_next = target_probs[rows, accepted]  # [B, V]
    q_padded = torch.cat((draft_probs, draft_probs.new_zeros((batch, 1, draft_probs.shape[-1]))), 1)  # [B, k+1, V]
    rejected = (accepted < budget).unsqueeze(1)  # [B, 1] a draft was offered at `accepted` and refused
    q_next = torch.where(rejected, q_padded[rows, accepted], 0.0)
    residual = (p_next - q_next).clamp(min=0)
    # p == q at that position (possible only in rounding) makes a rejection impossible; p is then the exact choice
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p_next)
    return accepted, sample(residual, generator)
