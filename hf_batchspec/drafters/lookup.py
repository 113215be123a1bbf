"""Prompt lookup decoding (`prompt_lookup_num_tokens=k`), batched: transformers' `PromptLookupCandidateGenerator`
for every row at once."""

from __future__ import annotations

import torch

from ..lookup import ngram_drafts
from ..scheduling import ActiveRows
from .base import Drafter, Proposal


class LookupDrafter(Drafter):
    """Prompt lookup decoding, batched: drafts are copies of each row's own earlier tokens (`lookup.py`). No
    forward and no cache: admission, rollback and row selection need nothing, and a row without a match offers
    no drafts (its budget is cut to 0) and gets the target's own token that round."""

    def __init__(self, max_ngram: int, static: bool = False, fuses: bool = False):
        self.max_ngram, self.static = max_ngram, static
        # Compiled greedy (static shapes): the match, the verify and the commit are one program (`lookup_round`),
        # read a round late, as a draft model's round is.
        self.fuses = fuses

    @property
    def device_program(self):
        from ..device_round import lookup_round

        return lookup_round

    def device_inputs(self, rows: ActiveRows) -> tuple:
        return (self.max_ngram,)

    def propose(self, rows: ActiveRows, tokens: torch.Tensor, k: int, budget: torch.Tensor) -> Proposal:
        drafts, counts = ngram_drafts(tokens, rows.ids, rows.lengths, k, self.max_ngram, budget)  # [B, k], [B]
        if not self.static:
            # The verify is only as wide as the longest match, not k: a second host sync in the round, which on
            # a CPU (a verify's cost grows with its tokens) pays many times over. Static shapes keep k columns.
            drafts = drafts[:, : int(counts.max())]
        return Proposal(drafts, None, counts)
