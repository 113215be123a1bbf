"""Text between two tokenizers, for a whole batch: the host side of drafting with another tokenizer.

A draft with its own tokenizer reads each row's committed text in its own tokens and proposes tokens of its
own; the target verifies target tokens. Three conversions, each one batched call of a (fast) tokenizer over
the rows (never a Python tokenizer call per row):

- `draft_view`: the rows' committed target ids -> their text -> the draft's ids of that text;
- `common_prefix`: how much of what the draft already ran still matches (its cache keeps that, O(1));
- `target_proposal`: the draft's new tokens -> their text -> target ids after the committed ones.

Exactness never depends on these being clever: the target verifies whatever is proposed. They decide only how
often a proposal is accepted. Word boundaries are handled by re-encoding a short window of committed target
tokens together with the proposal's text: a proposal counts only if the window re-encodes to itself (else a
split across the boundary would change committed tokens, and that row proposes nothing this round).
"""

from __future__ import annotations

import itertools

import numpy as np

# Committed target tokens re-encoded with a proposal's text: enough to span any word that the boundary splits.
WINDOW = 8


def pad(lists: list[list[int]], fill: int = 0) -> tuple[np.ndarray, np.ndarray]:  # [B, L], [B]
    """Ragged lists (a tokenizer's batch output) as one padded array and their lengths, in one scatter."""
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    out = np.full((len(lists), max(1, int(lengths.max(initial=0)))), fill, dtype=np.int64)
    flat = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int64, count=int(lengths.sum()))
    rows = np.repeat(np.arange(len(lists)), lengths)  # [sum L] the row of each id
    cols = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # [sum L] its column
    out[rows, cols] = flat
    return out, lengths


def draft_view(target_tokenizer, draft_tokenizer, committed: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    """The draft's ids of each row's committed text (`committed` [B, T] target ids, row b valid up to
    `lengths[b]`). Special tokens of the target are dropped from the text; the draft's own (a BOS) are added
    as its tokenizer adds them to any text. A text that encodes to nothing is the draft's BOS (else EOS, pad)."""
    texts = target_tokenizer.batch_decode([row[:n] for row, n in zip(committed, lengths)], skip_special_tokens=True)
    ids = draft_tokenizer(texts, add_special_tokens=True)["input_ids"]
    if all(ids):
        return ids
    # a text the draft's tokenizer encodes to nothing (none of its characters in the draft's vocabulary, no BOS
    # added): one special token of the draft's, so that it still has a position to draft from
    filler = next((i for i in (draft_tokenizer.bos_token_id, draft_tokenizer.eos_token_id,
                               draft_tokenizer.pad_token_id) if i is not None), 0)
    return [row or [filler] for row in ids]


def common_prefix(a: np.ndarray, a_len: np.ndarray, b: np.ndarray, b_len: np.ndarray) -> np.ndarray:  # [B]
    """Per row, the length of the longest common prefix of a[b, :a_len[b]] and b[b, :b_len[b]]."""
    width = min(a.shape[1], b.shape[1])
    same = a[:, :width] == b[:, :width]  # [B, W]
    cols = np.arange(width)
    same &= (cols < a_len[:, None]) & (cols < b_len[:, None])
    return np.where(same.all(1), np.minimum(np.minimum(a_len, b_len), width), np.argmin(same, 1))


def target_proposal(target_tokenizer, draft_tokenizer, committed: np.ndarray, lengths: np.ndarray,
                    draft_context: np.ndarray, context_lengths: np.ndarray, drafts: np.ndarray,
                    k: int) -> tuple[np.ndarray, np.ndarray]:  # [B, k] target ids, [B] how many are real
    """The draft's proposal `drafts` [B, k'] (draft ids that follow `draft_context` [B, C]) as up to k target ids
    that follow each row's committed target ids. A row whose proposal's text does not extend its committed text
    cleanly (a changed word boundary, text that decodes differently in context) proposes nothing."""
    rows = range(len(drafts))
    tail_d = [ctx[max(0, n - WINDOW):n].tolist() for ctx, n in zip(draft_context, context_lengths)]
    heads = draft_tokenizer.batch_decode(tail_d, skip_special_tokens=True)
    fulls = draft_tokenizer.batch_decode([tail_d[b] + drafts[b].tolist() for b in rows], skip_special_tokens=True)
    texts = [full[len(head):] if full.startswith(head) else "" for head, full in zip(heads, fulls)]
    tail_t = [row[max(0, n - WINDOW):n].tolist() for row, n in zip(committed, lengths)]
    tails = target_tokenizer.batch_decode(tail_t)
    encoded, encoded_len = pad(target_tokenizer([tail + text for tail, text in zip(tails, texts)],
                                                add_special_tokens=False)["input_ids"])  # [B, E]
    tail, tail_len = pad(tail_t)  # [B, W]
    # clean: the window re-encodes to itself (its tokens lead the encoding) and some text was proposed
    width = min(tail.shape[1], encoded.shape[1])
    inside = np.arange(tail.shape[1])[None, :] < tail_len[:, None]  # [B, W]
    agree = (tail[:, :width] == encoded[:, :width]) | ~inside[:, :width]
    clean = agree.all(1) & ~inside[:, width:].any(1) & (encoded_len >= tail_len) & (np.char.str_len(texts) > 0)
    counts = np.where(clean, np.clip(encoded_len - tail_len, 0, k), 0)  # [B]
    cols = tail_len[:, None] + np.arange(k)  # [B, k] the proposal's columns in the encoding
    proposed = np.take_along_axis(encoded, np.minimum(cols, encoded.shape[1] - 1), 1)
    last = committed[np.arange(len(lengths)), lengths - 1]  # [B] filler: a real id, never offered
    return np.where(np.arange(k)[None, :] < counts[:, None], proposed, last[:, None]), counts
