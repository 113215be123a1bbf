"""Acceptance on hand-built tokens (each row's expected count is worked out in its comment), and sampling on
hand-built distributions (checked against the exact distribution over many rows drawn at once)."""

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hf_batchspec.acceptance import greedy_accept, sample, speculative_sample, truncate_at_stop
from tests.toolkit import assert_distributed_as


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
    drafts = torch.empty(2, 0, dtype=torch.long)
    assert greedy_accept(drafts, torch.tensor([[4], [5]]), torch.zeros(2)).tolist() == [0, 0]


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


# -- properties of the two against plain Python loops, on drawn shapes and values -----------------------------------
# Ids from a vocabulary of 4 so that drafts often match and stops often occur; rows may copy the target's prefix
# (all drafts accepted), budgets run from 0 to k, k from 0 (a plain step) up.

def accepted_by_loop(drafts: list[int], target: list[int], budget: int) -> int:
    """Drafts accepted: the matching prefix, at most `budget` long."""
    n = 0
    for i in range(min(budget, len(drafts))):
        if drafts[i] != target[i]:
            break
        n += 1
    return n


def truncated_by_loop(tokens: list[int], count: int, stop_ids: list[int], stops: list[bool] | None):
    """(kept, stopped): through the first stop among the first `count` tokens, else all `count`."""
    for i in range(count):
        if tokens[i] in stop_ids or (stops is not None and stops[i]):
            return i + 1, True
    return count, False


@st.composite
def acceptance_cases(draw):
    rows, k = draw(st.integers(1, 6), label="rows"), draw(st.integers(0, 6), label="k")
    target = draw(st.lists(st.lists(st.integers(0, 3), min_size=k + 1, max_size=k + 1), min_size=rows,
                           max_size=rows), label="target")
    drafts = []
    for row in range(rows):  # the target's first `copied` tokens, then anything
        copied = draw(st.integers(0, k), label="copied")
        drafts.append(target[row][:copied] + draw(st.lists(st.integers(0, 3), min_size=k - copied,
                                                           max_size=k - copied), label="rest"))
    budget = draw(st.lists(st.integers(0, k), min_size=rows, max_size=rows), label="budget")
    return drafts, target, budget


@example(([[]], [[1]], [0]))  # k = 0: a plain step
@example(([[1, 2, 3]], [[1, 2, 3, 0]], [3]))  # all accepted
@example(([[1, 2, 3], [1, 2, 3]], [[1, 2, 3, 0], [1, 2, 0, 0]], [2, 3]))  # the budget cuts a full match; last differs
@settings(max_examples=150)
@given(case=acceptance_cases())
def test_greedy_accept_is_the_matching_prefix_within_the_budget(case):
    drafts, target, budget = case
    k = len(target[0]) - 1
    got = greedy_accept(torch.tensor(drafts, dtype=torch.long).view(len(drafts), k), torch.tensor(target),
                        torch.tensor(budget))
    assert got.tolist() == [accepted_by_loop(d, t, b) for d, t, b in zip(drafts, target, budget)]


@st.composite
def stop_cases(draw):
    rows, width = draw(st.integers(1, 6), label="rows"), draw(st.integers(1, 6), label="width")
    tokens = draw(st.lists(st.lists(st.integers(0, 3), min_size=width, max_size=width), min_size=rows,
                           max_size=rows), label="tokens")
    count = draw(st.lists(st.integers(0, width), min_size=rows, max_size=rows), label="count")
    stop_ids = draw(st.none() | st.lists(st.integers(0, 3), max_size=3, unique=True), label="stop_ids")
    stops = draw(st.none() | st.lists(st.lists(st.booleans(), min_size=width, max_size=width), min_size=rows,
                                      max_size=rows), label="stops")
    return tokens, count, stop_ids, stops


@example(([[2, 1, 1]], [3], [2], None))  # a stop at the first position
@example(([[1, 1, 2]], [3], [2], None))  # at the last real position
@example(([[1, 1, 2]], [2], [2], None))  # just past the real tokens: not a stop
@example(([[1, 3, 2, 3]], [4], [2, 3], None))  # several stop ids: the first to occur
@example(([[2]], [0], [2], None))  # a plain step of a row with nothing to keep
@example(([[1, 2]], [2], [], [[True, False]]))  # another criterion alone, no stop ids
@settings(max_examples=150)
@given(case=stop_cases())
def test_truncate_at_stop_cuts_after_the_first_stop_among_the_real_tokens(case):
    tokens, count, stop_ids, stops = case
    ids = None if stop_ids is None else torch.tensor(stop_ids, dtype=torch.long)
    mask = None if stops is None else torch.tensor(stops, dtype=torch.bool)
    kept, hit = truncate_at_stop(torch.tensor(tokens), torch.tensor(count), ids, mask)
    expected = [truncated_by_loop(t, c, stop_ids or [], None if stops is None else stops[row])
                for row, (t, c) in enumerate(zip(tokens, count))]
    assert kept.tolist() == [n for n, _ in expected]
    assert hit.tolist() == [h for _, h in expected]


# -- sampling: hand-built distributions, many rows in one call, a fixed generator ---------------------------------
# Every check compares counts over 20000 draws with the exact distribution, by a chi-square test at a one-in-a-
# million level: a wrong distribution (q instead of the residual, the wrong position, an unnormalised residual)
# moves the statistic far past it, while the fixed seeds make every run draw the same numbers.

ROWS = 20_000


def random_distributions(generator, *shape) -> torch.Tensor:
    return torch.softmax(2 * torch.randn(*shape, generator=generator), -1)


def draw_from(probs: torch.Tensor, generator) -> torch.Tensor:  # [..., V] -> [...], independently of `sample`
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def test_sample_never_draws_zero_probability_tokens_and_matches_unnormalised_probs():
    generator = torch.Generator().manual_seed(0)
    weights = torch.tensor([0.0, 2.0, 0.0, 5.0, 3.0, 0.0])  # unnormalised, sums to 10
    draws = sample(weights.repeat(ROWS, 1), generator)
    assert draws.shape == (ROWS,)
    assert_distributed_as(draws, weights, "unnormalised")


def test_sample_draws_each_row_from_its_own_distribution():
    """Rows with different distributions in one call (a race along the wrong dimension, or one shared noise
    vector, would mix them up); leading batch dimensions are kept."""
    generator = torch.Generator().manual_seed(1)
    first = torch.tensor([0.7, 0.2, 0.1, 0.0])
    second = torch.tensor([0.0, 0.1, 0.3, 0.6]) * 1e-3  # tiny values, as in a residual
    probs = torch.stack((first.repeat(ROWS // 2, 1), second.repeat(ROWS // 2, 1)), 1)  # [R/2, 2, V]
    draws = sample(probs, generator)
    assert draws.shape == (ROWS // 2, 2)
    assert_distributed_as(draws[:, 0], first, "first rows")
    assert_distributed_as(draws[:, 1], second, "second rows")


def test_speculative_sample_accepts_every_draft_when_draft_equals_target():
    """p == q: min(1, p/q) = 1, so every offered draft is kept, whatever the budget; the bonus token after a full
    budget comes from p at the position after it."""
    generator = torch.Generator().manual_seed(2)
    k, vocab = 4, 7
    probs = random_distributions(generator, ROWS, k + 1, vocab)
    drafts = draw_from(probs[:, :k], generator)
    budget = torch.randint(0, k + 1, (ROWS,), generator=generator)
    accepted, following = speculative_sample(drafts, probs[:, :k].clone(), probs, budget, generator)
    assert accepted.tolist() == budget.tolist()
    assert following.shape == (ROWS,)
    assert (probs[torch.arange(ROWS), accepted, following] > 0).all()


def test_speculative_sample_never_emits_a_token_the_target_rules_out():
    """p_i(t) = 0 at each position for some tokens (a different set per position) while the draft proposes them
    often: no such token is ever accepted at that position, nor drawn as the following token."""
    generator = torch.Generator().manual_seed(3)
    k, vocab = 3, 6
    target = random_distributions(generator, ROWS, k + 1, vocab)
    for position in range(k + 1):  # position i rules out tokens i and i + 1
        target[:, position, position:position + 2] = 0
    target = target / target.sum(-1, keepdim=True)
    draft = torch.full((ROWS, k, vocab), 1.0 / vocab)
    draft[:, :, :4] *= 2  # proposes the ruled-out tokens more than the others
    draft = draft / draft.sum(-1, keepdim=True)
    drafts = draw_from(draft, generator)
    budget = torch.randint(0, k + 1, (ROWS,), generator=generator)
    accepted, following = speculative_sample(drafts, draft, target, budget, generator)
    assert (accepted <= budget).all()
    assert (accepted < budget).any() and (accepted == budget).any()  # both rejections and full acceptances
    rows = torch.arange(ROWS)
    for i in range(k):
        kept = accepted > i
        assert (target[rows[kept], i, drafts[kept, i]] > 0).all(), f"a ruled-out draft was accepted at {i}"
    assert (target[rows, accepted, following] > 0).all(), "a ruled-out token followed the accepted drafts"


def test_speculative_sample_without_budget_draws_from_the_target():
    """Budget 0: no draft is offered, nothing is accepted, and the token is drawn from p at the pending position
    (not from the residual against q, nor from a later position)."""
    generator = torch.Generator().manual_seed(4)
    k = 2
    p = torch.tensor([0.1, 0.5, 0.0, 0.4])
    target = torch.stack((p, torch.tensor([0.7, 0.1, 0.1, 0.1]), torch.tensor([0.25] * 4))).repeat(ROWS, 1, 1)
    draft = torch.tensor([0.0, 0.6, 0.2, 0.2]).repeat(ROWS, k, 1)  # max(0, p - q) would be [.1, 0, 0, .2]
    drafts = draw_from(draft, generator)
    accepted, following = speculative_sample(drafts, draft, target, torch.zeros(ROWS, dtype=torch.long), generator)
    assert accepted.tolist() == [0] * ROWS
    assert_distributed_as(following, p, "budget 0")


@pytest.mark.parametrize("p, q", [
    ([0.5, 0.3, 0.2], [0.1, 0.6, 0.3]),  # residual [.4, 0, 0]: a rejection always yields token 0
    ([0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]),  # residual [.3, .1, 0, 0] / .4
])
def test_speculative_sample_rejection_and_residual_keep_the_target_distribution(p, q):
    """One drafted position then a bonus position, a draft d ~ q: d is kept with probability min(1, p(d)/q(d)),
    a rejected d is replaced by a draw from max(0, p - q) (renormalised), and so the first emitted token is
    distributed as p, the whole point of speculative sampling; after an accepted d the bonus token comes from
    the target's next distribution."""
    generator = torch.Generator().manual_seed(5)
    p, q = torch.tensor(p), torch.tensor(q)
    bonus = torch.tensor([0.2, 0.0, 0.5, 0.3, 0.0][: len(p)])
    target = torch.stack((p, bonus)).repeat(ROWS, 1, 1)  # [R, 2, V]
    draft = q.repeat(ROWS, 1, 1)  # [R, 1, V]
    drafts = draw_from(draft, generator)  # [R, 1]
    accepted, following = speculative_sample(drafts, draft, target, torch.ones(ROWS, dtype=torch.long), generator)
    d, kept = drafts[:, 0], accepted == 1
    assert set(accepted.tolist()) <= {0, 1}

    for token in range(len(p)):  # acceptance rate per drafted token, within 5 binomial standard deviations
        offered = d == token
        n = int(offered.sum())
        rate = min(1.0, float(p[token] / q[token]))
        observed = float(kept[offered].double().mean())
        assert abs(observed - rate) <= 5 * math.sqrt(rate * (1 - rate) / n) + 1e-9, (
            f"token {token}: accepted {observed:.3f} of {n} drafts, expected {rate:.3f}")

    residual = (p - q).clamp(min=0)
    assert_distributed_as(following[~kept], residual, "after a rejection")
    assert_distributed_as(following[kept], bonus, "bonus after an acceptance")
    assert_distributed_as(torch.where(kept, d, following), p, "first emitted token")


def test_speculative_sample_second_position_uses_its_own_distributions():
    """k = 2 with different p and q per position: given that the first draft was kept, the second emitted token
    (the second draft, or what replaced it) is distributed as the target's second distribution: a residual or an
    acceptance test taken at the wrong position would not be."""
    generator = torch.Generator().manual_seed(6)
    p = torch.tensor([[0.6, 0.2, 0.1, 0.1], [0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])  # [k+1, V]
    q = torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.4, 0.3, 0.2, 0.1]])  # [k, V]
    target, draft = p.repeat(ROWS, 1, 1), q.repeat(ROWS, 1, 1)
    drafts = draw_from(draft, generator)
    accepted, following = speculative_sample(drafts, draft, target, torch.full((ROWS,), 2), generator)
    first = torch.where(accepted >= 1, drafts[:, 0], following)
    assert_distributed_as(first, p[0], "first emitted token")
    reached = accepted >= 1
    second = torch.where(accepted == 2, drafts[:, 1], following)[reached]
    assert_distributed_as(second, p[1], "second emitted token")
    assert_distributed_as(following[accepted == 2], p[2], "bonus token")
