"""The drafter contract: what the decode loop asks of whatever proposes tokens, and what it tells it.

transformers' `CandidateGenerator` has two methods (`get_candidates`, `update_candidate_strategy`) for one row; a
batched drafter also has to follow the batch's rows as the loop admits, rolls back, moves and drops them. Each
round the loop calls:

    propose(rows, tokens, k, budget) -> Proposal     # required: up to k drafts per row, [B, k'] with budgets
    observe_verify(rows, outputs)                    # only for a source that asks (`verify_outputs`)
    rollback(lengths_h, old_lengths_h, steps)        # after acceptance: each row's committed length

and, as rows come and go (all no-ops for a source without per-row state):

    admit(...) / defer(slots)                        # prompts prefilled into cache rows (or admitted lazily)
    copy_rows(sources, targets)                      # staged or copied rows moved into slots
    select_rows(index)                               # rows that stay, in order (the rest left the batch)
    left_align(offsets)                              # the paper's realigned layout (eqspec-realign)

A drafter that holds no state per row (prompt lookup) implements `propose` alone. The loop never asks which
source drafts: what differs between sources is said by a drafter's attributes (`runner`, `stages`, `defers`,
`verify_outputs`) and by its registry entry (`drafters/registry.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..processors import ScoreProcessing
from ..scheduling import ActiveRows


def backlog_of(missing: np.ndarray, live: np.ndarray) -> int:  # [B] tokens each row's draft has not run, [B] bool
    """`Drafter.backlog` from each row's tokens not yet run by the draft: the most over live rows, beyond the two a
    round re-feeds anyway (the pending token, and after a fully accepted round the last draft)."""
    return max(int(missing[live].max(initial=0)) - 2, 0)


@dataclass
class Proposal:
    drafts: torch.Tensor  # [B, k'] proposed tokens; column j of row b counts only when j < budget[b]
    probs: torch.Tensor | None  # [B, k', V] the distributions they were sampled from (None: deterministic)
    budget: torch.Tensor  # [B] drafts each row offers for verification (cut where the source had fewer)
    forwards: int = 0  # draft-model forwards this took


@dataclass(frozen=True)
class DraftOptions:
    """What a drafter needs to know about the call."""

    do_sample: bool
    generator: torch.Generator | None
    processing: ScoreProcessing  # the call's processors: a sampling draft model draws from processed scores
    confidence_threshold: float | None  # a model drafter stops a row after a draft less likely than this
    static: bool  # every forward in a few fixed shapes (compiled)
    fused: bool = False  # with a compile config: a greedy draft's k steps compile into one program
    encoder: object | None = None  # an encoder-decoder target's encoder outputs (`encoder_decoder.EncoderSide`)


@dataclass
class VerifyOutputs:
    """What the target's verify forward gives a drafter that asks for it (`Drafter.verify_outputs`), for the rows
    of the round, before acceptance is applied: position i of row b is the one after `lengths[b] - 1 + i` tokens
    (the pending token, then the drafts)."""

    lengths: torch.Tensor  # [B] committed tokens per row before the round (the last one pending)
    accepted: torch.Tensor  # [B] drafts the round kept (a stop may cut a row's kept tokens after them)
    count: torch.Tensor  # [B] tokens each row kept this round
    hidden_states: torch.Tensor | None = None  # [B, k+1, H] the target's last hidden state at those positions


class Drafter:
    """A draft source for one generate call. Subclasses implement `propose`; every other method is a hook whose
    default does nothing, right for a source that keeps no per-row state.

    Attributes the loop reads:
    - `runner`: the draft model's `ModelRunner`, or None for a source without one.
    - `fuses`: whether its greedy drafts compile into the round's one program, `device_program` (with its leading
      arguments `device_inputs(rows)`): a draft model's `device_round.device_round` runs `greedy_steps` on
      `runner`, prompt lookup's `lookup_round` its n-gram match; then neither `propose` nor `rollback`'s caller
      reads the host between rounds.
    - `stages`: whether a prompt can be prefilled into a staging row ahead of a free slot (`copy_rows` then moves
      it); a source with per-slot host state that cannot move that way says False.
    - `defers`: whether `defer` admits rows without a forward (the first `propose` then catches them up).
    - `verify_outputs`: what `observe_verify` needs from the target's verify forward ({"hidden_states"}); the
      target computes it only when some drafter asks, and a round that must hand it over is not fused.
    """

    runner = None
    fuses = False
    stages = True
    defers = False
    verify_outputs: frozenset = frozenset()

    @property
    def device_program(self):
        """The round's one program for a source that `fuses` (a function of `device_inputs(rows)`, then the
        target's runner, the width and the row state: `device_round.device_round`'s arguments)."""
        raise NotImplementedError

    def device_inputs(self, rows: ActiveRows) -> tuple:
        """The arguments `device_program` takes before the target's runner."""
        raise NotImplementedError

    def propose(self, rows: ActiveRows, tokens: torch.Tensor, k: int, budget: torch.Tensor) -> Proposal:
        """Up to k >= 1 drafts per row (`budget` [B] caps each row; `tokens` [N+1, T] is the loop's token buffer, row
        `rows.ids[b]` holding slot b's committed tokens, the last one pending). A round without drafts (k = 0) does
        not call it."""
        raise NotImplementedError

    def backlog(self, rows: ActiveRows) -> int:
        """Positions per row the next `propose` runs before its first draft beyond the one or two a round re-feeds
        (the most over live rows): what the draft catches up after rounds without drafts or a deferred prefill,
        which `speculation="auto"` charges to a probe. 0 for a source with no model state behind the target's."""
        return 0

    def set_on_rows(self, on_rows) -> None:
        """`on_rows(ids)` is called before each forward with its rows' original indices (per-row adapters)."""

    def admit(self, prompts: torch.Tensor, positions: torch.Tensor, limits: torch.Tensor, width: int, cache_rows,
              ids: np.ndarray, slots: np.ndarray, lengths: np.ndarray) -> int:
        """Prompts `ids` (`prompts` [n, P] right-packed target ids, `lengths` [n]) were admitted into cache rows
        `slots` (`cache_rows`: their device index, None for every row in order). Returns the forwards it ran."""
        return 0

    def defer(self, slots: np.ndarray) -> None:  # [n] cache rows (host)
        """Admission without a forward, while drafting is off (only called when `defers`)."""

    def observe_prefill(self, prompts: torch.Tensor, lengths: np.ndarray, slots: np.ndarray, cache_rows,
                        hidden_states: torch.Tensor) -> None:
        """After `admit`, for a source that asks for hidden states (`verify_outputs`): the target's last hidden
        states over the admitted prompts (`hidden_states` [n, P, H], `prompts` [n, P] right-packed)."""

    def observe_verify(self, rows: ActiveRows, outputs: VerifyOutputs) -> None:
        """The target's verify outputs of the round (asked for by `verify_outputs`), before `rollback`."""

    def rollback(self, lengths_h: np.ndarray, old_lengths_h: np.ndarray, steps: int) -> None:
        """After a verify: rows are `lengths_h` [B] tokens long (they were `old_lengths_h`); `steps` draft forwards
        ran this round."""

    def select_rows(self, index: torch.Tensor) -> None:  # [b] rows that stay, in order
        """Rows not in `index` left the batch; those in it are renumbered 0..b-1."""

    def copy_rows(self, sources: np.ndarray, targets: np.ndarray) -> None:  # [n], [n] cache rows (host)
        """Row `targets[i]` takes the state of row `sources[i]` (a staged prompt, or a copy for
        num_return_sequences)."""

    def left_align(self, offsets: np.ndarray) -> None:  # [B] slots each row moves right
        """The paper's left-padded layout, realigned every round (batch_spec='eqspec-realign')."""
