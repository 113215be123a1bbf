"""Static shapes and the compiled hot path: same tokens as plain greedy, no graph break, no recompilation.

`cache_implementation="static"` (on CPU without a compile config) runs the static-shape loop eagerly: idle rows
instead of shrinking the batch, padded verify widths, attention over the whole cache. Those are cheap to test
everywhere, so the property runs on several architectures. `compile_config` runs the same loop through
`torch.compile` (a real inductor compile, slow on CPU): one warm-up, then drawn calls that must compile nothing
new.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import CompileConfig

import hf_batchspec
from hf_batchspec import BatchSpecError
from hf_batchspec.decoding import _Decoder, draft_buckets, pad_drafts, static_length, static_rows
from hf_batchspec.masks import build_masks
from hf_batchspec.runner import ModelRunner
from tests.toolkit.compiled import COMPILED, generate_compiled
from tests.toolkit import draw_stop_ids, free_run_tokens, left_pad, plain_greedy, strategies, unique_graphs
from tests.toolkit import draft_model, target_model
from tests.toolkit.checks import check_against_plain_greedy
from tests.toolkit.strategies import requests
from tests.tiny_models import VOCAB, build, perturbed


@pytest.mark.parametrize("arch", ["llama", "qwen3_sliding", "gpt2"])
@settings(max_examples=8)
@given(req=requests(max_rows=10, max_prompt=30, max_new=30), data=st.data())
def test_static_shapes_equal_plain_greedy(arch, req, data):
    strategy = data.draw(st.sampled_from(["exspec", "eqspec"]), label="strategy")
    speculation = data.draw(st.sampled_from(["always", "auto"]), label="speculation")
    pool = dict(max_batch_size=data.draw(st.integers(1, 6), label="max_batch_size")) if strategy == "exspec" else {}
    stats = check_against_plain_greedy(target_model(arch), draft_model(arch, req["draft"]), req, data,
                                       strategy=strategy, cache_implementation="static", speculation=speculation,
                                       **pool)
    rows = len(req["prompts"]) if strategy == "eqspec" else min(len(req["prompts"]), pool["max_batch_size"])
    assert stats.cache_rows == static_rows(rows, pool.get("max_batch_size", 1 << 62)) >= rows
    # the batch only moves into smaller row buckets, each at most half the last: a power of two, then halvings
    assert stats.row_selections <= int(np.log2(stats.cache_rows))
    assert stats.cache_slots_per_row == static_length(stats.cache_slots_per_row)  # one of the buckets


def test_static_sampling_is_reproducible_and_respects_top_k():
    target, draft = target_model("llama"), draft_model("llama", "perturbed")
    ids, mask = left_pad([[5, 6, 7], [9] * 6, [3, 4], [8]], 0)
    run = lambda: target.generate(ids, attention_mask=mask, assistant_model=draft, do_sample=True,  # noqa: E731
                                  max_new_tokens=12, generator=torch.Generator().manual_seed(3), pad_token_id=0,
                                  top_k=5, cache_implementation="static", max_batch_size=2)
    first, second = run(), run()
    assert torch.equal(first, second)
    # top_k=5: every sampled token is among the target's 5 most likely at its prefix
    for row in range(ids.shape[0]):
        real = ids[row][mask[row] == 1].tolist()
        new = first[row, ids.shape[1]:].tolist()
        new = new[: new.index(2) + 1] if 2 in new else new  # through the config's eos_token_id, then padding
        for step, token in enumerate(new):
            logits = target(torch.tensor([real + new[:step]])).logits[0, -1]
            assert token in logits.topk(5).indices.tolist()


def test_static_bookkeeping_helpers():
    assert [static_rows(n, 32) for n in (1, 3, 4, 5, 17, 32)] == [1, 4, 4, 8, 32, 32]
    assert static_rows(20, 24) == 24  # never more rows than the caller allows at once
    # powers of two and three quarters of them, from 64
    assert [static_length(n) for n in (1, 64, 65, 96, 97, 134, 193, 300, 385)] == [64, 64, 96, 96, 128, 192, 256,
                                                                                    384, 512]
    # a warmed length that holds the call wins over its own bucket; past every warmed one, its own bucket
    assert [static_length(n, (128, 1024)) for n in (1, 128, 129, 1025, 1537)] == [128, 128, 1024, 1536, 2048]
    assert draft_buckets(5, all_lengths=False).tolist() == [5]
    assert draft_buckets(5, all_lengths=True).tolist() == [1, 2, 4, 5]
    drafts = torch.tensor([[4, 7], [5, 8]])
    probs = torch.rand(2, 2, 3)
    padded, padded_probs = pad_drafts(drafts, probs, np.array([1, 4]))
    assert pad_drafts(drafts, probs, np.array([1, 2, 4]))[0] is drafts  # 2 is a bucket: no padding
    assert padded.tolist() == [[4, 7, 7, 7], [5, 8, 8, 8]] and padded_probs.shape == (2, 4, 3)
    assert torch.equal(padded_probs[:, 3], probs[:, 1])
    empty = torch.empty(2, 0, dtype=torch.long)
    assert pad_drafts(empty, None, np.array([4]))[0].shape == (2, 0)


@pytest.mark.parametrize("arch", ["llama", "qwen3_sliding", "gpt2"])
def test_decode_forward_has_no_graph_break(arch):
    """The cache's update and the per-row masks trace into one graph (dynamo's explain, no inductor)."""
    model = build(arch)
    runner = ModelRunner(model, 3, 64, static=True)
    prompt = torch.randint(3, VOCAB, (3, 5))
    runner.forward(prompt, torch.arange(5).expand(3, 5), torch.full((3,), 60), 5, prefill=True)
    positions = torch.tensor([[5, 6], [5, 6], [5, 6]])
    runner.cache.begin(positions, 64)
    masks = build_masks(runner.layout, positions, 64, torch.float32)

    def decode(tokens):
        return model(input_ids=tokens, attention_mask=masks, position_ids=positions, use_cache=True,
                     **{runner._cache_kwarg: runner.cache}).logits

    explained = torch._dynamo.explain(decode)(prompt[:, :2])
    assert explained.graph_break_count == 0, [reason.reason for reason in explained.break_reasons]
    assert explained.graph_count == 1


@settings(max_examples=6)
@given(data=st.data())
def test_compiled_equals_plain_greedy_without_recompiling(compiled_pair, warmed, data):
    """After warm-up, other prompt lengths, batch sizes and stops compile nothing new, and every row still
    equals plain greedy decoding of its prompt alone."""
    target, draft = compiled_pair
    assert warmed > 0, "the warm-up compiled nothing: the compiled path did not run"
    # 3 or more prompts at max_batch_size=4: 4 rows
    prompts = data.draw(strategies.prompts(max_rows=9, max_len=30, min_rows=3), label="prompts")
    max_new = data.draw(st.integers(1, 64 - max(map(len, prompts))), label="max_new")
    eos = draw_stop_ids(data, target, prompts, max_new) or None
    before = unique_graphs()
    width, out = generate_compiled(target, draft, prompts, max_new, list(eos) if eos else None)
    assert unique_graphs() == before, "a call inside the warmed bucket recompiled"
    assert out.spec_stats.fused_rounds == out.spec_stats.rounds, "greedy without processors: whole-step programs"
    for row, prompt in enumerate(prompts):
        expected = plain_greedy(target, prompt, max_new, eos)
        assert out.sequences[row, width:width + len(expected)].tolist() == expected, f"row {row}"


@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_compiled_auto_equals_plain_greedy(compiled_pair, data):
    """`speculation="auto"` on the compiled path: a round program per draft width, and rounds of k = 0 where the
    draft only catches up (forced by a draft that costs five target forwards). Every round runs as one program
    and every row, trimmed at its stop, equals plain greedy decoding of its prompt alone."""
    target, draft = compiled_pair
    prompts = data.draw(strategies.prompts(max_rows=7, max_len=20, min_rows=2), label="prompts")
    max_new = data.draw(st.integers(2, 30), label="max_new")  # 1 token is the prefill's alone: no round
    eos = draw_stop_ids(data, target, prompts, max_new) or None
    slow_draft = hf_batchspec.CostModel(target_call=1.0, target_token=0.0, draft_call=5.0, draft_token=0.0)
    speculation = data.draw(st.sampled_from(["auto", slow_draft]), label="speculation")
    ids, mask = left_pad(prompts, 0)
    out = target.generate(ids, attention_mask=mask, assistant_model=draft, max_new_tokens=max_new, do_sample=False,
                          eos_token_id=list(eos) if eos else None, pad_token_id=0, return_dict_in_generate=True,
                          **{**COMPILED, "speculation": speculation})
    assert out.spec_stats.fused_rounds == out.spec_stats.rounds  # none when every row stopped on its first token
    for row, prompt in enumerate(prompts):
        expected = plain_greedy(target, prompt, max_new, eos)
        assert out.sequences[row, ids.shape[1]:ids.shape[1] + len(expected)].tolist() == expected, f"row {row}"


@pytest.mark.parametrize("source", [dict(), dict(prompt_lookup_num_tokens=3)], ids=["draft_model", "lookup"])
def test_compiled_auto_compiles_every_width_in_its_first_call(compiled_pair, source):
    """`speculation="auto"` chooses each round's draft width as it goes, and each width is a program of its own:
    the first compiled call compiles all of them (run once with every row idle, before its first round), so that a
    later call choosing other widths compiles nothing. Before, a width compiled in the call that first chose it
    (docs/results.md: 40.8 s for a call at batch 64 that runs in 8.3 s warm). The first call's drafting never pays
    (rounds of k = 0 and 1-draft probes); the second's always does (k = 3 rounds, narrower at the tail).

    Dynamo's `eager` backend: the graphs counted are dynamo's whatever the backend (which only turns each into
    code), so the test keeps its meaning at a fraction of inductor's compile time, and dynamo keeps graphs per
    backend, so no other test's calls have run these."""
    target, draft = compiled_pair
    draft = None if source else draft
    settings = dict(COMPILED, compile_config=CompileConfig(backend="eager", mode=None), **source)
    if source:
        del settings["num_assistant_tokens"]
    never = hf_batchspec.CostModel(target_call=1.0, target_token=0.0, draft_call=5.0, draft_token=0.0)
    always = hf_batchspec.CostModel(target_call=1.0, target_token=0.0, draft_call=0.0, draft_token=0.0)
    prompts = [[5, 6, 7, 5, 6, 7], [9] * 6, [3, 4], [8, 8], [11, 12, 11, 12]]  # lookup finds n-grams in these
    ids, mask = left_pad(prompts, 0)
    calls = []
    for cost in (never, always):
        before = unique_graphs()
        out = target.generate(ids, attention_mask=mask, assistant_model=draft, max_new_tokens=20, do_sample=False,
                              eos_token_id=None, pad_token_id=0, return_dict_in_generate=True,
                              **{**settings, "speculation": cost})
        calls.append((unique_graphs() - before, out.spec_stats))
        for row, prompt in enumerate(prompts):
            assert out.sequences[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, 20, None), f"row {row}"
    (first, slow), (second, fast) = calls
    assert set(slow.draft_widths) <= {0, 1} and 3 in fast.draft_widths
    assert second == 0, "a width the first call did not choose compiled in the second"
    # (width 0 is the plain step, the target's verify program alone: the other source's call may have run it)
    assert {1, 2, 3} <= set(slow.widths_compiled_ahead) <= {0, 1, 2, 3} and first > 0
    assert fast.widths_compiled_ahead == ()


# (prefilled: the catch-up of the plain steps alone, in the slow run; deferred covers it too, whole rows besides)
@pytest.mark.parametrize("deferred", [pytest.param(False, marks=pytest.mark.slow), True],
                         ids=["prefilled", "deferred"])
def test_compiled_draft_catches_up_after_plain_steps(compiled_pair, monkeypatch, deferred):
    """While `speculation="auto"` has drafting off, the compiled path runs the target's plain steps back to back
    (its width-0 verify program per step) and the draft model runs none of them, so its rows' lag grows; the first
    drafting round after them catches it up in one eager forward (`_Decoder._catch_up_draft`). Drafting is forced
    off for the first 6 decisions, then on at each row's budget; `deferred`: the control reads as off from the
    start, so that admissions skip the draft's prefill and the catch-up runs whole rows. With a copy of the target
    as the draft, every
    draft after the catch-up is accepted (a draft whose cache missed those tokens drafts from a wrong prefix); the
    draft's forwards are its prefills, the catch-up and the drafting rounds' steps; every row equals plain greedy."""
    from hf_batchspec.speculation import SpeculationControl

    target, _ = compiled_pair
    draft = perturbed(target, 0.0)  # the target's weights
    decisions = []
    decide = SpeculationControl.draft_lengths

    def off_then_on(self, budgets, *args, **kwargs):
        decisions.append(decide(self, budgets, *args, **kwargs))
        return np.zeros_like(budgets) if len(decisions) <= 6 else budgets
    monkeypatch.setattr(SpeculationControl, "draft_lengths", off_then_on)
    monkeypatch.setattr(SpeculationControl, "rounds_off_ahead", lambda self: 0)  # a decision per step
    if deferred:
        off = SpeculationControl.off
        monkeypatch.setattr(SpeculationControl, "off", property(lambda self: len(decisions) < 6 or off.fget(self)))
    prompts = [[5, 6, 7], [9] * 6, [3, 4], [8, 9]]
    ids, mask = left_pad(prompts, 0)
    out = target.generate(ids, attention_mask=mask, assistant_model=draft, max_new_tokens=24, do_sample=False,
                          eos_token_id=None, pad_token_id=0, return_dict_in_generate=True,
                          **{**COMPILED, "compile_config": CompileConfig(backend="eager", mode=None),
                             "speculation": "auto"})
    stats = out.spec_stats
    assert stats.draft_widths[:6] == [0] * 6 and min(stats.draft_widths[6:]) > 0
    assert stats.accepted_tokens.sum() == stats.drafted_tokens.sum() > 0
    drafting_steps = sum(width for width in stats.draft_widths if width)
    assert stats.draft_forward_calls == stats.draft_prefill_calls + 1 + drafting_steps
    assert (stats.draft_prefill_calls == 0) == deferred
    for row, prompt in enumerate(prompts):
        assert out.sequences[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, 24, None), f"row {row}"


# GPT-2 (absolute positions, clamped inside the program) compiles for a minute: slow, as are the device rounds of
# every test architecture (tests/test_compiled_architectures.py); the default run keeps sliding-window layers
@pytest.mark.parametrize("arch", ["qwen3_sliding", pytest.param("gpt2", marks=pytest.mark.slow)])
def test_whole_step_programs_on_other_architectures(arch):
    """The whole-step compiled program on a model with sliding-window layers (a mask per layer type inside the
    program) and on one with absolute positions (position ids clamped inside it): every round runs as the
    programs, each one graph (`fullgraph=True` fails on a graph break), and every row equals plain greedy, with and
    without an EOS that stops rows inside accepted blocks."""
    target, draft = target_model(arch), draft_model(arch, "perturbed")
    prompts = [[5, 6, 7], [9] * 6, [3, 4], [8], [11, 12, 13, 14], [15]]
    ids, mask = left_pad(prompts, 0)
    for eos in (None, free_run_tokens(target, prompts, 16)[:2]):
        out = target.generate(ids, attention_mask=mask, assistant_model=draft, max_new_tokens=16, do_sample=False,
                              eos_token_id=eos, pad_token_id=0, return_dict_in_generate=True,
                              **{**COMPILED, "compile_config": CompileConfig(fullgraph=True)})
        assert out.spec_stats.fused_rounds == out.spec_stats.rounds > 0
        for row, prompt in enumerate(prompts):
            expected = plain_greedy(target, prompt, 16, tuple(eos) if eos else None)
            assert out.sequences[row, ids.shape[1]:ids.shape[1] + len(expected)].tolist() == expected, f"row {row}"


@pytest.mark.slow  # a program per verify width (up to 5 of them): two and a half minutes of compiling on 2 cores
def test_compiled_adaptive_draft_lengths_stay_exact():
    """transformers' heuristic schedule (k grows to 20) and a confidence threshold on the compiled path: the verify
    takes a few widths below the cap (not 20 every round), the threshold keeps the draft's steps on the host, and
    every row equals plain greedy."""
    target = target_model("llama")
    draft = perturbed(target, 0.05)  # its own config: the heuristic writes its k back to it
    prompts = [[5, 6, 7], [9] * 6, [3, 4], [8], [11, 12]]
    ids, mask = left_pad(prompts, 0)
    for threshold in (None, 0.3):  # 10 new tokens: budgets of at most 9 (widths 1, 2, 4, 8, 16 at most)
        out = target.generate(ids, attention_mask=mask, assistant_model=draft, max_new_tokens=10, do_sample=False,
                              eos_token_id=None, pad_token_id=0, return_dict_in_generate=True,
                              num_assistant_tokens_schedule="heuristic", assistant_confidence_threshold=threshold,
                              **COMPILED)
        assert out.spec_stats.fused_rounds == out.spec_stats.rounds > 0
        # widths below the cap of 20: padding to 20 every round would make 20 drafts per round and row
        assert out.spec_stats.draft_forward_calls < 20 * out.spec_stats.rounds
        for row, prompt in enumerate(prompts):
            assert out.sequences[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, 10, None), f"row {row}"


@pytest.mark.parametrize("extra", [dict(repetition_penalty=1.3), dict(output_scores=True)],
                         ids=["processor", "scores"])
def test_compiled_with_host_work_runs_forward_by_forward(compiled_pair, extra):
    """What needs the host inside a round (a logits processor, recorded scores) keeps the compiled forwards one
    by one instead of the whole-step programs, with the same tokens as the eager loop."""
    target, draft = compiled_pair
    ids, mask = left_pad([[5, 6, 7], [9] * 6, [3, 4], [8]], 0)
    call = dict(attention_mask=mask, assistant_model=draft, max_new_tokens=12, do_sample=False, pad_token_id=0,
                eos_token_id=None, return_dict_in_generate=True, num_assistant_tokens=3, max_batch_size=4, **extra)
    eager = target.generate(ids, **call)
    compiled = target.generate(ids, compile_config=CompileConfig(), **call)
    assert compiled.spec_stats.fused_rounds == 0 < compiled.spec_stats.rounds
    assert torch.equal(compiled.sequences, eager.sequences)


def test_compile_settings_are_checked(compiled_pair):
    target, draft = compiled_pair
    ids, mask = left_pad([[5, 6], [7, 8, 9]], 0)
    call = dict(attention_mask=mask, assistant_model=draft, max_new_tokens=3)
    with pytest.raises(BatchSpecError, match="CompileConfig"):
        target.generate(ids, compile_config={"mode": "default"}, **call)
    with pytest.raises(BatchSpecError, match="cache_implementation='offloaded'"):
        target.generate(ids, cache_implementation="offloaded", **call)
    with pytest.raises(BatchSpecError, match="eqspec-realign"):
        target.generate(ids, batch_spec="eqspec-realign", cache_implementation="static", **call)


def test_disable_compile_keeps_static_shapes_eager(compiled_pair):
    target, draft = compiled_pair
    before = unique_graphs()
    ids, mask = left_pad([[5, 6], [7, 8, 9]], 0)
    out = target.generate(ids, attention_mask=mask, assistant_model=draft, max_new_tokens=6, do_sample=False,
                          pad_token_id=0, eos_token_id=None, compile_config=CompileConfig(), disable_compile=True,
                          return_dict_in_generate=True)
    assert unique_graphs() == before
    assert out.spec_stats.cache_slots_per_row == 64  # static shapes all the same
    for row, prompt in enumerate([[5, 6], [7, 8, 9]]):
        assert out.sequences[row, 3:].tolist() == plain_greedy(target, prompt, 6, None)


def test_static_cache_never_moves():
    """A cache a compiled forward reads keeps its tensors when rows leave: the kept rows are copied into its first
    rows, and a forward over b rows writes and reads those b rows only."""
    runner = ModelRunner(build("llama"), 4, 64, compile_config=CompileConfig())
    prompt = torch.randint(3, VOCAB, (4, 5))
    runner.forward(prompt, torch.arange(5).expand(4, 5), torch.full((4,), 60), 5, prefill=True)
    layer = runner.cache.layers[0]
    keys, before = layer.keys, layer.keys.clone()
    runner.cache.set_lengths(np.array([5, 4, 3, 2]))
    runner.cache.select_rows(torch.tensor([3, 1]))
    assert layer.keys is keys and keys.shape[0] == 4, "the tensor a CUDA graph points at stays"
    assert torch.equal(keys[:2], before[[3, 1]]) and torch.equal(keys[2:], before[2:])
    assert runner.cache.lengths.tolist() == [2, 4]
    runner.cache.begin(torch.tensor([[2], [4]]), 64)
    new = torch.ones(2, keys.shape[1], 1, keys.shape[3])
    read, _ = layer.update(new, new)
    assert read.shape[0] == 2 and bool((keys[0, :, 2] == 1).all() and (keys[1, :, 4] == 1).all())
    assert torch.equal(keys[2:], before[2:]), "rows beyond the forward's are untouched"


def tail_prompts(target) -> tuple[list[list[int]], list[int]]:
    """Four prompts and stop ids that end rows 0-2 on their first token while row 3 runs on: after admission a
    single row is live, so the call's tail starts at once."""
    prompts = [[5, 6, 7], [9] * 6, [3, 4]]
    firsts = sorted({plain_greedy(target, p, 1, None)[0] for p in prompts})
    last = next(p for p in ([n, n + 1] for n in range(8, VOCAB))
                if not set(firsts) & set(plain_greedy(target, p, 12, None)))
    return prompts + [last], firsts


def test_static_tail_moves_into_a_smaller_row_bucket():
    """Once nothing waits and the live rows fit half the rows, they move into a smaller bucket (instead of idle
    rows computing with them); every row still equals plain greedy decoding of its prompt alone."""
    target, draft = target_model("llama"), draft_model("llama", "perturbed")
    prompts, stops = tail_prompts(target)
    ids, mask = left_pad(prompts, 0)
    out = target.generate(ids, attention_mask=mask, assistant_model=draft, max_new_tokens=12, do_sample=False,
                          eos_token_id=stops, pad_token_id=0, num_assistant_tokens=3,
                          cache_implementation="static", return_dict_in_generate=True)
    assert out.spec_stats.cache_rows == 4 and out.spec_stats.row_selections == 1
    assert set(out.spec_stats.forward_rows) == {2}  # 4 rows, then 2 (the least) before the first round
    for row, prompt in enumerate(prompts):
        expected = plain_greedy(target, prompt, 12, tuple(stops))
        assert out.sequences[row, ids.shape[1]:ids.shape[1] + len(expected)].tolist() == expected, f"row {row}"


def test_compiled_tail_bucket_takes_the_warmed_graphs(compiled_pair, warmed):
    """The smaller row bucket runs the graphs compiled for the full one (dynamic row count): nothing compiles."""
    target, draft = compiled_pair
    prompts, stops = tail_prompts(target)
    before = unique_graphs()
    width, out = generate_compiled(target, draft, prompts, 12, stops)
    assert unique_graphs() == before, "the 2-row bucket compiled a graph of its own"
    assert out.spec_stats.row_selections == 1 and set(out.spec_stats.forward_rows) == {2}
    assert out.spec_stats.fused_rounds == out.spec_stats.rounds > 0
    for row, prompt in enumerate(prompts):
        expected = plain_greedy(target, prompt, 12, tuple(stops))
        assert out.sequences[row, width:width + len(expected)].tolist() == expected, f"row {row}"


def test_batch_8_then_batch_4_take_the_graphs_of_a_4_row_call(compiled_pair, warmed):
    """The row bucket of one call is not the next call's: with max_batch_size=8, a call of 8 rows and then one of 4
    run the graphs a 4-row call compiled (the row count is dynamic from the first compile, across calls)."""
    target, draft = compiled_pair
    before = unique_graphs()
    for lengths in ([3, 9, 1, 5, 12, 2, 7, 4], [6, 2, 10, 1]):
        prompts = [[3 + (7 * i + j) % 120 for j in range(n)] for i, n in enumerate(lengths)]
        ids, mask = left_pad(prompts, 0)
        out = target.generate(ids, attention_mask=mask, assistant_model=draft, max_new_tokens=10, do_sample=False,
                              eos_token_id=None, pad_token_id=0, return_dict_in_generate=True,
                              **{**COMPILED, "max_batch_size": 8})
        assert unique_graphs() == before, f"a call of {len(prompts)} rows compiled a graph of its own"
        assert out.spec_stats.cache_rows == len(prompts) and out.spec_stats.fused_rounds == out.spec_stats.rounds > 0
        for row, prompt in enumerate(prompts):
            assert out.sequences[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, 10, None), f"row {row}"


@pytest.mark.parametrize("speculation", ["always", "auto"])
def test_greedy_round_is_one_compiled_call(compiled_pair, warmed, speculation):
    """Each greedy round is one compiled call (draft steps, verify, acceptance, commit in `device_round`): with a
    constant k the last-token rounds included, with auto its rounds of k = 0 (plain steps back to back, the
    target's width-0 verify program each, the draft left behind).
    The profiler sees as many compiled regions as rounds, and nothing else compiled runs (prefills are eager);
    every row equals plain greedy."""
    from torch.profiler import ProfilerActivity, profile

    target, draft = compiled_pair
    prompts = [[5, 6, 7], [9] * 6, [3, 4], [8], [11, 12]]
    ids, mask = left_pad(prompts, 0)
    # auto with a draft that costs five target forwards: it cannot pay at any acceptance, so no round drafts (not
    # even a probe) and every round is the k = 0 program
    auto = dict(speculation=hf_batchspec.CostModel(target_call=1.0, target_token=0.0, draft_call=5.0,
                                                   draft_token=0.0))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = target.generate(ids, attention_mask=mask, assistant_model=draft, max_new_tokens=10, do_sample=False,
                              eos_token_id=None, pad_token_id=0, return_dict_in_generate=True,
                              **{**COMPILED, **(auto if speculation == "auto" else {})})
    calls = sum(1 for event in prof.events() if event.name.startswith("Torch-Compiled Region")
                and event.cpu_parent is None)
    # a round launched after every row had stopped (read a round late) ran idle, and so did the programs of auto's
    # widths that had not run before this call (compiled ahead, once)
    stats = out.spec_stats
    assert calls == stats.rounds + stats.lagged_idle_rounds + len(stats.widths_compiled_ahead)
    assert stats.rounds == stats.fused_rounds > 0
    if speculation == "auto":  # no round drafted, and the draft ran nothing after its prefills
        assert out.spec_stats.drafted_tokens.sum() == 0 and set(out.spec_stats.draft_widths) == {0}
        assert stats.draft_forward_calls == stats.draft_prefill_calls
    for row, prompt in enumerate(prompts):
        assert out.sequences[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, 10, None), f"row {row}"


def test_static_scores_and_streaming_equal_dynamic_shapes():
    """Scores, logits and streamed tokens come from live rows only: idle rows (static shapes) add nothing."""
    target, draft = target_model("llama"), draft_model("llama", "perturbed")
    ids, mask = left_pad([[5, 6, 7], [9] * 6, [3, 4], [8], [10, 11]], 0)
    outputs, streamed = [], []
    for extra in ({}, dict(cache_implementation="static")):
        streamer = hf_batchspec.BatchIteratorStreamer()
        out = target.generate(ids, attention_mask=mask, assistant_model=draft, max_new_tokens=10, do_sample=False,
                              pad_token_id=0, max_batch_size=3, output_scores=True, output_logits=True,
                              return_dict_in_generate=True, streamer=streamer, **extra)
        rows = {}
        for row, tokens in streamer:
            rows.setdefault(row, []).extend(tokens)
        outputs.append(out)
        streamed.append(rows)
    dynamic, static = outputs
    assert torch.equal(dynamic.sequences, static.sequences)
    assert len(dynamic.scores) == len(static.scores)
    for a, b in zip(dynamic.scores + dynamic.logits, static.scores + static.logits):
        torch.testing.assert_close(a, b)
    assert streamed[0] == streamed[1] and sorted(streamed[1]) == list(range(5))


@pytest.mark.parametrize("source", [dict(num_assistant_tokens=3), dict(prompt_lookup_num_tokens=3)],
                         ids=["draft_model", "lookup"])
def test_compiled_streaming_streams_every_kept_token(source):
    """A streamer on the compiled greedy path gets every row's kept tokens, in order, equal to its output: such a
    call keeps the synchronous compiled verify, which hands each round's tokens over as it is read (before, the
    device round ran and only the first tokens, committed at admission, were streamed). Dynamo's `eager` backend:
    the path taken, not inductor's code, is what is tested."""
    target, draft = target_model("llama"), draft_model("llama", "perturbed")
    prompts = [[5, 6, 7, 5, 6, 7], [9] * 6, [3, 4, 3, 4], [8], [10, 11]]
    ids, mask = left_pad(prompts, 0)
    streamer = hf_batchspec.BatchIteratorStreamer()
    draft_kw = dict(assistant_model=draft) if "num_assistant_tokens" in source else {}
    out = target.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0,
                          eos_token_id=None, max_batch_size=3, return_dict_in_generate=True, streamer=streamer,
                          speculation="always", compile_config=CompileConfig(backend="eager", mode=None),
                          **draft_kw, **source)
    streamed = {}
    for row, tokens in streamer:
        streamed.setdefault(row, []).extend(tokens)
    assert out.spec_stats.fused_rounds == out.spec_stats.rounds > 0
    for row, prompt in enumerate(prompts):
        expected = plain_greedy(target, prompt, 10, None)
        assert out.sequences[row, ids.shape[1]:].tolist() == expected
        assert streamed[row] == expected, f"row {row}"


def test_static_cache_from_the_models_generation_config():
    """`model.generation_config.cache_implementation = "static"` (transformers' recipe for its compiled decoding)
    asks for static shapes as the argument does: the cache takes a static length (64 slots per row, not the call's
    own 12), and every row equals plain greedy. Before, only the argument counted."""
    target = hf_batchspec.enable(build("llama", seed=41))
    draft = perturbed(target, 0.05, seed=42)
    prompts = [[5, 6, 7], [9, 9], [3, 4, 5, 6]]
    ids, mask = left_pad(prompts, 0)
    call = dict(attention_mask=mask, assistant_model=draft, max_new_tokens=8, do_sample=False, pad_token_id=0,
                eos_token_id=None, batch_spec="exspec", max_batch_size=2, return_dict_in_generate=True)
    dynamic = target.generate(ids, **call).spec_stats.cache_slots_per_row
    target.generation_config.cache_implementation = "static"
    out = target.generate(ids, **call)
    assert dynamic < 64 == out.spec_stats.cache_slots_per_row
    for row, prompt in enumerate(prompts):
        assert out.sequences[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, 8, None), f"row {row}"


def test_a_copy_of_a_compiled_model_runs_its_own_weights():
    """transformers keeps a model's compiled call on the instance, bound to it, so a `copy.deepcopy` made after a
    compiled call holds the original's: as a target, its compiled steps ran the original's weights over its cache
    (neither model's output); as a draft, it drafted the original's tokens (outputs exact, acceptance not its own).
    Each row equals the copy's plain greedy, and a copied draft's acceptance equals the same call's uncompiled.
    Dynamo's `eager` backend: which weights run is what is tested, not inductor's code."""
    config = dict(max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None, batch_spec="exspec",
                  max_batch_size=3, speculation="always", return_dict_in_generate=True)
    compiled = dict(compile_config=CompileConfig(backend="eager", mode=None))
    prompts = [[5, 6, 7, 5, 6, 7], [9] * 6, [3, 4], [8, 9, 10]]
    ids, mask = left_pad(prompts, 0)
    original = hf_batchspec.enable(build("llama", seed=31))
    original.generate(ids, attention_mask=mask, prompt_lookup_num_tokens=3, **config, **compiled)
    copy = perturbed(original, 0.3, seed=32)  # a deepcopy, then other weights
    out = copy.generate(ids, attention_mask=mask, prompt_lookup_num_tokens=3, **config, **compiled)
    for row, prompt in enumerate(prompts):
        assert out.sequences[row, ids.shape[1]:].tolist() == plain_greedy(copy, prompt, 10, None), f"row {row}"
    draft = perturbed(original, 0.3, seed=33)
    runs = [original.generate(ids, attention_mask=mask, assistant_model=draft, num_assistant_tokens=3, **config,
                              **extra).spec_stats.accepted_tokens.tolist() for extra in (compiled, {})]
    assert runs[0] == runs[1], "the copied draft drafted another model's tokens"


@pytest.mark.slow  # calibrate compiles forwards of its own widths: a minute on 2 cores
def test_calibrate_on_compiled_forwards_drives_auto(compiled_pair, warmed):
    """`calibrate(compile_config=...)` times the compiled static-shape forwards generate runs; auto decides
    with it, and the rows stay exact."""
    target, draft = compiled_pair
    cost = hf_batchspec.calibrate(target, draft, rows=4, context=40, repeats=1, compile_config=CompileConfig())
    # (a target that costs something is CostModel's own check); the draft's forwards were measured as costing too
    assert cost.draft_call + cost.draft_token > 0
    prompts = [[5, 6, 7], [9] * 6, [3, 4], [8], [11, 12], [13, 14, 15]]
    ids, mask = left_pad(prompts, 0)
    out = target.generate(ids, attention_mask=mask, assistant_model=draft, max_new_tokens=20, do_sample=False,
                          pad_token_id=0, eos_token_id=None, return_dict_in_generate=True,
                          **{**COMPILED, "speculation": cost})
    for row, prompt in enumerate(prompts):
        assert out.sequences[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, 20, None), f"row {row}"


@pytest.mark.parametrize("source", [dict(prompt_lookup_num_tokens=3), dict(assistant_early_exit=1,
                                                                            num_assistant_tokens=3)],
                         ids=["lookup", "early_exit"])
def test_other_draft_sources_compile_and_stay_exact(compiled_pair, source, monkeypatch):
    """Prompt lookup (its n-gram match inside the round's program) and early exit (the target's first layer, its own
    compiled steps) on the compiled path: every row equals plain greedy, every round is a device round, and a second
    call in the bucket compiles nothing new."""
    target, _ = compiled_pair
    round_ = _Decoder._round
    prompts = [[5, 6, 7, 5, 6, 7, 5], [9] * 6, [3, 4, 3, 4], [8]]
    ids, mask = left_pad(prompts, 0)

    def run(max_new):
        out = target.generate(ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False, eos_token_id=None,
                              pad_token_id=0, max_batch_size=4, compile_config=CompileConfig(),
                              speculation="always", return_dict_in_generate=True, **source)
        for row, prompt in enumerate(prompts):
            assert out.sequences[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, max_new, None)
        return out.spec_stats

    run(20)
    host_rounds = []  # rounds the host runs and reads itself (`_round`), not device rounds read a round late
    monkeypatch.setattr(_Decoder, "_round", lambda decoder: host_rounds.append(1) or round_(decoder))
    before = unique_graphs()
    stats = run(16)
    assert not host_rounds, "a round ran outside the device round's one program"
    assert unique_graphs() == before, "a second call in the bucket recompiled"
    assert stats.accepted_tokens.sum() > 0
    assert stats.fused_rounds == stats.rounds
