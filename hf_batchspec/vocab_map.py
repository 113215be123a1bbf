"""The map between two tokenizers' vocabularies by token string: sampling with a draft of another tokenizer.

transformers' universal speculative decoding (`AssistantToTargetTranslator._get_assistant_to_target_input_ids`)
pairs a draft id with the target id of the same token string, after swapping the draft's leading-space marker
for the target's (each detected by tokenizing " ": "Ġ" for byte-level BPE, "▁" for SentencePiece). Draft ids
without a counterpart are suppressed while the draft samples, so each draft token it can draw is exactly one
target token, and the draft's distribution over its own ids becomes a distribution over target ids (mass added
where several draft strings normalise to one target token). The target then verifies with speculative
sampling, exact for any such q (see `OtherTokenizerDrafter`).

Unlike transformers' pruned-head mode, nothing here depends on `get_vocab()`'s order: the pairs are kept as
(draft id, target id) arrays, so a draft probability always lands on its own token's target id (transformers'
pruned mode scatters column i to the i-th smallest overlapping id, which is another token's where the fast
tokenizer's vocabulary is not id-ordered; docs/notes_mtp_assistant.md section 5).

Maps are built once per tokenizer pair and kept while both tokenizers live (rebuilt if either grows).
transformers has no overlap threshold (it maps whatever overlaps, down to nothing); a pair sharing less than
`MIN_OVERLAP` of the smaller vocabulary is refused here (`check_overlap`): its draft would propose from a sliver
of its own distribution, accepted rarely, every round paying a draft forward for it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from .errors import BatchSpecError

# Least share of the smaller vocabulary that must map (by string) for sampling with a draft of another tokenizer.
MIN_OVERLAP = 0.1


@dataclass(frozen=True)
class VocabMap:
    draft_ids: np.ndarray  # [M] draft ids with a counterpart in the target's vocabulary, ascending
    target_ids: np.ndarray  # [M] the target id of each (several draft ids may share one)
    draft_size: int  # ids in the draft's vocabulary (`get_vocab()`, added tokens included)
    target_size: int  # ids in the target's vocabulary

    @property
    def overlap(self) -> int:
        return len(self.draft_ids)

    @property
    def share(self) -> float:
        """The overlap as a share of the smaller vocabulary (the most that could overlap)."""
        return self.overlap / max(1, min(self.draft_size, self.target_size))


_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # target tokenizer -> {draft tokenizer: entry}


def space_sign(tokenizer) -> str | None:
    """The character a tokenizer marks a leading space with (the first of " "'s first token), as transformers
    detects it; None where " " encodes to nothing."""
    ids = tokenizer(" ", add_special_tokens=False)["input_ids"]
    if not ids:
        return None
    token = tokenizer.convert_ids_to_tokens(ids)[0]
    return token[0] if token else None


def build(target_tokenizer, draft_tokenizer) -> VocabMap:
    """The pairs of ids with equal token strings (the draft's leading-space marker written as the target's)."""
    target_vocab, draft_vocab = target_tokenizer.get_vocab(), draft_tokenizer.get_vocab()
    target_sign = space_sign(target_tokenizer)
    draft_sign = space_sign(draft_tokenizer) if target_sign is not None else None
    swap = draft_sign is not None and draft_sign != target_sign

    def as_target(token: str) -> str:
        return token.replace(draft_sign, target_sign, 1) if swap and token.startswith(draft_sign) else token

    # every draft id keeps its own pair (a dict keyed by the normalised string, as transformers builds, would drop
    # one of two draft tokens that normalise alike)
    pairs = [(i, target_vocab.get(as_target(token))) for token, i in draft_vocab.items()]
    pairs = sorted((d, t) for d, t in pairs if t is not None)
    draft_ids = np.array([d for d, _ in pairs], dtype=np.int64)
    target_ids = np.array([t for _, t in pairs], dtype=np.int64)
    return VocabMap(draft_ids, target_ids, len(draft_vocab), len(target_vocab))


def vocab_map(target_tokenizer, draft_tokenizer) -> VocabMap:
    """`build`, once per tokenizer pair while both live (again if either tokenizer gained tokens)."""
    sizes = (len(target_tokenizer), len(draft_tokenizer))
    try:
        inner = _CACHE.setdefault(target_tokenizer, weakref.WeakKeyDictionary())
        entry = inner.get(draft_tokenizer)
    except TypeError:  # not weak-referenceable: build every call
        return build(target_tokenizer, draft_tokenizer)
    if entry is None or entry[0] != sizes:
        entry = (sizes, build(target_tokenizer, draft_tokenizer))
        inner[draft_tokenizer] = entry
    return entry[1]


def check_overlap(mapping: VocabMap) -> None:
    """Refuse a pair whose vocabularies share less than `MIN_OVERLAP` of the smaller one."""
    if mapping.share < MIN_OVERLAP:
        raise BatchSpecError(
            f"Sampling with a draft of another tokenizer drafts only tokens both vocabularies share (by string), "
            f"and these share {mapping.overlap} (the target's vocabulary has {mapping.target_size} tokens, the "
            f"draft's {mapping.draft_size}: {mapping.share:.1%} of the smaller, under the {MIN_OVERLAP:.0%} "
            f"needed): its proposals would come from a sliver of its distribution and rarely be accepted. Use a "
            f"draft whose tokenizer shares more of the target's vocabulary, do_sample=False (greedy drafts "
            f"through text and needs no shared tokens), or no assistant_model.")
