import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_batchspec.lookup import ngram_drafts
from tests.toolkit import reference_drafts


def drafts_of(rows: list[list[int]], k: int, max_ngram: int, budget=None, pad: int = 0):
    T = max(len(r) for r in rows)
    tokens = torch.tensor([r + [pad] * (T - len(r)) for r in rows])
    lengths = torch.tensor([len(r) for r in rows])
    budget = None if budget is None else torch.tensor(budget)
    drafts, counts = ngram_drafts(tokens, torch.arange(len(rows)), lengths, k, max_ngram, budget)
    return [d[:c] for d, c in zip(drafts.tolist(), counts.tolist())]


def test_repeated_span_proposes_its_continuation():
    assert drafts_of([[1, 2, 3, 4, 9, 1, 2]], k=3, max_ngram=2) == [[3, 4, 9]]


def test_most_recent_occurrence_wins():
    # "7" occurs at 0 (followed by 1) and at 2 (followed by 2): the later one is proposed
    assert drafts_of([[7, 1, 7, 2, 5, 7]], k=1, max_ngram=1) == [[2]]


def test_longer_ngram_wins_over_shorter():
    # bigram (3, 7) matches at 0 -> 8; unigram 7 alone would pick the later 7 at 4 -> 9
    assert drafts_of([[3, 7, 8, 0, 7, 9, 3, 7]], k=1, max_ngram=2) == [[8]]
    assert drafts_of([[3, 7, 8, 0, 7, 9, 3, 7]], k=1, max_ngram=1) == [[9]]


def test_no_match_and_short_rows_draft_nothing():
    assert drafts_of([[1, 2, 3, 4], [5], [5, 5]], k=3, max_ngram=3) == [[], [], [5]]


def test_budget_caps_and_overlap_with_suffix():
    assert drafts_of([[5, 5, 5, 5]], k=4, max_ngram=1) == [[5]]  # s = 2: one committed token follows
    rows = [[1, 2, 3, 4, 5, 1]] * 3
    assert drafts_of(rows, k=3, max_ngram=2, budget=[0, 2, 9]) == [[], [2, 3], [2, 3, 4]]


def test_padding_is_never_matched_and_fill_is_valid():
    tokens = torch.tensor([[2, 1, 3, 1, 2, 1, 5], [3, 1, 3, 1, 3, 1, 3]])
    # row 0 commits [2, 1]: its padding holds 1s that must not match; row 1 commits [3, 1, 3]: the
    # continuation of 3 at s=0 stops at the committed length (2 drafts), though the padding goes on
    drafts, counts = ngram_drafts(tokens, torch.tensor([0, 1, 1]), torch.tensor([2, 3, 7]), 3, 2)
    assert counts.tolist() == [0, 2, 2]
    assert drafts[1, :2].tolist() == [1, 3] and drafts[2, :2].tolist() == [1, 3]
    assert drafts[0].tolist() == [1, 1, 1] and drafts[1, 2].item() == 3  # fill: the last committed token


def test_empty_shapes():
    tokens = torch.tensor([[1, 1, 1]])
    drafts, counts = ngram_drafts(tokens, torch.tensor([0]), torch.tensor([3]), 0, 2)
    assert drafts.shape == (1, 0) and counts.tolist() == [0]
    drafts, counts = ngram_drafts(tokens, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 3, 2)
    assert drafts.shape == (0, 3) and counts.shape == (0,)


@st.composite
def batches(draw):
    vocab = draw(st.integers(2, 6))
    n_buffers = draw(st.integers(1, 4))
    T = draw(st.integers(1, 40))
    tokens = draw(st.lists(st.lists(st.integers(0, 99), min_size=T, max_size=T), min_size=n_buffers,
                           max_size=n_buffers))  # padding columns: garbage, mostly out of the real vocab
    B = draw(st.integers(0, 6))
    ids = draw(st.lists(st.integers(0, n_buffers - 1), min_size=B, max_size=B))
    lengths = []
    for b in ids:  # committed tokens are small-vocab; a row sharing a buffer keeps a prefix of it
        L = draw(st.integers(1, T))
        lengths.append(L)
        for j in range(L):
            if tokens[b][j] >= vocab:
                tokens[b][j] = draw(st.integers(0, vocab - 1))
    k = draw(st.integers(0, 6))
    budget = draw(st.none() | st.lists(st.integers(0, k), min_size=B, max_size=B))
    return tokens, ids, lengths, k, draw(st.integers(1, 4)), budget


@settings(max_examples=300)
@given(batches())
def test_matches_reference(batch):
    tokens, ids, lengths, k, max_ngram, budget = batch
    drafts, counts = ngram_drafts(torch.tensor(tokens), torch.tensor(ids, dtype=torch.long),
                                  torch.tensor(lengths, dtype=torch.long), k, max_ngram,
                                  None if budget is None else torch.tensor(budget, dtype=torch.long))
    assert drafts.shape == (len(ids), k) and drafts.dtype == counts.dtype == torch.long
    for b, (row, L) in enumerate(zip(ids, lengths)):
        t = tokens[row][:L]
        want = reference_drafts(t, k, max_ngram, k if budget is None else budget[b])
        assert counts[b].item() == len(want)
        assert drafts[b, : len(want)].tolist() == want
        assert set(drafts[b].tolist()) <= set(t)  # the fill is a committed token, never padding or garbage
