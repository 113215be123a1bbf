"""The batch speculative decoding loop on the ragged cache (EQSPEC and EXSPEC), greedy or sampling.

Outline of one round, for the B active rows at once:
  1. draft:   the drafter proposes up to k tokens per row (a draft model: k forwards of 1 token; prompt
              lookup: copies of the row's own earlier tokens; see the drafters package)
  2. verify:  the target runs [pending, d_1..d_k] in one forward and scores each position
  3. accept:  keep the accepted prefix of drafts (greedy: equal to the target's argmax; sampling: speculative
              rejection sampling) plus the target's next token; cut at a stop
  4. commit:  append the kept tokens to each row; the caches roll back by length alone
  5. refill:  rows that hit a stop id or their token budget free their slot: a waiting prompt is prefilled
              into it (EXSPEC), or, when none waits, the slot leaves the batch
The only host sync of a round is step 4 bringing the per-row counts to the host. A compiled greedy round with a
draft model is one program, steps 1-4 included (`device_round.device_round`), and its counts are read one round
late: the host launches round t+1 before it waits for round t's (`_lagged_round`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch

from .acceptance import greedy_accept, one_hot, sample, speculative_sample, truncate_at_stop
from .alignment import AlignmentRecord
from .compat import static_compile_settings
from .device_round import (InFlight, LaggedRead, RoundRead, device_round, kept_and_finished, verify_greedy,
                           verify_input)
from .drafters import DraftOptions, DraftSource, Proposal, VerifyOutputs
from .masks import common_start, packed_positions
from .outputs import ScoreRecorder
from .processors import Prefixes, ScoreProcessing, no_speech_column, no_speech_probability, probabilities
from .stopping import stop_matrix
from .runner import ModelRunner, ran_widths, rows_dynamic, warmed_lengths
from .scheduling import ActiveRows, PromptQueue, to_device, to_host
from .profiling import LaunchClock, RoundClock
from .speculation import CostModel, MeasuredCosts, SpeculationControl
from .stats import BatchSpecStats


# The largest k the heuristic schedule grows a row to: transformers' default num_assistant_tokens (20), the
# length its own heuristic starts from. transformers grows k without a bound at batch 1; at batch > 1 every
# row's verify is as wide as the batch's largest k, so an unbounded k would make every round as wide as the
# best row's streak. A num_assistant_tokens above 20 raises the cap to itself.
HEURISTIC_MAX_DRAFT = 20
# Padded prompt tokens per prefill forward (at least one prompt): a forward's activations grow with rows x width
# and its [rows, 1, width, width] masks with width squared, and past a few thousand tokens a forward is compute
# bound, so more rows per forward save little time. Measured with scripts/long_prompt_memory.py (8 x 999 tokens,
# bundled pair): one forward of all 8 rows peaked above transformers' greedy, groups of 2 well below it.
PREFILL_TOKENS = 2048


@dataclass(frozen=True)
class DecodeSettings:
    max_new_tokens: int
    num_assistant_tokens: int  # k: drafts per row and round
    stop_ids: torch.Tensor | None  # [E] ids that end a row (every eos_token_id)
    max_batch_size: int  # slots decoded at once; prompts beyond wait for a free slot
    sort_by_length: bool = False
    do_sample: bool = False  # speculative sampling; greedy otherwise (no random numbers drawn)
    processing: ScoreProcessing | None = None  # the call's logits processors and warpers, in order
    criteria: tuple = ()  # stopping criteria beyond EOS and max length (stop strings, max_time, custom)
    generator: torch.Generator | None = None
    schedule: str = "constant"  # draft length per row: constant, or transformers' heuristic
    confidence_threshold: float | None = None  # a row stops drafting after a draft less likely than this
    output_scores: bool = False
    output_logits: bool = False
    # speculation="auto": draft only as much as pays, by a fixed cost model or one corrected by the rounds' measured
    # wall times (None: always k)
    cost_model: CostModel | MeasuredCosts | None = None
    realign_every_round: bool = False  # the paper's left-padded layout, realigned each round (for comparison)
    # Every decode forward in a few fixed shapes (what a compiled forward needs): 0 (off), or the most rows a
    # forward may have (rows are padded to a power of two up to it).
    static_shapes: int = 0
    compile_config: object | None = None  # transformers' CompileConfig: compile the decode forwards (static shapes)
    copies: int = 1  # num_return_sequences: consecutive rows that are copies of one prompt
    # an encoder-decoder target (Whisper): the encoder outputs by input (`encoder_decoder.EncoderSide`), else None
    encoder: object | None = None
    # Whisper's token timestamps: its alignment heads [(layer, head)], whose cross-attention weights each row keeps
    alignment_heads: tuple | None = None


@dataclass
class DecodeResult:
    tokens: torch.Tensor  # [N, T] every row's tokens in the slot = position layout
    prompt_lengths: np.ndarray  # [N]
    new_tokens: np.ndarray  # [N] generated per row, through its stop id
    stats: BatchSpecStats
    draft_lengths: np.ndarray | None = None  # per-row k after the last round
    scores: tuple | None = None  # per step [N, V], when output_scores
    logits: tuple | None = None  # per step [N, V], when output_logits
    no_speech: torch.Tensor | None = None  # [N] Whisper's no-speech probability per row, when the call detects it
    alignment: torch.Tensor | None = None  # [N, A, L, S] the alignment heads' weights by row and position


class _Decoder:
    """State of one generate call: both models' runners, the token buffer, the slot pool and the queue."""

    def __init__(self, target, source: DraftSource, prompts, prompt_lengths, settings: DecodeSettings,
                 stats: BatchSpecStats, on_rows=None, on_tokens=None):
        self.on_tokens = on_tokens  # streaming: called with (original rows, each row's newly kept tokens)
        n_rows, width = prompts.shape
        self.settings, self.stats, self.prompt_lengths = settings, stats, prompt_lengths
        max_new = settings.max_new_tokens
        # The heuristic schedule grows a row's k by 2 per fully accepted round; the cap bounds the token
        # buffer's slack (k + 1 columns past a row's end) and the verify width (see HEURISTIC_MAX_DRAFT).
        self.k_cap = draft_cap(settings.num_assistant_tokens, settings.schedule)
        k = self.k_cap
        self.static = bool(settings.static_shapes)
        self.capacity = min(settings.max_batch_size, n_rows)  # prompts decoded at once
        # Cache: a row's real tokens reach position len + max_new - 2, the last slot takes padding queries.
        cache_len = width + max_new
        if settings.realign_every_round:  # rows end together at the longest row's end: room for its k drafts
            cache_len += k + 1
        slots = self.capacity
        if self.static:  # a few sizes shared by many calls, so a compiled forward is reused across them
            # compiled: at least 2 rows where more are allowed, so that a call of one prompt runs the graphs of any
            # other batch size (a size of 1 is specialised, see `rows_dynamic`); the cache as long as a warmed one
            # that fits (`runner.warmed_lengths`, set by `hf_batchspec.warmup`), so that it compiles nothing new
            least = 2 if settings.compile_config is not None else 1
            slots = static_rows(max(self.capacity, least), settings.static_shapes)
            cache_len = static_length(cache_len, warmed_lengths(target) if settings.compile_config is not None else ())
            # the draft length varies by design (auto, transformers' heuristic schedule, a confidence threshold):
            # a few widths below k too, so that short rounds do not pay for k
            varies = (settings.cost_model is not None or settings.schedule != "constant"
                      or bool(settings.confidence_threshold))
            self.k_buckets = draft_buckets(k, all_lengths=varies)
        # Staging rows (EXSPEC with prompts waiting): a refill's prefill also takes the next waiting prompts into
        # cache rows beyond the slots, and a slot that frees later takes one of them by a copy instead of a
        # prefill of its own. A prefill of one short prompt is mostly per-call work (an eager forward's ops), so
        # a few prompts per prefill cost little more than one; a quarter of the slots' memory more. With static
        # shapes always a quarter of the rows (the cache's shape, so a compiled forward's, is the same whether or
        # not prompts wait).
        staging = max(1, slots // 4) if self.static else min(n_rows - self.capacity, max(1, self.capacity // 4))
        # (not with num_return_sequences: a staged copy of a prompt would be prefilled again for its other copies)
        staging = staging if source.stages and settings.copies == 1 else 0
        self.target = ModelRunner(target, slots, cache_len, settings.compile_config, self.static, staging,
                                  encoder=settings.encoder)
        self.processing = settings.processing or ScoreProcessing([])
        # Whisper's no-speech detection: each row's probability, from the logits of its prefill at this column of
        # its own prompt (`processors.no_speech_column`, counted in the call's padded width)
        self.no_speech = self.no_speech_at = None
        if self.processing.no_speech is not None:
            self.no_speech = torch.zeros(n_rows, device=self.target.device)
            self.no_speech_at = no_speech_column(self.processing.no_speech, width) - (width - prompt_lengths)  # [N]
        # Compiled greedy decoding with nothing that needs the host inside a round (no logits processors,
        # stopping criteria beyond stop ids, recorded scores or per-row adapters): the draft's k steps and
        # the verify with its acceptance each compile into one program (`greedy_steps`, `verify_greedy`).
        fused = (settings.compile_config is not None and not settings.do_sample and not self.processing.steps
                 and not settings.criteria and not settings.output_scores and not settings.output_logits
                 and on_rows is None)
        options = DraftOptions(settings.do_sample, settings.generator, self.processing,
                               settings.confidence_threshold, self.static, fused, settings.encoder)
        self.drafter = source.build(slots, cache_len, options, settings.compile_config, prompts=prompts,
                                    prompt_lengths=prompt_lengths, max_new=max_new, k=k, staging=staging,
                                    target=self.target)
        self.staging_rows = np.arange(slots, slots + staging)  # cache rows beyond the slots
        self.staged: list[tuple[int, int]] = []  # (prompt index, cache row) prefilled ahead, first come first
        self.target.on_rows = on_rows
        self.drafter.set_on_rows(on_rows)
        self.device = self.target.device
        self.stop_ids = None if settings.stop_ids is None else settings.stop_ids.to(self.device)
        # Token ids by original row and position; padding candidates may land up to k+1 past a row's end. Row
        # n_rows is scratch: idle slots (static shapes) point there.
        self.tokens = torch.zeros((n_rows + 1, cache_len + k + 1), dtype=torch.long, device=self.device)
        self.tokens[:n_rows, :width] = prompts.to(self.device)
        if settings.compile_config is not None:  # an input the device round writes (CUDA graphs: a fixed address)
            torch._dynamo.mark_static_address(self.tokens)
        # token timestamps: the alignment heads' weights of every target forward's queries, by row and position
        self.alignment = (AlignmentRecord(target, settings.alignment_heads, n_rows + 1, self.tokens.shape[1])
                          if settings.alignment_heads else None)
        self.rows = ActiveRows(slots, self.device, scratch_id=n_rows,
                               static_addresses=settings.compile_config is not None)
        self.row_prompt_lengths = np.append(prompt_lengths, 1)  # by token-buffer row, the scratch row's too
        self.queue = PromptQueue(prompt_lengths, settings.sort_by_length)
        self.last_draft_lengths = None  # per-row k after the last round (the heuristic schedule's state)
        self.control = SpeculationControl(settings.cost_model) if settings.cost_model is not None else None
        if self.control is not None:  # off from the start, when earlier calls measured that drafting does not pay
            widths = self.k_buckets if self.static else None
            first = min(slots, n_rows)  # the first rows; when they are all, the call ends with the last of them
            self.control.begin(np.full(first, min(k, max_new - 1)), widths,
                               np.full(first, max_new) if n_rows <= slots else None)
        self.clock = RoundClock() if isinstance(settings.cost_model, MeasuredCosts) else None
        self.recorder = ScoreRecorder(n_rows + 1, max_new + k + 1, settings.output_scores, settings.output_logits,
                                      self.device)
        self._verify_greedy = self._device_round = None
        # draft widths whose fused program ("round": `device_round`, "verify": `verify_greedy`) has run, for this
        # target and these shapes (`runner.ran_widths`), and those to compile before the first round
        self._ran: dict[str, set[int]] = {"round": set(), "verify": set()}
        self._unran: list[tuple[str, int]] = []
        # a device round's draft: how far its rows' lag may exceed 2 (plain steps it did not run, deferred prefills)
        self._draft_behind = 0
        # a drafter that reads the verify's outputs (`Drafter.verify_outputs`) gets them from the eager round
        self._verify_outputs = self.drafter.verify_outputs
        if fused and not self._verify_outputs:
            # the whole round (a draft model's steps or prompt lookup's match, verify, acceptance, commit) in one
            # program, read a round late; the verify alone, synchronously, for a drafter that cannot compile its drafts
            # and for streaming, which hands each round's kept tokens to the streamer as the round is read
            if self.drafter.fuses and not settings.realign_every_round and on_tokens is None:
                self._device_round = torch.compile(self.drafter.device_program, **settings.compile_config.to_dict())
                self.reader = LaggedRead(self.device)
                # the round's offer as a device scalar per value: an int would be a constant of the graph
                self._offers = [torch.tensor(i, device=self.device) for i in range(k + 1)]
            self._verify_greedy = torch.compile(verify_greedy, **settings.compile_config.to_dict())
            self._fused_stop_ids = static_stop_ids(self.stop_ids, self.device)  # one graph with or without EOS
            self._max_new = torch.tensor(max_new, device=self.device)  # an int would be a constant of the graph
            self._ran = {program: ran_widths(target, self._program_key(program, source, cache_len,
                                                                        settings.compile_config))
                         for program in self._ran}
        # a device round whose draft model lags the target (`rows.lag`): after plain steps it catches up
        self._draft_lags = self._device_round is not None and self.drafter.runner is not None
        self._inflight: InFlight | None = None  # a device round launched, its snapshot not yet read
        # drafting off runs its plain steps back to back (`_plain_run`): greedy, eager or through the compiled verify
        # of width 0 (a draft model's device round too: its draft falls behind and catches up when it drafts), with
        # nothing that needs the host between two steps (processors, criteria, streaming, recorded scores, a
        # drafter that reads the verify)
        self._plain_runs = (self.control is not None and (not self.static or self._verify_greedy is not None)
                            and not settings.do_sample and not self.processing.steps and not settings.criteria
                            and on_tokens is None and not self.recorder.active and not self._verify_outputs
                            and not settings.realign_every_round)
        if self.control is not None and self._verify_greedy is not None:  # the programs auto may choose
            rounds = "round" if self._device_round is not None else "verify"
            programs = [("verify" if self._plain_runs else rounds, 0)] + [(rounds, int(w)) for w in self.k_buckets]
            self._unran = [(program, w) for program, w in programs if w not in self._ran[program]]
        stats.cache_rows, stats.cache_slots_per_row = slots, cache_len

    def run(self) -> DecodeResult:
        try:
            return self._run()
        finally:
            if self.alignment is not None:
                self.alignment.close()

    def _run(self) -> DecodeResult:
        free = np.arange(len(self.rows)) < self.capacity  # every slot starts empty; static rows beyond stay idle
        while True:
            free = self._refill(free)
            if free.any():
                self._leave(free)
                free[:] = False
            if not self.rows.live_h.any():
                break
            if self._unran:
                self._compile_widths()
            free = self._round() if self._device_round is None else self._lagged_round()
        self._drain()  # a last round launched before the host saw every row finish: all its rows were idle
        new_tokens = self.rows.generated_by_id[:-1].copy()  # [N] the output's row lengths, from the row state
        recorded = self.recorder.tuples(new_tokens) if self.recorder.active else {}
        return DecodeResult(self.tokens[:-1], self.prompt_lengths, new_tokens, self.stats, self.last_draft_lengths,
                            no_speech=self.no_speech,
                            alignment=None if self.alignment is None else self.alignment.weights[:-1], **recorded)

    # -- one verify round ------------------------------------------------------------------------------------
    def _round(self) -> np.ndarray:  # [B] rows that finished
        rows = self.rows
        if self.clock is not None:
            self.clock.start()
        if self.settings.realign_every_round:
            self._left_align()
        budget_h, planned, backlog = self._plan()
        k_round = self._program_width(int(budget_h.max()))
        if k_round == 0 and self._plain_runs:
            return self._plain_run()
        budget = to_device(budget_h, self.device)
        live = rows.live_h
        accepted, candidates, count, finished, budget, forwards = self._draft_and_verify(k_round, budget)
        # The round's one host sync: counts decide budgets, cache lengths and which rows leave.
        acc_h, count_h, fin_h, cut_h = to_host(torch.stack((accepted, count, finished.long(), budget)))
        if self.on_tokens is not None:  # a second transfer, only when streaming
            self._stream(rows.ids_h[live], to_host(candidates)[live], count_h[live])
        # the acceptance counts against what was offered: a row the drafter had nothing for (prompt lookup without
        # a match) yields no draft token, and counting it as not having drafted would price lookup as if every
        # row matched
        read = RoundRead(acc_h, count_h, fin_h.astype(bool), cut_h, live, budget_h, k_round, len(rows), planned,
                         self._waiting(), forwards, self.clock.stop if self._measures(k_round, backlog) else None)
        return self._conclude(read, count)

    def _conclude(self, read: RoundRead, count: torch.Tensor | None = None) -> np.ndarray:  # [B] rows finished
        """What the host does with a round it has read, whichever form ran it: statistics, the acceptance
        estimates, the host copies of the row state (and the device's, `count` [B], when the round did not commit
        on the device), the heuristic schedule, the caches' lengths (rejected slots simply lie beyond them: the
        target keeps the pending token and the accepted drafts, the drafter what it ran that was accepted) and the
        measured round cost."""
        rows, stats, live = self.rows, self.stats, read.live
        kept_drafts = np.minimum(read.accepted, read.count)  # accepted drafts a stop did not cut off
        if read.waiting:  # slots idle while prompts waited (a row finished, refilled a round late)
            stats.idle_slot_rounds += int((~live[: self.capacity]).sum())
        if live.any():
            stats.add_round(rows.ids_h[live], read.budget[live], kept_drafts[live], read.count[live], read.waiting,
                            read.forward_rows, width=read.width)
        else:
            stats.lagged_idle_rounds += 1
        stats.draft_forward_calls += read.forwards
        if self.control is not None:
            rows.hits_h, rows.trials_h = self.control.acceptance.observe(rows.hits_h, rows.trials_h, kept_drafts,
                                                                         read.offered)
        old_lengths = rows.lengths_h
        if count is None:  # the program advanced the device's row state itself
            rows.absorb(read.count, read.finished)
        else:
            rows.advance(read.count, count)
        rows.adapt(read.accepted, read.planned, self.settings.schedule, self.k_cap)
        if self._device_round is not None and self.settings.schedule != "constant":
            rows.set_caps()  # the program's input
        self.last_draft_lengths = rows.draft_len_h
        self.target.cache.set_lengths(rows.lengths_h - 1)
        self.drafter.rollback(rows.lengths_h, old_lengths, read.forwards)
        if read.seconds is not None:  # what a round of this width costs here, for the next decisions
            self.settings.cost_model.observe(read.forward_rows, read.width, read.seconds())
        return read.finished

    def _plain_run(self) -> np.ndarray:  # [B] rows that finished
        """Plain steps (k = 0) back to back while `speculation="auto"` keeps drafting off: this round and those
        before the next probe (`SpeculationControl.rounds_off_ahead`), up to a row's last token or a stop id. What
        a round does besides its forward (statistics, the decisions, cache lengths, the measured cost) runs once
        for the run: round by round it cost as much again outside the forward as transformers' greedy loop, which
        made a batch of one slower than its greedy wherever drafting did not pay. The outputs are the rounds' own,
        step by step (greedy, with nothing that needs the host between two steps: `_plain_runs`)."""
        rows, max_new = self.rows, self.settings.max_new_tokens
        live_generated = rows.generated_h[rows.live_h]
        steps = 1 + min(self.control.rounds_off_ahead(), int((max_new - live_generated).min()) - 1)
        ran, stopped = self._plain_steps(steps)
        live = rows.live_h
        finished = live & (rows.generated_h + ran >= max_new)
        if stopped is not None:
            finished |= to_host(stopped)
        count_h = np.where(live, ran, 0)  # idle rows (static shapes) commit nothing
        self.stats.fused_rounds += ran if self.static else 0  # each step one compiled program (the verify's)
        self.stats.add_round(rows.ids_h[live], np.zeros(live.sum(), dtype=np.int64),
                             np.zeros(live.sum(), dtype=np.int64), count_h[live], self._waiting(), len(rows), width=0,
                             rounds=ran)
        # the steps after the first are rounds off, but for one where every row was at its last token: no budget to
        # weigh, which `draft_lengths` does not count as off either
        self.control.rest(ran - 1 - (ran > 1 and bool((live_generated + ran >= max_new).all())), len(rows))
        old_lengths = rows.lengths_h
        if self._draft_lags:  # its draft ran none of these steps: it catches up when it drafts
            rows.lag.add_(rows.live.long() * ran)
            self._draft_behind += ran
        rows.advance(count_h, rows.live.long() * ran)
        self.target.cache.set_lengths(rows.lengths_h - 1)
        self.drafter.rollback(rows.lengths_h, old_lengths, 0)
        self.last_draft_lengths = rows.draft_len_h
        if self._measures(0, 0):
            self.settings.cost_model.observe(len(rows), 0, self.clock.stop() / ran)
        return finished

    def _plain_steps(self, steps: int) -> tuple[int, torch.Tensor | None]:  # steps run, [B] rows that stopped
        """Up to `steps` steps of the target alone: each writes every live row's next token after its committed ones
        and ends the run when a row chose a stop id (one host sync per step; none without stop ids). The row state
        (`ActiveRows`, cache lengths) is the caller's to advance."""
        rows, stop_ids = self.rows, self.stop_ids
        step = self._plain_stepper()
        live = rows.live.long()  # [B] what each step adds to a row's length (idle rows, static shapes: nothing)
        lengths, stopped, ran = rows.lengths, None, 0  # [B] committed tokens, on the device
        while ran < steps:
            chosen = step(lengths, ran)  # [B]
            self.tokens[rows.ids, lengths] = chosen
            lengths, ran = lengths + live, ran + 1
            if stop_ids is not None and stop_ids.numel():
                stopped = torch.isin(chosen, stop_ids) & rows.live
                if ran < steps and bool(stopped.any()):
                    break
        return ran, stopped

    def _plain_stepper(self):
        """One plain step as a function (lengths `[B]` committed tokens per row, steps run before it) -> `[B]` each
        row's next token: the compiled verify of width 0 with static shapes, else one eager forward over the rows'
        cache slots (their layout, computed once per run)."""
        rows = self.rows
        if self.static:
            none = torch.empty((len(rows), 0), dtype=torch.long, device=self.device)  # [B, 0] no drafts
            budget = torch.zeros_like(rows.lengths)

            def compiled(lengths: torch.Tensor, ran: int) -> torch.Tensor:
                candidates = self._verify_greedy(*self._verify_args(none, budget, lengths))[1]  # [B, 1]
                self._forwards_ended("verify", 0)
                return candidates[:, 0]
            return compiled
        start = common_start(rows.lengths_h - 1)
        top = self.target.cache.top_slot(rows.lengths_h)

        def eager(lengths: torch.Tensor, ran: int) -> torch.Tensor:
            positions = (lengths - 1).unsqueeze(1)  # [B, 1] the pending token's
            logits = self.target.forward(self.tokens[rows.ids.unsqueeze(1), positions], positions, rows.limits,
                                         top + ran, row_ids=rows.ids_h, start=None if start is None else start + ran)
            if self.alignment is not None:
                self.alignment.write(rows.ids, positions)
            return logits[:, -1].argmax(-1).to(self.device)
        return eager

    def _plan(self) -> tuple[np.ndarray, np.ndarray, int]:  # [B] drafts each row may offer, [B] planned k, backlog
        """Each row's draft budget for the next round (its k, cut at what it still needs; idle rows 0) and the k the
        heuristic schedule learns against."""
        rows = self.rows
        budget_h = rows.budgets(self.settings.max_new_tokens)
        planned = rows.draft_len_h
        backlog = 0
        if self.control is not None:  # speculation="auto": the batch-wide k that pays this round (maybe 0)
            backlog = self.drafter.backlog(rows)
            remaining = None if self._waiting() else np.where(rows.live_h,
                                                              self.settings.max_new_tokens - rows.generated_h, 0)
            budget_h = self.control.draft_lengths(budget_h, rows.hits_h, rows.trials_h,
                                                  self.k_buckets if self.static else None, rows.live_h, backlog,
                                                  remaining)
            planned = np.minimum(planned, int(budget_h.max(initial=0)))  # k = 0: the heuristic learns nothing
        return budget_h, planned, backlog

    def _measures(self, width: int, backlog: int) -> bool:
        """Whether this round's wall time goes into the measured costs: not a drafting round whose draft first
        caught up on rounds without drafts (a probe's, mostly), which would price every round of its width as if
        it carried that catch-up, and keep drafting off where it pays."""
        return self.clock is not None and not (width and backlog)

    def _program_width(self, offer: int) -> int:
        """The verify's draft width for a round whose rows offer up to `offer` drafts. Compiled, one program per
        bucket: a constant k has one bucket, and a round where no row drafts (each at its last token) runs it too,
        with budgets of 0, rather than compile a second target program for those few rounds."""
        if self._verify_greedy is not None and (offer or len(self.k_buckets) == 1):
            return int(self.k_buckets[np.searchsorted(self.k_buckets, offer)])
        return offer

    # -- the device round, read a round late ---------------------------------------------------------------
    def _lagged_round(self) -> np.ndarray:  # [B] rows that finished in the round read now (the one before)
        """Launch a device round (draft, verify, accept, commit: one program), then read the previous one's
        snapshot and act on it. Only what the host decides goes in: the round's width and offer (the same as
        `_round`'s, from the last snapshot: an upper bound of what each row still needs)."""
        rows, flight = self.rows, self._inflight
        if flight is not None and self._may_end_all(flight):
            # the round in flight may finish every row: read it before launching one that would run idle
            self._inflight = None
            return self._absorb(flight)
        budget_h, planned, backlog = self._plan()
        offer = int(budget_h.max(initial=0))
        k = self._program_width(offer)
        if k == 0 and self._plain_runs:  # drafting off: the target's plain steps back to back, on the read state
            self._inflight = None
            finished = np.zeros(len(rows), dtype=bool) if flight is None else self._absorb(flight)
            if not rows.live_h.any():
                return finished
            if self.clock is not None:
                self.clock.start()
            return finished | self._plain_run()
        if k and self._draft_behind:
            self._catch_up_draft()
        launched = self.reader.launch(self._device_round, *self._round_args(k, offer), width=k,
                                      forward_rows=len(rows), planned=planned, waiting=self._waiting(),
                                      forwards=max(k, 1) if self._draft_lags else 0,
                                      clock=LaunchClock(self.reader.cuda) if self._measures(k, backlog) else None)
        self._forwards_ended("round", k)
        if not self.reader.lagged:  # the device has run the round already (a CPU): read it now
            return self._absorb(launched)
        self._inflight = launched
        return np.zeros(len(rows), dtype=bool) if flight is None else self._absorb(flight)

    def _round_args(self, k: int, offer: int) -> tuple:
        """The device round's arguments (`device_round.device_round`, `lookup_round`) for a round of width k whose
        rows are asked for `offer` drafts each: the drafter's own first (a draft model's runner and lag)."""
        rows = self.rows
        own = self.drafter.device_inputs(rows)
        inputs = (self.tokens, rows.ids, rows.lengths, rows.generated, rows.limits, rows.live, rows.caps)
        rows_dynamic(*inputs, *own, self.target)  # one graph for every row bucket and call
        return (*own, self.target, k, *inputs, self._offers[offer], self._fused_stop_ids, self._max_new)

    def _verify_args(self, drafts: torch.Tensor, budget: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple:
        """`verify_greedy`'s arguments for these drafts (`[B, k]`), each row offering `budget` (`[B]`) of them, after
        the rows' committed tokens (`lengths` `[B]`, when not the row state's: a plain run's later steps)."""
        rows = self.rows
        lengths = rows.lengths if lengths is None else lengths
        pending = self.tokens[rows.ids, lengths - 1].unsqueeze(1)
        inputs = (pending, lengths, rows.limits, rows.generated, rows.live, drafts, budget)
        rows_dynamic(*inputs, self.target)  # one graph for every row bucket and call
        return (self.target, *inputs, self._fused_stop_ids, self._max_new)

    def _forwards_ended(self, program: str, k: int) -> None:
        """After a fused program ("round" or "verify") of width k: its forwards' plans are dropped
        (`RaggedCache.end`), and the width is known to have run."""
        if program == "round" and self.drafter.runner is not None:
            self.drafter.runner.cache.end()
        self.target.cache.end()
        self._ran[program].add(k)

    def _catch_up_draft(self) -> None:
        """Before a device round drafts after plain steps, the draft runs the committed tokens it missed, in one
        eager forward over every row (its width varies: compiled, it would be a program per width), so that each
        live row's lag is 1 again, as the round's first step of 2 tokens needs. A row's lag is at most 2 plus the
        steps run since its draft last ran, or its whole row where its prefill was deferred (`_place`); rows that
        missed fewer get padding queries from their pending token on, whose slots the round's first step writes
        again or its later steps write before any query reads them."""
        rows, runner = self.rows, self.drafter.runner
        width = self._draft_behind + 1  # every missed token but the pending one, which the round's first step runs
        self._draft_behind = 0
        positions = (rows.lengths - rows.lag).unsqueeze(1) + torch.arange(width, device=self.device)  # [B, w]
        step_input = self.tokens[rows.ids.unsqueeze(1), positions.clamp(min=0, max=self.tokens.shape[1] - 1)]
        runner.forward(step_input, positions, rows.limits, runner.cache.num_slots, keep=1, row_ids=rows.ids_h,
                       eager=True)
        runner.cache.end()
        rows.lag.copy_(torch.where(rows.live, 1, rows.lag))  # in place: the round program's input
        live = np.flatnonzero(rows.live_h)
        runner.cache.set_lengths(rows.lengths_h[live] - 1, rows=live)  # all but the pending token
        self.stats.draft_forward_calls += 1

    def _compile_widths(self) -> None:
        """Run the fused program of every draft width `speculation="auto"` may choose and none has run yet, once,
        with every row idle, before the call's first round: a round of idle rows commits nothing (its counts are 0
        and its writes lie beyond every row's length), so the call's output is unchanged.

        Why: each width is a program of its own, compiled the first time it runs, and auto chooses widths as it
        measures and probes, so a width first chosen late in a call, or in a later call, compiled there: measured
        on CPU, three calls at batch 64 compiled 2, 0 and 3 programs, and the call that chose new widths took 40.8 s
        where it took 8.3 s warm (docs/results.md). Now the first call compiles them all, as transformers' first
        compiled call compiles its step, and later calls with these shapes compile nothing (`runner.ran_widths`).
        """
        rows, programs, self._unran = self.rows, self._unran, []
        live, lag = rows.live.clone(), rows.lag.clone()
        rows.live.zero_()  # in place: a compiled program's inputs keep their addresses
        rows.lag.fill_(1)  # (deferred rows lag by their whole row until the draft catches them up)
        for program, k in programs:
            if program == "round":
                self._device_round(*self._round_args(k, 0))
            else:
                drafts = torch.zeros((len(rows), k), dtype=torch.long, device=self.device)
                self._verify_greedy(*self._verify_args(drafts, torch.zeros_like(rows.lengths)))
            self._forwards_ended(program, k)
        rows.live.copy_(live)
        rows.lag.copy_(lag)
        self.stats.widths_compiled_ahead = tuple(k for _, k in programs)

    def _may_end_all(self, flight: InFlight) -> bool:
        """Whether the round in flight can finish every live row by its budget, with nothing waiting."""
        rows = self.rows
        return not self._waiting() and bool(
            (self.settings.max_new_tokens - rows.generated_h[rows.live_h] <= flight.width + 1).all())

    def _absorb(self, flight: InFlight) -> np.ndarray:  # [B] rows that finished in that round
        """A device round's snapshot, read (`_conclude`). Rows placed after its launch were idle in it (count 0),
        so their host state stands."""
        read = self.reader.read(flight)
        self.stats.fused_rounds += bool(read.live.any())
        return self._conclude(read)

    def _drain(self) -> np.ndarray:  # [B] rows that finished in the round in flight (none when none is)
        flight, self._inflight = self._inflight, None
        return np.zeros(len(self.rows), dtype=bool) if flight is None else self._absorb(flight)

    def _draft_and_verify(self, k: int, budget: torch.Tensor):  # budget [B]
        """Steps 1-3 of a round: draft up to k tokens per row, verify them, accept a prefix and cut it at a stop.
        Returns (accepted drafts [B], candidates [B, k+1], kept count [B], finished [B], budget [B] (as the
        drafter cut it), draft forwards run). Compiled greedy with nothing that needs the host, the verify and
        acceptance are one program (`verify_greedy`); otherwise the forwards run one by one and acceptance is
        eager. (A draft model's compiled greedy round is `_lagged_round`.)"""
        rows = self.rows
        # a plain step (k = 0) asks the drafter for nothing: every source's answer would be no drafts
        proposal = (self.drafter.propose(rows, self.tokens, k, budget) if k else
                    Proposal(torch.empty((len(rows), 0), dtype=torch.long, device=self.device), None, budget))
        drafts, draft_probs, budget = proposal.drafts, proposal.probs, proposal.budget  # [B, k], [B, k, V], [B]
        if self.static:  # the verify's width from a few buckets; drafts past a row's budget are padding
            drafts, draft_probs = pad_drafts(drafts, draft_probs, self.k_buckets)
        if self._verify_greedy is not None:  # one compiled program: verify, accept, cut at a stop id
            # the candidates are written outside: the token buffer's shape varies
            accepted, candidates, count, finished = self._verify_greedy(*self._verify_args(drafts, budget))
            self._forwards_ended("verify", drafts.shape[1])
            self._write(candidates)
            self.stats.fused_rounds += 1
        else:
            target_logits, hidden = self._verify(drafts)  # [B, k+1, V], [B, k+1, H] or None
            accepted, candidates = self._accept(drafts, draft_probs, target_logits, budget)  # [B], [B, k+1]
            count, finished = self._commit(candidates, accepted + 1)
            if self._verify_outputs:
                self.drafter.observe_verify(rows, VerifyOutputs(rows.lengths, accepted, count, hidden))
        return accepted, candidates, count, finished, budget, proposal.forwards

    def _verify(self, drafts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The target's logits `[B, k+1, V]` over the pending token and the drafts, and its last hidden states there
        `[B, k+1, H]` when the drafter asks for them (None otherwise)."""
        rows = self.rows
        tokens, positions = verify_input(self._pending(), drafts, rows.lengths)
        top = self.target.cache.top_slot(rows.lengths_h)
        hidden = "hidden_states" in self._verify_outputs
        start = None if self.static else common_start(rows.lengths_h - 1)  # (static: idle rows sit elsewhere)
        out = self.target.forward(tokens, positions, rows.limits, top + drafts.shape[1], row_ids=rows.ids_h,
                                  hidden=hidden, start=start)
        if self.alignment is not None:
            self.alignment.write(rows.ids, positions)
        logits, states = out if hidden else (out, None)
        return logits.to(self.device), states

    def _pending(self) -> torch.Tensor:  # [B, 1] each row's newest committed token, which the target has not run
        return self.tokens[self.rows.ids, self.rows.lengths - 1].unsqueeze(1)

    def _left_align(self) -> None:
        """The paper's EQSPEC: every row's cached tokens end at the same slot, left padding before them. Rows
        gain different counts each round, so both caches move every row, every round."""
        lengths = self.rows.lengths_h
        offsets = lengths.max() - lengths
        self.target.cache.left_align(offsets)
        self.drafter.left_align(offsets)
        self.stats.realignments += 1

    def _accept(self, drafts, draft_probs, target_logits, budget) -> tuple[torch.Tensor, torch.Tensor]:
        """Accepted drafts per row `[B]` and the round's candidate tokens `[B, k+1]`: the first `accepted + 1`
        of each row are kept (the accepted drafts, then the target's correction or bonus token)."""
        rows = self.rows
        if self.processing.reads_prefix:  # position i is scored after the drafts before it: put them in place
            self._write(drafts)
        scores = self._scores(target_logits, rows.ids_h, rows.lengths_h)  # [B, k+1, V]
        if self.recorder.active:
            self.recorder.record(rows.ids, rows.generated, target_logits, scores)
        if not self.settings.do_sample:
            target_tokens = scores.argmax(-1)  # accepted drafts equal these, so they are the candidates
            return greedy_accept(drafts, target_tokens, budget), target_tokens
        target_probs = probabilities(scores)  # [B, k+1, V]
        if draft_probs is None:  # a deterministic drafter (prompt lookup), or no drafts: q is one-hot on the draft
            draft_probs = one_hot(drafts, target_probs.shape[-1], target_probs.dtype)
        accepted, following = speculative_sample(drafts, draft_probs, target_probs, budget, self.settings.generator)
        candidates = torch.cat((drafts, following.unsqueeze(1)), 1)
        candidates.scatter_(1, accepted.unsqueeze(1), following.unsqueeze(1))
        return accepted, candidates

    def _stream(self, ids: np.ndarray, candidates: np.ndarray, count: np.ndarray) -> None:
        self.on_tokens(ids, [row[:n].tolist() for row, n in zip(candidates, count)])

    def _scores(self, logits: torch.Tensor, ids: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
        """The processed scores at T positions per row; position i follows `lengths[b] + i` tokens."""
        if not self.processing.steps:
            return logits
        return self.processing(logits, Prefixes(self.tokens, ids, lengths, self.row_prompt_lengths[ids]))

    def _choose(self, scores: torch.Tensor) -> torch.Tensor:  # [n, V] -> [n] the target's own next token
        if self.settings.do_sample:
            return sample(probabilities(scores), self.settings.generator)
        return scores.argmax(-1)

    def _commit(self, candidates: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write a round's tokens after each row's committed ones; returns (kept [B], finished [B]).

        All candidates are written: those past the kept count lie beyond the row's new length, are
        overwritten by later rounds and never read (the output takes `new_tokens` per row).
        """
        rows = self.rows
        self._write(candidates)
        criteria = self._criteria(rows.ids_h, rows.lengths_h, candidates.shape[1])
        return kept_and_finished(candidates, count, self.stop_ids, criteria, rows.live, rows.generated,
                                 self.settings.max_new_tokens)

    def _write(self, candidates: torch.Tensor) -> None:  # [B, T] after each row's committed tokens
        rows = self.rows
        cols = rows.lengths.unsqueeze(1) + torch.arange(candidates.shape[1], device=self.device)  # [B, T]
        self.tokens[rows.ids.unsqueeze(1), cols] = candidates

    def _criteria(self, ids: np.ndarray, lengths: np.ndarray, width: int) -> torch.Tensor | None:
        """[B, width] candidates that end their row by a stopping criterion (None when the call has none)."""
        if not self.settings.criteria:
            return None
        return stop_matrix(list(self.settings.criteria), self.tokens, ids, lengths, width)

    def _program_key(self, program: str, source: DraftSource, cache_len: int, compile_config) -> tuple:
        """What a fused program's graphs are specific to besides the target and its width: one row or more (dynamo
        specialises a single row), the cache's length, the stop ids' padded size and the compile settings; a device
        round's also its draft (an early exit's view is built anew each call: its layer count; prompt lookup's n-gram
        size) and the token buffer's length (the verify takes its tokens gathered)."""
        shapes = (program, len(self.rows) > 1, cache_len, len(self._fused_stop_ids),
                  repr(sorted(compile_config.to_dict().items())))
        if program == "verify":
            return shapes
        if source.kind == "early-exit":
            draft = source.model.config.num_hidden_layers
        elif source.kind == "lookup":  # its n-gram size is a constant of the program
            draft = source.lookup_ngram
        else:
            draft = None if source.model is None else weakref.ref(source.model)
        return (*shapes, source.kind, draft, self.tokens.shape[1])

    # -- admission and departure -----------------------------------------------------------------------------
    def _waiting(self) -> int:  # prompts not yet in a slot: queued, or prefilled into a staging row
        return len(self.queue) + len(self.staged)

    def _refill(self, free: np.ndarray) -> np.ndarray:
        """Fill free slots until none is free or nothing waits: from the staging rows first (a copy), else by
        prefilling waiting prompts into them (all at once), with the next waiting prompts into free staging rows."""
        while free.any() and self._waiting():
            slots = np.flatnonzero(free)
            if self.staged:
                slots = slots[: len(self.staged)]
                self._unstage(slots)
                free[slots] = False  # a staged prompt did not finish on its first token
                continue
            # nothing is staged here (staged prompts fill slots first), so every staging row is free
            ids = self.queue.take(len(slots) + len(self.staging_rows))
            rows = np.concatenate((slots, self.staging_rows))[: len(ids)].astype(np.int64)
            finished = self._admit(rows, ids)
            slots = slots[: len(ids)]
            free[slots] = finished[: len(slots)]
            for prompt, row, done in zip(ids[len(slots):], rows[len(slots):], finished[len(slots):]):
                if not done:  # a prompt that ended on its first token needs no slot
                    self.staged.append((int(prompt), int(row)))
                    self.stats.staged_prompts += 1
        return free

    def _unstage(self, slots: np.ndarray) -> None:
        """The first len(slots) staged prompts move into `slots`: their cache rows are copied (both models)."""
        moved, self.staged = self.staged[: len(slots)], self.staged[len(slots):]
        ids, rows = (np.array(column, dtype=np.int64) for column in zip(*moved))
        self.target.cache.copy_rows(rows, slots)
        self.drafter.copy_rows(rows, slots)
        self._place(slots, ids)

    def _place(self, slots: np.ndarray, ids: np.ndarray) -> None:
        """Prompts `ids`, prefilled with their first token committed, start decoding in `slots`. A device round's
        draft lags them by 1 after its prefill, by every committed token where its prefill was deferred."""
        lengths = self.prompt_lengths[ids]
        self.rows.place(slots, ids, lengths + 1, np.ones(len(ids), dtype=np.int64),
                        lengths + self.settings.max_new_tokens - 1, self.settings.num_assistant_tokens)
        if self._draft_lags:
            missing = lengths + 1 - self.drafter.cache.lengths[slots]  # [n] (the cache rows were copied in)
            if missing.max(initial=1) > 1:
                self.rows.lag[to_device(slots, self.device)] = to_device(missing, self.device)
                self._draft_behind = max(self._draft_behind, int(missing.max()) - 2)

    def _admit(self, slots: np.ndarray, ids: np.ndarray) -> np.ndarray:  # [n] admitted rows already finished
        """Prefill prompts `ids` into cache rows `slots` of both models and commit their first token; those in the
        batch's rows start decoding there, those in staging rows wait (`_refill`)."""
        max_new, stats = self.settings.max_new_tokens, self.stats
        lengths = self.prompt_lengths[ids]
        ids_d = torch.as_tensor(ids, device=self.device)
        # num_return_sequences: rows that are copies of one prompt are prefilled once (its first copy among them)
        # and the others take its cache rows and logits; each still samples its own first token.
        _, first, group = np.unique(ids // self.settings.copies, return_index=True, return_inverse=True)
        prefilled = np.sort(first)  # the first copy of each prompt, in admission order
        copy_of = np.searchsorted(prefilled, first[group])  # [n] each admitted row's prefilled row
        last_logits = self._prefill(slots[prefilled], ids[prefilled])[torch.as_tensor(copy_of, device=self.device)]
        if len(prefilled) < len(ids):
            sources = slots[prefilled][copy_of]
            self.target.cache.copy_rows(sources, slots)
            self.drafter.copy_rows(sources, slots)
            if self.no_speech is not None:
                self.no_speech[ids_d] = self.no_speech[torch.as_tensor(ids[prefilled][copy_of], device=self.device)]
        self.target.cache.set_lengths(lengths, rows=slots)
        scores = self._scores(last_logits.unsqueeze(1), ids, lengths)  # [n, 1, V]
        first = self._choose(scores[:, 0])  # [n]
        if self.recorder.active:
            self.recorder.record(ids_d, torch.zeros_like(ids_d), last_logits.unsqueeze(1), scores)

        first = first.to(self.device)
        self.tokens[ids_d, torch.as_tensor(lengths, device=self.device)] = first
        criteria = self._criteria(ids, lengths, 1)
        _, stopped = truncate_at_stop(first.unsqueeze(1), torch.ones_like(first), self.stop_ids, criteria)
        if self.on_tokens is not None:
            self._stream(ids, to_host(first.unsqueeze(1)), np.ones(len(ids), dtype=np.int64))
        placed = slots < len(self.rows)
        self._place(slots[placed], ids[placed])
        stats.new_tokens[ids] += 1
        stats.target_tokens[ids] += 1
        return to_host(stopped) | (max_new == 1)  # a sync per admission, not per round

    def _prefill(self, slots: np.ndarray, ids: np.ndarray) -> torch.Tensor:  # [n, V] logits at each prompt's end
        """Prompts `ids` through both models into cache rows `slots` (the drafter's prefill is skipped when no
        round will follow). Long prompts go a few rows per forward (`PREFILL_TOKENS`), each prompt still whole."""
        max_new, stats = self.settings.max_new_tokens, self.stats
        lengths = self.prompt_lengths[ids]
        width = int(lengths.max())
        group = max(1, PREFILL_TOKENS // width)
        if len(ids) > group:
            return torch.cat([self._prefill(slots[i:i + group], ids[i:i + group]) for i in range(0, len(ids), group)])
        prompts = self.tokens[torch.as_tensor(ids, device=self.device), :width]  # [n, P] right-packed
        full = np.array_equal(slots, np.arange(len(self.rows)))  # every slot, in order: no gather needed
        cache_rows = None if full else torch.as_tensor(slots, device=self.device)
        positions = packed_positions(len(ids), width, self.device)
        limits = torch.as_tensor(lengths + max_new - 1, device=self.device)

        # Target: only the columns some row ends on need logits (up to n of them instead of P), and those Whisper's
        # no-speech detection reads.
        ends = lengths - 1
        read = self.no_speech_at[ids] if self.no_speech is not None else ends[:0]
        keep = torch.as_tensor(np.unique(np.concatenate((ends, read))), device=self.device)
        hidden = "hidden_states" in self._verify_outputs and max_new > 1  # a drafter that reads the prompt's
        out = self.target.forward(prompts, positions, limits, width, keep=keep, rows=cache_rows, row_ids=ids,
                                  prefill=True, hidden=hidden, start=0)
        if self.alignment is not None:
            self.alignment.write(torch.as_tensor(ids, device=self.device), positions)
        logits, states = out if hidden else (out, None)
        last = torch.searchsorted(keep, torch.as_tensor(ends, device=self.device))  # [n]
        if self.no_speech is not None:
            at = torch.searchsorted(keep, torch.as_tensor(read, device=self.device))  # [n]
            self.no_speech[torch.as_tensor(ids, device=self.device)] = no_speech_probability(
                logits[torch.arange(len(ids), device=logits.device), at.to(logits.device)],
                self.processing.no_speech).to(self.device)
        stats.target_forward_calls += 1
        stats.target_prefill_calls += 1
        if max_new > 1 and self._defers_draft():
            self.drafter.defer(slots)
        elif max_new > 1:
            forwards = self.drafter.admit(prompts, positions, limits, width, cache_rows, ids, slots, lengths)
            if hidden:
                self.drafter.observe_prefill(prompts, lengths, slots, cache_rows, states)
            stats.draft_forward_calls += forwards
            stats.draft_prefill_calls += forwards
        return logits[torch.arange(len(ids), device=logits.device), last.to(logits.device)].to(self.device)

    def _defers_draft(self) -> bool:
        """Whether an admission skips the draft's prefill: while `speculation="auto"` has drafting off, for a
        drafter that can catch up later (`Drafter.defers`, see `ModelDrafter.defer`): eager, or a device round's
        draft while plain steps run back to back (`_catch_up_draft` runs the prompt then; not a draft that reads an
        encoder output, whose store the round program never writes)."""
        caught_up = not self.static or (self._device_round is not None and self._plain_runs
                                         and self.settings.encoder is None)
        return self.control is not None and self.control.off and caught_up and self.drafter.defers

    def _leave(self, free: np.ndarray) -> None:
        """Free slots with nothing left to admit leave the batch and the caches (one index_select per layer).
        With static shapes they stay in it as idle rows, until the live rows fit a smaller row bucket (see
        `static_rows`, never below 2 rows): then the live rows move into the caches' first rows and the forwards
        cover only those. The compiled programs take any row count from 2 up in one graph (`rows_dynamic`); a
        1-row bucket would be a compile of its own for the last row of a call's tail."""
        if not self.static:
            self._select(np.flatnonzero(~free))
            return
        self.rows.idle(np.flatnonzero(free))
        live = np.flatnonzero(self.rows.live_h)
        rows = static_rows(max(len(live), 2), len(self.rows))
        if len(live) and not self._waiting() and rows < len(self.rows) and self._inflight is not None:
            # rows move: read the round in flight first (its snapshot is in the old row order)
            self.rows.idle(np.flatnonzero(self._drain()))
            live = np.flatnonzero(self.rows.live_h)
            rows = static_rows(max(len(live), 2), len(self.rows))
        if len(live) and not self._waiting() and rows < len(self.rows):  # idle rows cost as much as live ones
            idle = np.flatnonzero(~self.rows.live_h)[: rows - len(live)]
            self._select(np.sort(np.concatenate((live, idle))))

    def _select(self, keep: np.ndarray) -> None:  # [b] slots that stay, in order
        index = self.rows.keep(keep)
        if len(keep):
            self.target.cache.select_rows(index)
            self.drafter.select_rows(index)
            self.stats.row_selections += 1


def static_stop_ids(stop_ids: torch.Tensor | None, device) -> torch.Tensor:  # [E'] a power of two >= 4
    """Stop ids in a fixed shape for a compiled program: padded with -1 (no token's id) to 4 or the next power
    of two, so that calls without EOS or with up to 4 stop ids (most models have 1 to 3) share a graph."""
    ids = torch.empty(0, dtype=torch.long, device=device) if stop_ids is None else stop_ids.to(device).long()
    size = max(4, 1 << max(0, len(ids) - 1).bit_length())
    return torch.cat((ids, torch.full((size - len(ids),), -1, dtype=torch.long, device=device)))


def draft_cap(num_assistant_tokens: int, schedule: str) -> int:
    """The most drafts a row may offer in a round: k for a constant schedule; transformers' heuristic grows k, up
    to `HEURISTIC_MAX_DRAFT` (or k, if larger)."""
    return num_assistant_tokens if schedule == "constant" else max(HEURISTIC_MAX_DRAFT, num_assistant_tokens)


def static_rows(capacity: int, limit: int) -> int:
    """Rows of a static-shape forward: the next power of two of the prompts decoded at once, at most `limit`
    (the caller's max_batch_size), so that calls with nearby batch sizes share one compiled forward. The same
    buckets serve a call's tail: once nothing waits and its live rows fit half the rows, they move into a
    smaller bucket instead of computing idle rows (see `_Decoder._leave`)."""
    return min(1 << max(capacity - 1, 0).bit_length(), limit)


def static_length(slots: int, warmed=()) -> int:
    """Cache slots per row with static shapes (every decode forward attends over all of them): the shortest of the
    `warmed` lengths (those `hf_batchspec.warmup` compiled) that holds `slots`, else the next of 64, 96, 128, 192,
    ... (powers of two and three quarters of them), so that calls with nearby prompt lengths and budgets share one
    compiled forward. A warmed length may be longer: attending over idle slots costs a little each step, a new
    length a compile. Why the three quarters: with powers of two alone a call attends over up to twice the slots it
    needs, and at batch 64 on CPU (134 slots needed, 256 given) that was 4-9% of the compiled call against
    transformers', whose static cache is as long as the call (docs/results.md); this halves the worst case for
    twice the buckets."""
    fitting = [length for length in warmed if length >= slots]
    if fitting:
        return min(fitting)
    power = max(64, 1 << (slots - 1).bit_length())
    return power * 3 // 4 if power > 64 and power * 3 // 4 >= slots else power


def draft_buckets(k: int, all_lengths: bool) -> np.ndarray:  # [n] verify draft widths, ascending, ending at k
    """The draft widths a static-shape verify pads to. A constant k verifies k drafts (fewer only pad); when
    the length varies by design (`speculation="auto"`, the heuristic schedule, a confidence threshold) powers of
    two below k keep the wide verify for wide rounds only."""
    widths = [1 << i for i in range(k.bit_length()) if 1 << i < k] if all_lengths else []
    return np.array(widths + [k])


def pad_drafts(
    drafts: torch.Tensor,  # [B, k'] the round's drafts
    draft_probs: torch.Tensor | None,  # [B, k', V] when sampling
    buckets: np.ndarray,  # [n] widths to pad to
) -> tuple[torch.Tensor, torch.Tensor | None]:  # [B, k], [B, k, V]
    """Pad to the smallest bucket of at least k' columns (none when k' = 0). The padding repeats the last draft;
    it lies past every row's budget, so acceptance never offers it."""
    k_run = drafts.shape[1]
    if k_run == 0:
        return drafts, draft_probs
    extra = int(buckets[np.searchsorted(buckets, k_run)]) - k_run
    if extra == 0:
        return drafts, draft_probs
    drafts = torch.cat((drafts, drafts[:, -1:].expand(-1, extra)), 1)
    if draft_probs is not None:
        draft_probs = torch.cat((draft_probs, draft_probs[:, -1:].expand(-1, extra, -1)), 1)
    return drafts, draft_probs


def speculative_decode(
    target: torch.nn.Module,
    source: DraftSource,  # what drafts: a draft model, an early exit of the target, or prompt lookup
    prompts: torch.Tensor,  # [N, P] right-packed: row b's prompt in columns 0..len_b-1
    prompt_lengths: np.ndarray,  # [N]
    settings: DecodeSettings,
    stats: BatchSpecStats,
    on_rows=None,  # called before each forward with its rows' original indices
    on_tokens=None,  # called after each round with (original rows, their newly kept tokens)
) -> DecodeResult:
    """Decode every prompt to its stop or budget, drafting from `source` and verifying with `target`.

    Greedy (`settings.do_sample` False) output equals plain greedy decoding of each prompt alone; sampling
    keeps the target's distribution (speculative rejection sampling)."""
    decoder = _Decoder(target, source, prompts, prompt_lengths, settings, stats, on_rows, on_tokens)
    if settings.compile_config is None:
        return decoder.run()
    with static_compile_settings():
        return decoder.run()
