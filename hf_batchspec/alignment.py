"""Whisper's token timestamps (`return_token_timestamps=True`): the cross-attention weights of its alignment heads,
kept per row and position, and the timestamps computed from each row's own weights.

transformers computes token timestamps from the cross-attentions generate returns (every layer, every head, every
step: `[B, H, T, S]` per layer and step), by dynamic time warping over the alignment heads' weights, normalised
over the tokens of the batch. Two things differ here:

- the weights are kept only for the alignment heads, by row and position (`AlignmentRecord`): the query at
  position p of a row attends from the token at p, so a verify forward's queries write the positions of its input
  tokens; the queries of rejected drafts are overwritten by the next round's, which starts at the row's first
  uncommitted token (as the token buffer's candidates are). A row's weights through position P + G - 2 (its prompt
  and every generated token but the last, which no forward reads) are exactly the steps transformers would have
  recorded decoding that row alone;
- the timestamps of each row are computed from its own weights alone (`row_timestamps`, transformers' own
  `_extract_token_timestamps` on that row), so a row equals its decoding alone; transformers' batched call
  normalises over the longest row's steps, so a shorter row's timestamps depend on the others.
"""

from __future__ import annotations

import torch
from transformers.generation.utils import GenerateEncoderDecoderOutput

from .encoder_decoder import decoder_of


class AlignmentRecord:
    """The alignment heads' cross-attention weights `[N + 1, A, L, S]` by token-buffer row (the last one is the
    scratch row of idle slots), head (in `alignment_heads` order), query position and encoder frame. Hooks on the
    cross-attention of the heads' layers keep each forward's weights until the decoder says which rows and
    positions the forward's queries were (`write`)."""

    def __init__(self, model, heads, rows: int, width: int):
        self.heads = [(int(layer), int(head)) for layer, head in heads]  # [(layer, head)] transformers' order
        self.rows, self.width = rows, width
        self.weights: torch.Tensor | None = None  # [N + 1, A, L, S], allocated on the first write
        self._last: dict[int, torch.Tensor] = {}  # layer -> [b, H, T, S] the last forward's weights
        layers = decoder_of(model).layers
        self._handles = [layers[layer].encoder_attn.register_forward_hook(self._keep(layer))
                         for layer in sorted({layer for layer, _ in self.heads})]

    def _keep(self, layer: int):
        def hook(module, args, output):
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:  # transformers' attention returned no weights (not eager)
                raise RuntimeError("token timestamps need the cross-attention weights: load the model with "
                                   "attn_implementation='eager'")
            self._last[layer] = weights
        return hook

    def write(self, ids: torch.Tensor,  # [b] token-buffer row of each of the forward's rows
              positions: torch.Tensor) -> None:  # [b, T] position of each query's input token
        weights = torch.stack([self._last[layer][:, head] for layer, head in self.heads], 2)  # [b, T, A, S]
        self._last.clear()
        if self.weights is None:
            self.weights = weights.new_zeros((self.rows, len(self.heads), self.width, weights.shape[-1]))
        index = positions.to(self.weights.device).clamp(max=self.width - 1)  # padding queries past every end
        self.weights[ids.to(self.weights.device).unsqueeze(1), :, index] = weights.to(self.weights.dtype)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def row_timestamps(extract, decoder_layers: int, weights: torch.Tensor,  # [N, A, L, S] by row (`AlignmentRecord`)
                   prompt_lengths, new_tokens, sequences: torch.Tensor,  # [N, W + G]
                   time_precision: float, num_frames, num_input_ids: int) -> torch.Tensor:  # [N, W + G]
    """Each row's token timestamps from its own weights: transformers' `_extract_token_timestamps` (`extract`) on
    that row alone (its alignment heads in a compact layout, its own prompt), in the columns of the batch's
    sequences (0 s over a left-padded prompt's padding, the row's last timestamp past its end)."""
    n, heads = weights.shape[0], weights.shape[1]
    compact = [(0, head) for head in range(heads)]  # every head in one layer, in the call's order
    rows = []
    for row in range(n):  # after the call, not in a round: transformers' own time warping runs per row too
        own = int(prompt_lengths[row])  # the row's prompt (a conditioned window's are left-padded to num_input_ids)
        steps = own + int(new_tokens[row]) - 1  # queries read: the prompt and every token but the last
        layers = (weights[row:row + 1, :, :steps],) + tuple(
            weights.new_empty((1, 0, 0, 0)) for _ in range(decoder_layers - 1))
        alone = GenerateEncoderDecoderOutput(sequences=sequences[row:row + 1], cross_attentions=(layers,))
        frames = num_frames if num_frames is None or isinstance(num_frames, int) else num_frames[row:row + 1]
        stamps = extract(alone, compact, time_precision, frames, own)[0]  # [own + G]
        stamps = torch.nn.functional.pad(stamps, (num_input_ids - own, 0))  # the padding's columns: 0 s, as the prompt's
        rows.append(torch.nn.functional.pad(stamps, (0, sequences.shape[1] - len(stamps)), value=float(stamps[-1])))
    return torch.stack(rows)
