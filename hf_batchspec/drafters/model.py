"""A draft model with the target's tokenizer (`assistant_model=`): k sequential 1-token forwards per round on its
own ragged cache, rows in the target's slots. transformers' `AssistedCandidateGenerator`, batched."""

from __future__ import annotations

import numpy as np
import torch

from ..acceptance import sample
from ..masks import common_start
from ..processors import probabilities
from ..runner import ModelRunner
from ..scheduling import ActiveRows, to_device
from .base import DraftOptions, Drafter, Proposal, backlog_of


class ModelDrafter(Drafter):
    """A causal LM that drafts: k sequential 1-token forwards on its own ragged cache, rows in the target's
    slots. The draft lags the target by what it has not run yet (the pending token, and after a fully
    accepted round the draft's own last draft), so its first step re-feeds those."""

    defers = True

    def __init__(self, model: torch.nn.Module, slots: int, cache_len: int, options: DraftOptions, compile_config=None,
                 staging: int = 0):
        self.options = options
        self.runner = ModelRunner(model, slots, cache_len, compile_config, options.static, staging,
                                  encoder=options.encoder)
        # [R] cache rows admitted without a forward whose cross-attention store is not written yet (a draft that
        # reads an encoder output); it moves with the rows, and the first `propose` over them writes it
        self._unprojected = (np.zeros(self.cache.cross.rows, dtype=bool) if self.runner.seq2seq is not None
                             else None)
        # A greedy draft without a confidence threshold decides nothing on the host between its steps, so the
        # decoder compiles its k steps into the round's program (`greedy_steps` inside `device_round`): one call
        # (one CUDA graph) per round, the steps' masks, gathers and argmaxes inside it.
        self.fuses = (compile_config is not None and options.fused and not options.do_sample
                      and not options.confidence_threshold)

    @property
    def cache(self):
        return self.runner.cache

    @property
    def device_program(self):
        from ..device_round import device_round  # (it imports this module's `greedy_steps`)

        return device_round

    def device_inputs(self, rows: ActiveRows) -> tuple:
        return self.runner, rows.lag

    def set_on_rows(self, on_rows) -> None:
        self.runner.on_rows = on_rows

    def admit(self, prompts, positions, limits, width: int, cache_rows, ids: np.ndarray, slots: np.ndarray,
              lengths: np.ndarray) -> int:  # forwards run
        """Prefill admitted prompts (`prompts` [n, P] right-packed) into cache rows `slots`. Its logits over the
        prompt are never used: its first step runs the pending first token."""
        self.runner.forward(prompts, positions, limits, width, keep=1, rows=cache_rows, row_ids=ids, prefill=True,
                            start=0)
        self.cache.set_lengths(lengths, rows=slots)
        return 1

    def defer(self, slots: np.ndarray) -> None:  # [n] cache rows (host)
        """Admit prompts into cache rows `slots` without a forward: their rows hold nothing yet, so the next
        draft step runs every token of them (the catch-up of `_first_step`). Worth it while drafting is off
        (`speculation="auto"`): a prefill the draft may never use is not paid, and if drafting resumes the
        catch-up costs about what the prefill would have. A draft that reads an encoder output also leaves its
        rows' cross-attention keys and values (one projection of every encoder frame per layer, for Whisper
        costlier than the prefill) until it drafts for them. Compiled, for a device round's draft (which never calls
        `propose`): its catch-up forward runs them before it drafts (`_Decoder._catch_up_draft`)."""
        self.cache.set_lengths(np.zeros(len(slots), dtype=np.int64), rows=slots)
        if self._unprojected is not None:
            self._unprojected[slots] = True

    def _project_deferred(self, rows: ActiveRows) -> None:
        """The cross-attention store of deferred rows, before the draft's first forward over them (each row's
        from its own input's encoder output; an idle row's is never read as live)."""
        if self._unprojected is None or not self._unprojected.any():
            return
        slots = np.flatnonzero(self._unprojected[: len(rows)] & rows.live_h)
        if len(slots):
            self.runner.seq2seq.admit(rows.ids_h[slots], torch.as_tensor(slots, device=self.runner.device))
            self._unprojected[slots] = False

    def _missing(self, rows: ActiveRows) -> np.ndarray:  # [B] committed tokens the draft has not run (>= 1)
        return rows.lengths_h - self.cache.lengths

    def backlog(self, rows: ActiveRows) -> int:
        return backlog_of(self._missing(rows), rows.live_h)

    def _first_step(self, rows: ActiveRows, tokens: torch.Tensor):
        """The first draft step's query: ([B, w] tokens, [B, w] positions, kv_len, logits to keep, [B] the column
        of each row's pending token among them, the first position when every row shares it (`common_start`))."""
        device, static = tokens.device, self.options.static
        # The first step feeds every committed token the draft has not run: after a fully accepted round the
        # token before the pending one (the draft's own last draft, never run), after rounds without drafts
        # all tokens since it last drafted. Rows with fewer missing tokens get padding queries past their
        # end, which write scratch slots nobody reads; each row's logits are taken at its pending token.
        missing_h = self._missing(rows)  # [B] >= 1: the pending token at least
        width = int(missing_h.max())
        if static:  # a catch-up width from a few buckets, set by live rows only: 2 in steady state (1 or
            # 2 tokens missing), so the first step has one shape whether or not the last round was fully accepted
            width = max(2, 1 << (int(missing_h[rows.live_h].max(initial=1)) - 1).bit_length())
            missing_h = np.minimum(missing_h, width)  # an idle row's queries are never read
        missing = to_device(missing_h, device)
        positions = (rows.lengths - missing).unsqueeze(1) + torch.arange(width, device=device)  # [B, w]
        step_input = tokens[rows.ids.unsqueeze(1), positions.clamp(min=0, max=tokens.shape[1] - 1)]
        kv_len = self.cache.top_slot(rows.lengths_h - missing_h) + width
        if static:  # every column: one shape, whichever columns the rows' pending tokens sit in
            keep, pick = 0, missing_h - 1
        else:
            columns = np.unique(missing_h - 1)  # the columns some row's pending token sits in
            keep = 1 if len(columns) == 1 else to_device(columns, device)
            pick = np.searchsorted(columns, missing_h - 1)
        start = None if static else common_start(rows.lengths_h - missing_h)  # (static: idle rows sit elsewhere)
        return step_input, positions, kv_len, keep, to_device(pick, device), start

    def propose(self, rows: ActiveRows, tokens: torch.Tensor, k: int, budget: torch.Tensor) -> Proposal:
        """Up to k drafts per row, cut where a row's draft fell below the confidence threshold (fewer than k
        columns when every row stopped early). `tokens` [N+1, T] is the loop's token buffer."""
        device = tokens.device
        threshold = self.options.confidence_threshold
        self._project_deferred(rows)
        top = self.cache.top_slot(rows.lengths_h)
        step_input, positions, kv_len, keep, pick, start = self._first_step(rows, tokens)
        pending = None if self.options.static else common_start(rows.lengths_h - 1)  # every row's pending position
        per_row = not isinstance(keep, int) or keep != 1  # the first step's logits: one column per row to pick
        drafts, probs = [], []
        for j in range(k):  # the draft is sequential: one forward per draft token
            logits = self.runner.forward(step_input, positions, rows.limits, kv_len, keep=keep, row_ids=rows.ids_h,
                                         start=start)
            if j == 0 and per_row:
                logits = logits[torch.arange(len(rows), device=logits.device), pick.to(logits.device)].unsqueeze(1)
            keep = 1
            last = logits[:, -1].to(device)  # [B, V]
            sampling = self.options.do_sample
            step_probs = probabilities(self.options.processing.draft(last)) if sampling or threshold else None
            if sampling:
                probs.append(step_probs)
                drafts.append(sample(step_probs, self.options.generator))
            else:
                drafts.append(last.argmax(-1))
            if threshold:
                # transformers' ConfidenceCriteria, per row: the unsure draft is kept, the next ones are not
                unsure = step_probs.gather(1, drafts[-1].unsqueeze(1)).squeeze(1) < threshold
                budget = torch.where(unsure, torch.minimum(budget, torch.full_like(budget, j + 1)), budget)
                if j + 1 < k and bool((budget <= j + 1).all()):  # a sync per draft step, only with a threshold
                    break
            step_input = drafts[-1].unsqueeze(1)
            positions = (rows.lengths + j).unsqueeze(1)  # d_{j+1} sits at position length + j
            kv_len = top + j + 1
            start = None if pending is None else pending + j + 1
        return Proposal(torch.stack(drafts, 1), torch.stack(probs, 1) if probs else None, budget, len(drafts))

    def rollback(self, lengths_h: np.ndarray, old_lengths: np.ndarray, steps: int) -> None:
        """After a verify: the draft keeps what it ran (pending + d_1..d_{steps-1}) that was accepted. A round
        without drafts leaves its cache as it was (it catches up when it next drafts)."""
        if steps:
            self.cache.set_lengths(np.minimum(lengths_h - 1, old_lengths + steps - 1))

    def select_rows(self, index: torch.Tensor) -> None:
        self.cache.select_rows(index)
        if self._unprojected is not None:  # (a host read when rows leave, and only while some wait for a store)
            self._unprojected = (self._unprojected[index.cpu().numpy()] if self._unprojected.any()
                                 else np.zeros(len(index), dtype=bool))

    def copy_rows(self, sources: np.ndarray, targets: np.ndarray) -> None:  # [n], [n] cache rows (host)
        self.cache.copy_rows(sources, targets)
        if self._unprojected is not None:
            self._unprojected[targets] = self._unprojected[sources]

    def left_align(self, offsets: np.ndarray) -> None:
        self.cache.left_align(offsets)


def greedy_steps(
    runner: ModelRunner,  # static shapes: every forward over all rows and the whole cache
    first_input: torch.Tensor,  # [B, w] the tokens the draft has not run, ending at each row's pending token
    positions: torch.Tensor,  # [B, w] their positions
    lengths: torch.Tensor,  # [B] committed tokens per row
    limits: torch.Tensor,  # [B] highest position id of each row
    pick: torch.Tensor,  # [B] the column of each row's pending token in `first_input`
    k: int,
) -> torch.Tensor:  # [B, k] drafts
    """A greedy draft's k sequential steps as one function of device tensors, for torch.compile: the same
    forwards `ModelDrafter.propose` runs one by one."""
    rows = torch.arange(first_input.shape[0], device=first_input.device)
    logits = runner.forward(first_input, positions, limits, 0)  # [B, w, V] (static: kv_len is the whole cache)
    drafts = [logits[rows, pick.to(logits.device)].argmax(-1).to(first_input.device)]
    for j in range(1, k):
        logits = runner.forward(drafts[-1].unsqueeze(1), (lengths + j - 1).unsqueeze(1), limits, 0, keep=1)
        drafts.append(logits[:, -1].argmax(-1).to(first_input.device))
    return torch.stack(drafts, 1)
