"""Multi-token prediction (`use_mtp=True`): the target's own MTP layers draft from its last hidden states,
batched (transformers' `MTPCandidateGenerator` serves one row; `docs/notes_mtp_assistant.md` has how it works).

MTP layer j at position p reads the embedding of the token at p and the previous layer's output at p - 1 (for
layer 0: the target's last hidden state h_{p-1}); its output's logits predict the token at p + 1. With the pending
token at position L (committed, not yet run by the target, h_{L-1} known from the last verify), layer j's output at
L + j gives draft j + 1: K layers draft K tokens, one forward of each layer per round.

Per row the drafter keeps each layer's keys and values in a ragged cache (slot = position, as the target's) and a
ring of the target's last K + 1 hidden states. Each round every layer recomputes a fixed window of K + 1 positions
ending at L + j (from a = max(1, L - K)): whatever the last verify accepted, the entries before the window are still
the ones a from-scratch run would compute, and the window fixes the rest (the rule checked against transformers'
drafts in the notes). Fixed widths, so no per-row branching, and rollback needs nothing. After rounds without drafts
(speculation="auto" off) the positions in between were never run: a row's layers then attend from its window on
(`start_h`), the target's hidden state carrying the context before it.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import compat
from ..acceptance import sample
from ..cache import RaggedCache
from ..masks import additive_mask, attention_layout
from ..processors import probabilities
from ..runner import compute_dtype
from ..scheduling import ActiveRows, to_device
from .base import DraftOptions, Drafter, Proposal, VerifyOutputs


def mtp_layers(model: torch.nn.Module) -> int:
    """The MTP layers a model's config declares (`num_mtp_layers`, alias `num_nextn_predict_layers`), 0 if none."""
    config = model.config.get_text_config()
    return int(getattr(config, "num_mtp_layers", None) or 0)


class MTPDrafter(Drafter):
    """K MTP layers (`transformers.modeling_layers.MtpModel`, sharing the target's embedding and head) drafting K
    tokens per row and round from the verify's hidden states (`verify_outputs`) and the prefill's
    (`observe_prefill`)."""

    verify_outputs = frozenset({"hidden_states"})

    def __init__(self, mtp: torch.nn.Module, slots: int, cache_len: int, options: DraftOptions, staging: int = 0):
        self.mtp, self.options = mtp, options
        self.K = len(mtp.layers)
        self.device = mtp.embed_tokens.weight.device
        self.dtype = compute_dtype(mtp)
        self.windows = attention_layout(mtp.config).windows  # per layer type; MTP layers of DeepSeek/GLM: full
        self.layer_types = getattr(mtp.config, "layer_types", None)
        # room for the window's padding columns past a row's last position (queries never read, see `_window`)
        self.cache = RaggedCache(self.K, slots, cache_len + 2 * self.K + 2, staging=staging)
        rows = slots + staging
        self.ring = torch.zeros((rows, self.K + 1, mtp.config.hidden_size), dtype=self.dtype, device=self.device)
        self.start_h = np.ones(rows, dtype=np.int64)  # [R] first position each row's layer 0 attends from
        self.valid_h = np.zeros(rows, dtype=np.int64)  # [R] positions 0..valid-1 of layer 0 are computed

    # -- the prompt and the verify's hidden states ------------------------------------------------------------
    def observe_prefill(self, prompts: torch.Tensor, lengths: np.ndarray, slots: np.ndarray, cache_rows,
                        hidden_states: torch.Tensor) -> None:
        """Prompts (`prompts` [n, P] right-packed, `lengths` [n]) were prefilled into cache rows `slots` with the
        target's last hidden states `hidden_states` [n, P, H]: each layer runs over the prompt (layer j at positions
        j + 1 .. P - 1, layer 0 from h_0 ..), and the ring takes the prompt's last K + 1 hidden states."""
        n, width = prompts.shape
        hidden = hidden_states.to(self.device, self.dtype)
        positions = torch.arange(width, device=self.device).expand(n, width)  # [n, P]
        ring_pos = to_device(np.maximum(lengths - 1, 0), self.device).unsqueeze(1) - torch.arange(
            self.K + 1, device=self.device)  # [n, K+1] the last K + 1 prompt positions (those < 0 are padding)
        kept = hidden.gather(1, ring_pos.clamp(min=0).unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        rows_d = to_device(slots, self.device)
        self.ring[rows_d.unsqueeze(1), ring_pos % (self.K + 1)] = kept
        previous = hidden  # [n, P, H] the input hidden state of position p + 1 sits at column p
        tokens = prompts.to(self.device)
        for j in range(self.K):
            span = width - 1 - j  # positions j + 1 .. P - 1
            if span <= 0:
                break
            previous = self._layer(j, tokens[:, j + 1:], previous[:, :span], positions[:, j + 1:],
                                   torch.full((n,), j + 1, device=self.device), rows=cache_rows)
        self.start_h[slots], self.valid_h[slots] = 1, lengths

    def observe_verify(self, rows: ActiveRows, outputs: VerifyOutputs) -> None:
        """The ring takes the target's hidden states at the positions the round committed (the pending token and
        the accepted drafts); those after a rejection are not written."""
        hidden = outputs.hidden_states.to(self.device, self.dtype)  # [B, k+1, H]
        columns = torch.arange(hidden.shape[1], device=self.device)
        ring_pos = (outputs.lengths.to(self.device) - 1).unsqueeze(1) + columns  # [B, k+1]
        slot = ring_pos % (self.K + 1)
        batch = torch.arange(len(rows), device=self.device).unsqueeze(1)
        committed = (columns < outputs.count.to(self.device).unsqueeze(1)).unsqueeze(-1)  # [B, k+1, 1]
        self.ring[batch, slot] = torch.where(committed, hidden, self.ring[batch, slot])

    # -- drafting ----------------------------------------------------------------------------------------------
    def propose(self, rows: ActiveRows, tokens: torch.Tensor, k: int,
                budget: torch.Tensor) -> Proposal:  # tokens [N+1, T], budget [B] -> drafts [B, k]
        """Drafts 1..k (k <= K) from layers 0..k-1, each over its window of K + 1 positions."""
        B, device = len(rows), tokens.device
        k = min(k, self.K)
        W = self.K + 1
        pending_h = rows.lengths_h - 1  # [B] position L of each row's pending token
        start_h = np.maximum(pending_h - self.K, 1)  # [B] the window's first position a (layer 0)
        gap = start_h > self.valid_h[:B]  # rows whose layer 0 skipped positions (rounds without drafts)
        self.start_h[:B] = np.where(gap, start_h, self.start_h[:B])
        self.valid_h[:B] = pending_h + 1
        start = to_device(start_h, self.device)  # [B]
        pending = to_device(pending_h, self.device)
        columns = torch.arange(W, device=self.device)
        ids = rows.ids.to(self.device)
        buffer = tokens.to(self.device)
        ring_pos = (start - 1).unsqueeze(1) + columns  # [B, W] h_{a-1} .. h_{a+K-1}
        previous = self.ring[torch.arange(B, device=self.device).unsqueeze(1), ring_pos % W]  # [B, W, H]
        last = (pending - start).unsqueeze(1)  # [B, 1] the window column of each row's position L + j
        drafts = torch.zeros((B, self.K), dtype=torch.long, device=self.device)
        first = to_device(self.start_h[:B], self.device)
        picked, probs = [], []
        for j in range(k):
            positions = start.unsqueeze(1) + j + columns  # [B, W]
            # the token at each position: committed up to L, then the drafts of this round
            committed = buffer[ids.unsqueeze(1), positions.clamp(max=buffer.shape[1] - 1)]
            drafted = drafts.gather(1, (positions - pending.unsqueeze(1) - 1).clamp(0, self.K - 1))
            step_tokens = torch.where(positions > pending.unsqueeze(1), drafted, committed)
            previous = self._layer(j, step_tokens, previous, positions, first + j)
            logits = self.mtp._project_to_logits(previous.gather(
                1, last.unsqueeze(-1).expand(-1, 1, previous.shape[-1]))[:, 0])  # [B, V]
            if self.options.do_sample:
                step_probs = probabilities(self.options.processing.draft(logits.float()))
                token = sample(step_probs, self.options.generator)
                probs.append(step_probs)
            else:
                token = logits.argmax(-1)
            drafts[:, j] = token
            picked.append(token)
        out_probs = torch.stack(probs, 1).to(device) if probs else None
        return Proposal(torch.stack(picked, 1).to(device), out_probs, budget, k)

    def _layer(self, j: int, tokens: torch.Tensor, previous: torch.Tensor, positions: torch.Tensor,
               first: torch.Tensor, rows=None) -> torch.Tensor:  # [n, w] tokens, [n, w, H], [n, w], [n] -> [n, w, H]
        """MTP layer j over queries at `positions` (= their slots in its cache), attending slots `first` .. p."""
        slots = positions.clamp(max=self.cache.num_slots - 1)
        kv_len = min(int(positions.max()) + 1, self.cache.num_slots)
        self.cache.begin(slots, kv_len, rows)
        embeds = self.mtp.embed_tokens(tokens)
        layer_type = self.layer_types[j] if self.layer_types else "full_attention"
        mask = additive_mask(slots, kv_len, self.dtype, self.windows.get(layer_type), first)
        rope = {"layer_type": layer_type} if getattr(self.mtp, "has_per_layer_rope", False) else {}
        position_embeddings = (self.mtp.rotary_emb(embeds, position_ids=positions, **rope)
                               if self.mtp.rotary_emb is not None else None)
        out = self.mtp.layers[j](embeds, previous, position_embeddings=position_embeddings, attention_mask=mask,
                                 position_ids=positions, **{compat.cache_kwarg(self.mtp.layers[j]): self.cache})
        if getattr(self.mtp, "use_shared_post_norm", False):
            out = self.mtp.shared_post_norm(out)
        self.cache.end()
        return out

    # -- rows moving -------------------------------------------------------------------------------------------
    def select_rows(self, index: torch.Tensor) -> None:
        self.cache.select_rows(index)
        keep = index.cpu().numpy()
        self.ring = self.ring[index.to(self.device)]
        self.start_h, self.valid_h = self.start_h[keep], self.valid_h[keep]

    def copy_rows(self, sources: np.ndarray, targets: np.ndarray) -> None:  # [n], [n] cache rows (host)
        self.cache.copy_rows(sources, targets)
        self.ring[to_device(targets, self.device)] = self.ring[to_device(sources, self.device)]
        self.start_h[targets], self.valid_h[targets] = self.start_h[sources], self.valid_h[sources]
