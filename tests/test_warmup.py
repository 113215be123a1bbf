"""`hf_batchspec.warmup` and graphs shared across calls: after one warm-up, later compiled calls of any batch size up
to `max_batch_size` and any prompt + new tokens up to `max_length` compile nothing, and every row equals plain greedy
decoding of its prompt alone.

Real inductor compiles (tens of seconds each on CPU): one warm-up for the module, one graph (a constant k with
`speculation="always"`); batch 8 then batch 4 on the graphs of a 4-row call is tests/test_compiled.py's. Cache
length 128 (max_length 100): no other test module compiles that one, so the warm-up's own graphs are counted whatever
ran before it in the session.
"""

from __future__ import annotations

import pytest
import torch
from transformers import CompileConfig

import hf_batchspec
from hf_batchspec import BatchSpecError
from hf_batchspec.warmup import _draft_widths
from tests.toolkit import left_pad, plain_greedy, unique_graphs
from tests.tiny_models import VOCAB, build, perturbed

MAX_BATCH, MAX_LENGTH = 6, 100
CALL = dict(compile_config=CompileConfig(), num_assistant_tokens=3, speculation="always")


@pytest.fixture(scope="module")
def pair():
    target = hf_batchspec.enable(build("llama", seed=21))
    return target, perturbed(target, 0.05, seed=22)


@pytest.fixture(scope="module")
def warmed(pair):
    target, draft = pair
    before = unique_graphs()
    report = hf_batchspec.warmup(target, draft, max_batch_size=MAX_BATCH, max_length=MAX_LENGTH, **CALL)
    return report, unique_graphs() - before


def prompts_of(lengths: list[int], seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=generator).tolist() for n in lengths]


def generate(target, draft, prompts, max_new, eos=None, **extra):
    ids, mask = left_pad(prompts, 0)
    out = target.generate(ids, attention_mask=mask, assistant_model=draft, max_new_tokens=max_new, do_sample=False,
                          eos_token_id=list(eos) if eos else None, pad_token_id=0, return_dict_in_generate=True,
                          **{**dict(batch_spec="exspec", max_batch_size=MAX_BATCH, **CALL), **extra})
    return ids.shape[1], out


def assert_plain_greedy(target, prompts, width, out, max_new, eos=None):
    for row, prompt in enumerate(prompts):
        expected = plain_greedy(target, prompt, max_new, tuple(eos) if eos else None)  # through its first stop
        assert out.sequences[row, width:width + len(expected)].tolist() == expected, f"row {row}"


def test_warmup_reports_what_it_compiled(warmed):
    report, graphs = warmed
    assert report.graphs == graphs >= 1, "the warm-up compiled nothing: the compiled path did not run"
    assert report.cache_length == 128 and report.draft_lengths == (3,) and report.calls == 1
    assert report.rows == MAX_BATCH and report.seconds > 0


# (prompt lengths, new tokens, stop ids from the first rows' greedy tokens): batch 1 (exspec), 3, 5, the pool's 6,
# 9 prompts queued behind 6 slots; prompt + new tokens from 4 up to max_length (shorter ones take the warmed 128
# slots rather than a 64-slot cache of their own)
CASES = [([5], 12, False), ([20, 3, 41], 30, True), ([1, 7, 2, 60, 9], 40, False), ([4, 4, 8, 2, 30, 16], 8, True),
         ([2, 11, 5, 3, 19, 7, 1, 6, 12], 20, False), ([2, 3], 2, False)]


@pytest.mark.parametrize("lengths,max_new,stops", CASES, ids=[f"batch{len(c[0])}" for c in CASES])
def test_calls_after_warmup_compile_nothing(pair, warmed, lengths, max_new, stops):
    """Every batch size up to max_batch_size and every prompt + budget up to max_length runs the warmed graphs: the
    row count is dynamic (the caches' rows too), a single prompt still runs 2 rows, the cache length is the warmed
    one. Every row equals plain greedy, with stop ids that end rows inside accepted blocks where given."""
    target, draft = pair
    prompts = prompts_of(lengths, seed=len(lengths))
    eos = sorted({plain_greedy(target, p, max_new, None)[max_new // 2] for p in prompts[:2]}) if stops else None
    before = unique_graphs()
    width, out = generate(target, draft, prompts, max_new, eos)
    assert unique_graphs() == before, "a call inside the warmed bounds compiled"
    assert out.spec_stats.cache_slots_per_row == 128, "the warmed cache length"
    assert out.spec_stats.cache_rows >= 2 and out.spec_stats.fused_rounds == out.spec_stats.rounds
    assert_plain_greedy(target, prompts, width, out, max_new, eos)


def test_draft_widths_follow_the_settings(pair):
    """The widths warm-up compiles are those `_Decoder` buckets a round's k into: k alone for a constant k that
    always drafts; with a varying length (auto, the default; the heuristic schedule up to 20) the
    powers of two below the cap, the cap and 0 (a round of no draft)."""
    target, draft = pair
    assert _draft_widths(target, draft, 3, dict(speculation="always")) == [3]
    assert _draft_widths(target, draft, 3, {}) == [0, 1, 2, 3]
    assert _draft_widths(target, draft, 5, dict(speculation="auto")) == [0, 1, 2, 4, 5]
    assert _draft_widths(target, draft, 3, dict(speculation="always", num_assistant_tokens_schedule="heuristic")) == [
        0, 1, 2, 4, 8, 16, 20]
    assert _draft_widths(target, None, None, dict(prompt_lookup_num_tokens=4, speculation="always")) == [4]


def test_warmup_arguments_are_checked_before_any_work(pair):
    target, draft = pair
    bounds = dict(max_batch_size=4, max_length=64)
    before = unique_graphs()
    with pytest.raises(BatchSpecError, match="hf_batchspec.enable"):
        hf_batchspec.warmup(build("llama"), draft, **bounds)
    for name, value in (("max_batch_size", 0), ("max_batch_size", True), ("max_length", 2), ("max_length", 64.0)):
        with pytest.raises(BatchSpecError, match=name):
            hf_batchspec.warmup(target, draft, **{**bounds, name: value})
    with pytest.raises(BatchSpecError, match="num_assistant_tokens"):
        hf_batchspec.warmup(target, draft, num_assistant_tokens=0, **bounds)
    with pytest.raises(BatchSpecError, match="CompileConfig"):
        hf_batchspec.warmup(target, draft, compile_config={"mode": "default"}, **bounds)
    with pytest.raises(BatchSpecError, match="needs a draft source"):
        hf_batchspec.warmup(target, None, **bounds)
    with pytest.raises(BatchSpecError, match="two draft sources"):
        hf_batchspec.warmup(target, draft, prompt_lookup_num_tokens=3, **bounds)
    with pytest.raises(BatchSpecError, match="drop input_ids, max_new_tokens"):
        hf_batchspec.warmup(target, draft, input_ids=torch.ones(1, 3, dtype=torch.long), max_new_tokens=4, **bounds)
    with pytest.raises(BatchSpecError, match="disable_compile"):
        hf_batchspec.warmup(target, draft, disable_compile=True, **bounds)
    with pytest.raises(BatchSpecError, match="eqspec-realign"):
        hf_batchspec.warmup(target, draft, batch_spec="eqspec-realign", **bounds)
    assert unique_graphs() == before, "refused before any work"
