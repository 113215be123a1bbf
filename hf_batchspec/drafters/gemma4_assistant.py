"""A Gemma 4 assistant (`assistant_model=Gemma4AssistantForCausalLM`, or the unified kind) drafting for a Gemma 4
target, batched: transformers' `SinglePositionMultiTokenCandidateGenerator` serves one row
(`docs/notes_mtp_assistant.md`, section 3).

The assistant has no keys and values of its own: its layers attend to the target's, those of the last layer of each
layer type that computes them (the "store" layers of `config.kv_sharing_modes`), read here straight from the target's
ragged cache with per-row masks. Each row drafts from one position: its pending token's, L. Step s feeds the target's
embedding of the last token (the pending one, then each draft) with a hidden state (the target's last hidden state at
L - 1, then the assistant's own projected output), always at position L, and drafts the argmax of its logits. So the
only per-row state is that hidden state, taken from the verify (`observe_verify`) or the prefill (`observe_prefill`).

Drafts are deterministic (argmax, as transformers drafts), so under sampling acceptance treats q as one-hot on the draft
(`Proposal.probs` None): lossless, where transformers scores its argmax drafts with the assistant's softmax.
"""

from __future__ import annotations

import numpy as np
import torch

from ..runner import ModelRunner, compute_dtype
from ..scheduling import ActiveRows, to_device
from .base import DraftOptions, Drafter, Proposal, VerifyOutputs

FULL, SLIDING = "full_attention", "sliding_attention"


def is_gemma4_assistant(model) -> bool:
    """transformers' own test (`generation/utils.py`): the assistant's class name."""
    return model is not None and type(model).__name__.startswith(("Gemma4AssistantFor", "Gemma4UnifiedAssistantFor"))


def store_layers(target_config) -> dict[str, int]:
    """The target layer whose keys and values each layer type of the assistant reads: the last one of that type that
    computes its own (`kv_sharing_modes` "store")."""
    config = target_config.get_text_config()
    modes = getattr(config, "kv_sharing_modes", None)
    if modes is None:  # transformers before 5.2x: the last num_kv_shared_layers read the last layer of their type
        first_shared = config.num_hidden_layers - (getattr(config, "num_kv_shared_layers", 0) or 0)
        return {kind: max(i for i in range(first_shared) if config.layer_types[i] == kind)
                for kind in set(config.layer_types[:first_shared])}
    return {config.layer_types[i]: i for i, mode in enumerate(modes) if mode == "store"}


class Gemma4AssistantDrafter(Drafter):
    verify_outputs = frozenset({"hidden_states"})

    def __init__(self, assistant: torch.nn.Module, target: ModelRunner, slots: int, options: DraftOptions,
                 staging: int = 0):
        self.assistant, self.target, self.options = assistant, target, options
        self.embed = target.model.get_input_embeddings()  # the target's scaled embedding, as transformers feeds it
        self.layers = store_layers(target.model.config)
        self.window = getattr(assistant.config.get_text_config(), "sliding_window", None)
        self.device = assistant.pre_projection.weight.device
        self.dtype = compute_dtype(assistant)
        width = assistant.config.backbone_hidden_size
        self.hidden = torch.zeros((slots + staging, width), dtype=self.dtype, device=self.device)  # [R, H_target]

    def observe_prefill(self, prompts, lengths: np.ndarray, slots: np.ndarray, cache_rows,
                        hidden_states: torch.Tensor) -> None:  # [n, P, H] -> each row's at its last prompt position
        last = to_device(lengths - 1, hidden_states.device)
        rows = torch.arange(len(lengths), device=hidden_states.device)
        self.hidden[to_device(slots, self.device)] = hidden_states[rows, last].to(self.device, self.dtype)

    def observe_verify(self, rows: ActiveRows, outputs: VerifyOutputs) -> None:
        """h_{L'-1}: the target's hidden state at the last position the round committed (its last kept draft, or the
        pending token when none was accepted), where the new pending token was chosen."""
        states = outputs.hidden_states  # [B, k+1, H]
        batch = torch.arange(states.shape[0], device=states.device)
        self.hidden[: states.shape[0]] = states[batch, outputs.accepted.to(states.device)].to(self.device, self.dtype)

    def propose(self, rows: ActiveRows, tokens: torch.Tensor, k: int,
                budget: torch.Tensor) -> Proposal:  # tokens [N+1, T], budget [B] -> drafts [B, k]
        B, device = len(rows), tokens.device
        pending_h = rows.lengths_h - 1  # [B] position L of each row's pending token; slots < L hold its keys
        kv_len = int(pending_h.max(initial=0))
        position = to_device(pending_h, self.device).unsqueeze(1)  # [B, 1]
        shared = {kind: (layer.keys[:B, :, :kv_len].to(self.device), layer.values[:B, :, :kv_len].to(self.device))
                  for kind, index in self.layers.items() for layer in (self.target.cache.layers[index],)}
        masks = self._masks(position, kv_len)
        token = tokens[rows.ids, rows.lengths - 1].to(self.device)  # [B] the pending token
        hidden = self.hidden[:B]
        drafts = []
        for _ in range(k):  # the same position every step: the assistant runs no cache of its own
            embeds = torch.cat((self.embed(token.to(self.embed.weight.device)).to(self.device, self.dtype), hidden),
                               -1)[:, None]  # [B, 1, 2H_target]
            out = self.assistant.model(inputs_embeds=self.assistant.pre_projection(embeds), position_ids=position,
                                       attention_mask=masks, shared_kv_states=dict(shared), use_cache=False)
            state = out.last_hidden_state  # [B, 1, H]
            if self.assistant.config.use_ordered_embeddings:
                logits = self.assistant.masked_embedding(state, self.assistant.lm_head.weight)
            else:
                logits = self.assistant.lm_head(state)
            token = logits[:, -1].argmax(-1)
            hidden = self.assistant.post_projection(state)[:, 0]
            drafts.append(token)
        return Proposal(torch.stack(drafts, 1).to(device), None, budget, k)

    def _masks(self, position: torch.Tensor, kv_len: int) -> dict[str, torch.Tensor]:  # [B, 1] -> {kind: [B,1,1,S]}
        """Full layers read slots 0..L-1; sliding ones the last W + 1 of them (transformers' window for the
        assistant's query at L)."""
        slots = torch.arange(kv_len, device=self.device)
        allowed = {FULL: slots < position}
        if self.window is not None:
            allowed[SLIDING] = allowed[FULL] & (slots >= position - self.window - 1)
        else:
            allowed[SLIDING] = allowed[FULL]
        minimum = torch.finfo(self.dtype).min
        return {kind: torch.zeros(a.shape, dtype=self.dtype, device=self.device).masked_fill_(~a, minimum)
                .view(a.shape[0], 1, 1, kv_len) for kind, a in allowed.items()}

    def select_rows(self, index: torch.Tensor) -> None:
        self.hidden = self.hidden[index.to(self.device)]

    def copy_rows(self, sources: np.ndarray, targets: np.ndarray) -> None:  # [n], [n] cache rows (host)
        self.hidden[to_device(targets, self.device)] = self.hidden[to_device(sources, self.device)]
