"""The device round: a whole greedy round with its commit as one function of device row state, read a round late.

`device_round` is tested as a plain function (eagerly, no compile) on a tiny pair, round by round against references
computed from scratch: each row's drafts are the draft model's own greedy continuation of its prefix (so the draft
lag the round keeps is right: a wrong one feeds the draft the wrong tokens and changes what it proposes), the kept
tokens are the target's greedy ones cut at the budget and the first stop. The decode loop around it is tested
compiled: host reads per round, the lag's idle slots, equality with plain greedy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_batchspec.decoding import _Decoder, static_length, static_stop_ids
from hf_batchspec import device_round as device_round_module
from hf_batchspec.device_round import device_round, lookup_round
from hf_batchspec.masks import packed_positions
from hf_batchspec.runner import ModelRunner
from hf_batchspec.scheduling import ActiveRows
from tests.toolkit import free_run_tokens, left_pad, plain_greedy, reference_drafts
from tests.toolkit.compiled import COMPILED
from tests.toolkit.counting import CountedReads
from tests.tiny_models import VOCAB, build, perturbed

K = 3


@pytest.fixture(scope="module")
def pair():
    target = build("llama", seed=21)
    return target, perturbed(target, 0.03, seed=22)


def greedy_from(model, prefix: list[int], n: int) -> list[int]:
    """The model's own greedy continuation of `prefix`, n tokens (the plain-greedy oracle; none for n = 0)."""
    return plain_greedy(model, prefix, n, None) if n else []


def admitted(target, draft, prompts: list[list[int]], max_new: int):
    """Both models' runners with the prompts prefilled and the first token committed, as `_Decoder._admit` leaves
    them: (runners, token buffer [N+1, T], row state)."""
    n, lengths = len(prompts), np.array([len(p) for p in prompts])
    width = int(lengths.max())
    slots = static_length(width + max_new)
    runners = [ModelRunner(model, n, slots, static=True) for model in (draft, target)]
    tokens = torch.zeros((n + 1, slots + K + 1), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        tokens[row, : len(prompt)] = torch.tensor(prompt)
    positions, limits = packed_positions(n, width, "cpu"), torch.as_tensor(lengths + max_new - 1)
    with torch.no_grad():
        for runner in runners:
            logits = runner.forward(tokens[:n, :width], positions, limits, width, prefill=True)
            runner.cache.end()
    tokens[torch.arange(n), torch.as_tensor(lengths)] = logits[torch.arange(n), torch.as_tensor(lengths - 1)].argmax(-1)
    rows = ActiveRows(n, "cpu", scratch_id=n)
    rows.place(np.arange(n), np.arange(n), lengths + 1, np.ones(n, dtype=np.int64), lengths + max_new - 1, K)
    return runners, tokens, rows


class RoundCase:
    """Rows admitted with their first token, and what each should have kept so far: the shared oracle of the round
    tests. Each round's snapshot is checked row by row against the target's greedy tokens (`check_row`) and the row
    state against what the rows kept (`end_round`); at the end every row must equal plain greedy (`check_end`)."""

    def __init__(self, data, target, draft, prompts: list[list[int]], max_new: int):
        self.target, self.prompts, self.max_new = target, prompts, max_new
        continuations = [plain_greedy(target, p, max_new, None) for p in prompts]
        self.stops = data.draw(st.lists(st.sampled_from(sorted({t for c in continuations for t in c[1:]})),
                                        max_size=1), label="stop")
        self.runners, self.tokens, self.rows = admitted(target, draft, prompts, max_new)
        self.stop_ids = static_stop_ids(torch.tensor(self.stops) if self.stops else None, "cpu")
        first = [c[0] for c in continuations]
        self.live = np.array([f not in self.stops for f in first]) & (max_new > 1)
        self.rows.live[:] = torch.as_tensor(self.live)
        self.generated = np.ones(len(prompts), dtype=np.int64)
        self.kept = [list(prompt) + [f] for prompt, f in zip(prompts, first)]

    def budget(self, k: int) -> np.ndarray:  # [B] drafts each row is asked for: k, cut at what it still needs
        return np.where(self.live, np.minimum(k, self.max_new - self.generated - 1), 0)

    def check_row(self, row: int, drafts: list[int], accepted: int, count: int, finished: bool) -> None:
        """A live row drafted `drafts`: it accepted their agreement with the target's greedy tokens and kept those
        and the target's next token, cut at its first stop; it finished at a stop or its last token."""
        truth = greedy_from(self.target, self.kept[row], len(drafts) + 1)
        agree = next((i for i, (d, t) in enumerate(zip(drafts, truth)) if d != t), len(drafts))
        assert accepted == agree, f"row {row}: accepted {accepted} of drafts {drafts}, the target's {truth}"
        new = truth[: agree + 1]
        stop = next((i for i, t in enumerate(new) if t in self.stops), None)
        new = new if stop is None else new[: stop + 1]
        assert count == len(new)
        self.kept[row] += new
        self.generated[row] += len(new)
        assert finished == (stop is not None or self.generated[row] >= self.max_new)

    def end_round(self, count: np.ndarray, finished: np.ndarray) -> None:  # [B], [B]
        assert (count[~self.live] == 0).all(), "an idle row kept tokens"
        self.live &= ~finished.astype(bool)
        assert (self.rows.live.numpy() == self.live).all() and (self.rows.generated.numpy() == self.generated).all()

    def check_end(self) -> None:
        for row, prompt in enumerate(self.prompts):
            expected = plain_greedy(self.target, prompt, self.max_new, tuple(self.stops) or None)
            length = int(self.rows.lengths[row])
            assert self.tokens[row, len(prompt):length].tolist() == expected[: length - len(prompt)]
            assert self.kept[row][len(prompt):] == expected


@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_device_round_against_references_from_scratch(pair, data):
    """Rounds of k = 0..3 (drawn per round), budgets that cut a round (max_new), stops inside a block: after every
    round each live row kept the target's greedy tokens through its budget and first stop, its accepted count is
    the agreement of the draft's own greedy continuation with the target's (a wrong draft lag feeds the draft the
    wrong tokens), its draft lag is 1 or 2, and a row that finished is no longer live and keeps nothing more. At
    the end every row equals plain greedy."""
    target, draft = pair
    n = data.draw(st.integers(1, 4), label="rows")
    prompts = data.draw(st.lists(st.lists(st.integers(3, VOCAB - 1), min_size=1, max_size=12), min_size=n,
                                 max_size=n), label="prompts")
    case = RoundCase(data, target, draft, prompts, data.draw(st.integers(2, 12), label="max_new"))
    (draft_runner, target_runner), rows = case.runners, case.rows
    for _ in range(case.max_new + 2):
        if not case.live.any():
            break
        k = data.draw(st.integers(0, K), label="k")
        budget = case.budget(k)
        with torch.no_grad():
            snap = device_round(draft_runner, rows.lag, target_runner, k, case.tokens, rows.ids, rows.lengths,
                                rows.generated, rows.limits, rows.live, rows.caps, torch.tensor(k), case.stop_ids,
                                torch.tensor(case.max_new))
        for runner in case.runners:
            runner.cache.end()
        accepted, count, finished, offered, was_live, asked = snap.numpy()
        assert (was_live.astype(bool) == case.live).all() and (offered == budget).all() and (asked == budget).all()
        for row in np.flatnonzero(case.live):
            drafts = greedy_from(draft, case.kept[row], budget[row])
            case.check_row(row, drafts, accepted[row], count[row], bool(finished[row]))
        case.end_round(count, finished)
        assert set(rows.lag[torch.as_tensor(case.live)].tolist()) <= {1, 2}
    case.check_end()


@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_lookup_round_against_references_from_scratch(pair, data):
    """Prompt lookup's device round (`lookup_round`), round by round, eagerly: each live row was asked for its
    budget (k, cut at what it still needs), offered the drafts a naive prompt lookup of its committed tokens finds
    (`tests.toolkit.reference_drafts`; none without a match), accepted their agreement with the target's greedy
    tokens and kept those through its budget and first stop; finished rows stop being live. Prompts repeat
    n-grams so that rows match. At the end every row equals plain greedy."""
    target, _ = pair
    n = data.draw(st.integers(1, 4), label="rows")
    motifs = data.draw(st.lists(st.lists(st.integers(3, VOCAB - 1), min_size=1, max_size=4), min_size=n,
                                max_size=n), label="motifs")
    prompts = [motif * data.draw(st.integers(1, 3), label="repeats") for motif in motifs]
    case = RoundCase(data, target, target, prompts, data.draw(st.integers(2, 12), label="max_new"))
    max_ngram = data.draw(st.integers(1, 3), label="max_ngram")
    target_runner, rows = case.runners[1], case.rows
    for _ in range(case.max_new + 2):
        if not case.live.any():
            break
        k = data.draw(st.integers(0, K), label="k")
        asked_for = case.budget(k)
        with torch.no_grad():
            snap = lookup_round(max_ngram, target_runner, k, case.tokens, rows.ids, rows.lengths, rows.generated,
                                rows.limits, rows.live, rows.caps, torch.tensor(k), case.stop_ids,
                                torch.tensor(case.max_new))
        target_runner.cache.end()
        accepted, count, finished, offered, was_live, asked = snap.numpy()
        assert (was_live.astype(bool) == case.live).all() and (asked == asked_for).all()
        assert (offered[~case.live] == 0).all(), "an idle row drafted"
        for row in np.flatnonzero(case.live):
            drafts = reference_drafts(case.kept[row], k, max_ngram, int(asked_for[row])) if k else []
            assert offered[row] == len(drafts), f"row {row}: not the drafts prompt lookup finds"
            case.check_row(row, drafts, accepted[row], count[row], bool(finished[row]))
        case.end_round(count, finished)
    case.check_end()


def compiled_source(source: str, draft, prompts: list[list[int]]) -> tuple[list[list[int]], dict]:
    """The compiled call's prompts and settings for `source`: the draft model (k=3), or prompt lookup (k=3) with
    each prompt repeated thrice, so that its n-gram match finds something."""
    if source == "draft":
        return prompts, dict(COMPILED, assistant_model=draft)
    settings = {name: value for name, value in COMPILED.items() if name != "num_assistant_tokens"}
    return [prompt * 3 for prompt in prompts], dict(settings, prompt_lookup_num_tokens=3)


@pytest.mark.parametrize("source", ["draft", "lookup"])
def test_one_lagged_read_per_round(compiled_pair, warmed, monkeypatch, source):
    """In the steady state of a compiled greedy call (every row decoding, nothing waiting) a round reads the
    device once: the snapshot of the round before it, after it has launched its own. Reads are counted inside
    the round (launch, then the lagged read and its bookkeeping) and over the whole call: the only others are
    one per admission (the first token's stop check). The same for prompt lookup's device round."""
    target, draft = compiled_pair
    prompts = [[5, 6, 7], [9] * 6, [3, 4], [8]]  # 4 rows at max_batch_size=4: no refill
    prompts, settings = compiled_source(source, draft, prompts)
    ids, mask = left_pad(prompts, 0)
    # (compiled first: `warmed` covers the draft model's programs, and compiling reads tensors of its own)
    target.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0,
                    **settings)
    reads = CountedReads(monkeypatch)
    per_round = []
    lagged = _Decoder._lagged_round

    def counted_round(decoder):
        before = reads.count
        reads.active = True
        try:
            return lagged(decoder)
        finally:
            reads.active = False
            per_round.append(reads.count - before)

    monkeypatch.setattr(_Decoder, "_lagged_round", counted_round)
    drained = []  # rounds read outside `_lagged_round`: before rows move, and at the end of the call
    drain = _Decoder._drain

    def counted_drain(decoder):
        drained.append(decoder._inflight is not None)
        return drain(decoder)

    monkeypatch.setattr(_Decoder, "_drain", counted_drain)
    ids, mask = left_pad(prompts, 0)
    out = target.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=None,
                          pad_token_id=0, return_dict_in_generate=True, **settings)
    stats = out.spec_stats
    assert len(per_round) > 4 and per_round[0] == 0, "the first launch has no round before it to read"
    assert max(per_round) == 1 and per_round[1] == 1, per_round
    # every launched round is read once, with one host read: in the next launch's call, or by a drain
    assert sum(per_round) + sum(drained) == stats.rounds + stats.lagged_idle_rounds
    assert stats.rounds == stats.fused_rounds and stats.lagged_idle_rounds == 0  # no EOS: the end is foreseen
    for row, prompt in enumerate(prompts):
        assert out.sequences[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, 20, None)


def test_whole_call_reads(compiled_pair, warmed, monkeypatch):
    """Over a whole call, reads are at most one per launched round plus one per prefill."""
    target, draft = compiled_pair
    prompts = [[5, 6, 7], [9] * 6, [3, 4], [8]]
    ids, mask = left_pad(prompts, 0)
    reads = CountedReads(monkeypatch)
    run = _Decoder.run

    def counted_run(decoder):
        reads.active = True
        try:
            return run(decoder)
        finally:
            reads.active = False

    monkeypatch.setattr(_Decoder, "run", counted_run)
    out = target.generate(ids, attention_mask=mask, assistant_model=draft, max_new_tokens=20, do_sample=False,
                          eos_token_id=None, pad_token_id=0, return_dict_in_generate=True, **COMPILED)
    stats = out.spec_stats
    assert stats.rounds > 4
    assert reads.count <= stats.rounds + stats.lagged_idle_rounds + stats.target_prefill_calls


@pytest.mark.parametrize("lagged,source", [(True, "draft"), (False, "draft"), (True, "lookup")])
def test_refill_one_round_late(compiled_pair, warmed, monkeypatch, lagged, source):
    """EXSPEC with prompts waiting and stops that end rows inside blocks. Read a round late (CUDA; the suite does so on
    the CPU too), a finished row's slot idles for one round (the round launched before its finish was read) and is
    then refilled, staged prompts by a copy: the idle slot-rounds are at most one per prompt that waited. Read at
    once (a CPU's default), none idles. Every row equals plain greedy. Prompt lookup's round is a device round too
    (`lookup_round`): prompts that repeat a motif give its n-gram match something to find."""
    monkeypatch.setattr(device_round_module, "LAGGED_DEVICES", ("cuda", "cpu") if lagged else ("cuda",))
    target, draft = compiled_pair
    generator = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, VOCAB, (n,), generator=generator).tolist() for n in (3, 7, 2, 5, 9, 1, 4, 6, 8, 2)]
    prompts, settings = compiled_source(source, draft, prompts)
    free = free_run_tokens(target, prompts, 16, skip_first=True)
    eos = free[:: max(1, len(free) // 3)][:3]
    ids, mask = left_pad(prompts, 0)
    out = target.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False, eos_token_id=eos,
                          pad_token_id=0, return_dict_in_generate=True, **settings)
    stats = out.spec_stats
    assert stats.rounds == stats.fused_rounds > 0 and stats.staged_prompts > 0
    assert source != "lookup" or stats.accepted_tokens.sum() > 0
    if lagged:
        assert 0 < stats.idle_slot_rounds <= len(prompts) - COMPILED["max_batch_size"]
    else:
        assert stats.idle_slot_rounds == 0 and stats.lagged_idle_rounds == 0
    for row, prompt in enumerate(prompts):
        expected = plain_greedy(target, prompt, 16, tuple(eos))
        assert out.sequences[row, ids.shape[1]:ids.shape[1] + len(expected)].tolist() == expected, f"row {row}"


def test_output_lengths_follow_the_row_state_through_slots():
    """`ActiveRows.generated_by_id`, the output's row lengths (not a statistics counter): a prompt's count follows
    its slot while it decodes, whether the host committed a round (`advance`) or the device did (`absorb`), and
    stays when its slot idles, takes another prompt or leaves the batch; a prompt that ended on its first token
    without ever taking a slot counts that token."""
    rows = ActiveRows(2, "cpu", scratch_id=5)
    ones = np.ones(2, dtype=np.int64)
    rows.place(np.array([0, 1]), np.array([3, 1]), np.array([4, 6]), ones, np.array([20, 20]), 2)
    rows.advance(np.array([2, 1]), torch.tensor([2, 1]))
    rows.absorb(np.array([1, 0]), np.array([True, False]))  # prompt 3 ends
    rows.idle(np.array([0]))
    rows.place(np.array([0]), np.array([4]), np.array([3]), ones[:1], np.array([20]), 2)
    rows.advance(np.array([3, 2]), torch.tensor([3, 2]))
    rows.keep(np.array([0]))  # prompt 1's slot leaves
    rows.advance(np.array([1]), torch.tensor([1]))
    assert rows.generated_by_id[:5].tolist() == [1, 4, 1, 4, 5]
