"""A draft model with a tokenizer of its own (`assistant_model=` with `assistant_tokenizer=` and `tokenizer=`),
batched: transformers' universal assisted decoding (`AssistedCandidateGeneratorDifferentTokenizers`) when greedy,
its universal speculative decoding (`UniversalSpeculativeDecodingGenerator`) when sampling."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from .. import retokenize, vocab_map
from ..masks import packed_positions
from ..processors import ScoreProcessing
from ..scheduling import ActiveRows, to_device
from .base import DraftOptions, Drafter, Proposal, backlog_of
from .model import ModelDrafter


@dataclass
class DraftRows:
    """The batch's rows as a draft with its own tokens sees them: `ActiveRows`' fields, in draft positions."""

    ids: torch.Tensor  # [B] token-buffer row of each slot (original prompt index)
    ids_h: np.ndarray  # [B]
    lengths: torch.Tensor  # [B] committed draft tokens of each row's text
    lengths_h: np.ndarray  # [B]
    live_h: np.ndarray  # [B]
    limits: torch.Tensor  # [B] highest position id the draft may see

    def __len__(self) -> int:
        return len(self.ids_h)


class DraftVocabSampling(ScoreProcessing):
    """The draft's scores when it samples for a target of another vocabulary: its ids without a target counterpart
    suppressed, then the call's row-local warpers (temperature, top-k, top-p, min-p, ...: functions of the scores
    alone) in the draft's vocabulary. What the draft samples from is what it reports as q, so any choice here keeps
    sampling exact; the target's scores get every processor of the call, as always."""

    def __init__(self, row_local, allowed: torch.Tensor):  # [V_d] bool: draft ids that map to a target id
        super().__init__(row_local)
        self.allowed = allowed

    def draft(self, logits: torch.Tensor) -> torch.Tensor:  # [B, V_d] -> [B, V_d] float32
        return super().draft(logits.float().masked_fill(~self.allowed, -float("inf")))


class OtherTokenizerDrafter(Drafter):
    """A draft model with a tokenizer of its own (transformers' universal assisted / speculative decoding, batched).

    Each round the rows' committed text is re-encoded in the draft's tokens (one batched tokenizer call);
    the draft's cache keeps the longest prefix of what it already ran that still matches (by length, O(1)),
    catches up on the rest and drafts k tokens, token by token in its own ids. Its cache rows are the target's
    slots, in the draft's own positions, sized from the prompts' text.

    - Greedy: the drafts' text is re-encoded as target tokens (`retokenize.py`); q is not needed.
    - Sampling: the draft samples only ids whose token string the target's vocabulary has (`vocab_map.py`), so
      each draft is one target token, converted by lookup; q is the draft's distribution carried onto those
      target ids (zero elsewhere), `[B, k', V_target]`, and the target's speculative sampling is exact with it.
      `target_vocab` is the width of the target's logits (default: the target tokenizer's id range)."""

    stages = False  # per-slot text state (`ran`) that a staged row would have to carry
    GROWTH = 8  # draft positions reserved per target position (a target token's text in draft tokens, at most)

    def __init__(self, model, target_tokenizer, draft_tokenizer, slots: int, options: DraftOptions,
                 prompts: torch.Tensor, prompt_lengths: np.ndarray, max_new: int, k: int,
                 target_vocab: int | None = None):
        self.target_tokenizer, self.draft_tokenizer = target_tokenizer, draft_tokenizer
        # every prompt's draft ids, once: they size the cache here and are what admission prefills
        self.prompt_ids, self.prompt_lengths = retokenize.pad(retokenize.draft_view(
            target_tokenizer, draft_tokenizer, prompts.cpu().numpy(), prompt_lengths))  # [N, P_d], [N]
        self.capacity = self.prompt_ids.shape[1] + self.GROWTH * (max_new + k + 1) + 2
        options = dataclasses.replace(options, processing=ScoreProcessing([]))  # target-vocabulary processors
        self.inner = ModelDrafter(model, slots, self.capacity, options)
        self.device = self.inner.runner.device
        limit = min(self.capacity, getattr(model.config.get_text_config(), "max_position_embeddings", None)
                    or self.capacity) - 1
        self.limits = torch.full((slots,), limit, dtype=torch.long, device=self.device)
        self.tokens = torch.zeros((len(prompt_lengths) + 1, self.capacity), dtype=torch.long, device=self.device)
        self.ran = np.zeros((slots, self.capacity), dtype=np.int64)  # draft ids in its cache, per slot
        self.synced = np.zeros(slots, dtype=np.int64)  # target tokens each slot's text had when the draft last ran
        self.sampling = options.do_sample
        if self.sampling:
            self._map_vocabularies(model, vocab_map.vocab_map(target_tokenizer, draft_tokenizer), target_vocab,
                                   options)

    def _map_vocabularies(self, model, mapping: vocab_map.VocabMap, target_vocab: int | None,
                          options: DraftOptions) -> None:
        """The lookup from draft ids to target ids, and the draft's sampling restricted to mapped ids."""
        vocab_map.check_overlap(mapping)
        head = model.get_output_embeddings()
        draft_width = int(head.weight.shape[0]) if head is not None else int(
            model.config.get_text_config().vocab_size)  # the draft's logits
        if target_vocab is None:
            target_vocab = max(len(self.target_tokenizer), max(self.target_tokenizer.get_vocab().values()) + 1)
        self.target_vocab = int(target_vocab)
        inside = (mapping.draft_ids < draft_width) & (mapping.target_ids < self.target_vocab)
        to_target = np.full(draft_width, -1, dtype=np.int64)
        to_target[mapping.draft_ids[inside]] = mapping.target_ids[inside]
        self.to_target = to_device(to_target, self.device)  # [V_d] target id of each draft id, -1: none
        self.mapped = to_device(mapping.draft_ids[inside], self.device)  # [M] draft ids that map
        self.mapped_to = to_device(mapping.target_ids[inside], self.device)  # [M] their target ids
        self.inner.options = dataclasses.replace(
            self.inner.options, processing=DraftVocabSampling(options.processing.row_local, self.to_target >= 0))

    @property
    def cache(self):
        return self.inner.cache

    def set_on_rows(self, on_rows) -> None:
        self.inner.set_on_rows(on_rows)

    def admit(self, prompts, positions, limits, width: int, cache_rows, ids: np.ndarray, slots: np.ndarray,
              lengths: np.ndarray) -> int:
        """Prefill the admitted prompts' draft ids (the target-space arguments are not its own)."""
        draft_lengths = self.prompt_lengths[ids]
        padded = self.prompt_ids[ids, : int(draft_lengths.max())]
        prompts_d = to_device(padded, self.device)  # [n, P_d]
        self.tokens[to_device(ids, self.device), : padded.shape[1]] = prompts_d
        self.ran[slots, : padded.shape[1]] = padded
        self.synced[slots] = lengths
        return self.inner.admit(prompts_d, packed_positions(len(ids), padded.shape[1], self.device),
                                self.limits[: len(ids)], padded.shape[1], cache_rows, ids, slots, draft_lengths)

    def backlog(self, rows: ActiveRows) -> int:
        """Target tokens committed since the draft last ran a row's text, beyond the two a round re-feeds (the most
        over live rows): after rounds without drafts the next `propose` re-encodes and runs all of them. Counted in
        target tokens; the draft's own tokens for the same text are about as many (`speculation="auto"` prices a
        probe's catch-up by them)."""
        return backlog_of(rows.lengths_h - self.synced[: len(rows)], rows.live_h)

    def propose(self, rows: ActiveRows, tokens: torch.Tensor, k: int, budget: torch.Tensor) -> Proposal:
        committed = tokens[rows.ids, : int(rows.lengths_h.max())].cpu().numpy()  # [B, T] a second host sync
        self.synced[: len(rows)] = rows.lengths_h
        padded, new_len = retokenize.pad(retokenize.draft_view(self.target_tokenizer, self.draft_tokenizer,
                                                               committed, rows.lengths_h))
        room = new_len <= self.capacity - k - 1  # a row whose text outgrew the draft's cache drafts nothing
        new_len = np.minimum(new_len, self.capacity - k - 1)
        padded = padded[:, : self.capacity]
        kept = retokenize.common_prefix(self.ran, self.cache.lengths, padded, new_len)
        self.cache.set_lengths(np.minimum(kept, new_len - 1))  # the last token runs again: its logits draft
        self.ran[:, : padded.shape[1]] = padded
        self.tokens[rows.ids, : padded.shape[1]] = to_device(padded, self.device)
        view = DraftRows(rows.ids, rows.ids_h, to_device(new_len, self.device), new_len, rows.live_h, self.limits)
        proposal = self.inner.propose(view, self.tokens, k, budget)
        drafts = proposal.drafts.cpu().numpy()  # [B, k'] draft ids: a third host sync
        steps = drafts.shape[1]
        ran_cols = new_len[:, None] + np.arange(steps - 1)  # [B, k'-1] what the draft ran after the text
        self.ran[np.arange(len(rows))[:, None], ran_cols] = drafts[:, : steps - 1]
        self.cache.set_lengths(new_len + steps - 1)
        if self.sampling:
            return self._sampled_proposal(proposal, room & rows.live_h)
        target_ids, counts = retokenize.target_proposal(self.target_tokenizer, self.draft_tokenizer, committed,
                                                        rows.lengths_h, padded, new_len, drafts, k)
        counts = np.where(room & rows.live_h, counts, 0)
        width = int(counts.max(initial=0))  # known on the host: the verify is only as wide as the longest proposal
        return Proposal(to_device(target_ids[:, :width], self.device), None,
                        torch.minimum(proposal.budget, to_device(counts, self.device)), proposal.forwards)

    def _sampled_proposal(self, proposal: Proposal, drafting: np.ndarray) -> Proposal:  # drafting [B] (host)
        """The draft's sampled ids as target ids, with q carried onto the target's vocabulary."""
        drafts, q = proposal.drafts, proposal.probs  # [B, k'] draft ids, [B, k', V_d] what they were drawn from
        batch, steps = drafts.shape
        targets = self.to_target[drafts]  # [B, k']
        # a draft is offered while it maps and was drawable (an unmapped id comes only from a row whose mapped
        # scores were all -inf, where sampling falls back to any index); the first that is not ends the row's drafts
        usable = (targets >= 0) & (q.gather(-1, drafts.unsqueeze(-1)).squeeze(-1) > 0)  # [B, k']
        counts = ((~usable).cumsum(1) == 0).sum(1)  # [B]
        counts = torch.where(to_device(drafting, self.device), counts, 0)
        probs = q.new_zeros((batch, steps, self.target_vocab))  # [B, k', V_t]
        probs.index_add_(2, self.mapped_to, q.index_select(2, self.mapped))  # several draft ids may share one
        return Proposal(targets.clamp(min=0), probs, torch.minimum(proposal.budget, counts), proposal.forwards)

    def rollback(self, lengths_h: np.ndarray, old_lengths_h: np.ndarray, steps: int) -> None:
        """The cache needs nothing: the next round keeps the prefix of what the draft ran that the committed text
        still starts with. For `backlog`: the accepted drafts it ran (about one target token each) are text it has
        run."""
        if steps:
            rows = len(lengths_h)
            self.synced[:rows] = np.minimum(lengths_h, self.synced[:rows] + steps - 1)

    def select_rows(self, index: torch.Tensor) -> None:
        self.inner.select_rows(index)
        kept = index.cpu().numpy()
        self.ran, self.synced = self.ran[kept], self.synced[kept]
        self.limits = self.limits[: len(index)]

    def copy_rows(self, sources: np.ndarray, targets: np.ndarray) -> None:  # [n], [n] cache rows (host)
        self.inner.copy_rows(sources, targets)
        self.ran[targets] = self.ran[sources]
        self.synced[targets] = self.synced[sources]

    def left_align(self, offsets: np.ndarray) -> None:
        raise NotImplementedError("a draft with another tokenizer has positions of its own: no shared layout")
