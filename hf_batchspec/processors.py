"""transformers' logits processors applied at every verified position, with that position's exact prefix.

A verify forward scores k+1 positions of each row at once; transformers' processors score one position of
every row with a rectangular `input_ids`. To equal decoding each prompt alone, position i of row b must be
processed with exactly row b's tokens before it (no padding, no other row's length):

- row-local warpers (temperature, top-k, top-p, min-p, typical, epsilon, eta, logit normalisation, inf/nan
  removal) read scores only: applied to all positions of all rows at once;
- length rules (min_length, min_new_tokens) are vectorised natively from each position's own prefix length
  and its row's own prompt length (transformers' objects would count the padded width);
- processors that read the tokens (repetition penalty, n-gram bans, bad words, sequence bias, suppressed
  tokens, forced BOS) are called once per distinct prefix length, on the rows' exact prefixes. That loop runs
  only when such a processor is asked for.
Processors whose meaning depends on the padded batch layout or on the batch index are refused.

Whisper's no-speech detection changes no score: it reads the probability of the no-speech token at a decoder
prompt column (the start of transcript), once per row. The decoder takes it from the row's prefill
(`no_speech_column`), where transformers runs a forward of its own over the padded batch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from transformers.generation import logits_process as lp

ROW_LOCAL = (lp.TemperatureLogitsWarper, lp.TopKLogitsWarper, lp.TopPLogitsWarper, lp.MinPLogitsWarper,
             lp.TypicalLogitsWarper, lp.EpsilonLogitsWarper, lp.EtaLogitsWarper, lp.LogitNormalization,
             lp.InfNanRemoveLogitsProcessor, lp.SuppressTokensLogitsProcessor, lp.TopHLogitsWarper)
# Rules that read a position's prefix length only (and its row's prompt length): vectorised. Suppressing tokens at
# the begin index (the first generated position: transformers gives the padded prompt width) is at each row's own,
# and so is forcing EOS at the last position (transformers' max_length is the padded width's; a row's own is its
# prompt length + max_new_tokens, its batch-1 max_length).
LENGTH_RULES = (lp.MinLengthLogitsProcessor, lp.MinNewTokensLengthLogitsProcessor,
                lp.SuppressTokensAtBeginLogitsProcessor, lp.ForcedEOSTokenLogitsProcessor,
                lp.ExponentialDecayLengthPenalty)
# Rules that read tokens from a begin index, the first generated position (Whisper's timestamp rules):
# transformers gives them the padded prompt width; each row's own is its prompt length.
BEGIN_INDEXED = (lp.WhisperTimeStampLogitsProcessor,)
# Rules that read the source (an encoder's input ids; a decoder-only model's prompt): transformers gives them the
# padded batch's, padding included, by batch index; here each row reads its own source, without padding
# (`ScoreProcessing(sources=...)`), as decoding it alone does. The penalty is vectorised over a [N, V] mask of each
# row's source tokens; the n-gram ban is called per prefix length on the rows' own source n-grams.
SOURCE_READERS = (lp.EncoderRepetitionPenaltyLogitsProcessor, lp.EncoderNoRepeatNGramLogitsProcessor)
# (the green-list watermark seeds its list from the prefix's last tokens, per row)
PREFIX_READERS = (lp.RepetitionPenaltyLogitsProcessor, lp.NoRepeatNGramLogitsProcessor, lp.NoBadWordsLogitsProcessor,
                  lp.SequenceBiasLogitsProcessor, lp.ForcedBOSTokenLogitsProcessor, lp.WatermarkLogitsProcessor,
                  lp.PrefixConstrainedLogitsProcessor, lp.EncoderNoRepeatNGramLogitsProcessor) + BEGIN_INDEXED
# Rules that change no score and read the decoder prompt's logits, which each row's prefill gives them
OBSERVERS = (lp.WhisperNoSpeechDetection,)
SUPPORTED = ROW_LOCAL + LENGTH_RULES + PREFIX_READERS + (lp.EncoderRepetitionPenaltyLogitsProcessor,) + OBSERVERS


def unsupported_processors(logits_processor) -> list:
    return [p for p in logits_processor or [] if not isinstance(p, SUPPORTED)]


@dataclass
class Prefixes:
    """Where the tokens before each scored position are: position i of row b follows `lengths[b] + i` tokens."""

    tokens: torch.Tensor  # [N, S] token ids by original row and position
    ids: np.ndarray  # [B] original row of each batch row
    lengths: np.ndarray  # [B] tokens before the first scored position
    prompt_lengths: np.ndarray  # [B] each row's own prompt length


class ScoreProcessing:
    """The call's processors, in transformers' order, applied to `[B, T, V]` logits."""

    def __init__(self, processors, max_new_tokens: int | None = None, sources: list | None = None,
                 prompt_width: int | None = None):
        self.steps = [p for p in processors or [] if not isinstance(p, OBSERVERS)]
        # each original row's source [L_b] (no padding), for the rules that read it (`SOURCE_READERS`)
        self.sources = sources
        if sources is None and any(isinstance(p, SOURCE_READERS) for p in self.steps):
            raise ValueError("a processor that reads the source needs each row's source (ScoreProcessing(sources=))")
        self._in_source: torch.Tensor | None = None  # [N, V] whether token v is in row n's source
        self._source_ngrams: dict[int, list[dict]] = {}  # n -> per row, transformers' n-gram table of its source
        # Whisper's no-speech detection: given each row's probability after the call (`DecodeResult.no_speech`)
        self.no_speech = next((p for p in processors or [] if isinstance(p, lp.WhisperNoSpeechDetection)), None)
        self.max_new_tokens = max_new_tokens  # each row's budget (forcing EOS at a row's last position reads it)
        # the padded prompt width transformers built the processors with (the length penalty's start counts from it)
        self.prompt_width = prompt_width
        self.reads_prefix = any(not isinstance(p, ROW_LOCAL) for p in self.steps)
        self.row_local = [p for p in self.steps if isinstance(p, ROW_LOCAL)]

    def __call__(self, logits: torch.Tensor, prefixes: Prefixes | None = None) -> torch.Tensor:  # float32
        scores = logits.float()
        for step in self.steps:
            if isinstance(step, ROW_LOCAL):
                scores = _row_local(step, scores)
            elif isinstance(step, LENGTH_RULES):
                scores = self._length_rule(step, scores, prefixes)
            elif isinstance(step, lp.EncoderRepetitionPenaltyLogitsProcessor):
                scores = self._source_penalty(step, scores, prefixes)
            else:
                scores = _by_prefix_length(step, scores, prefixes, self._for_rows)
        return scores

    def _length_penalty(self, step, scores: torch.Tensor,  # [B, T, V]
                        length: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:  # [B, T], [B, 1]
        """transformers' exponential decay length penalty (EOS scores raised by |score| x (factor^i - 1), i tokens
        past the start), its start counted from each row's own prompt length rather than the padded width."""
        start = step.regulation_start - self.prompt_width + prompt  # [B, 1]
        past = (length - start).clamp(min=0)  # [B, T] i, 0 where the penalty has not started
        eos = step.eos_token_id.to(scores.device)
        # pow in double then rounded, as transformers' Python float times a float32 tensor
        factor = torch.pow(torch.tensor(step.regulation_factor, dtype=torch.float64), past.double()) - 1
        eos_scores = scores[..., eos]  # [B, T, E]
        penalty = (eos_scores.abs() * factor.to(scores.dtype).unsqueeze(-1)).masked_fill(~torch.isfinite(eos_scores), 0.0)
        penalties = torch.zeros_like(scores)
        penalties[..., eos] = torch.where((past > 0).unsqueeze(-1), penalty, 0.0)
        return scores + penalties

    def _source_penalty(self, step, scores: torch.Tensor, prefixes: Prefixes) -> torch.Tensor:  # [B, T, V]
        """transformers' encoder repetition penalty (scores of the source's tokens raised: multiplied by 1/penalty
        where negative, divided where not), on each row's own source tokens."""
        if self._in_source is None:
            vocab = scores.shape[-1]
            self._in_source = torch.zeros((len(self.sources), vocab), dtype=torch.bool, device=scores.device)
            for row, source in enumerate(self.sources):  # once per call
                self._in_source[row, source.to(scores.device)] = True
        rows = self._in_source[torch.as_tensor(prefixes.ids, device=scores.device)].unsqueeze(1)  # [B, 1, V]
        raised = torch.where(scores < 0, scores * step.penalty, scores / step.penalty)
        return torch.where(rows, raised, scores)

    def _for_rows(self, step, prompt_lengths: np.ndarray, rows: np.ndarray):
        """The processor as it applies to these rows alone (`rows`: their original indices, `prompt_lengths`: their
        own prompt lengths, all equal in a group for a begin-indexed rule).

        transformers gives the repetition penalty each row's left-padding length (`prompt_ignore_length` as a
        tensor over the padded batch) so that pads are not penalised; our prefixes carry no padding, so that
        becomes None. An int `prompt_ignore_length` (the documented "skip the prompt") becomes each row's own
        prompt length. A begin-indexed rule counts from the rows' own prompt length. The source n-gram ban reads
        these rows' own sources; `prefix_allowed_tokens_fn` is called with each row's index in the call
        (transformers' batch_id) and its exact prefix (without padding).
        """
        if isinstance(step, BEGIN_INDEXED):
            step = copy.copy(step)
            step.set_begin_index(int(prompt_lengths[0]))
            return step
        if isinstance(step, lp.RepetitionPenaltyLogitsProcessor) and step.prompt_ignore_length is not None:
            ignore = None
            if isinstance(step.prompt_ignore_length, int):
                ignore = torch.as_tensor(prompt_lengths, dtype=torch.long)
            return lp.RepetitionPenaltyLogitsProcessor(step.penalty, prompt_ignore_length=ignore)
        if isinstance(step, lp.PrefixConstrainedLogitsProcessor):
            view, allowed = copy.copy(step), step._prefix_allowed_tokens_fn
            view._num_beams = 1
            view._prefix_allowed_tokens_fn = lambda batch_id, sent: allowed(int(rows[batch_id]), sent)
            return view
        if isinstance(step, lp.EncoderNoRepeatNGramLogitsProcessor):
            ngrams = self._source_ngrams.get(step.ngram_size)
            if ngrams is None:  # once per call: transformers' own table of each row's source
                ngrams = [lp._get_ngrams(step.ngram_size, source.reshape(1, -1), 1)[0] for source in self.sources]
                self._source_ngrams[step.ngram_size] = ngrams
            view = copy.copy(step)
            view.batch_size, view.generated_ngrams = len(rows), [ngrams[row] for row in rows]
            return view
        return step

    def draft(self, logits: torch.Tensor) -> torch.Tensor:
        """The draft's scores: row-local warpers only (any q keeps sampling exact; greedy ignores q)."""
        scores = logits.float()
        for step in self.row_local:
            scores = _row_local(step, scores)
        return scores

    def _length_rule(self, step, scores: torch.Tensor, prefixes: Prefixes) -> torch.Tensor:
        batch, positions, vocab = scores.shape
        length = torch.as_tensor(prefixes.lengths, device=scores.device).unsqueeze(1) + torch.arange(
            positions, device=scores.device)  # [B, T] tokens before each position, the row's own count
        prompt = torch.as_tensor(prefixes.prompt_lengths, device=scores.device).unsqueeze(1)
        if isinstance(step, lp.MinLengthLogitsProcessor):
            early, banned = length < step.min_length, step.eos_token_id
        elif isinstance(step, lp.MinNewTokensLengthLogitsProcessor):
            early, banned = length - prompt < step.min_new_tokens, step.eos_token_id
        elif isinstance(step, lp.SuppressTokensAtBeginLogitsProcessor):  # at the row's first generated position
            early, banned = length == prompt, step.begin_suppress_tokens
        elif isinstance(step, lp.ExponentialDecayLengthPenalty):
            return self._length_penalty(step, scores, length, prompt)
        else:  # ForcedEOS at the row's last position: every other token banned, EOS scored 0 (transformers' rule)
            last = prompt + self.max_new_tokens - 1 if self.max_new_tokens is not None else step.max_length - 1
            eos = torch.isin(torch.arange(vocab, device=scores.device), step.eos_token_id.to(scores.device))
            forced = (length == last).unsqueeze(-1)  # [B, T, 1]
            return torch.where(forced & eos, 0.0, scores.masked_fill(forced & ~eos, -float("inf")))
        is_banned = torch.isin(torch.arange(vocab, device=scores.device), banned.to(scores.device))
        return scores.masked_fill(early.unsqueeze(-1) & is_banned, -float("inf"))


def no_speech_column(detector: lp.WhisperNoSpeechDetection, width: int) -> int:
    """The column of a decoder prompt `width` tokens wide (the call's padded width) whose raw logits Whisper's
    no-speech detection reads at the first step: the start-of-transcript token's when the prompt's forced tokens
    follow it (transformers runs the model over the prompt and reads that column), else the step's own scores,
    the prompt's last column."""
    if detector.start_of_trans_offset > 1:
        return detector.begin_index - detector.start_of_trans_offset
    return width - 1


def no_speech_probability(logits: torch.Tensor, detector: lp.WhisperNoSpeechDetection) -> torch.Tensor:  # [n]
    """`logits` [n, V]: each row's raw logits at its `no_speech_column`; as transformers computes it."""
    return logits.float().softmax(-1)[:, detector.no_speech_token]


def _row_local(step, scores: torch.Tensor) -> torch.Tensor:
    shape = scores.shape
    flat = scores.reshape(-1, shape[-1])
    no_ids = torch.empty((flat.shape[0], 0), dtype=torch.long, device=flat.device)
    return step(no_ids, flat).reshape(shape)


def _by_prefix_length(step, scores: torch.Tensor, prefixes: Prefixes, for_rows) -> torch.Tensor:
    """Call `step` once per distinct prefix length (and, for a rule with a begin index, prompt length), each time
    on the exact prefixes of those positions, as it applies to those rows (`for_rows`)."""
    batch, positions, vocab = scores.shape
    lengths = (prefixes.lengths[:, None] + np.arange(positions)).reshape(-1)  # [B*T]
    rows = np.repeat(prefixes.ids, positions)  # [B*T] original row of each flat position
    prompts = np.repeat(prefixes.prompt_lengths, positions)
    flat = scores.reshape(-1, vocab).clone()
    # one group per prefix length, or per (prefix length, prompt length) for a begin-indexed rule
    keys = lengths * (int(prompts.max(initial=0)) + 1) + prompts if isinstance(step, BEGIN_INDEXED) else lengths
    for key in np.unique(keys):
        where = np.flatnonzero(keys == key)
        length = lengths[where[0]]
        index = torch.as_tensor(where, device=flat.device)
        input_ids = prefixes.tokens[torch.as_tensor(rows[where], device=prefixes.tokens.device), :length]
        flat[index] = for_rows(step, prompts[where], rows[where])(input_ids.to(flat.device), flat[index])
    return flat.reshape(batch, positions, vocab)


def probabilities(scores: torch.Tensor) -> torch.Tensor:
    return torch.softmax(scores, -1)
