"""Draft sources behind one contract (`base.Drafter`), one file each, listed in one table (`registry.SOURCES`).

- `model.ModelDrafter`: a draft model with the target's tokenizer (`assistant_model=`), sequential 1-token steps
  on its own ragged cache; also the drafter of an early exit (`early_exit.early_exit_model(target, n)`:
  `assistant_early_exit=n`).
- `lookup.LookupDrafter`: prompt lookup (`prompt_lookup_num_tokens=k`): copies of each row's own earlier tokens.
- `other_tokenizer.OtherTokenizerDrafter`: a draft with a tokenizer of its own (`assistant_tokenizer=`), its text
  converted on the host each round.
- `mtp.MTPDrafter`: the target's multi-token-prediction layers (`use_mtp=True`), drafting from its hidden states.
- `gemma4_assistant.Gemma4AssistantDrafter`: a Gemma 4 assistant reading the target's keys, values and hidden state.
- `scripted.ScriptedDrafter`: drafts given in advance, for unit tests of the round.
"""

from .base import DraftOptions, Drafter, Proposal, VerifyOutputs
from .early_exit import early_exit_model
from .gemma4_assistant import Gemma4AssistantDrafter
from .lookup import LookupDrafter
from .model import ModelDrafter, greedy_steps
from .mtp import MTPDrafter
from .other_tokenizer import OtherTokenizerDrafter
from .registry import SOURCES, DraftSource, SourceSpec
from .scripted import ScriptedDrafter, ScriptedSource

__all__ = ["DraftOptions", "DraftSource", "Drafter", "Gemma4AssistantDrafter", "LookupDrafter", "MTPDrafter",
           "ModelDrafter", "OtherTokenizerDrafter", "Proposal", "SOURCES", "ScriptedDrafter", "ScriptedSource",
           "SourceSpec", "VerifyOutputs", "early_exit_model", "greedy_steps"]
