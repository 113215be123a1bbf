"""The round the host does not wait for: a whole greedy round, commit included, as one program over device row
state, and its results read one round late.

Why: on a GPU a compiled round takes about a millisecond of device time, and a round that hands its counts to the
host before the next can start leaves the device idle while the host reads them, updates its bookkeeping and builds
the next round's inputs (measured on an H200: busy 1.07 ms of an 8.1 ms round, docs/results.md "GPU"). The fastest
engines keep the rows' lengths on the device and read each round's results a round late (vLLM's async output,
SGLang's future map, TensorRT-LLM's overlap scheduler). Here:

- `device_round` is one function of device tensors, compiled once per draft width: it builds the draft's first
  input and each row's budget from the row state, runs the draft's k steps (`greedy_steps`), the verify with
  acceptance and the cut at a stop (`decoding.verify_greedy`), writes the candidates into the token buffer and
  advances the row state in place: lengths, generated counts, live flags and each row's draft lag. Nothing of the
  round runs outside it, so the next round needs nothing from the host but its width.
- `lookup_round` is the same round for prompt lookup: the n-gram match (`lookup.ngram_drafts`) in place of the draft's
  steps.
- `LaggedRead` brings the round's `[6, B]` snapshot (accepted, kept, finished, budget, live at launch, asked) to the host
  without blocking: on CUDA a copy to pinned memory queued behind the round, with an event; the host waits for that
  event only after it has launched the next round. Bookkeeping (statistics, the caches' host lengths, refill,
  departures, `speculation="auto"`) takes the snapshot.

A row that finished in round t is idle in round t+1 (the program cleared its live flag), so the output is the same
as with the snapshot read at once: on CUDA (on a CPU, where the device does not run ahead, the read comes at once)
the lag costs one round of an idle slot per finished row while prompts wait
(`BatchSpecStats.idle_slot_rounds`), and one round with no live row at the end of a call when the last rows stop at
a stop id (`BatchSpecStats.lagged_idle_rounds`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .acceptance import greedy_accept, truncate_at_stop
from .drafters.model import greedy_steps
from .lookup import ngram_drafts
from .runner import ModelRunner

# The draft's first step re-feeds the tokens it has not run: the pending token, and after a fully accepted round
# also its own last draft (never run). In a device round that is 1 or 2 tokens for every row (see `device_round`),
# so its first step has one width.
FIRST_STEP_WIDTH = 2
SNAPSHOT_FIELDS = ("accepted", "count", "finished", "budget", "live", "offered")
# Device types whose rounds are read a round late: where the device runs ahead of the host (CUDA), so the host can
# prepare round t+1 while round t runs. A CPU has run the program when its call returns: there the read comes at
# once, and a finished row's slot is refilled before the next round instead of idling through it. (The test suite
# adds "cpu", so that the lagged bookkeeping is exercised everywhere.)
LAGGED_DEVICES = ("cuda",)


def device_round(
    draft: ModelRunner,  # static shapes: every forward over all rows and the whole cache
    lag: torch.Tensor,  # [B] committed tokens the draft has not run, 1 or 2 (mutated)
    target: ModelRunner,
    k: int,  # drafts per row in this program (0: the draft only catches up, nothing is verified)
    tokens: torch.Tensor,  # [N+1, T] token ids by original row and position (mutated: the round's candidates)
    ids: torch.Tensor,  # [B] each slot's row of `tokens` (idle slots: the scratch row)
    lengths: torch.Tensor,  # [B] committed tokens per row, the last one pending (mutated)
    generated: torch.Tensor,  # [B] tokens generated per row (mutated)
    limits: torch.Tensor,  # [B] highest position id of each row
    live: torch.Tensor,  # [B] slots decoding a prompt (mutated: cleared for rows that finish)
    caps: torch.Tensor,  # [B] the most drafts each row may offer (its k)
    offer: torch.Tensor,  # [] drafts asked of every row this round (the batch-wide k before padding to `k`)
    stop_ids: torch.Tensor,  # [E] padded with -1 (`decoding.static_stop_ids`)
    max_new_tokens: torch.Tensor,  # []
) -> torch.Tensor:  # [6, B] the round's snapshot, rows as in `SNAPSHOT_FIELDS`
    """One greedy round of every row with its commit, for torch.compile: draft, verify, accept, commit.

    The draft lag stays 1 or 2: after a round that ran s = max(k, 1) draft steps from lag 1 or 2, the draft has run
    every committed token through the pending one plus its drafts d_1..d_{s-1}, so of a row's `count` new tokens it
    lacks max(1, count - s + 1) <= 2 (count <= k + 1). Admission sets 1 (the prefill ran the prompt)."""
    device = tokens.device
    budget = round_budget(live, caps, offer, generated, max_new_tokens)
    columns = torch.arange(FIRST_STEP_WIDTH, device=device)
    positions = (lengths - lag).unsqueeze(1) + columns  # [B, 2] the lag's tokens, then padding for lag 1
    first_input = tokens[ids.unsqueeze(1), positions.clamp(min=0, max=tokens.shape[1] - 1)]
    steps = max(k, 1)
    drafts = greedy_steps(draft, first_input, positions, lengths, limits, lag - 1, steps)[:, :k]  # [B, k]
    pending = tokens[ids, lengths - 1].unsqueeze(1)  # [B, 1]
    accepted, candidates, count, finished = verify_greedy(target, pending, lengths, limits, generated, live, drafts,
                                                          budget, stop_ids, max_new_tokens)
    lag.copy_(torch.where(live, (count - steps + 1).clamp(min=1), lag))
    return commit(tokens, ids, lengths, generated, live, candidates, accepted, count, finished, budget, budget)


def lookup_round(
    max_ngram: int,  # the longest n-gram matched (transformers' max_matching_ngram_size)
    target: ModelRunner,  # static shapes: the forward covers all rows and the whole cache
    k: int,  # drafts per row in this program
    tokens: torch.Tensor,  # [N+1, T] token ids by original row and position (mutated: the round's candidates)
    ids: torch.Tensor,  # [B] each slot's row of `tokens` (idle slots: the scratch row)
    lengths: torch.Tensor,  # [B] committed tokens per row, the last one pending (mutated)
    generated: torch.Tensor,  # [B] tokens generated per row (mutated)
    limits: torch.Tensor,  # [B] highest position id of each row
    live: torch.Tensor,  # [B] slots decoding a prompt (mutated: cleared for rows that finish)
    caps: torch.Tensor,  # [B] the most drafts each row may offer (its k)
    offer: torch.Tensor,  # [] drafts asked of every row this round
    stop_ids: torch.Tensor,  # [E] padded with -1 (`decoding.static_stop_ids`)
    max_new_tokens: torch.Tensor,  # []
) -> torch.Tensor:  # [6, B] the round's snapshot, rows as in `SNAPSHOT_FIELDS`
    """A greedy round of prompt lookup with its commit, for torch.compile: the n-gram match (`lookup.ngram_drafts`,
    masks and reductions over the batch), verify, accept, commit. As the draft model's `device_round`: nothing of
    the round runs outside it, and the host reads its snapshot a round late. A row without a match offers no
    drafts (`budget` 0) but was asked for `offered`: its acceptance estimate counts those as drafts not accepted."""
    offered = round_budget(live, caps, offer, generated, max_new_tokens)
    drafts, budget = ngram_drafts(tokens, ids, lengths, k, max_ngram, offered)  # [B, k], [B] (k = 0: none)
    pending = tokens[ids, lengths - 1].unsqueeze(1)  # [B, 1]
    accepted, candidates, count, finished = verify_greedy(target, pending, lengths, limits, generated, live, drafts,
                                                          budget, stop_ids, max_new_tokens)
    return commit(tokens, ids, lengths, generated, live, candidates, accepted, count, finished, budget, offered)


def round_budget(
    live: torch.Tensor,  # [B] slots decoding a prompt
    caps: torch.Tensor,  # [B] each row's k
    offer: torch.Tensor,  # [] the batch-wide k of the round
    generated: torch.Tensor,  # [B] tokens generated per row
    max_new_tokens: torch.Tensor,  # []
) -> torch.Tensor:  # [B] drafts asked of each row (idle rows 0)
    """Each live row's drafts this round: its k, the round's, and what it still needs beyond the verify's own
    token, whichever is least."""
    budget = torch.where(live, torch.minimum(torch.minimum(caps, offer), max_new_tokens - generated - 1), 0)
    return budget.clamp(min=0)


def commit(
    tokens: torch.Tensor,  # [N+1, T] (mutated)
    ids: torch.Tensor,  # [B]
    lengths: torch.Tensor,  # [B] (mutated)
    generated: torch.Tensor,  # [B] (mutated)
    live: torch.Tensor,  # [B] (mutated)
    candidates: torch.Tensor,  # [B, k+1] the round's candidate tokens
    accepted: torch.Tensor,  # [B] drafts accepted
    count: torch.Tensor,  # [B] tokens kept
    finished: torch.Tensor,  # [B] rows that ended
    budget: torch.Tensor,  # [B] drafts each row offered
    offered: torch.Tensor,  # [B] drafts asked of each row
) -> torch.Tensor:  # [6, B] the round's snapshot
    """Step 4 on the device: every candidate is written (those past a row's kept count lie beyond its new length,
    never read), lengths and generated counts advance, finished rows stop being live. The snapshot is taken first,
    with each row's live flag at launch."""
    cols = lengths.unsqueeze(1) + torch.arange(candidates.shape[1], device=tokens.device)  # [B, k+1]
    tokens[ids.unsqueeze(1), cols] = candidates
    snapshot = torch.stack((accepted, count, finished.long(), budget, live.long(), offered))
    lengths.add_(count)
    generated.add_(count)
    live.logical_and_(~finished)
    return snapshot


def verify_greedy(
    target: ModelRunner,  # static shapes: the forward covers all rows and the whole cache
    pending: torch.Tensor,  # [B, 1] each row's newest committed token, which the target has not run
    lengths: torch.Tensor,  # [B] committed tokens per row (the last one pending)
    limits: torch.Tensor,  # [B] highest position id of each row
    generated: torch.Tensor,  # [B] tokens generated per row
    live: torch.Tensor,  # [B] slots decoding a prompt
    drafts: torch.Tensor,  # [B, k]
    budget: torch.Tensor,  # [B] drafts each row offers
    stop_ids: torch.Tensor,  # [E] padded with -1 (`static_stop_ids`)
    max_new_tokens: torch.Tensor,  # []
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # [B], [B, k+1], [B], [B]
    """Steps 2-3 of a greedy round as one function of device tensors, for torch.compile: the target runs the
    pending token and the drafts, the accepted prefix and the target's next token are kept, cut at a stop id.
    Returns (accepted drafts, candidates, kept count, finished): what `_verify`, `_accept` and `_commit`
    compute when processors or criteria need the host."""
    logits = target.forward(*verify_input(pending, drafts, lengths), limits, 0)  # [B, k+1, V]
    candidates = logits.argmax(-1).to(pending.device)  # accepted drafts equal the target's tokens
    accepted = greedy_accept(drafts, candidates, budget)
    return (accepted, candidates,
            *kept_and_finished(candidates, accepted + 1, stop_ids, None, live, generated, max_new_tokens))


def verify_input(
    pending: torch.Tensor,  # [B, 1]
    drafts: torch.Tensor,  # [B, k]
    lengths: torch.Tensor,  # [B] committed tokens per row (the last one pending)
) -> tuple[torch.Tensor, torch.Tensor]:  # [B, k+1] tokens, [B, k+1] their positions
    """The verify's query: the pending token and the drafts, at positions length-1 .. length+k-1."""
    if drafts.shape[1] == 0:  # a plain step (every round while drafting is off): three ops fewer
        return pending, (lengths - 1).unsqueeze(1)
    positions = lengths.unsqueeze(1) - 1 + torch.arange(drafts.shape[1] + 1, device=lengths.device)
    return torch.cat((pending, drafts), 1), positions


def kept_and_finished(
    candidates: torch.Tensor,  # [B, T] the round's candidate tokens
    count: torch.Tensor,  # [B] candidates each row keeps before stops
    stop_ids: torch.Tensor | None,  # [E]
    stops: torch.Tensor | None,  # [B, T] candidates that end their row by a stopping criterion
    live: torch.Tensor,  # [B] slots decoding a prompt
    generated: torch.Tensor,  # [B] tokens generated per row before this round
    max_new_tokens,  # int, or a 0-d tensor inside a compiled program
) -> tuple[torch.Tensor, torch.Tensor]:  # [B] kept, [B] finished
    """Each row keeps its candidates through its first stop (idle rows keep none); it is finished at a stop or
    when it has generated max_new_tokens."""
    count, stopped = truncate_at_stop(candidates, count, stop_ids, stops)
    count = torch.where(live, count, 0)
    return count, live & (stopped | (generated + count >= max_new_tokens))



@dataclass
class RoundRead:
    """A round as the host reads it, whichever form ran it (`_Decoder._conclude` acts on it): its snapshot by row,
    and what the host knew when it launched."""

    accepted: np.ndarray  # [B] drafts accepted
    count: np.ndarray  # [B] tokens kept (accepted drafts and the target's token, cut at a stop; idle rows 0)
    finished: np.ndarray  # [B] bool: rows that ended in the round
    budget: np.ndarray  # [B] drafts each row offered (as the drafter cut them)
    live: np.ndarray  # [B] bool: rows decoding at launch
    offered: np.ndarray  # [B] drafts the round asked of each row (the acceptance estimate's trials)
    width: int  # the round's k (its program's, compiled)
    forward_rows: int  # rows the forwards covered
    planned: np.ndarray  # [B] each row's k at launch (the heuristic schedule learns from it)
    waiting: int  # prompts waiting for a slot at launch
    forwards: int  # draft forwards the round ran
    seconds: Callable[[], float] | None = None  # the round's measured wall time, when round costs are measured


@dataclass
class InFlight:
    """A launched round whose snapshot the host has not read yet."""

    snapshot: torch.Tensor  # [6, B] on the host (pinned, being filled) or on the CPU device
    event: object  # torch.cuda.Event recorded after the copy, or None on a CPU
    width: int  # the program's k
    forward_rows: int  # rows the forwards covered
    planned: np.ndarray  # [B] each row's k at launch (the heuristic schedule learns from it)
    waiting: int  # prompts waiting for a slot at launch
    forwards: int  # draft forwards the program ran
    clock: object | None = None  # `profiling.LaunchClock` around the launch, when round costs are measured


class LaggedRead:
    """The round's one host touch point: its snapshot, copied without blocking and read after the next launch.

    On CUDA (`LAGGED_DEVICES`) the copy goes to pinned memory on the round's own stream, queued behind the program:
    the host does not wait for it, and it needs no stream ordering of its own (a side stream would have to hold the
    next round back until the copy is done, since a CUDA graph replay reuses its output memory). On a CPU the program
    has already run when it returns, and the snapshot is read as it is."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.lagged = torch.device(device).type in LAGGED_DEVICES

    def launch(self, program, *args, width: int, forward_rows: int, planned: np.ndarray, waiting: int,
               forwards: int, clock=None) -> InFlight:
        """Run `program(*args)` (its snapshot `[6, B]`), timed by `clock` (`profiling.LaunchClock`) when given."""
        if clock is not None:
            clock.start()
        snapshot = program(*args)
        if clock is not None:
            clock.stop()
        event = None
        if self.cuda:
            host = torch.empty(snapshot.shape, dtype=snapshot.dtype, pin_memory=True)
            host.copy_(snapshot, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            snapshot = host
        return InFlight(snapshot, event, width, forward_rows, planned, waiting, forwards, clock)

    @staticmethod
    def read(flight: InFlight) -> RoundRead:
        """The round's snapshot (waiting for the copy on CUDA)."""
        if flight.event is not None:
            flight.event.synchronize()
        snap = dict(zip(SNAPSHOT_FIELDS, flight.snapshot.numpy()))
        live = snap["live"].astype(bool)
        timed = flight.clock is not None and live.any()  # a round of idle rows measures nothing
        return RoundRead(snap["accepted"], snap["count"], snap["finished"].astype(bool), snap["budget"], live,
                         snap["offered"], flight.width, flight.forward_rows, flight.planned, flight.waiting,
                         flight.forwards, flight.clock.seconds if timed else None)
