"""What a batch speculative `generate` did: counters the loop keeps, and the output type that carries them.

Counters are plain host integers and per-row numpy arrays updated from the one value the loop already
brings to the host each round; no clock is read here (timing belongs to the benchmark).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from transformers.generation.utils import GenerateDecoderOnlyOutput, GenerateEncoderDecoderOutput


@dataclass
class BatchSpecStats:
    """Per-call and per-row counts. For every row: `new_tokens == accepted_tokens + target_tokens`, and
    `target_tokens <= row_rounds + 1` (the prefill gives one token; each verify round the row takes part in at
    most one more), with equality unless the row stopped inside an accepted block of drafts."""

    strategy: str
    num_assistant_tokens: int
    num_rows: int
    rounds: int = 0  # verify rounds (one target forward each)
    target_forward_calls: int = 0  # prefill calls + verify calls
    draft_forward_calls: int = 0  # prefill calls + draft steps
    target_prefill_calls: int = 0
    draft_prefill_calls: int = 0
    row_selections: int = 0  # times finished rows were dropped from the caches (one index_select per layer)
    staged_prompts: int = 0  # prompts prefilled ahead into a staging row, later copied into a freed slot
    realignments: int = 0  # times both caches moved every row (only batch_spec="eqspec-realign")
    # verify rounds run as whole-step compiled programs (compiled greedy without processors or criteria that
    # need the host: draft steps, verify, acceptance and commit in one program, see device_round)
    fused_rounds: int = 0
    # what reading a device round's results a round late costs (see device_round): slot-rounds a finished row's
    # slot stayed idle while prompts waited, and rounds launched when no row was left (every row had stopped)
    idle_slot_rounds: int = 0
    lagged_idle_rounds: int = 0
    # draft widths whose fused program this call ran once with every row idle before its first round, so that
    # speculation="auto" compiles each width in the first call (see `_Decoder._compile_widths`)
    widths_compiled_ahead: tuple = ()
    cache_rows: int = 0  # rows (slots) of each model's cache
    cache_slots_per_row: int = 0  # positions each cache row holds
    active_rows: list = field(default_factory=list)  # rows in the batch at each verify round
    # rows each verify forward ran: the active rows, and with static shapes the idle rows of its row bucket
    forward_rows: list = field(default_factory=list)
    waiting_rows: list = field(default_factory=list)  # prompts waiting for a slot at each verify round
    # the verify's draft width at each round (0: a plain decoding step; speculation="auto" chooses it)
    draft_widths: list = field(default_factory=list)
    new_tokens: np.ndarray = field(default=None)  # [N] tokens generated per row, through its stop id
    accepted_tokens: np.ndarray = field(default=None)  # [N] drafted tokens the target accepted and kept
    drafted_tokens: np.ndarray = field(default=None)  # [N] drafts offered for verification
    target_tokens: np.ndarray = field(default=None)  # [N] kept tokens chosen by the target itself
    row_rounds: np.ndarray = field(default=None)  # [N] verify rounds each row took part in

    def __post_init__(self) -> None:
        for name in ("new_tokens", "accepted_tokens", "drafted_tokens", "target_tokens", "row_rounds"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(self.num_rows, dtype=np.int64))

    def add_round(self, rows: np.ndarray, drafted: np.ndarray, accepted: np.ndarray, emitted: np.ndarray,
                  waiting: int = 0, forward_rows: int | None = None, *, width: int, rounds: int = 1) -> None:
        """Account a verify round for the active `rows` (original indices, unique), in a forward over
        `forward_rows` rows (default: the active rows alone) with `width` drafts per row; or `rounds` such rounds
        back to back, with the counts their sums (plain steps, `_Decoder._plain_run`)."""
        self.rounds += rounds
        self.draft_widths.extend([int(width)] * rounds)
        self.active_rows.extend([len(rows)] * rounds)
        self.forward_rows.extend([len(rows) if forward_rows is None else forward_rows] * rounds)
        self.waiting_rows.extend([waiting] * rounds)
        self.target_forward_calls += rounds
        self.row_rounds[rows] += rounds
        self.drafted_tokens[rows] += drafted
        self.accepted_tokens[rows] += accepted
        self.target_tokens[rows] += emitted - accepted
        self.new_tokens[rows] += emitted

    @property
    def tokens_per_round(self) -> float:
        """Mean tokens a row gains per verify round it takes part in (accepted drafts + the target's token)."""
        rounds = self.row_rounds.sum()
        return float((self.new_tokens.sum() - (self.new_tokens > 0).sum()) / rounds) if rounds else 0.0

    @property
    def admitted_batches(self) -> int:
        """Prefills that admitted prompts into free slots (the first one included): one target prefill each."""
        return self.target_prefill_calls

    @property
    def occupancy(self) -> float:
        """Mean share of cache rows busy per verify round."""
        return float(np.mean(self.active_rows) / self.cache_rows) if self.active_rows else 0.0

    @property
    def acceptance_rate(self) -> float:
        drafted = self.drafted_tokens.sum()
        return float(self.accepted_tokens.sum() / drafted) if drafted else 0.0

    def summary(self) -> dict:
        return {
            "strategy": self.strategy,
            "num_assistant_tokens": self.num_assistant_tokens,
            "rows": self.num_rows,
            "rounds": self.rounds,
            "target_forward_calls": self.target_forward_calls,
            "draft_forward_calls": self.draft_forward_calls,
            "new_tokens": int(self.new_tokens.sum()),
            "tokens_per_round": round(self.tokens_per_round, 3),
            "acceptance_rate": round(self.acceptance_rate, 3),
            "occupancy": round(self.occupancy, 3),
            "admitted_batches": self.admitted_batches,
            "row_selections": self.row_selections,
            "staged_prompts": self.staged_prompts,
        }


@dataclass
class BatchSpecGenerateOutput(GenerateDecoderOnlyOutput):
    """HF's decoder-only output with the speculative decoding statistics added."""

    spec_stats: BatchSpecStats | None = None


@dataclass
class BatchSpecSeq2SeqOutput(GenerateEncoderDecoderOutput):
    """HF's encoder-decoder output with the speculative decoding statistics added (a text model's; Whisper's
    generate post-processes the output itself and returns its own types)."""

    spec_stats: BatchSpecStats | None = None

