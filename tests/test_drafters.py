"""Draft sources besides a draft model: prompt lookup and early exit are exact (greedy output equals plain greedy
of each prompt alone), speculate for real, and keep working with static shapes; plus the drafter interface's
own pieces (the early-exit view shares the target's weights and leaves it whole)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_batchspec.drafters import early_exit_model
from hf_batchspec.errors import UnsupportedModelError
from tests.toolkit import ForwardCount, build, draw_stop_ids, left_pad, plain_greedy, target_model
from tests.toolkit.models import ARCHITECTURES
from tests.toolkit.strategies import lookup_requests as requests

CORE = ("llama", "qwen3_sliding", "mistral", "gpt2")
SOURCES = {
    "lookup": lambda k: dict(prompt_lookup_num_tokens=k),
    "lookup_ngram3": lambda k: dict(prompt_lookup_num_tokens=k, max_matching_ngram_size=3),
    "early_exit": lambda k: dict(assistant_early_exit=1, num_assistant_tokens=k),
}


def check(target, req, data, strategy, source, **kwargs):
    prompts, max_new = req["prompts"], req["max_new"]
    eos = draw_stop_ids(data, target, prompts, max_new, max_size=1)  # stops inside accepted blocks
    expected = [plain_greedy(target, p, max_new, eos or None) for p in prompts]
    ids, mask = left_pad(prompts, 0)
    out = target.generate(ids, attention_mask=mask, batch_spec=strategy, max_new_tokens=max_new, do_sample=False,
                          eos_token_id=list(eos) or None, pad_token_id=0, return_dict_in_generate=True,
                          **SOURCES[source](req["k"]), **kwargs)
    for row, new in enumerate(expected):
        got = out.sequences[row, ids.shape[1]:].tolist()
        assert got[: len(new)] == new, f"row {row}: diverged from plain greedy"
        assert all(t == 0 for t in got[len(new):]), f"row {row}: expected padding after the row's end"
    stats = out.spec_stats
    assert stats.new_tokens.tolist() == [len(e) for e in expected]
    assert (stats.accepted_tokens <= stats.drafted_tokens).all()
    assert (stats.drafted_tokens <= req["k"] * stats.row_rounds).all()
    if source.startswith("lookup"):  # no model drafts: no draft forward at all
        assert stats.draft_forward_calls == stats.draft_prefill_calls == 0
    return stats


@pytest.mark.parametrize("strategy", ["eqspec", "exspec"])
@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("arch", CORE)
@settings(max_examples=4)
@given(req=requests(), data=st.data())
def test_other_sources_equal_plain_greedy(arch, source, strategy, req, data):
    kwargs = dict(max_batch_size=data.draw(st.integers(1, 4))) if strategy == "exspec" else {}
    check(target_model(arch), req, data, strategy, source, **kwargs)


@pytest.mark.parametrize("source", ["lookup", "early_exit"])
@pytest.mark.parametrize("arch", sorted(set(ARCHITECTURES) - set(CORE)))
@settings(max_examples=2)
@given(req=requests(max_rows=5, max_prompt=24, max_new=12), data=st.data())
def test_other_sources_equal_plain_greedy_every_architecture(arch, source, req, data):
    check(target_model(arch), req, data, "exspec", source)


@pytest.mark.parametrize("source", ["lookup", "early_exit"])
@settings(max_examples=5)
@given(req=requests(max_rows=6, max_prompt=24, max_new=20), data=st.data())
def test_other_sources_with_static_shapes_and_auto(source, req, data):
    speculation = data.draw(st.sampled_from(["always", "auto"]))
    check(target_model("llama"), req, data, "exspec", source, cache_implementation="static", max_batch_size=4,
          speculation=speculation)


@pytest.mark.parametrize("source", ["lookup", "early_exit"])
def test_speculation_really_happens(source):
    """On prompts that repeat a span (and outputs of a tiny model, which loop) drafts are offered and accepted."""
    target = target_model("llama")
    prompts = [[5, 6, 7, 8] * 4, [9, 10, 11] * 5, [12, 13] * 6, [20, 21, 22, 23, 24] * 3]
    ids, mask = left_pad(prompts, 0)
    out = target.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False, eos_token_id=None,
                          pad_token_id=0, speculation="always", return_dict_in_generate=True, **SOURCES[source](3))
    stats = out.spec_stats
    assert stats.accepted_tokens.sum() > 0 and stats.rounds < 23, stats.summary()
    for row, prompt in enumerate(prompts):
        assert out.sequences[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, 24, None)


def test_a_batch_one_call_with_batch_spec_is_ours_and_without_is_transformers():
    target = target_model("llama")
    ids = torch.tensor([[5, 6, 7, 5, 6, 7, 5]])
    ours = target.generate(ids, prompt_lookup_num_tokens=3, batch_spec="exspec", max_new_tokens=8, do_sample=False,
                           eos_token_id=None, pad_token_id=0, return_dict_in_generate=True)
    theirs = target.generate(ids, prompt_lookup_num_tokens=3, max_new_tokens=8, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    assert hasattr(ours, "spec_stats") and torch.equal(ours.sequences, theirs)


def test_early_exit_view_shares_weights_and_leaves_the_target_whole():
    target = target_model("qwen3_sliding")  # 3 layers, sliding and full: the layer types are cut with the layers
    view = early_exit_model(target, 2)
    assert len(view.model.layers) == 2 and len(target.model.layers) == 3
    assert view.config.num_hidden_layers == 2 and target.config.num_hidden_layers == 3
    assert view.config.layer_types == target.config.layer_types[:2]
    assert view.lm_head.weight is target.lm_head.weight and view.model.layers[1] is target.model.layers[1]
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():  # the view is the target's first two layers, then its norm and head
        hidden = target(ids, output_hidden_states=True).hidden_states[2]
        expected = target.lm_head(target.model.norm(hidden))
        assert torch.allclose(view(ids).logits, expected, atol=1e-5)


def test_early_exit_refuses_a_model_without_one_layer_list():
    model = build("llama")
    model.model.extra = torch.nn.ModuleList(list(model.model.layers))  # two lists of the layers' length
    with pytest.raises(UnsupportedModelError, match="cannot find the decoder layers"):
        early_exit_model(model, 1)


@pytest.mark.parametrize("strategy, max_batch_size", [("eqspec", None), ("exspec", 4), ("exspec", 32)])
@pytest.mark.parametrize("source", ["model", "lookup"])
def test_return_sequences_prefill_each_prompt_once_and_copy_its_cache(strategy, max_batch_size, source):
    """n samples per prompt: one prefill row per distinct prompt admitted, its cache copied into the other slots.
    With top_k=1 every sample is the greedy continuation, so a wrongly copied cache row would show."""
    target = target_model("llama")
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    ids, mask = left_pad(prompts, 0)
    drafting = dict(assistant_model=build("llama", seed=0), num_assistant_tokens=3) if source == "model" else dict(
        prompt_lookup_num_tokens=3)
    pool = dict(max_batch_size=max_batch_size) if max_batch_size else {}
    with ForwardCount(target) as forwards:  # a prefill is the forward whose queries start at position 0
        out = target.generate(ids, attention_mask=mask, batch_spec=strategy, do_sample=True, top_k=1,
                              num_return_sequences=4, max_new_tokens=10, eos_token_id=None, pad_token_id=0,
                              return_dict_in_generate=True, **drafting, **pool)
    assert out.sequences.shape == (12, ids.shape[1] + 10)
    for row in range(12):
        prompt = prompts[row // 4]  # transformers' order: each prompt's samples together
        assert out.sequences[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, 10, None), f"row {row}"
    prefills = [rows for _, rows, _ in forwards.prefills()]
    # a slot pool of 4 admits one prompt's 4 copies at a time; else all 12 rows at once: one row per prompt
    assert prefills == ([1, 1, 1] if max_batch_size == 4 else [3])
