"""A drafter whose drafts are given in advance, for unit tests of the round: the loop's side of the contract
(budgets, acceptance, rollback, refill, verify outputs) checked against drafts a test chose, with no draft model
whose behaviour would have to be predicted."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..scheduling import ActiveRows, to_device
from .base import Drafter, Proposal, VerifyOutputs


class ScriptedDrafter(Drafter):
    """Row i drafts from `script[i]`, the tokens it should generate (e.g. plain greedy's continuation, with wrong
    tokens where a test wants rejections): a row that has generated g tokens proposes `script[i][g : g + k]`, fewer
    where the script ends. Every hook the loop calls is recorded in `calls` (name, arguments), and with
    `verify_outputs` the round's `VerifyOutputs` in `verified`."""

    def __init__(self, script: list[list[int]], prompt_lengths: np.ndarray, verify_outputs=frozenset()):
        longest = max((len(row) for row in script), default=0)
        self.script = np.zeros((len(script) + 1, longest + 1), dtype=np.int64)  # [N+1, G]; the last row: scratch
        self.available = np.zeros(len(script) + 1, dtype=np.int64)  # [N+1] scripted tokens per row
        for row, tokens in enumerate(script):
            self.script[row, : len(tokens)] = tokens
            self.available[row] = len(tokens)
        self.prompt_lengths = np.append(prompt_lengths, 0)  # [N+1]
        self.verify_outputs = frozenset(verify_outputs)
        self.calls: list[tuple[str, tuple]] = []
        self.verified: list[VerifyOutputs] = []

    def propose(self, rows: ActiveRows, tokens: torch.Tensor, k: int,
                budget: torch.Tensor) -> Proposal:  # tokens [N+1, T], budget [B] -> drafts [B, k]
        self.calls.append(("propose", (rows.ids_h.copy(), rows.lengths_h.copy(), k)))
        generated = rows.lengths_h - self.prompt_lengths[rows.ids_h]  # [B] committed new tokens, the pending one too
        columns = np.minimum(generated[:, None] + np.arange(k), self.script.shape[1] - 1)  # [B, k]
        drafts = self.script[rows.ids_h[:, None], columns]
        left = np.clip(self.available[rows.ids_h] - generated, 0, k)  # [B] scripted drafts still to come
        device = tokens.device
        return Proposal(to_device(drafts, device), None, torch.minimum(budget, to_device(left, device)))

    def admit(self, prompts, positions, limits, width, cache_rows, ids, slots, lengths) -> int:
        self.calls.append(("admit", (np.asarray(ids).copy(), np.asarray(slots).copy())))
        return 0

    def observe_verify(self, rows: ActiveRows, outputs: VerifyOutputs) -> None:
        self.calls.append(("observe_verify", (rows.ids_h.copy(),)))
        self.verified.append(outputs)

    def rollback(self, lengths_h, old_lengths_h, steps) -> None:
        self.calls.append(("rollback", (np.asarray(lengths_h).copy(), np.asarray(old_lengths_h).copy(), steps)))

    def select_rows(self, index: torch.Tensor) -> None:
        self.calls.append(("select_rows", (index.cpu().numpy(),)))

    def copy_rows(self, sources, targets) -> None:
        self.calls.append(("copy_rows", (np.asarray(sources).copy(), np.asarray(targets).copy())))


@dataclass(frozen=True)
class ScriptedSource:
    """A `DraftSource` stand-in that hands the decode loop a prepared `ScriptedDrafter`
    (`decoding.speculative_decode(target, ScriptedSource(drafter), ...)`)."""

    drafter: ScriptedDrafter
    kind: str = field(default="scripted")
    model: None = None
    tokenizers: None = None

    @property
    def stages(self) -> bool:
        return self.drafter.stages

    def build(self, *args, **kwargs) -> ScriptedDrafter:
        return self.drafter
