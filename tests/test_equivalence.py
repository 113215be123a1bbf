"""The central property: batch speculative greedy output equals plain greedy of each prompt alone.

Drawn: batch size, prompt lengths, k, max_new_tokens, stop ids (taken from tokens the target really
generates, so rows stop inside accepted blocks), pad ids (sometimes equal to EOS or to a generated token),
and the draft: the target itself (agrees fully), a perturbed copy (partly), an unrelated model (hardly).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hf_batchspec
from tests.toolkit import build, draft_model, left_pad, perturbed, plain_greedy, target_model
from tests.toolkit.checks import check_against_plain_greedy
from tests.toolkit.models import ARCHITECTURES
from tests.toolkit.strategies import requests


# Drawn at length on a core set that covers the distinct code paths: rotary + full attention (llama), a mix
# of full and sliding layers (qwen3_sliding), a window on every layer (mistral), absolute positions (gpt2).
CORE_ARCHITECTURES = ("llama", "qwen3_sliding", "mistral", "gpt2")


@pytest.mark.parametrize("arch", CORE_ARCHITECTURES)
@settings(max_examples=15)
@given(req=requests(), data=st.data())
def test_eqspec_equals_plain_greedy(arch, req, data):
    target = target_model(arch)
    check_against_plain_greedy(target, draft_model(arch, req["draft"]), req, data)


# Every other architecture README.md names as checked token-exact: fewer, smaller draws each, to keep the
# suite's time in check (sequences still run far past the sliding windows of tests/tiny_models.py). The draft
# is a parameter rather than drawn, so that with so few draws every architecture still meets both a partly
# agreeing draft of its own kind (rejections in both caches) and an unrelated one.
@pytest.mark.parametrize("draft", ["perturbed", "unrelated"])
@pytest.mark.parametrize("arch", sorted(set(ARCHITECTURES) - set(CORE_ARCHITECTURES)))
@settings(max_examples=4)
@given(req=requests(max_rows=6, max_prompt=24, max_new=16), data=st.data())
def test_eqspec_equals_plain_greedy_every_architecture(arch, draft, req, data):
    check_against_plain_greedy(target_model(arch), draft_model(arch, draft), req, data)


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
                          pad_token_id=0, speculation="always", return_dict_in_generate=True)
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
                                  pad_token_id=0, eos_token_id=None, speculation="always",
                                  return_dict_in_generate=True, **kw)
    kw = dict(num_assistant_tokens=2)
    out = run()
    assert out.spec_stats.rounds < 40 / 3  # k grew beyond 2: fewer rounds than a constant k=2 needs
    assert draft.generation_config.num_assistant_tokens > 2  # written back, as transformers does
