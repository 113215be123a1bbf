"""When drafting pays: a cost model of one verify round and the draft length that maximises tokens per second.

Speculation trades draft forwards and a wider verify for more tokens per round. At batch 1 on a GPU the
verify is nearly free and almost any draft pays; at a large batch, or on a CPU, a verify over k+1 tokens per
row costs close to k+1 single-token steps, and with low acceptance the round yields less than it costs.
`speculation="auto"` (the default) decides each round, for the batch as it is:

    tokens(K) = sum over rows of E(alpha_row, min(budget_row, K)),   E(a, k) = 1 + a + ... + a^k
    cost(K)   = what a round of K drafts over `rows` rows costs
    K*        = argmax over K in 0..k of tokens(K) / cost(K)

K = 0 is a plain decoding step, so a draft that does not pay is turned off, and probes (one draft per row,
spaced so that they cost a few percent at most) turn it back on when acceptance rises.

Where cost(K) comes from:
- `CostModel`: a forward's cost is affine in its tokens (`call + token x n`); `CostModel.estimate` derives the
  four numbers from the models' sizes and the device, `profiling.calibrate` measures them. A prior: right in
  shape, often wrong in scale, and blind to work outside forwards (a draft with another tokenizer converts text
  on the host every round; a compiled round's guards).
- `MeasuredCosts`: the rounds of this process as they ran. The decoder hands over each round's wall time
  (`profiling.RoundClock`, the one clock the loop reads); a round's cost is a plain step plus what its drafts
  add, each the prior's scaled by the measured rounds (see the class), so one measurement carries to every batch
  size the prior scales to. The first round of each width and row count is dropped (a compile, first-call
  allocations), and
  the measurements and the pooled acceptance are kept per target, draft source, compile mode, device and dtype
  across calls (`measured_costs`), so a caller looping over batches pays the exploration once: in a fresh
  process, two rounds without drafts after the first drafting rounds.
Greedy output never depends on these decisions. Sampling decides from the prior alone (no clock): the decision
is then a deterministic function of what happened so far, so a seeded sampling run repeats.

Row acceptance is a shrunk running estimate (see `Acceptance`), updated from the counts the loop already has
on the host.
"""

from __future__ import annotations

import math
import statistics
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

# Priors for `CostModel.estimate`, in seconds. CPU: measured with `profiling.calibrate` on 2 cores (torch 2.13, fp32):
# about 1.1 ms of fixed work per decoder layer and call, and 5e-11 s per parameter and token.
# CUDA: kernel-launch-bound fixed cost per layer, the weights read once per call, then compute per token.
_CPU_LAYER_CALL = 1.3e-3
_CPU_PARAM_TOKEN = 4e-11
_CPU_ROUND = 1.5e-3
_GPU_LAYER_CALL = 1.5e-4
_GPU_BYTES_PER_S = 2.0e12
_GPU_FLOPS = 2.0e14
_GPU_ROUND = 1.0e-3
# Compiled (`compile_config`): static shapes and fused kernels. CPU: `calibrate(compile_config=...)` on the bundled
# pair, one thread, 8 rows: 0.8 ms per layer and call, 1.6e-11 s per parameter and token (a wider verify costs
# relatively less than eager), and the loop's own work per round is a few dozen ops (the whole-step programs).
# CUDA: a forward is one CUDA graph replay, so the per-layer cost is the kernels' device time, not their launches.
_CPU_COMPILED_LAYER_CALL = 0.8e-3
_CPU_COMPILED_PARAM_TOKEN = 1.6e-11
_CPU_COMPILED_ROUND = 0.5e-3
_GPU_GRAPH_LAYER_CALL = 3e-5
_GPU_COMPILED_ROUND = 0.5e-3


@dataclass(frozen=True)
class CostModel:
    """Seconds of one verify round, from affine per-forward costs: a forward of n tokens (rows x positions)
    costs `call + token * n`. Only ratios matter, so any consistent unit works."""

    target_call: float
    target_token: float
    draft_call: float
    draft_token: float
    round_overhead: float = 0.0  # the loop's own work per round (sync, acceptance, bookkeeping)

    def __post_init__(self):
        values = (self.target_call, self.target_token, self.draft_call, self.draft_token, self.round_overhead)
        if any(not np.isfinite(v) or v < 0 for v in values) or self.target_call + self.target_token <= 0:
            raise ValueError(f"CostModel needs finite, non-negative costs and a target that costs something; got "
                             f"{self}.")

    def round_cost(self, rows: int, k: np.ndarray) -> np.ndarray:
        """Cost of a round with draft length k (array) over `rows` rows."""
        return self.width_cost(rows, np.asarray(k, dtype=np.float64))

    def plain(self, rows: int) -> float:
        """Cost of a round without drafts over `rows` rows."""
        return self.width_cost(rows, 0)

    def catch_up(self, rows: int, tokens: int) -> float:
        """Cost of a draft forward over `tokens` more positions per row (a catch-up after rounds off)."""
        return self.draft_token * rows * tokens

    def width_cost(self, rows: int, k):  # k: an int, or a float array
        """`round_cost` without numpy's conversion, so that one width costs plain float arithmetic (a measured
        decision asks for it dozens of times a round). The first draft step re-feeds the token before the pending
        one, so it carries twice the tokens of the later steps."""
        verify = self.target_call + self.target_token * rows * (k + 1)
        drafting = k * (self.draft_call + self.draft_token * rows) + (k > 0) * self.draft_token * rows
        return self.round_overhead + verify + drafting

    @classmethod
    def estimate(cls, target: torch.nn.Module, draft: torch.nn.Module, compiled: bool = False) -> "CostModel":
        """A prior from the models' layer counts and sizes, the target's device type and whether the forwards
        are compiled (see module header).

        Rough by nature (a CPU can be 2x faster or slower than the one the constants come from); what it
        gets right is the shape: on CPU cost grows with tokens almost at once, on a GPU much later, and
        compiling cuts the fixed cost of a call (on a GPU, to the kernels' own time).
        """
        from .runner import decoder_layers, input_device

        on_gpu = input_device(target).type == "cuda"
        layer_call = ((_GPU_GRAPH_LAYER_CALL if compiled else _GPU_LAYER_CALL) if on_gpu
                      else _CPU_COMPILED_LAYER_CALL if compiled else _CPU_LAYER_CALL)

        def forward_cost(model):
            layers = decoder_layers(model.config)
            params = sum(p.numel() for p in model.parameters())
            if not on_gpu:
                return layer_call * layers, (_CPU_COMPILED_PARAM_TOKEN if compiled else _CPU_PARAM_TOKEN) * params
            weights = sum(p.numel() * p.element_size() for p in model.parameters())
            return layer_call * layers + weights / _GPU_BYTES_PER_S, 2 * params / _GPU_FLOPS

        (t_call, t_token), (d_call, d_token) = forward_cost(target), forward_cost(draft)
        overhead = ((_GPU_COMPILED_ROUND if compiled else _GPU_ROUND) if on_gpu
                    else _CPU_COMPILED_ROUND if compiled else _CPU_ROUND)
        return cls(t_call, t_token, d_call, d_token, overhead)


class MeasuredCosts:
    """Round costs from the rounds this process ran, in two parts: a plain step (K = 0) and what K drafts add.

    `round_cost(rows, K)` = plain(rows) + scale_K x (prior(rows, K) - prior(rows, 0)): the plain step is the
    prior's times the median measured/prior ratio of plain rounds; a drafting width's addition (its draft steps
    and the wider verify) is the prior's addition times the median measured scale of that width's rounds, or of
    every drafting round while the width has none; each from the rounds over the same row count where there are
    any (a call's tail, a few rows, would otherwise outvote the full batch's rounds through the prior's shape, which
    is only roughly right). The prior carries a measurement to other batch sizes (and to a call's tail, where rows
    leave); the addition is scaled apart from the plain step because that is what the prior
    gets wrong most (a draft's per-call overhead, another tokenizer's text round trip). Before any plain round the
    prior's plain step stands; before any drafting round, the plain step's ratio scales the addition too.

    The first round of each width and row count is dropped (it pays a compile, compiled rounds being one program per
    width, or first-call allocations: the first 16-row round of k=3 on the bundled pair measured 4x a plain step, and
    that one sample kept drafting off for the rest of the call), and so is a later one far beyond the estimate
    (`outlier` times, a recompile's).
    It also carries the pooled acceptance (`acceptance`), the probes' backoff (`probe_misses`) and their budget
    (`probe_credit`) from call to call, so that a later call starts from what the draft was seen to accept, not
    from the prior, and a caller looping over batches with a draft that does not pay is not probed afresh in every
    call."""

    def __init__(self, prior: CostModel, keep: int = 8, outlier: float = 20.0):
        self.prior, self.keep, self.outlier = prior, keep, outlier
        self.acceptance = Acceptance()
        self.probe_misses = 0  # fruitless probes in a row, carried across calls as the acceptance is
        self.probe_credit = 0.0  # seconds probes may still cost (`SpeculationControl.credit`)
        # width -> rows -> recent seconds: the latest `keep` of each row count, so that a call's tail (a few rows)
        # does not push out what the full batch measured
        self._rounds: dict[int, dict[int, list[float]]] = {}
        self._warmed: set[tuple[int, int]] = set()  # (width, rows) whose first round was dropped
        self._memo: dict[tuple, float] = {}  # estimates, until the next observation

    def samples(self, k: int) -> int:
        """Measured rounds of width k that count."""
        return sum(map(len, self._rounds.get(int(k), {}).values()))

    def measured(self, k: int, rows: int) -> bool:
        """Whether rounds of width k over `rows` rows were measured."""
        return bool(self._rounds.get(int(k), {}).get(int(rows)))

    def observe(self, rows: int, k: int, seconds: float) -> None:
        """One round of width k over `rows` forward rows took `seconds` (wall, its host sync included)."""
        k, rows = int(k), int(rows)
        if (k, rows) not in self._warmed:  # a new shape's first round: a compile, or first allocations
            self._warmed.add((k, rows))
            return
        if not math.isfinite(seconds) or seconds <= 0:
            return
        if self.samples(k) and seconds > self.outlier * self._cost(rows, k):
            return
        kept = self._rounds.setdefault(k, {}).setdefault(rows, [])
        kept.append(seconds)
        del kept[: -self.keep]
        self._memo.clear()

    def _timed(self, k: int, rows: int) -> list[tuple[int, float]]:
        """Width k's measured (rows, seconds): those over `rows` rows when there are any, else every row count's."""
        by_rows = self._rounds.get(k, {})
        if rows in by_rows:
            return [(rows, seconds) for seconds in by_rows[rows]]
        return [(r, seconds) for r, kept in by_rows.items() for seconds in kept]

    def _drafting(self, k: int, rows: int) -> list[tuple[int, int, float]]:
        """The drafting rounds (width, rows, seconds) that scale width k's addition over `rows` rows, nearest first:
        width k's over these rows; else other widths' over these rows (across widths at one row count the prior's
        shape holds better than across row counts: its split of a forward's cost into per-call and per-token work
        is what it gets most wrong); else width k's over other row counts; else every drafting round."""
        drafting = [w for w in self._rounds if w > 0 and self._rounds[w]]
        here = [w for w in drafting if rows in self._rounds[w]]
        widths = [k] if k in here else here or ([k] if k in drafting else drafting)
        return [(w, r, seconds) for w in widths for r, seconds in self._timed(w, rows)]

    def _cached(self, key: tuple, compute) -> float:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def plain(self, rows: int) -> float:
        """Seconds of a round without drafts over `rows` rows."""
        def compute():
            ratios = [s / self.prior.width_cost(r, 0) for r, s in self._timed(0, rows)]
            return self.prior.width_cost(rows, 0) * (statistics.median(ratios) if ratios else 1.0)
        return self._cached(("plain", rows), compute)

    def _scale(self, k: int, rows: int) -> float:
        """What scales the prior's addition for width k over `rows` rows (see the class docstring)."""
        def compute():
            scales = [(s - self.plain(r)) / (self.prior.width_cost(r, w) - self.prior.width_cost(r, 0))
                      for w, r, s in self._drafting(k, rows)]
            if not scales:  # no drafting round yet: as the plain step's ratio
                return self.plain(1) / self.prior.width_cost(1, 0)
            return max(statistics.median(scales), 0.05)  # drafting never costs nothing
        return self._cached(("scale", k, rows), compute)

    def catch_up(self, rows: int, tokens: int) -> float:
        """Seconds a draft forward over `tokens` more positions per row costs (a catch-up after rounds off): the
        prior's per-token draft cost, scaled as what drafts add is."""
        return self._scale(1, rows) * self.prior.draft_token * rows * tokens

    def _cost(self, rows: int, k: int) -> float:
        if k == 0:
            return self.plain(rows)
        added = self.prior.width_cost(rows, k) - self.prior.width_cost(rows, 0)
        return self.plain(rows) + self._scale(k, rows) * added

    def round_cost(self, rows: int, k: np.ndarray) -> np.ndarray:  # [K] -> [K] seconds
        k = np.asarray(k)
        return np.array([self._cost(int(rows), int(w)) for w in k.ravel()]).reshape(k.shape)


# Measured costs by target (weakly: they go with the model) and (draft source, compile mode, device, dtype).
_MEASURED: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def measured_costs(target: torch.nn.Module, key: tuple, prior: Callable[[], CostModel]) -> MeasuredCosts:
    """The `MeasuredCosts` this process keeps for `target` drafting from the source `key` (made from `prior()` the
    first time, which sums the models' parameters: a loop of short calls pays it once): later calls start from what
    earlier ones measured."""
    per_target = _MEASURED.setdefault(target, {})
    if key not in per_target:
        per_target[key] = MeasuredCosts(prior())
    return per_target[key]


def expected_tokens(alpha: np.ndarray, drafts: np.ndarray) -> np.ndarray:
    """Tokens a row gains in a round with `drafts` drafts when each is accepted with probability `alpha`
    (independently, until the first rejection): 1 + alpha + ... + alpha^drafts."""
    alpha = np.clip(alpha, 0.0, 0.999)
    return (1.0 - alpha ** (drafts + 1)) / (1.0 - alpha)


def yield_moments(alpha: np.ndarray, drafts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the tokens a round yields with `drafts` drafts each accepted with probability `alpha`
    until the first rejection (shapes broadcast). The accepted count A has P(A >= j) = alpha^j for j <= drafts, so
    E[A] = sum_j alpha^j and E[A^2] = sum_j (2j - 1) alpha^j."""
    alpha, drafts = np.broadcast_arrays(np.clip(alpha, 0.0, 0.999), drafts)
    j = np.arange(1, int(drafts.max(initial=0)) + 1)  # [J]
    reach = np.where(j <= drafts[..., None], alpha[..., None] ** j, 0.0)  # [..., J] P(A >= j)
    accepted = reach.sum(-1)
    return 1.0 + accepted, np.maximum(((2 * j - 1) * reach).sum(-1) - accepted ** 2, 0.0)


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    """The standard normal CDF, from Abramowitz and Stegun's erf (7.1.26, error below 1.5e-7): numpy has no erf, and
    `math.erf` one value at a time costs milliseconds per round here."""
    x = np.abs(z) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = 1.0 - poly * np.exp(-x * x)
    return 0.5 * (1.0 + np.sign(z) * erf)


def expected_last_round(mean: np.ndarray, sd: np.ndarray) -> np.ndarray:  # [K, B], [K, B] -> [K]
    """E[max over rows of N], N a row's rounds until its budget (integer, about normal: `mean`, `sd`; sd 0 for a
    plain step, whose rounds are exact). Sums P(max > t) over the rounds where it is neither 0 nor 1: from the
    latest of the rows' lower ends (mean - 6 sd; the max is at least that) to the latest upper end, so the window is
    a few dozen rounds however far apart the rows are."""
    low = np.floor(np.max(mean - 6 * sd, axis=1))  # [K]
    span = int(np.ceil(np.max(mean + 6 * sd - low[:, None]))) + 1
    t = low[:, None, None] + np.arange(span)[None, :, None]  # [K, T, 1]
    z = (t + 0.5 - mean[:, None, :]) / np.maximum(sd, 1e-9)[:, None, :]  # [K, T, B]
    done = np.where(sd[:, None, :] > 0, _normal_cdf(z), (t + 0.5 >= mean[:, None, :]).astype(np.float64))
    return low + (1.0 - done.prod(-1)).sum(-1)


def tail_time(alpha: np.ndarray, budgets: np.ndarray, remaining: np.ndarray, ks: np.ndarray,
              cost: "CostModel | MeasuredCosts", static: bool) -> np.ndarray:  # [B], [B], [B], [K] -> [K]
    """Expected seconds until the last row has its `remaining` tokens (0 for an idle row), drafting K of `ks` every
    round (at most a row's budget): what decides when no prompt waits, since the call then ends with its last row.
    Drafting spreads the rows' finishing rounds (on the layer-skip pair, 64 rows of 64 tokens at k=2: 28.6 rounds
    on average, 36 for the last), and a batch that waits for its last row does not get the mean's speed: tokens per
    round over-prices drafting here by the spread (simulated at 32 rows of 64 tokens, acceptance 0.69, k=2: 34.8
    rounds to the last row against 29.5 on average, the case `test_tail_time_is_the_simulated_time_to_the_last_row`
    checks this estimate on).

    A round over n rows costs `per_call + per_row x n`: with `static` shapes (idle rows cost as live ones) a
    round costs the full batch's while any row runs (until the live rows fit a smaller row bucket, which this
    leaves out: it errs toward plain steps); otherwise rows leave as they finish, and the cost model's
    split (from its 1-row and n-row costs) prices the rounds each row is in."""
    rows = len(remaining)
    running = remaining > 0
    drafts = np.minimum(ks[:, None], budgets[None, :])  # [K, B]
    mean_yield, var_yield = yield_moments(alpha[None, :], drafts)  # [K, B]
    # [K, B] rounds, renewal theory's approximation; the last token comes alone (no drafts past the budget), which
    # a Monte Carlo of the capped rounds confirms: r / mean alone was short by 0.2-0.8 rounds
    mean = np.where(running, 1.0 + (remaining - 1) / mean_yield, 0.0)
    sd = np.where(running, np.sqrt(var_yield * np.maximum(remaining - 1, 0) / mean_yield ** 3), 0.0)  # [K, B]
    full = cost.round_cost(rows, ks)  # [K]
    if static or rows == 1:
        per_call, per_row = full, np.zeros_like(full)
    else:
        per_row = (full - cost.round_cost(1, ks)) / (rows - 1)
        per_call = full - per_row * rows
    # a row's rounds never grow with K (a longer draft keeps every token a shorter one would, acceptance being a run
    # from the first draft), so neither does their max; the normal approximation's spread, which grows with K, can
    # make it look so where a few tokens remain
    last = np.minimum.accumulate(expected_last_round(mean, sd))  # [K], ks ascending
    return per_call * last + per_row * mean.sum(1)


def best_draft_length(alpha: np.ndarray, budgets: np.ndarray, cost: CostModel | MeasuredCosts,
                      widths: np.ndarray | None = None, live: np.ndarray | None = None, margin: float = 0.0,
                      remaining: np.ndarray | None = None) -> int:
    """The batch-wide draft length K in 0..max(budgets) that maximises expected tokens per unit cost; with
    `widths` (static shapes: the verify is padded to the next of these widths, so a K between two of them costs
    as much as the wider one) K is 0 or one of them. With `live`, the other rows (static shapes' idle rows) cost
    as much as any but yield no token. With `margin`, a K > 0 must beat a plain step's tokens per cost by that
    share (0.03: 3%) to be chosen: a predicted gain within the noise of the estimates is not worth the risk.

    With `remaining` ([B] tokens each row may still generate), given when no prompt waits, the call ends with its
    last row: K then minimises the expected time to that (`tail_time`), each K taken as kept to the end (static
    shapes, which `widths` marks, keep idle rows in the forwards; without them rows leave as they finish)."""
    top = int(budgets.max()) if len(budgets) else 0
    ks = np.arange(top + 1)  # [K]
    if widths is not None and top > 0:  # widths ascend and end at the largest k, so one covers `top`
        widths = np.asarray(widths)
        ks = np.concatenate(([0], widths[widths < top], [widths[np.searchsorted(widths, top)]]))
    tail = remaining is not None and top > 0
    if tail:
        rates = 1.0 / tail_time(alpha, budgets, remaining, ks, cost, widths is not None)  # [K] calls per second
    else:
        drafts = np.minimum(budgets[None, :], ks[:, None])  # [K, B]
        yields = expected_tokens(alpha[None, :], drafts)  # [K, B]
        tokens = (yields if live is None else yields * live[None, :]).sum(1)  # [K]
        rates = tokens / cost.round_cost(len(budgets), ks)  # [K]
    rates[0] *= 1.0 + margin  # ks[0] is 0
    if tail:  # of equal times, the longest draft (the fewest rounds)
        return int(ks[len(ks) - 1 - np.argmax(rates[::-1])])
    return int(ks[np.argmax(rates)])


class Acceptance:
    """Running per-row acceptance estimates, shrunk toward the batch's pooled rate.

    A round tells us, per row that drafted, how many drafts were accepted and whether a rejection ended the
    run: `hits` accepted, `trials` = hits + (1 if rejected). Old rounds decay (a row's text changes character
    as it goes). A row with few trials leans on the pooled rate, so a newly admitted prompt starts from what
    the batch has seen. The pooled rate decays more slowly (`pooled_decay`, about 20 rounds): it is the draft's
    rate over prompts, not a row's, and over the 5 rounds a row's decay keeps it moved by 0.1 either way on the
    layer-skip pair at batch 8 (0.53-0.83 around a true 0.68), enough to turn drafting off and on by chance near
    break-even.
    """

    def __init__(self, decay: float = 0.8, prior_rate: float = 0.6, prior_weight: float = 2.0,
                 pooled_decay: float = 0.95):
        self.decay, self.prior_weight, self.pooled_decay = decay, prior_weight, pooled_decay
        self.pooled_hits, self.pooled_trials = prior_rate * prior_weight, prior_weight

    @property
    def pooled(self) -> float:
        return self.pooled_hits / self.pooled_trials

    def rates(self, hits: np.ndarray, trials: np.ndarray) -> np.ndarray:
        return (hits + self.prior_weight * self.pooled) / (trials + self.prior_weight)

    def upper(self, hits: np.ndarray, trials: np.ndarray, rows: int = 1) -> np.ndarray:
        """`rates` moved up by one standard deviation of their mean over `rows` rows, from what each row's own
        trials put in it (binomial: nothing for a row that has not drafted). A row's estimate moves by about its
        deviation from round to round by chance alone; a batch-wide choice weighs the rows' sum, whose noise is
        the mean's."""
        rates = self.rates(hits, trials)
        deviation = np.sqrt(rates * (1 - rates) * trials) / (trials + self.prior_weight)
        return np.minimum(rates + deviation / math.sqrt(max(rows, 1)), 1.0)

    def observe(self, hits: np.ndarray, trials: np.ndarray, accepted: np.ndarray, budgets: np.ndarray):
        """New (hits, trials) per row after a round; rows that drafted nothing keep theirs."""
        drafted = budgets > 0
        if not drafted.any():  # a plain step: every row keeps its counts (the common round while speculation is off)
            return hits, trials
        new_trials = accepted + (accepted < budgets)
        hits = np.where(drafted, self.decay * hits + accepted, hits)
        trials = np.where(drafted, self.decay * trials + new_trials, trials)
        self.pooled_hits = self.pooled_decay * self.pooled_hits + accepted[drafted].sum()
        self.pooled_trials = self.pooled_decay * self.pooled_trials + new_trials[drafted].sum()
        return hits, trials


class SpeculationControl:
    """Chooses each round's draft length from the round costs and the rows' acceptance.

    With measured costs, a round without drafts is run on purpose once drafting rounds have been measured and
    plain ones have not: the comparison that decides needs both (in a fresh process, two rounds: the first of a
    width is dropped). While speculation is off no acceptance is observed, so it probes, one draft per row: every
    `probe_every` rounds off, spaced wider when a probe round costs more than a plain one (so that probes cost
    about `probe_share` of the time at most), and twice as wide after each probe that did not turn drafting back
    on (up to 8 times): a draft that never pays costs a few percent, not one round in eight.

    A probe also pays for the draft's catch-up: a draft model that ran none of the rounds off (or whose prefill
    was deferred) first runs every token it missed, for every row (`Drafter.backlog`). That grows with the time
    off, so spacing alone cannot bound it: each round off earns `probe_share` of its cost as credit, and a probe
    runs only when the credit covers what it adds (its wider verify, its draft step and the catch-up). Measured
    costs keep the credit across calls, so a draft whose catch-up costs more than one call's share is still
    probed now and then, once enough rounds ran off to pay for it.

    Off, the choice is weighed again whenever the rows' budgets grow (prompts admitted into freed slots): rows near
    their end may not pay for drafts that new rows would.

    Drafting must beat a plain step by `margin` (3%) in predicted tokens per second: measured round costs move by
    about that much from round to round, and near break-even a plain step is the choice that is never slower.
    """

    def __init__(self, cost: CostModel | MeasuredCosts, probe_every: int = 8, probe_share: float = 0.03,
                 margin: float = 0.03):
        self.cost, self.probe_every, self.probe_share, self.margin = cost, probe_every, probe_share, margin
        # measured costs carry the pooled acceptance across calls; a fixed cost model starts each call afresh
        self.acceptance = cost.acceptance if isinstance(cost, MeasuredCosts) else Acceptance()
        self._shared = cost if isinstance(cost, MeasuredCosts) else None
        self.rounds_off = 0
        # probes in a row after which drafting still did not pay
        self.misses = self._shared.probe_misses if self._shared is not None else 0
        self._probed = False
        self._interval = probe_every  # rounds off before the next probe (`probe_interval`, set on turning off)
        self._credit = 0.0  # a fixed cost model's probe credit (measured costs carry theirs across calls)
        self._offered_off = 0  # the rows' summed budgets when drafting was last weighed and left off

    @property
    def credit(self) -> float:
        """What probes may still cost: `probe_share` of the rounds run off, less what probes cost."""
        return self._shared.probe_credit if self._shared is not None else self._credit

    @credit.setter
    def credit(self, value: float) -> None:
        if self._shared is not None:
            self._shared.probe_credit = value
        else:
            self._credit = value

    def _earn(self, rows: int) -> float:
        """A round off over `rows` rows adds `probe_share` of its cost to the credit; returns that share."""
        share = self.probe_share * self.cost.plain(rows)
        self.credit += share
        return share

    def _rest(self, budgets: np.ndarray) -> np.ndarray:
        """A round off: no drafts, and its share of credit for a later probe."""
        self._earn(len(budgets))
        return np.zeros_like(budgets)

    def rounds_off_ahead(self) -> int:
        """Rounds after this one (which `draft_lengths` left off) that stay off whatever the rows do, short of
        admissions, whose budgets are weighed again: those before the next probe. The decoder runs them back to back
        (`_Decoder._plain_run`) and accounts them with `rest`."""
        return max(0, self._interval - self.rounds_off - 1) if self.rounds_off else 0

    def rest(self, rounds: int, rows: int) -> None:
        """`rounds` more rounds off over `rows` rows, run without asking `draft_lengths` (see `rounds_off_ahead`)."""
        self.rounds_off += rounds
        self.credit += rounds * self.probe_share * self.cost.plain(rows)

    def probe_cost(self, rows: int, backlog: int) -> float:
        """What a probe round over `rows` rows adds to a plain one, its draft's catch-up of `backlog` tokens per
        row included."""
        plain, probe = self.cost.round_cost(rows, np.array([0, 1]))
        return float(probe - plain) + self.cost.catch_up(rows, backlog)

    def begin(self, budgets: np.ndarray, widths: np.ndarray | None = None,
              remaining: np.ndarray | None = None) -> None:
        """Before a call's first admission: start off when what earlier calls measured (the pooled acceptance and
        round costs) already says that drafting does not pay, so that the call neither prefills the draft for
        nothing (`ModelDrafter.defer`) nor pays a round to find out; the first probe comes as it would have. Only
        from plain rounds measured over as many rows: a call at a batch size not seen yet starts on and measures it
        (extrapolated from other row counts through the prior, a batch-8 call after batch-1 calls started off where
        k=3 paid 14%, and deferred prefills then made every probe's catch-up too dear to pay for)."""
        if self._shared is None or not self.cost.measured(0, len(budgets)) or not len(budgets) or budgets.max() == 0:
            return
        unseen = np.zeros(len(budgets))
        if best_draft_length(self.acceptance.rates(unseen, unseen), budgets, self.cost, widths,
                             margin=self.margin, remaining=remaining) == 0:
            self._interval = self.probe_interval(len(budgets))
            self.rounds_off = 1  # counted as a round off, and credited as one (the first probe comes as it would)
            self._earn(len(budgets))
            self._offered_off = int(budgets.sum())

    @property
    def off(self) -> bool:
        """Whether the last round drafted nothing by choice (speculation off until a probe)."""
        return self.rounds_off > 0

    def probe_interval(self, rows: int) -> int:
        """Rounds off between two probes over `rows` rows."""
        plain, probe = self.cost.round_cost(rows, np.array([0, 1]))
        spaced = math.ceil(max(probe / plain - 1.0, 0.0) / self.probe_share)
        return max(self.probe_every, spaced) << min(self.misses, 3)

    def could_pay(self, budgets: np.ndarray, widths: np.ndarray | None = None,
                  live: np.ndarray | None = None, remaining: np.ndarray | None = None) -> bool:
        """Whether drafting would pay if every draft were accepted: if not, no acceptance a probe could see
        would turn it on, and probing only costs."""
        return best_draft_length(np.ones(len(budgets)), budgets, self.cost, widths, live, self.margin, remaining) > 0

    def draft_lengths(self, budgets: np.ndarray, hits: np.ndarray, trials: np.ndarray,
                      widths: np.ndarray | None = None, live: np.ndarray | None = None,
                      backlog: int = 0, remaining: np.ndarray | None = None) -> np.ndarray:
        """Each row's budget for this round, capped at the batch-wide K (one of `widths`, when given); `live`
        marks the rows that decode a prompt (the others are static shapes' idle rows); `backlog` is what the
        draft must catch up before it drafts (tokens per row, `Drafter.backlog`), which a probe pays; `remaining`
        (tokens each row may still generate, 0 for idle rows) is given when no prompt waits: K then minimises the
        time to the last row's end (`best_draft_length`)."""
        if not len(budgets) or budgets.max() == 0:
            return budgets
        offered = int(budgets.sum())
        if 0 < self.rounds_off and self.rounds_off + 1 < self._interval and offered <= self._offered_off:
            # off until the next probe: no draft ran, so no acceptance moved, and no row may draft more than when
            # it turned off; the costs drift too little to matter. Rows admitted since (larger budgets than those
            # of rows near their end, which a draft may not pay for) are weighed again at once.
            self.rounds_off += 1
            return self._rest(budgets)
        self._offered_off = offered
        k = best_draft_length(self.acceptance.rates(hits, trials), budgets, self.cost, widths, live, self.margin,
                              remaining)
        probed, self._probed = self._probed, False
        if k == 0 and self.rounds_off == 0 and not probed:
            # drafting on: turned off only when the rows' estimates a standard deviation up would not pay either. Off
            # costs a probe interval (16 rounds at batch 1 on the layer-skip pair), a round drafted too many one
            # round; at batch 1 a row's estimate dips below break-even by chance often enough that the default
            # drafted a third of the rounds k=3 did and ran 11% slower than it
            rows = len(budgets) if live is None else int(live.sum())
            k = best_draft_length(self.acceptance.upper(hits, trials, rows), budgets, self.cost, widths, live,
                                  self.margin, remaining)
        if k and isinstance(self.cost, MeasuredCosts) and not self.cost.samples(0) and self.cost.samples(k):
            return np.zeros_like(budgets)  # measure a plain step, to weigh the measured drafting rounds against
        if k == 0:
            self.misses += probed
            if self._shared is not None:
                self._shared.probe_misses = self.misses
            if self.rounds_off == 0:  # just turned off, or a probe left it off: when to look again
                self._interval = self.probe_interval(len(budgets))
            self.rounds_off += 1
            if self.rounds_off < self._interval:
                return self._rest(budgets)
            if not self.could_pay(budgets, widths, live, remaining):  # no acceptance could turn it on: do not probe
                self.rounds_off = 0
                return self._rest(budgets)
            share = self._earn(len(budgets))  # this round earns its share, probe or not
            cost = self.probe_cost(len(budgets), backlog)
            if cost > self.credit:  # not paid for yet: look again once enough more rounds off would pay
                self._interval = self.rounds_off + max(1, min(math.ceil((cost - self.credit) / share), 1 << 20))
                return np.zeros_like(budgets)
            self.credit -= cost
            k, self._probed = 1, True
        else:
            self.misses = 0
            if self._shared is not None:
                self._shared.probe_misses = 0
        self.rounds_off = 0
        return np.minimum(budgets, k)
