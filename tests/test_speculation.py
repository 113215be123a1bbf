"""speculation="auto": drafting only as much as pays. Speed may change; the output may not."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import CompileConfig

import hf_batchspec
from hf_batchspec import CostModel
from hf_batchspec.speculation import (Acceptance, MeasuredCosts, SpeculationControl, best_draft_length,
                                      expected_tokens, tail_time, yield_moments)
from tests.toolkit import left_pad, plain_greedy
from tests.toolkit import draft_model, target_model
from tests.toolkit.checks import check_against_plain_greedy
from tests.toolkit.strategies import requests
from tests.tiny_models import build

NEVER_PAYS = CostModel(target_call=1.0, target_token=0.0, draft_call=100.0, draft_token=0.0)
FREE_DRAFTS = CostModel(target_call=1.0, target_token=0.0, draft_call=0.0, draft_token=0.0)


def test_expected_tokens_is_the_truncated_geometric_sum():
    alpha = np.array([0.0, 0.5, 0.9, 1.0])
    for k in range(5):
        direct = sum(np.minimum(alpha, 0.999) ** i for i in range(k + 1))
        assert np.allclose(expected_tokens(alpha, np.full(4, k)), direct)


def test_draft_length_follows_cost_and_acceptance():
    budgets = np.full(16, 5)
    cpu_like = CostModel(target_call=1.0, target_token=0.25, draft_call=0.2, draft_token=0.01)
    # a large batch and a poor draft: a wider verify costs more than it yields
    assert best_draft_length(np.full(16, 0.1), budgets, cpu_like) == 0
    # the same batch with a draft that is nearly always right: drafting pays
    assert best_draft_length(np.full(16, 0.97), budgets, cpu_like) > 0
    # batch 1 with a cheap verify (a GPU at small batch): the full k
    assert best_draft_length(np.array([0.7]), np.array([5]), FREE_DRAFTS) == 5
    assert best_draft_length(np.full(16, 0.7), budgets, NEVER_PAYS) == 0
    # no row may draft beyond its budget, whatever pays
    assert best_draft_length(np.full(4, 0.99), np.array([0, 1, 2, 1]), FREE_DRAFTS) == 2


def test_yield_moments_are_the_truncated_geometric_ones():
    for alpha in (0.0, 0.3, 0.69, 0.95):
        for drafts in range(5):
            p = np.array([alpha ** a * (1 - alpha) for a in range(drafts)] + [alpha ** drafts])  # P(A = a)
            tokens = 1 + np.arange(drafts + 1)
            mean, var = yield_moments(np.array(alpha), np.array(drafts))
            assert np.isclose(mean, (p * tokens).sum()) and np.isclose(var, (p * tokens ** 2).sum() - mean ** 2)


def simulated_tail(alpha, k, remaining, cost, static, calls=1500, seed=0):
    """Seconds until every row has its `remaining` tokens, drafting k per round (never past a row's last token),
    each draft accepted with probability alpha until the first rejection; a round costs `cost(rows it covers, k)`,
    all rows with static shapes, the unfinished ones without."""
    rng = np.random.default_rng(seed)
    got = np.zeros((calls, len(remaining)), dtype=np.int64)  # [C, B]
    seconds = np.zeros(calls)
    while (running := got < remaining).any():
        rows = np.full(calls, len(remaining)) if static else running.sum(1)
        seconds += np.where(running.any(1), [cost(int(r), k) for r in rows], 0.0)
        drafts = np.minimum(k, np.maximum(remaining - got - 1, 0))
        accepted = np.minimum(rng.geometric(1 - alpha, got.shape) - 1 if alpha > 0 else 0, drafts)
        got = np.where(running, got + 1 + accepted, got)
    return seconds.mean()


@pytest.mark.parametrize("alpha,k,remaining,static", [
    (0.69, 2, [64] * 32, True), (0.5, 3, [200] * 8, True), (0.9, 4, [30] * 16, False),
    (0.69, 2, [64] * 32, False), (0.6, 3, [5, 60, 64, 1, 30, 0], True), (0.6, 3, [5, 60, 64, 1, 30, 2], False)])
def test_tail_time_is_the_simulated_time_to_the_last_row(alpha, k, remaining, static):
    """`tail_time`, the expected seconds until the last row ends (normal rounds per row, their max), against a
    simulation of the capped rounds themselves, with rows that leave as they finish and rows that stay (static
    shapes), equal and ragged budgets: within 3%."""
    cost = CostModel(target_call=1.0, target_token=0.05, draft_call=0.2, draft_token=0.01)
    remaining = np.array(remaining)
    budgets = np.where(remaining > 0, np.minimum(k, np.maximum(remaining - 1, 0)), 0)
    predicted = tail_time(np.full(len(remaining), alpha), budgets, remaining, np.array([0, k]), cost, static)
    for K, seconds in zip((0, k), predicted):
        simulated = simulated_tail(alpha, K, remaining, lambda rows, w: float(cost.round_cost(rows, w)), static)
        assert seconds == pytest.approx(simulated, rel=0.03), (K, seconds, simulated)


def test_with_no_prompt_waiting_the_last_row_decides():
    """When nothing waits, the call ends with its last row, and drafting spreads the rows' finishing rounds: on 32
    rows of 64 tokens, drafting that yields 9% more tokens per second than plain steps (static shapes, as compiled)
    is even or worse by the last row (measured on the layer-skip pair at 64 rows, k=2: 28.6 rounds on average, 36 for
    the last), and a plain step is chosen; one row alone has no spread, and drafts. A straggler, one row far behind
    rows at their last token, is what the call waits for: drafting for it pays although the rows' summed tokens per
    round say that it does not."""
    cost = CostModel(target_call=1.0, target_token=0.0, draft_call=0.55, draft_token=0.0)  # k=1: 1.55 plain steps
    alpha, widths = np.full(32, 0.69), np.array([1, 2])
    budgets, remaining = np.full(32, 2), np.full(32, 64)
    assert best_draft_length(alpha, budgets, cost, widths, margin=0.03) > 0  # 9% more tokens per second
    assert best_draft_length(alpha, budgets, cost, widths, margin=0.03, remaining=remaining) == 0
    assert best_draft_length(alpha[:1], budgets[:1], cost, widths, margin=0.03, remaining=remaining[:1]) > 0
    straggler_budgets, straggler_left = np.array([2] + [0] * 31), np.array([60] + [1] * 31)
    assert best_draft_length(alpha, straggler_budgets, cost, widths, margin=0.03) == 0
    assert best_draft_length(alpha, straggler_budgets, cost, widths, margin=0.03, remaining=straggler_left) > 0


def test_the_decoder_gives_the_rows_remaining_tokens_once_no_prompt_waits(monkeypatch):
    """`_Decoder._plan` hands the control each row's remaining tokens (0 for idle rows) only once no prompt waits
    for a slot: while prompts wait, freed slots refill and tokens per round is what counts."""
    target, seen = target_model("llama"), []
    draft_lengths = SpeculationControl.draft_lengths

    def recorded(self, budgets, hits, trials, widths=None, live=None, backlog=0, remaining=None):
        seen.append(None if remaining is None else remaining.copy())
        return draft_lengths(self, budgets, hits, trials, widths, live, backlog, remaining)
    monkeypatch.setattr(SpeculationControl, "draft_lengths", recorded)
    prompts = PROMPTS + [[7, 8, 9, 10], [12] * 5]
    ids, mask = left_pad(prompts, 0)
    out = target.generate(ids, attention_mask=mask, batch_spec="exspec", max_new_tokens=12, pad_token_id=0,
                          max_batch_size=2, assistant_model=build("gpt2", seed=541), num_assistant_tokens=3,
                          speculation=PAYS_IF_ACCEPTED, return_dict_in_generate=True)
    waiting = [r is None for r in seen]
    assert waiting[0] and not waiting[-1] and waiting == sorted(waiting, reverse=True)  # None until the queue empties
    assert all(((r >= 0) & (r <= 12)).all() and r.max() > 0 for r in seen if r is not None)
    for row, prompt in enumerate(prompts):
        assert out.sequences[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, 12, None)


@settings(max_examples=60, deadline=None)
@given(alpha=st.floats(0.0, 1.0), budget=st.lists(st.integers(0, 5), min_size=1, max_size=8),
       costs=st.tuples(*[st.floats(0.0, 2.0)] * 4))
def test_static_draft_length_is_a_verify_width(alpha, budget, costs):
    """With static shapes a verify is padded to the next width (here 1, 2, 4, 5), so a K in between costs as much
    as that width: K is 0 or a width, never more than one width past the largest budget, and it is the best of
    those under the model."""
    widths, budgets = np.array([1, 2, 4, 5]), np.array(budget)
    cost = CostModel(costs[0] + 0.1, *costs[1:])
    k = best_draft_length(np.full(len(budgets), alpha), budgets, cost, widths)
    top = budgets.max()
    allowed = [0] + [w for w in widths if w < top] + ([widths[np.searchsorted(widths, top)]] if top else [])
    assert k in allowed

    def value(kk):
        return expected_tokens(np.full(len(budgets), alpha), np.minimum(budgets, kk)).sum() / cost.round_cost(
            len(budgets), np.array([kk]))[0]
    assert value(k) >= max(value(kk) for kk in allowed) - 1e-12
    assert best_draft_length(np.full(3, 0.9), np.array([3, 3, 1]), FREE_DRAFTS, widths) == 4  # pads to 4: free


def test_drafting_must_beat_a_plain_step_by_the_margin():
    """Near break-even a plain step is the choice that is never slower: a K > 0 whose predicted gain over a plain
    step is within the margin (the noise of measured round costs) is not chosen, by the function nor by the control
    (3% by default); a gain beyond it still is."""
    cost = CostModel(target_call=1.0, target_token=0.1, draft_call=0.28, draft_token=0.0)
    alpha, budgets = np.full(4, 0.5), np.full(4, 3)

    def rate(k):
        return expected_tokens(alpha, np.minimum(budgets, k)).sum() / cost.round_cost(4, np.array([k]))[0]
    best = best_draft_length(alpha, budgets, cost)
    gain = rate(best) / rate(0) - 1.0
    assert best > 0 and 0.0 < gain < 0.03  # drafting pays, but by less than the default margin
    assert best_draft_length(alpha, budgets, cost, margin=gain - 0.002) == best
    assert best_draft_length(alpha, budgets, cost, margin=gain + 0.002) == 0
    hits, trials = np.full(4, 50.0), np.full(4, 100.0)  # a rate of 0.5 that the pooled prior hardly moves
    assert SpeculationControl(cost, margin=0.0).draft_lengths(budgets, hits, trials).max() == best
    assert SpeculationControl(cost).draft_lengths(budgets, hits, trials).max() == 0


def test_rows_admitted_while_off_are_weighed_at_once():
    """Rows near their end (budgets of 0 or 1) can make drafting not pay for the batch; prompts admitted into freed
    slots the next round bring full budgets, and a draft that pays for them drafts at once, not after the probe
    interval (before: off for a probe interval each time a cohort of rows ended, a quarter of the rounds on the
    layer-skip pair at batch 8)."""
    cost = CostModel(target_call=1.0, target_token=0.1, draft_call=0.1, draft_token=0.0)
    hits, trials = np.full(4, 90.0), np.full(4, 100.0)
    control = SpeculationControl(cost)
    assert control.draft_lengths(np.array([0, 0, 0, 1]), hits, trials).max() == 0 and control.off
    assert control.draft_lengths(np.array([0, 0, 0, 1]), hits, trials).max() == 0  # nothing new: still off
    assert control.draft_lengths(np.array([5, 5, 5, 0]), hits, trials).max() > 0  # admitted: drafts now


def test_idle_rows_cost_but_yield_nothing():
    """Static shapes' idle rows run in every forward but yield no token: counted as yielding one token each (a row
    at its last token does), they would dilute what drafting gains and hold K down."""
    cost = CostModel(target_call=1.0, target_token=0.01, draft_call=0.1, draft_token=0.01)
    alpha, budgets, live = np.full(8, 0.6), np.array([3, 0, 0, 0, 0, 0, 0, 0]), np.arange(8) == 0
    assert best_draft_length(alpha, budgets, cost, live=live) > 0
    assert best_draft_length(alpha, budgets, cost) == 0  # seven phantom tokens make drafting look worthless
    # with every row live the two agree
    assert best_draft_length(alpha, np.full(8, 3), cost, live=np.ones(8, bool)) == best_draft_length(
        alpha, np.full(8, 3), cost)


def test_acceptance_estimates_move_with_what_rows_see():
    acc = Acceptance(decay=0.5, prior_rate=0.6, prior_weight=2.0, pooled_decay=0.9)
    hits, trials = np.zeros(3), np.zeros(3)
    # row 0 accepts all 4 drafts, row 1 none of 4, row 2 did not draft
    hits, trials = acc.observe(hits, trials, accepted=np.array([4, 0, 0]), budgets=np.array([4, 4, 0]))
    rates = acc.rates(hits, trials)
    assert rates[0] > rates[2] > rates[1]  # row 2 has only the pooled rate
    assert trials.tolist() == [4.0, 1.0, 0.0]  # all accepted: no rejection seen; row 1: one rejection
    assert acc.pooled == pytest.approx((0.9 * 1.2 + 4) / (0.9 * 2 + 5))  # the pooled rate decays at its own rate


@pytest.mark.parametrize("strategy", ["eqspec", "exspec"])
@pytest.mark.parametrize("arch", ["llama", "qwen3_sliding", "gpt2"])
@settings(max_examples=8)
@given(req=requests(max_rows=10, max_prompt=24, max_new=40), data=st.data())
def test_auto_equals_plain_greedy(strategy, arch, req, data):
    """Random cost models make rounds with and without drafts alternate; after rounds without drafts the
    draft catches up on every token it missed in one ragged forward."""
    cost = CostModel(
        target_call=data.draw(st.floats(0.0, 2.0), label="target_call") + 1e-3,
        target_token=data.draw(st.floats(0.0, 1.0), label="target_token"),
        draft_call=data.draw(st.floats(0.0, 2.0), label="draft_call"),
        draft_token=data.draw(st.floats(0.0, 0.5), label="draft_token"),
        round_overhead=data.draw(st.floats(0.0, 1.0), label="round_overhead"),
    )
    kwargs = {"max_batch_size": data.draw(st.integers(1, 6), label="max_batch_size")} if strategy == "exspec" else {}
    check_against_plain_greedy(target_model(arch), draft_model(arch, req["draft"]), req, data, strategy=strategy,
                               speculation=data.draw(st.sampled_from([cost, NEVER_PAYS, "auto"]), label="cost"),
                               **kwargs)


def _generate(target, draft, prompts, speculation, max_new=40, **kwargs):
    ids, mask = left_pad(prompts, 0)
    return target.generate(ids, attention_mask=mask, assistant_model=draft, batch_spec="eqspec",
                           num_assistant_tokens=4, max_new_tokens=max_new, eos_token_id=None, pad_token_id=0,
                           speculation=speculation, return_dict_in_generate=True, **kwargs)


PROMPTS = [[5, 6, 7], [9] * 11, [3, 4], list(range(10, 30))]


def test_a_draft_that_never_pays_never_runs():
    """NEVER_PAYS makes a probe round cost about a hundred plain ones: probes spaced to cost a few percent of the
    time never come in 39 rounds, so the draft runs not one forward beyond its prefill, and every round is a
    plain decoding step."""
    target = target_model("llama")
    draft = draft_model("llama", "perturbed")
    out = _generate(target, draft, PROMPTS, NEVER_PAYS, do_sample=False)
    stats = out.spec_stats
    assert stats.draft_forward_calls == stats.draft_prefill_calls
    assert stats.draft_widths == [0] * stats.rounds and (stats.drafted_tokens == 0).all()
    assert (stats.row_rounds == 39).all()  # one token a round beyond the prefill's
    width = max(len(p) for p in PROMPTS)
    for row, prompt in enumerate(PROMPTS):
        assert out.sequences[row, width:].tolist() == plain_greedy(target, prompt, 40, None)


def test_probes_cost_a_bounded_share_and_back_off():
    """While drafting is off, a probe (one draft per row) looks again; probes come every 8 rounds at most, spaced
    so that their extra cost stays near 3% of the time, and twice as far apart after each fruitless one (up to
    8 times): a draft that never agrees costs a few percent, not one round in eight."""
    cost = CostModel(target_call=1.0, target_token=1.0, draft_call=0.5, draft_token=0.0)
    control = SpeculationControl(cost)
    control.acceptance.pooled_hits = 0.0  # nothing a probe sees changes it: a draft that never agrees
    budgets, zeros = np.full(4, 5), np.zeros(4)
    probes = [r for r in range(3000) if control.draft_lengths(budgets, zeros, zeros).max() > 0]
    plain, probe = cost.round_cost(4, np.array([0, 1]))
    first = max(8, math.ceil((probe / plain - 1) / 0.03))
    assert first > 8  # the spacing, not the minimum, decides here
    assert np.diff([-1] + probes).tolist()[:6] == [first, 2 * first, 4 * first, 8 * first, 8 * first, 8 * first]
    assert len(probes) * (probe - plain) <= 0.03 * 3000 * plain
    cheap = SpeculationControl(CostModel(target_call=1.0, target_token=0.0, draft_call=0.001, draft_token=0.0))
    cheap.acceptance.pooled_hits = 0.0
    assert best_draft_length(np.zeros(4), budgets, cheap.cost) == 0
    gaps = np.diff([-1] + [r for r in range(40) if cheap.draft_lengths(budgets, zeros, zeros).max() > 0])
    assert gaps.tolist()[:2] == [8, 16]  # a cheap probe: every 8 rounds, then backing off


def test_a_probe_pays_for_the_drafts_catch_up_out_of_credit_earned_off():
    """A draft model that ran none of the rounds off first runs every token it missed, for every row
    (`Drafter.backlog`): the catch-up grows with the time off, so spacing probes alone lets them cost far more than
    their share. Each round off earns 3% of its cost as credit, kept with the measured costs across calls, and a
    probe runs once the credit covers all it adds, catch-up included: a caller looping over calls with such a
    draft pays its probes' share and no more, and still gets probes (without a backlog they come as before)."""
    # a round's fixed cost dominates (drafting pays at full acceptance), but a catch-up token costs half a target one
    prior = CostModel(target_call=1.0, target_token=0.1, draft_call=0.1, draft_token=0.05)
    costs, budgets, zeros = MeasuredCosts(prior), np.full(4, 5), np.zeros(4)
    for k in (0, 0, 0, 1, 1, 1):
        costs.observe(4, k, float(prior.round_cost(4, np.array([k]))[0]))
    costs.acceptance.pooled_hits = 0.0  # a draft that never agrees: every call starts off
    plain, probe = prior.round_cost(4, np.array([0, 1]))
    calls, rounds, deferred = 60, 64, 30  # each call's prompts: 30 tokens the draft never ran (a deferred prefill)
    probes, spent = [], 0.0
    for call in range(calls):
        control = SpeculationControl(costs)
        control.begin(budgets)
        assert control.off
        behind = deferred
        for r in range(rounds):
            backlog = behind + r  # tokens since the call began (or since its last probe) that the draft never ran
            if control.draft_lengths(budgets, zeros, zeros, backlog=backlog).max() > 0:
                probes.append(call * rounds + r)
                spent += probe - plain + prior.catch_up(4, backlog)
                behind = -r - 1
    assert probes, "no probe in 60 calls off: a draft that might pay would never be looked at again"
    assert spent <= 0.03 * calls * rounds * plain
    # before, the spacing alone decided (a probe every 8-64 rounds): dozens of probes with their catch-ups
    assert len(probes) < calls * rounds / (8 << 3)
    free_tokens = CostModel(target_call=1.0, target_token=0.1, draft_call=0.1, draft_token=0.0)
    free = SpeculationControl(free_tokens)
    free.acceptance.pooled_hits = 0.0
    gaps = np.diff([-1] + [r for r in range(200) if free.draft_lengths(budgets, zeros, zeros, backlog=50).max() > 0])
    plain, probe = free_tokens.round_cost(4, np.array([0, 1]))
    first = max(8, math.ceil((probe / plain - 1) / 0.03))
    assert gaps.tolist()[:2] == [first, 2 * first]  # nothing to catch up at any backlog: spaced as before


def test_measured_costs_correct_the_plain_step_and_what_drafts_add():
    """A round's cost is a plain step (the prior's, scaled by measured plain rounds) plus what its drafts add
    (the prior's addition, scaled by measured rounds of that width, else by every drafting round's)."""
    prior = CostModel(target_call=1.0, target_token=0.1, draft_call=0.2, draft_token=0.0)
    p = lambda rows, k: float(prior.round_cost(rows, np.array([k]))[0])  # noqa: E731
    costs = MeasuredCosts(prior)
    assert np.allclose(costs.round_cost(8, np.array([0, 3])), prior.round_cost(8, np.array([0, 3])))
    costs.observe(8, 3, 1000.0)  # a width's first round (a compile) is dropped
    assert costs.samples(3) == 0
    for factor in (6.0, 6.2, 5.8):
        costs.observe(8, 3, factor * p(8, 3))  # drafting rounds cost 6x the prior
    costs.observe(8, 3, 500 * p(8, 3))  # far beyond: a recompile, dropped
    assert costs.samples(3) == 3
    assert costs.round_cost(8, np.array([3]))[0] == pytest.approx(6.0 * p(8, 3))
    scale = (6.0 * p(8, 3) - p(8, 0)) / (p(8, 3) - p(8, 0))  # no plain round yet: the prior's plain step
    # another batch size and an unmeasured drafting width: the prior's addition there, times the measured scale
    assert costs.round_cost(32, np.array([3]))[0] == pytest.approx(p(32, 0) + scale * (p(32, 3) - p(32, 0)))
    assert costs.round_cost(8, np.array([1]))[0] == pytest.approx(p(8, 0) + scale * (p(8, 1) - p(8, 0)))
    for _ in range(3):
        costs.observe(8, 0, 2.0 * p(8, 0))  # plain steps cost twice the prior (the first is dropped)
    assert costs.samples(0) == 2 and costs.round_cost(8, np.array([0]))[0] == pytest.approx(2.0 * p(8, 0))
    assert costs.round_cost(8, np.array([3]))[0] == pytest.approx(6.0 * p(8, 3))  # still what was measured
    assert costs.round_cost(16, np.array([0]))[0] == pytest.approx(2.0 * p(16, 0))


def test_a_calls_tail_does_not_outvote_the_full_batchs_measured_rounds():
    """Rounds over the batch's own row count decide its estimate: a call's tail (one or two rows, where the prior's
    shape is furthest off) neither pushes the full batch's rounds out nor averages into them, and a width not yet
    run at this row count takes the scale of widths that were before that of its own rounds at other row counts;
    a row count never measured still takes every round's, through the prior."""
    prior = CostModel(target_call=1.0, target_token=0.1, draft_call=0.2, draft_token=0.0)
    p = lambda rows, k: float(prior.round_cost(rows, np.array([k]))[0])  # noqa: E731
    costs = MeasuredCosts(prior, keep=4)
    for k in (0, 3):
        costs.observe(8, k, 1.0)  # a width's first round: dropped
        for _ in range(4):
            costs.observe(8, k, 2.0 * p(8, k))  # the full batch: twice the prior
    for _ in range(20):  # the tail: a round over one row costs five times the prior
        costs.observe(1, 0, 5.0 * p(1, 0))
        costs.observe(1, 3, 5.0 * p(1, 3))
    assert costs.round_cost(8, np.array([0, 3])) == pytest.approx([2.0 * p(8, 0), 2.0 * p(8, 3)])
    assert costs.round_cost(1, np.array([0, 3])) == pytest.approx([5.0 * p(1, 0), 5.0 * p(1, 3)])
    assert costs.samples(0) == costs.samples(3) == 8  # the latest 4 of each row count
    assert costs.plain(4) == pytest.approx(p(4, 0) * 3.5)  # unmeasured: the median over both row counts' ratios
    for _ in range(3):  # width 1 measured over one row only (the first is dropped)
        costs.observe(1, 1, 10.0 * p(1, 1))
    # over 8 rows width 1 takes the scale of the widths measured there (twice the prior), not its own 1-row rounds'
    assert costs.round_cost(8, np.array([1]))[0] == pytest.approx(2.0 * p(8, 1))


def test_the_first_round_of_each_width_and_row_count_is_dropped():
    """A batch size's first round of a width pays first-call costs (allocations for the new shapes; compiled, a
    compile): dropped like a width's very first round, or one such sample (4x a plain step on the bundled pair at 16
    rows) keeps drafting off for the rest of the call."""
    prior = CostModel(target_call=1.0, target_token=0.1, draft_call=0.2, draft_token=0.0)
    costs = MeasuredCosts(prior)
    for rows, seconds in ((2, 9.0), (2, 1.0), (16, 40.0), (16, 3.0)):
        costs.observe(rows, 3, seconds)
    assert costs.samples(3) == 2 and costs.measured(3, 16)
    assert costs.round_cost(16, np.array([3]))[0] == pytest.approx(3.0)  # the second 16-row round, not the first


@pytest.mark.parametrize("drafting_costs", [1.0, 10.0])
def test_measured_auto_weighs_drafting_rounds_against_plain_ones(drafting_costs):
    """With measured costs the controller first drafts as the prior says, then runs plain steps until one is
    measured (the first of each width is dropped), then decides by what the rounds cost: a draft whose rounds
    cost 10x the prior's is turned off even at high acceptance, one that costs what the prior says stays on."""
    prior = CostModel(target_call=1.0, target_token=0.05, draft_call=0.05, draft_token=0.0)
    costs, budgets = MeasuredCosts(prior), np.full(4, 4)
    control = SpeculationControl(costs)
    control.acceptance.pooled_hits = 0.9 * control.acceptance.pooled_trials  # a draft that mostly agrees
    widths = []
    for _ in range(8):
        k = int(control.draft_lengths(budgets, np.zeros(4), np.zeros(4)).max())
        widths.append(k)
        costs.observe(4, k, float(prior.round_cost(4, np.array([k]))[0]) * (drafting_costs if k else 1.0))
    assert widths[:4] == [4, 4, 0, 0]
    assert all(w == (4 if drafting_costs == 1.0 else 0) for w in widths[4:])


def test_the_default_at_batch_above_one_turns_a_draft_that_rarely_agrees_off():
    """No `speculation=`, batch > 1: a draft with unrelated weights (its drafts are almost never accepted) ends up
    drafting in few rounds, and the output is plain greedy's."""
    target = target_model("llama")
    draft = draft_model("llama", "unrelated")
    ids, mask = left_pad(PROMPTS, 0)
    out = target.generate(ids, attention_mask=mask, assistant_model=draft, max_new_tokens=40, eos_token_id=None,
                          pad_token_id=0, return_dict_in_generate=True)
    stats = out.spec_stats
    assert stats.strategy == "exspec" and stats.rounds > 20
    assert np.mean(np.array(stats.draft_widths) > 0) < 0.35
    for row, prompt in enumerate(PROMPTS):
        assert out.sequences[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, 40, None)


def test_admissions_while_drafting_is_off_skip_the_draft_prefill_and_catch_up_when_it_resumes():
    """Off at first (a draft step costs 0.8 plain steps: no k pays at the prior's acceptance), exspec admits its
    later prompts (20 rounds in) without the draft's prefill; a probe (27 rounds in) finds the self-draft always
    right, drafting resumes, and the draft runs every token of those rows in one catch-up forward. Every row
    equals plain greedy."""
    target = target_model("llama")
    cost = CostModel(target_call=1.0, target_token=0.0, draft_call=0.8, draft_token=0.0)
    prompts = PROMPTS + [[40, 41, 42], list(range(50, 58))]
    ids, mask = left_pad(prompts, 0)
    out = target.generate(ids, attention_mask=mask, assistant_model=target, batch_spec="exspec", max_batch_size=2,
                          max_new_tokens=20, eos_token_id=None, pad_token_id=0, speculation=cost,
                          return_dict_in_generate=True)
    stats = out.spec_stats
    assert stats.draft_prefill_calls < stats.target_prefill_calls
    assert stats.draft_widths[0] == 0 and max(stats.draft_widths) > 1  # off, then on after a probe
    for row, prompt in enumerate(prompts):
        assert out.sequences[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, 20, None)


def test_a_probes_catch_up_is_not_measured_as_the_cost_of_its_width(monkeypatch):
    """A drafting round whose draft first catches up on rounds off (a probe's, mostly: every token it missed) is
    kept out of the measured costs: counted as an ordinary round of its width it made every later round of that width
    look as dear and kept drafting off where it pays. The other rounds are measured as before."""
    from hf_batchspec import speculation
    from hf_batchspec.drafters.model import ModelDrafter

    target = target_model("llama")
    prior = CostModel.estimate(target, target)  # seconds, as the rounds' clock measures them
    costs = MeasuredCosts(prior)
    for _ in range(3):  # plain steps as the prior has them (the call's own replace them)
        costs.observe(2, 0, prior.plain(2))
    costs.acceptance.pooled_hits, costs.probe_credit = 0.0, 1e9  # starts off; a probe is paid for at once
    monkeypatch.setattr(speculation, "measured_costs", lambda *args: costs)
    events = []
    backlog, observe = ModelDrafter.backlog, MeasuredCosts.observe

    def recorded_backlog(self, rows):
        events.append(("backlog", backlog(self, rows)))
        return events[-1][1]

    def recorded_observe(self, rows, k, seconds):
        events.append(("observed", k))
        return observe(self, rows, k, seconds)
    monkeypatch.setattr(ModelDrafter, "backlog", recorded_backlog)
    monkeypatch.setattr(MeasuredCosts, "observe", recorded_observe)
    ids, mask = left_pad(PROMPTS, 0)
    out = target.generate(ids, attention_mask=mask, assistant_model=target, batch_spec="exspec", max_new_tokens=80,
                          eos_token_id=None, pad_token_id=0, max_batch_size=2, return_dict_in_generate=True)
    widths = out.spec_stats.draft_widths
    # one group per decision: [backlog, (observed width)]; a run of plain rounds (drafting off) is one decision
    rounds = [[value for _, value in group] for group in _rounds_of(events)]
    unmeasured = [r for r in rounds if len(r) == 1]
    drafting = unmeasured + [r for r in rounds if len(r) == 2 and r[1] > 0]
    assert len(drafting) == sum(width > 0 for width in widths)  # every drafting round is one decision
    assert unmeasured, "no drafting round caught up: the case this test is about did not happen"
    assert all(r[0] > 0 for r in unmeasured)  # only rounds that caught up go unmeasured...
    assert not [r for r in drafting if r[0] and len(r) == 2]  # ...and none of those was measured
    assert [r for r in drafting if not r[0] and len(r) == 2]  # the others are
    for row, prompt in enumerate(PROMPTS):
        assert out.sequences[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, 80, None)


def _rounds_of(events):
    """Split a log of ("backlog", n) / ("observed", k) events into rounds, each starting at its backlog."""
    rounds = []
    for event in events:
        if event[0] == "backlog":
            rounds.append([])
        rounds[-1].append(event)
    return rounds


def test_the_default_at_batch_one_turns_a_draft_that_rarely_agrees_off():
    """batch_spec at batch 1 with no `speculation=`, as a caller loops over single prompts: the default is auto there
    too, so a draft whose drafts are almost never accepted ends up drafting in few rounds (the costs and acceptance
    carry from call to call), while `speculation="always"` drafts every round, as transformers' assisted
    generation does. Every call equals plain greedy."""
    target = target_model("llama")
    draft = build("gpt2", seed=322)  # fresh weights: measurements of their own (keyed by the draft's weights)
    widths = []
    for prompt in PROMPTS * 2:
        ids, mask = left_pad([prompt], 0)
        out = target.generate(ids, attention_mask=mask, assistant_model=draft, batch_spec="exspec",
                              max_new_tokens=30, eos_token_id=None, pad_token_id=0, return_dict_in_generate=True)
        assert out.sequences[0, ids.shape[1]:].tolist() == plain_greedy(target, prompt, 30, None)
        widths += out.spec_stats.draft_widths
    assert len(widths) > 80 and np.mean(np.array(widths) > 0) < 0.3
    ids, mask = left_pad(PROMPTS[:1], 0)
    always = target.generate(ids, attention_mask=mask, assistant_model=draft, batch_spec="exspec", max_new_tokens=20,
                             num_assistant_tokens=3, speculation="always", eos_token_id=None, pad_token_id=0,
                             return_dict_in_generate=True).spec_stats
    assert all(width > 0 for width in always.draft_widths[:-2])


def test_free_drafts_make_auto_draft_every_round_like_always():
    target = target_model("llama")
    draft = draft_model("llama", "self")
    auto = _generate(target, draft, PROMPTS, FREE_DRAFTS, do_sample=False).spec_stats
    always = _generate(target, draft, PROMPTS, "always", do_sample=False).spec_stats
    assert auto.rounds == always.rounds == 8  # 1 + 8 x 5 tokens: every draft accepted
    assert auto.draft_forward_calls == always.draft_forward_calls


def test_auto_sampling_is_reproducible_with_a_generator():
    target = target_model("llama")
    draft = draft_model("llama", "perturbed")
    runs = [_generate(target, draft, PROMPTS, "auto", do_sample=True, temperature=1.0,
                      generator=torch.Generator().manual_seed(7)).sequences for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


def test_estimated_costs_follow_the_models_sizes():
    """`CostModel.estimate` prices a forward by the model's decoder layers (per call) and parameters (per token): a
    perturbed copy of the target costs what the target does, a draft of half the layers half as much per call and
    less per token, and compiled forwards cost less per call and per round. (That every cost is finite and
    non-negative is `CostModel`'s own check, made when any is built.)"""
    target = target_model("llama")
    same = CostModel.estimate(target, draft_model("llama", "perturbed"))
    assert (same.draft_call, same.draft_token) == (same.target_call, same.target_token)
    half = CostModel.estimate(target, build("llama", num_hidden_layers=1))
    assert half.draft_call == pytest.approx(half.target_call / 2)
    assert 0 < half.draft_token < half.target_token
    assert half.target_call == same.target_call and half.round_overhead == same.round_overhead
    compiled = CostModel.estimate(target, target, compiled=True)
    assert compiled.target_call < same.target_call and compiled.round_overhead < same.round_overhead


def test_calibrated_costs_keep_the_estimates_round_overhead_and_drive_auto_exactly():
    """`calibrate` measures the forwards' costs (their values are this machine's: not asserted) and takes the
    loop's own cost per round from the estimate; decoding with the result is exact."""
    target = target_model("llama")
    draft = draft_model("llama", "perturbed")
    cost = hf_batchspec.calibrate(target, draft, rows=4, repeats=1)
    assert cost.round_overhead == CostModel.estimate(target, draft).round_overhead
    out = _generate(target, draft, PROMPTS, cost, max_new=12, do_sample=False)
    width = max(len(p) for p in PROMPTS)
    for row, prompt in enumerate(PROMPTS):
        assert out.sequences[row, width:].tolist() == plain_greedy(target, prompt, 12, None)


def test_bad_speculation_values_are_refused():
    target = target_model("llama")
    draft = draft_model("llama", "perturbed")
    ids, mask = left_pad(PROMPTS, 0)
    with pytest.raises(hf_batchspec.BatchSpecError, match="speculation='sometimes'"):
        target.generate(ids, attention_mask=mask, assistant_model=draft, speculation="sometimes", max_new_tokens=4)
    with pytest.raises(hf_batchspec.BatchSpecError, match="batch_spec=.exspec. to use `speculation` at batch 1"):
        target.generate(ids[:1], attention_mask=mask[:1], assistant_model=draft, speculation="auto",
                        max_new_tokens=4)
    with pytest.raises(ValueError, match="non-negative"):
        CostModel(target_call=1.0, target_token=-1.0, draft_call=0.0, draft_token=0.0)


def test_a_call_starts_off_where_earlier_calls_measured_that_drafting_does_not_pay():
    """Measured costs carry across calls: once plain and drafting rounds are measured and the pooled acceptance is
    near 0, a new call starts off (no round spent finding out, the first probe when it would come anyway), and the
    probes' backoff goes on from where the last call left it."""
    prior = CostModel(target_call=1.0, target_token=0.1, draft_call=0.3, draft_token=0.0)
    costs, budgets, zeros = MeasuredCosts(prior), np.full(4, 4), np.zeros(4)
    fresh = SpeculationControl(costs)
    fresh.begin(budgets)
    assert not fresh.off  # nothing measured yet: the first rounds decide
    for k in (0, 0, 0, 1, 1, 1):
        costs.observe(4, k, float(prior.round_cost(4, np.array([k]))[0]))
    costs.acceptance.pooled_hits = 0.0  # every draft so far rejected
    first = SpeculationControl(costs)
    first.begin(budgets)
    assert first.off
    interval = first.probe_interval(4)
    widths = [int(first.draft_lengths(budgets, zeros, zeros).max()) for _ in range(2 * interval)]
    assert widths.index(1) == interval - 2  # the probe after `interval` rounds off, begin's counting as the first
    assert costs.probe_misses == 1  # that probe was fruitless: the backoff is the measurements', not the call's
    later = SpeculationControl(costs)
    later.begin(budgets)
    assert later.off and later.probe_interval(4) == 2 * interval
    other = SpeculationControl(costs)
    other.begin(np.full(8, 4))  # a batch size whose plain step was never measured: it starts on and measures it
    assert not other.off


def test_a_later_call_with_a_draft_that_does_not_pay_skips_its_prefill_and_drafts_nothing_before_a_probe():
    """The default (auto) at batch > 1, twice with a draft that rarely agrees: the second call starts off, so its
    admissions skip the draft's prefill and its first rounds are plain steps; both equal plain greedy."""
    target = target_model("llama")
    draft = build("gpt2", seed=321)  # fresh weights: measurements of their own (keyed by the draft's weights)
    ids, mask = left_pad(PROMPTS, 0)
    calls = [target.generate(ids, attention_mask=mask, assistant_model=draft, max_new_tokens=40, eos_token_id=None,
                             pad_token_id=0, return_dict_in_generate=True) for _ in range(2)]
    first, second = (out.spec_stats for out in calls)
    assert first.draft_prefill_calls > 0
    assert second.draft_prefill_calls == 0
    assert second.draft_widths[:8] == [0] * 8
    for out in calls:
        for row, prompt in enumerate(PROMPTS):
            assert out.sequences[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, 40, None)


# Drafting pays only where drafts are mostly accepted: a draft of fresh weights turns it off, probes find it off.
PAYS_IF_ACCEPTED = CostModel(target_call=1.0, target_token=0.0, draft_call=0.5, draft_token=0.0)


# Prompt lookup's drafts are free but each costs the verify a target token: drafting pays above 50% acceptance.
LOOKUP_PAYS_IF_ACCEPTED = CostModel(target_call=1.0, target_token=1.0, draft_call=0.0, draft_token=0.0)


@pytest.mark.parametrize("batch,source", [(1, "draft"), (3, "draft"), (3, "lookup-compiled")])
def test_plain_rounds_run_back_to_back_as_they_would_one_by_one(monkeypatch, batch, source):
    """While drafting is off, the rounds before the next probe run back to back (`_Decoder._plain_run`): one decision
    for the run, a forward per step (compiled: the verify program of width 0 per step, static shapes with idle rows;
    dynamo's eager backend, the same graphs at a fraction of inductor's compile time). Against the same calls with
    every plain round decided on its own (no rounds ahead), the outputs, the rounds' widths, every row's counts and
    the probe credit are the same; rows stop inside a run (stop ids), at their budgets, and prompts wait for slots.
    Every row equals plain greedy."""
    target = target_model("llama")
    if source == "draft":
        call = dict(assistant_model=build("gpt2", seed=541), num_assistant_tokens=3, speculation=PAYS_IF_ACCEPTED)
    else:
        call = dict(prompt_lookup_num_tokens=3, speculation=LOOKUP_PAYS_IF_ACCEPTED,
                    compile_config=CompileConfig(backend="eager", mode=None))
    prompts = PROMPTS + [[7, 8, 9, 10], [12] * 5]
    stop = plain_greedy(target, prompts[0], 40, None)[12]  # a token some rows stop at inside a run
    decisions = []
    draft_lengths = SpeculationControl.draft_lengths

    def counted(self, *args, **kwargs):
        decisions.append(1)
        budgets = draft_lengths(self, *args, **kwargs)
        credit.append(self.credit)
        return budgets
    monkeypatch.setattr(SpeculationControl, "draft_lengths", counted)
    credit = []
    rest = SpeculationControl.rest
    monkeypatch.setattr(SpeculationControl, "rest",
                        lambda self, rounds, rows: (rest(self, rounds, rows), credit.append(self.credit))[0])

    def run():
        decisions.clear(), credit.clear()
        ids, mask = left_pad(prompts, 0)
        out = target.generate(ids, attention_mask=mask, batch_spec="exspec", max_new_tokens=40, eos_token_id=stop,
                              pad_token_id=0, max_batch_size=batch, return_dict_in_generate=True, **call)
        return out, len(decisions), credit[-1]

    runs, run_decisions, run_credit = run()
    monkeypatch.setattr(SpeculationControl, "rounds_off_ahead", lambda self: 0)
    single, single_decisions, single_credit = run()
    stats, one_by_one = runs.spec_stats, single.spec_stats
    assert single_decisions == one_by_one.rounds  # every round decided on its own...
    assert run_decisions < stats.rounds / 2  # ...against runs of plain rounds
    assert torch.equal(runs.sequences, single.sequences)
    assert stats.draft_widths == one_by_one.draft_widths and 0 < sum(stats.draft_widths) < stats.rounds
    for name in ("new_tokens", "row_rounds", "drafted_tokens", "accepted_tokens", "target_tokens"):
        assert np.array_equal(getattr(stats, name), getattr(one_by_one, name)), name
    assert stats.target_forward_calls == one_by_one.target_forward_calls
    assert math.isclose(run_credit, single_credit)
    if "compiled" in source:  # every step one compiled program, runs or not
        assert stats.fused_rounds == stats.rounds == one_by_one.fused_rounds
    width, ended = left_pad(prompts, 0)[0].shape[1], 0
    for row, prompt in enumerate(prompts):
        expected = plain_greedy(target, prompt, 40, stop)
        ended += len(expected) < 40
        got = runs.sequences[row, width:].tolist()
        assert got[:len(expected)] == expected and set(got[len(expected):]) <= {0}
    assert ended  # some row stopped at the stop id


def test_drafting_turns_off_only_when_a_standard_deviation_up_would_not_pay_either():
    """Turning off costs a probe interval, a round drafted too many one round: while drafting is on, a batch whose
    estimates fall just below break-even by a row's chance dip stays on (`Acceptance.upper`); a batch whose mean is
    as sure to be below (many rows), or rows far below, turn it off; once off, the same estimates do not turn it
    back on (only a probe's acceptance does)."""
    cost = CostModel(target_call=1.0, target_token=0.0, draft_call=0.5, draft_token=0.0)  # k=1 pays above 0.545

    def decide(rows, hits, trials, control=None):
        control = control or SpeculationControl(cost)
        budgets = np.full(rows, 3)
        k = control.draft_lengths(budgets, np.full(rows, hits), np.full(rows, trials)).max()
        return k, control

    rates = Acceptance().rates(np.array([4.0]), np.array([8.0]))
    assert best_draft_length(rates, np.array([3]), cost, margin=0.03) == 0  # the point estimate alone: off
    k, control = decide(1, 4.0, 8.0)
    assert k > 0 and control.rounds_off == 0  # one row: its dip is within its noise
    assert decide(64, 4.0, 8.0)[0] == 0  # 64 rows: the mean's noise is an eighth of that
    k, control = decide(1, 0.0, 6.0)
    assert k == 0 and control.rounds_off == 1  # far below: off
    assert decide(1, 4.0, 8.0, control)[0] == 0  # off: rates that only an upward deviation pays for keep it off
