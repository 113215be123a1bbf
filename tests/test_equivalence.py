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


class ForwardCount:
    """The forwards the models really run (forward pre-hooks), by model and by the cache object each call gets:
    the target and the draft each decode with a cache of their own, which tells their calls apart even when the
    draft is the target itself. Per (model, cache): [calls, rows over those calls]."""

    def __init__(self, target, draft):
        self.calls = {}
        self.handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True) for m in {target, draft}]

    def _hook(self, module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        tokens = kwargs.get("input_ids", args[0] if args else None)
        count = self.calls.setdefault((module, id(cache)), [0, 0])
        count[0] += 1
        count[1] += tokens.shape[0]

    def close(self):
        for handle in self.handles:
            handle.remove()


def check_against_plain_greedy(target, draft, req, data, strategy="eqspec", max_k=None, **generate_kwargs):
    prompts, k, max_new = req["prompts"], req["k"], req["max_new"]
    # Stop ids drawn from what the target really generates, so that rows stop inside accepted blocks.
    free_run = sorted({t for p in prompts for t in plain_greedy(target, p, max_new, None)})
    eos = tuple(data.draw(st.lists(st.sampled_from(free_run), min_size=0, max_size=2, unique=True), label="eos"))
    pad = data.draw(st.sampled_from([0, eos[0] if eos else 0, free_run[0]]), label="pad")
    expected = [plain_greedy(target, p, max_new, eos or None) for p in prompts]

    ids, mask = left_pad(prompts, pad)
    forwards = ForwardCount(target, draft)
    try:
        out = target.generate(
            ids, attention_mask=mask, assistant_model=draft, batch_spec=strategy, num_assistant_tokens=k,
            max_new_tokens=max_new, do_sample=False, eos_token_id=list(eos) or None, pad_token_id=pad,
            return_dict_in_generate=True, **generate_kwargs,
        )
    finally:
        forwards.close()
    seqs, stats = out.sequences, out.spec_stats
    width = ids.shape[1]
    assert seqs.shape == (len(prompts), width + max(len(e) for e in expected))
    assert torch.equal(seqs[:, :width], ids), "prompts must come back as given"
    for row, new in enumerate(expected):
        got = seqs[row, width:].tolist()
        assert got[: len(new)] == new, f"row {row}: diverged from plain greedy"
        assert all(t == pad for t in got[len(new):]), f"row {row}: expected pad_token_id after the row's end"

    # The statistics, against what really happened: the tokens plain greedy gives, the forwards the models ran.
    lengths = [len(e) for e in expected]
    assert stats.new_tokens.tolist() == lengths
    assert (stats.accepted_tokens <= stats.drafted_tokens).all()
    assert (stats.drafted_tokens <= (max_k or k) * stats.row_rounds).all()
    for row, new in enumerate(expected):
        # the prefill gives a row its first token; each verify round it takes part in, 1 to max_k + 1 more
        assert -(-(len(new) - 1) // ((max_k or k) + 1)) <= stats.row_rounds[row] <= len(new) - 1, f"row {row}"
        stopped_in_block = stats.target_tokens[row] == stats.row_rounds[row]
        assert stats.target_tokens[row] in (stats.row_rounds[row], stats.row_rounds[row] + 1)
        if stopped_in_block:  # only a stop id inside an accepted block ends a row on a draft token
            assert eos and new[-1] in eos
    if strategy.startswith("eqspec"):  # every row is in the batch from the first round until it finishes
        assert stats.rounds == stats.row_rounds.max() and stats.target_prefill_calls == 1
    # Each model decodes with a cache of its own: one (model, cache) group per model, two with the draft's
    # prefill (skipped when max_new_tokens is 1). The target's: a prefill per admission, a verify per round; its
    # rows: every prompt once, then the rows active in each round.
    calls = forwards.calls
    assert sum(n for n, _ in calls.values()) == stats.target_forward_calls + stats.draft_forward_calls
    # With static shapes a verify covers all rows of its row bucket (idle ones included), else the active rows.
    static = generate_kwargs.get("cache_implementation") == "static" or "compile_config" in generate_kwargs
    verified_rows = int(sum(stats.forward_rows))
    assert verified_rows >= stats.row_rounds.sum() and len(stats.forward_rows) == stats.rounds
    if static:  # each a power of two (or the caller's max_batch_size), never growing
        assert all(b & (b - 1) == 0 or b == stats.cache_rows for b in stats.forward_rows)
        assert stats.forward_rows == sorted(stats.forward_rows, reverse=True)
    else:
        assert verified_rows == stats.row_rounds.sum()
    target_side = [stats.rounds + stats.target_prefill_calls, len(prompts) + verified_rows]
    target_keys = [key for key, count in calls.items() if key[0] is target and count == target_side]
    assert target_keys, f"no target forwards match the stats {target_side}: {list(calls.values())}"
    rest = {key: count for key, count in calls.items() if key != target_keys[0]}
    assert all(module is draft for module, _ in rest), "forwards of the target with a third cache"
    assert [n for n, _ in rest.values()] == ([stats.draft_forward_calls] if stats.draft_forward_calls else [])
    return stats


# Drawn at length on a core set that covers the distinct code paths: rotary + full attention (llama), a mix
# of full and sliding layers (qwen3_sliding), a window on every layer (mistral), absolute positions (gpt2).
CORE_ARCHITECTURES = ("llama", "qwen3_sliding", "mistral", "gpt2")


@pytest.mark.parametrize("arch", CORE_ARCHITECTURES)
@settings(max_examples=25)
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
