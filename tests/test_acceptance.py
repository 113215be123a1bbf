"""Acceptance on hand-built tokens (each row's expected count is worked out in its comment), and sampling on
hand-built distributions (checked against the exact distribution over many rows drawn at once)."""

import math

import pytest
import torch

from hf_batchspec.acceptance import greedy_accept, sample, speculative_sample, truncate_at_stop


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


# -- sampling: hand-built distributions, many rows in one call, a fixed generator ---------------------------------
# Every check compares counts over 20000 draws with the exact distribution, by a chi-square test at a one-in-a-
# million level: a wrong distribution (q instead of the residual, the wrong position, an unnormalised residual)
# moves the statistic far past it, while the fixed seeds make every run draw the same numbers.

ROWS = 20_000


def chi_square_limit(df: int, z: float = 4.753) -> float:
    """Upper 1e-6 quantile of chi-square with `df` degrees of freedom (Wilson-Hilferty; scipy is not needed)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def assert_distributed_as(draws: torch.Tensor, probs, label: str = "") -> None:
    """`draws` (token ids) look like independent draws from `probs`; tokens of probability 0 never occur."""
    probs = torch.as_tensor(probs, dtype=torch.float64)
    probs = probs / probs.sum()
    counts = torch.bincount(draws.flatten(), minlength=len(probs)).double()
    assert len(counts) == len(probs), f"{label}: drew a token outside the vocabulary"
    possible = probs > 0
    assert counts[~possible].sum() == 0, f"{label}: drew a token of probability 0: {counts.tolist()}"
    expected = probs[possible] * counts.sum()
    assert expected.min() >= 20, f"{label}: too few draws for the test"  # the chi-square approximation holds
    df = int(possible.sum()) - 1
    if df == 0:
        return  # a single possible token: it was always drawn
    chi2 = float(((counts[possible] - expected) ** 2 / expected).sum())
    assert chi2 < chi_square_limit(df), (
        f"{label}: counts {counts.tolist()} vs expected {(probs * counts.sum()).tolist()} (chi2 {chi2:.1f})")


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
