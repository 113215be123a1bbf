"""The batch speculative greedy loop (EQSPEC on the ragged cache).

Outline of one round, for the B active rows at once:
  1. draft:   the draft model proposes up to k tokens per row (k forwards of 1 token; the first also re-feeds
              the previous token, which the draft has not seen when the last round's drafts were all accepted)
  2. verify:  the target runs [pending, d_1..d_k] in one forward and picks its own token at each position
  3. accept:  keep the matching prefix of drafts plus the target's next token; cut at a stop id
  4. commit:  append the kept tokens to each row; the caches roll back by length alone
  5. retire:  rows that hit a stop id or their token budget leave both caches
The only host sync of a round is step 4 bringing the per-row counts to the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .acceptance import greedy_accept, truncate_at_stop
from .masks import packed_positions
from .runner import ModelRunner
from .scheduling import ActiveRows
from .stats import BatchSpecStats


@dataclass(frozen=True)
class DecodeSettings:
    max_new_tokens: int
    num_assistant_tokens: int  # k: drafts per row and round
    stop_ids: torch.Tensor | None  # [E] ids that end a row (every eos_token_id)


@dataclass
class DecodeResult:
    tokens: torch.Tensor  # [N, S] every row's tokens in the slot = position layout
    prompt_lengths: np.ndarray  # [N]
    new_tokens: np.ndarray  # [N] generated per row, through its stop id
    stats: BatchSpecStats


def speculative_greedy(
    target: torch.nn.Module,
    draft: torch.nn.Module,
    prompts: torch.Tensor,  # [N, P] right-packed: row b's prompt in columns 0..len_b-1
    prompt_lengths: np.ndarray,  # [N]
    settings: DecodeSettings,
    stats: BatchSpecStats,
) -> DecodeResult:
    n_rows, width = prompts.shape
    k, max_new = settings.num_assistant_tokens, settings.max_new_tokens
    # Slots: a row's last real position is len + max_new - 2; verify padding may reach k past it.
    slots = width + max_new + k
    target_run = ModelRunner(target, n_rows, slots)
    draft_run = ModelRunner(draft, n_rows, slots)
    device = target_run.device
    stop_ids = None if settings.stop_ids is None else settings.stop_ids.to(device)

    tokens = torch.zeros((n_rows, slots), dtype=torch.long, device=device)  # [N, S]
    tokens[:, :width] = prompts.to(device)
    limits = prompt_lengths + max_new - 1
    rows = ActiveRows(np.arange(n_rows), prompt_lengths, np.zeros(n_rows), limits, device)

    first = _prefill(target_run, tokens[:, :width], rows, stats)  # [N]
    if max_new > 1:
        _prefill_draft(draft_run, tokens[:, :width], rows, stats)
    count, finished = _commit(tokens, rows, first[:, None], torch.ones_like(first), stop_ids, max_new)
    rows.advance(np.ones(n_rows, dtype=np.int64), count)
    stats.new_tokens += 1
    stats.target_tokens += 1
    _retire(finished.cpu().numpy(), rows, [target_run, draft_run], stats)

    while len(rows):
        budget_h = rows.budgets(k, max_new)  # [B]
        k_round = int(budget_h.max())
        budget = torch.as_tensor(budget_h, device=device)
        drafts = _draft(draft_run, tokens, rows, k_round)  # [B, k_round]
        stats.draft_forward_calls += k_round
        target_tokens = _verify(target_run, tokens, rows, drafts)  # [B, k_round+1]
        accepted = greedy_accept(drafts, target_tokens, budget)  # [B]
        count, finished = _commit(tokens, rows, target_tokens, accepted + 1, stop_ids, max_new)
        # The round's one host sync: counts decide budgets, cache lengths and which rows leave.
        acc_h, count_h, fin_h = torch.stack((accepted, count, finished.long())).cpu().numpy()
        stats.add_round(rows.ids_h, budget_h, np.minimum(acc_h, count_h), count_h)
        old_lengths = rows.lengths_h
        rows.advance(count_h, count)
        # Rollback by length: the target keeps pending + accepted drafts; the draft keeps what it ran
        # (pending + d_1..d_{k-1}) that was accepted. Rejected slots are just beyond the new lengths.
        target_run.cache.set_lengths(rows.lengths_h - 1)
        draft_run.cache.set_lengths(np.minimum(rows.lengths_h - 1, old_lengths + k_round - 1))
        _retire(fin_h.astype(bool), rows, [target_run, draft_run], stats)

    return DecodeResult(tokens, prompt_lengths, stats.new_tokens.copy(), stats)


def _prefill(run: ModelRunner, prompts: torch.Tensor, rows: ActiveRows, stats: BatchSpecStats) -> torch.Tensor:
    """Target prefill over right-packed prompts; returns each row's first new token `[N]`."""
    width = prompts.shape[1]
    last = rows.lengths - 1  # [N] column of each row's last prompt token
    # Only the columns some row ends on need logits: up to N of them instead of the whole prompt.
    keep_h = np.unique(rows.lengths_h - 1)
    keep = torch.as_tensor(keep_h, device=run.device)
    logits = run.forward(prompts, packed_positions(rows.lengths, width), rows.limits, width, keep=keep)
    column = torch.searchsorted(keep, last.to(run.device))  # [N] index of each row's column in `keep`
    first = logits[torch.arange(len(rows), device=logits.device), column.to(logits.device)].argmax(-1)
    run.cache.set_lengths(rows.lengths_h)
    stats.target_forward_calls += 1
    stats.target_prefill_calls += 1
    return first.to(prompts.device)


def _prefill_draft(run: ModelRunner, prompts: torch.Tensor, rows: ActiveRows, stats: BatchSpecStats) -> None:
    # The draft's logits over the prompt are never used: its first draft re-feeds the last prompt token.
    width = prompts.shape[1]
    run.forward(prompts, packed_positions(rows.lengths, width), rows.limits, width, keep=1)
    run.cache.set_lengths(rows.lengths_h)
    stats.draft_forward_calls += 1
    stats.draft_prefill_calls += 1


def _draft(run: ModelRunner, tokens: torch.Tensor, rows: ActiveRows, k: int) -> torch.Tensor:  # [B, k]
    if k == 0:
        return tokens.new_empty((len(rows), 0))
    top = int(rows.lengths_h.max())
    # First step feeds the last two committed tokens: after a fully accepted round the draft never ran its
    # own last draft (the target's bonus token came after it), so the one before the pending token may be
    # missing from its cache. Re-running it when it is there rewrites the same slot with the same prefix.
    positions = rows.lengths.unsqueeze(1) - 2 + torch.arange(2, device=tokens.device)  # [B, 2]
    step_input = tokens[rows.ids.unsqueeze(1), positions]
    drafts = []
    for j in range(k):
        logits = run.forward(step_input, positions, rows.limits, top + j, keep=1)  # [B, 1, V]
        drafts.append(logits[:, -1].argmax(-1))
        step_input = drafts[-1].unsqueeze(1)
        positions = (rows.lengths + j).unsqueeze(1)  # d_{j+1} sits at position length + j
    return torch.stack(drafts, 1).to(tokens.device)


def _verify(run: ModelRunner, tokens: torch.Tensor, rows: ActiveRows, drafts: torch.Tensor) -> torch.Tensor:
    k = drafts.shape[1]
    positions = rows.lengths.unsqueeze(1) - 1 + torch.arange(k + 1, device=tokens.device)  # [B, k+1]
    pending = tokens[rows.ids, rows.lengths - 1].unsqueeze(1)  # [B, 1]
    top = int(rows.lengths_h.max())
    logits = run.forward(torch.cat((pending, drafts), 1), positions, rows.limits, top + k)  # [B, k+1, V]
    return logits.argmax(-1).to(tokens.device)


def _commit(
    tokens: torch.Tensor,  # [N, S]
    rows: ActiveRows,
    candidates: torch.Tensor,  # [B, T] the target's tokens for this round
    count: torch.Tensor,  # [B] how many of them the round keeps before stop ids
    stop_ids: torch.Tensor | None,
    max_new: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # ([B] kept, [B] row finished)
    """Write the round's tokens after each row's committed ones and decide which rows are done.

    All T candidates are written: those past `count` lie beyond the row's new length and are overwritten by
    later rounds, never read (the output takes `new_tokens` per row).
    """
    count, stopped = truncate_at_stop(candidates, count, stop_ids)
    cols = rows.lengths.unsqueeze(1) + torch.arange(candidates.shape[1], device=tokens.device)  # [B, T]
    tokens[rows.ids.unsqueeze(1), cols] = candidates
    return count, stopped | (rows.generated + count >= max_new)


def _retire(finished: np.ndarray, rows: ActiveRows, runs: list[ModelRunner], stats: BatchSpecStats) -> None:
    """Drop finished rows from the batch and from every cache (one index_select per layer)."""
    if not finished.any():
        return
    keep = np.flatnonzero(~finished)
    index = rows.keep(keep)
    if len(keep):
        for run in runs:
            run.cache.select_rows(index)
        stats.row_selections += 1
