"""The central property: batch speculative greedy output equals plain greedy of each prompt alone.

Drawn: batch size, prompt lengths, k, max_new_tokens, stop ids (taken from tokens the target really
generates, so rows stop inside accepted blocks), pad ids (sometimes equal to EOS or to a generated token),
and the draft: the target itself (agrees fully), a perturbed copy (partly), an unrelated model (hardly).
"""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hf_batchspec
from tests.reference import left_pad, plain_greedy
from tests.tiny_models import ARCHITECTURES, VOCAB, build, perturbed

DRAFTS = ("self", "perturbed", "unrelated")


@lru_cache(maxsize=None)
def target_model(arch: str):
    return hf_batchspec.enable(build(arch, seed=0))


@lru_cache(maxsize=None)
def draft_model(arch: str, kind: str):
    target = target_model(arch)
    if kind == "self":
        return target
    if kind == "perturbed":
        return perturbed(target, 0.05)
    return build("gpt2" if arch == "llama" else "llama", seed=123)  # same vocabulary, unrelated weights


@st.composite
def requests(draw, max_rows=12, max_prompt=40, max_new=40):
    rows = draw(st.integers(1, max_rows))
    lengths = draw(st.lists(st.integers(1, max_prompt), min_size=rows, max_size=rows))
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, VOCAB, (n,), generator=generator).tolist() for n in lengths]
    return dict(
        prompts=prompts,
        k=draw(st.integers(1, 8)),
        max_new=draw(st.integers(1, max_new)),
        draft=draw(st.sampled_from(DRAFTS)),
    )


def check_against_plain_greedy(target, draft, req, data, strategy="eqspec", max_k=None, **generate_kwargs):
    prompts, k, max_new = req["prompts"], req["k"], req["max_new"]
    # Stop ids drawn from what the target really generates, so that rows stop inside accepted blocks.
    free_run = sorted({t for p in prompts for t in plain_greedy(target, p, max_new, None)})
    eos = tuple(data.draw(st.lists(st.sampled_from(free_run), min_size=0, max_size=2, unique=True), label="eos"))
    pad = data.draw(st.sampled_from([0, eos[0] if eos else 0, free_run[0]]), label="pad")
    expected = [plain_greedy(target, p, max_new, eos or None) for p in prompts]

    ids, mask = left_pad(prompts, pad)
    out = target.generate(
        ids, attention_mask=mask, assistant_model=draft, batch_spec=strategy, num_assistant_tokens=k,
        max_new_tokens=max_new, do_sample=False, eos_token_id=list(eos) or None, pad_token_id=pad,
        return_dict_in_generate=True, **generate_kwargs,
    )
    seqs, stats = out.sequences, out.spec_stats
    width = ids.shape[1]
    assert seqs.shape == (len(prompts), width + max(len(e) for e in expected))
    assert torch.equal(seqs[:, :width], ids), "prompts must come back as given"
    for row, new in enumerate(expected):
        got = seqs[row, width:].tolist()
        assert got[: len(new)] == new, f"row {row}: diverged from plain greedy"
        assert all(t == pad for t in got[len(new):]), f"row {row}: expected pad_token_id after the row's end"

    # The statistics add up, row by row.
    lengths = [len(e) for e in expected]
    assert stats.new_tokens.tolist() == lengths
    assert (stats.new_tokens == stats.accepted_tokens + stats.target_tokens).all()
    assert (stats.accepted_tokens <= stats.drafted_tokens).all()
    assert (stats.drafted_tokens <= (max_k or k) * stats.row_rounds).all()
    for row, new in enumerate(expected):
        stopped_in_block = stats.target_tokens[row] == stats.row_rounds[row]
        assert stats.target_tokens[row] in (stats.row_rounds[row], stats.row_rounds[row] + 1)
        if stopped_in_block:  # only a stop id inside an accepted block ends a row on a draft token
            assert eos and new[-1] in eos
    assert stats.rounds == len(stats.active_rows) and sum(stats.active_rows) == stats.row_rounds.sum()
    if strategy.startswith("eqspec"):  # every row is in the batch from the first round until it finishes
        assert stats.rounds == stats.row_rounds.max() and stats.target_prefill_calls == 1
    assert stats.target_forward_calls == stats.rounds + stats.target_prefill_calls
    return stats


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@settings(max_examples=25)
@given(req=requests(), data=st.data())
def test_eqspec_equals_plain_greedy(arch, req, data):
    target = target_model(arch)
    check_against_plain_greedy(target, draft_model(arch, req["draft"]), req, data)


@pytest.mark.parametrize("arch", ["llama", "qwen3_sliding", "gpt2"])
@settings(max_examples=10)
@given(req=requests(max_rows=8, max_prompt=24, max_new=30), data=st.data())
def test_paper_layout_realigned_every_round_equals_plain_greedy(arch, req, data):
    """The paper's left-padded layout (kept to measure its cost) is exact too: every round moves every row
    of both caches so that rows end together, and the masks exclude each row's left padding."""
    stats = check_against_plain_greedy(target_model(arch), draft_model(arch, req["draft"]), req, data,
                                       strategy="eqspec-realign")
    assert stats.realignments == stats.rounds


@settings(max_examples=6)
@given(req=requests(max_rows=6, max_prompt=20, max_new=24), data=st.data())
def test_eager_attention_equals_plain_greedy(req, data):
    # Under eager attention a boolean 4D mask would be silently wrong; ours is additive.
    target = hf_batchspec.enable(build("qwen3_sliding", seed=0, attn_implementation="eager"))
    check_against_plain_greedy(target, perturbed(target, 0.05), req, data)


def test_self_draft_accepts_every_draft():
    """A draft identical to the target agrees everywhere: all drafts accepted, k+1 tokens per round."""
    target = target_model("llama")
    prompts = [[5, 6, 7], [9] * 11, [3, 4]]
    ids, mask = left_pad(prompts, 0)
    out = target.generate(ids, attention_mask=mask, assistant_model=target, batch_spec="eqspec",
                          num_assistant_tokens=4, max_new_tokens=21, do_sample=False, eos_token_id=None,
                          pad_token_id=0, return_dict_in_generate=True)
    stats = out.spec_stats
    assert stats.accepted_tokens.tolist() == stats.drafted_tokens.tolist()
    assert stats.rounds == 4  # 1 token from the prefill, then 4 rounds of 5
    for row, prompt in enumerate(prompts):
        assert out.sequences[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, 21, None)


@pytest.mark.parametrize("arch", ["llama", "mistral"])
@settings(max_examples=10)
@given(req=requests(), data=st.data())
def test_adaptive_draft_lengths_equal_plain_greedy(arch, req, data):
    """transformers' heuristic schedule and confidence threshold, per row: only speed may change."""
    schedule = data.draw(st.sampled_from(["heuristic", "heuristic_transient", "constant"]), label="schedule")
    threshold = data.draw(st.sampled_from([None, 0.2, 0.6]), label="threshold")
    target = target_model(arch)
    draft = perturbed(target, 0.05)  # its own config, so the heuristic's write-back touches no shared draft
    stats = check_against_plain_greedy(target, draft, req, data, strategy="exspec", max_k=max(20, req["k"]),
                                       num_assistant_tokens_schedule=schedule,
                                       assistant_confidence_threshold=threshold)
    if schedule == "constant" and threshold is None:
        assert (stats.drafted_tokens <= req["k"] * stats.row_rounds).all()


def test_heuristic_grows_k_for_a_perfect_draft_and_carries_over():
    target = target_model("llama")
    draft = perturbed(target, 0.0)  # identical weights, a separate object with its own generation_config
    ids, mask = left_pad([[5, 6, 7], [8, 9]], 0)
    run = lambda: target.generate(ids, attention_mask=mask, assistant_model=draft, batch_spec="eqspec",  # noqa
                                  num_assistant_tokens_schedule="heuristic", max_new_tokens=40, do_sample=False,
                                  pad_token_id=0, eos_token_id=None, return_dict_in_generate=True, **kw)
    kw = dict(num_assistant_tokens=2)
    out = run()
    assert out.spec_stats.rounds < 40 / 3  # k grew beyond 2: fewer rounds than a constant k=2 needs
    assert draft.generation_config.num_assistant_tokens > 2  # written back, as transformers does
