"""Acceptance on hand-built tokens: each row's expected count is worked out in its comment."""

import torch

from hf_batchspec.acceptance import greedy_accept, truncate_at_stop


def test_greedy_accept_prefix_and_budget():
    drafts = torch.tensor([
        [5, 6, 7],  # all match                      -> 3
        [5, 9, 7],  # second differs (third matches)  -> 1, a later match does not count
        [1, 6, 7],  # first differs                  -> 0
        [5, 6, 7],  # all match but budget 2          -> 2
        [5, 6, 7],  # budget 0 (a plain greedy step)  -> 0
    ])
    target = torch.tensor([[5, 6, 7, 8]] * 5)
    budget = torch.tensor([3, 3, 3, 2, 0])
    assert greedy_accept(drafts, target, budget).tolist() == [3, 1, 0, 2, 0]


def test_greedy_accept_without_drafts():
    assert greedy_accept(torch.empty(2, 0, dtype=torch.long), torch.tensor([[4], [5]]), torch.zeros(2)).tolist() == [0, 0]


def test_truncate_at_stop_cuts_inside_block():
    tokens = torch.tensor([
        [4, 2, 6, 7],  # stop id 2 at index 1, 4 kept  -> 2, stopped
        [4, 5, 6, 2],  # stop at index 3 but only 3 kept -> 3, not stopped
        [9, 9, 9, 9],  # no stop                        -> 4, not stopped
        [3, 2, 3, 3],  # two stop ids: the first wins  -> 1, stopped
    ])
    count, hit = truncate_at_stop(tokens, torch.tensor([4, 3, 4, 4]), torch.tensor([2, 3]))
    assert count.tolist() == [2, 3, 4, 1]
    assert hit.tolist() == [True, False, False, True]


def test_truncate_without_stop_ids():
    count, hit = truncate_at_stop(torch.tensor([[1, 2]]), torch.tensor([2]), None)
    assert count.tolist() == [2] and hit.tolist() == [False]
