"""GPU lane: the equivalence property on CUDA in fp16/bf16, and bitsandbytes 4-bit on the GPU.

Skipped without CUDA (run it with the `device` tool: `python -m pytest -m gpu -s`). In low precision a
verify over k+1 tokens and a 1-token step can round a true near-tie differently, so exact equality is not
the criterion: every divergence must happen where the reference's top-2 logit margin is within the dtype's
rounding error. The exact-match rate is printed (run with -s).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hf_batchspec
from tests.toolkit import build, left_pad, perturbed, plain_greedy, strategies
from tests.toolkit.counting import cuda_syncs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="gpu lane: needs CUDA")]

RESULTS: dict[str, list[bool]] = {}


def near_tie(model, prefix: list[int], dtype: torch.dtype) -> bool:
    """Is the reference's choice after `prefix` within rounding of the runner-up?"""
    with torch.no_grad():
        logits = model(torch.tensor([prefix], device="cuda")).logits[0, -1].float()
    top2 = logits.topk(2).values
    # a few ulps of the logits' magnitude in this dtype
    return bool(top2[0] - top2[1] <= 8 * torch.finfo(dtype).eps * top2[0].abs().clamp(min=1.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("arch", ["llama", "qwen3_sliding", "mistral"])
@settings(max_examples=6)
@given(prompts=strategies.prompts(max_rows=12, max_len=40), max_new=st.integers(1, 40), data=st.data())
def test_low_precision_diverges_only_at_near_ties(arch, dtype, prompts, max_new, data):
    target = hf_batchspec.enable(build(arch).to("cuda", dtype))
    draft = perturbed(build(arch), 0.05).to("cuda", dtype)
    ids, mask = left_pad(prompts, 0)
    out = target.generate(ids.cuda(), attention_mask=mask.cuda(), assistant_model=draft,
                          num_assistant_tokens=data.draw(st.integers(1, 8)), max_new_tokens=max_new,
                          do_sample=False, pad_token_id=0, eos_token_id=None)
    for row, prompt in enumerate(prompts):
        ours = out[row, ids.shape[1]:].tolist()
        ref = plain_greedy(target, prompt, max_new, None)
        exact = ours == ref
        RESULTS.setdefault(f"{arch}/{dtype}", []).append(exact)
        if not exact:
            first = next(i for i, (a, b) in enumerate(zip(ours, ref)) if a != b)
            assert near_tie(target, prompt + ref[:first], dtype), f"row {row} diverged at {first} without a near-tie"


def test_bnb_4bit_on_gpu(tmp_path):
    pytest.importorskip("bitsandbytes", reason="the quant extra is not installed")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    build("llama").save_pretrained(tmp_path)
    target = hf_batchspec.enable(AutoModelForCausalLM.from_pretrained(
        tmp_path, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32),
        device_map="cuda:0"))
    draft = perturbed(build("llama"), 0.05).cuda()
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16, 17]]
    ids, mask = left_pad(prompts, 0)
    out = target.generate(ids.cuda(), attention_mask=mask.cuda(), assistant_model=draft, max_new_tokens=16,
                          do_sample=False, pad_token_id=0, eos_token_id=None)
    for row, prompt in enumerate(prompts):
        assert out[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, 16, None)


def test_outputs_stay_on_the_inputs_device():
    """Ids and mask on the GPU with a model there: the output comes back on that device (as transformers' own), in
    int64, equal to plain greedy (fp32: exact)."""
    target = hf_batchspec.enable(build("llama").to("cuda"))
    draft = perturbed(build("llama"), 0.05).to("cuda")
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16, 17]]
    ids, mask = left_pad(prompts, 0)
    out = target.generate(ids.cuda(), attention_mask=mask.cuda().bool(), assistant_model=draft, batch_spec="eqspec",
                          max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert out.device.type == "cuda" and out.dtype == torch.long
    for row, prompt in enumerate(prompts):
        assert out[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, 6, None)


def teardown_module(module):
    for key, matches in sorted(RESULTS.items()):
        print(f"gpu lane exact-match rate {key}: {sum(matches)}/{len(matches)} rows")


def test_static_cache_compiles_with_cuda_graphs_and_stays_exact():
    """On CUDA `cache_implementation="static"` compiles by itself (transformers' default CompileConfig:
    mode="reduce-overhead", CUDA graphs); rows still equal plain greedy (divergence only at a near-tie) and a
    second call in the same bucket compiles nothing new."""
    target = hf_batchspec.enable(build("llama", seed=11).to("cuda"))
    draft = perturbed(build("llama", seed=11), 0.05).to("cuda")
    counters = torch._dynamo.utils.counters["stats"]
    skips = torch._dynamo.utils.counters["inductor"]["cudagraph_skips"]

    def run(prompts, max_new):
        ids, mask = left_pad(prompts, 0)
        out = target.generate(ids.cuda(), attention_mask=mask.cuda(), assistant_model=draft, max_new_tokens=max_new,
                              do_sample=False, pad_token_id=0, eos_token_id=None, num_assistant_tokens=3,
                              max_batch_size=4, batch_spec="exspec", cache_implementation="static",
                              speculation="always", return_dict_in_generate=True)
        for row, prompt in enumerate(prompts):
            ours, ref = out.sequences[row, ids.shape[1]:].tolist(), plain_greedy(target, prompt, max_new, None)
            if ours != ref:
                first = next(i for i, (a, b) in enumerate(zip(ours, ref)) if a != b)
                assert near_tie(target, prompt + ref[:first], torch.float32), f"row {row} diverged at {first}"
        return out.spec_stats

    before = counters["unique_graphs"]
    run([[5, 6, 7], [9] * 6, [3, 4], [8], [11, 12]], 24)
    run([[5, 6], [7], [8, 9, 10], [11]], 2)
    assert counters["unique_graphs"] > before, "nothing was compiled"
    warmed = counters["unique_graphs"]
    stats = run([[13, 14, 15, 16], [17], [18, 19], [20, 21, 22], [23] * 9, [24, 25]], 30)
    assert counters["unique_graphs"] == warmed, "a call inside the warmed bucket recompiled"
    # inductor counts every graph it compiled without CUDA graphs (a mutated input that is not a static address,
    # a CPU tensor, ...): none may be skipped, or the launches per round stay
    assert torch._dynamo.utils.counters["inductor"]["cudagraph_skips"] == skips, "a graph ran without CUDA graphs"
    assert stats.row_selections <= 1  # 4 rows, then at most the 2-row bucket (the same graphs)
    assert stats.fused_rounds == stats.rounds > 0, "greedy rounds run as whole-step programs"


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "static_compiled"])
def test_one_host_sync_per_round(compiled):
    """The design's rule on a GPU: a round waits for the device once (bringing the per-row counts to the host).
    Counted with the torch profiler as transformers' host syncs are (cudaStreamSynchronize and friends), per
    round, by difference of a long and a short call (prefills and departures cancel). A per-round value copied
    from pageable host memory would add a sync each (seen on an H200: 4 per round before `to_device`)."""
    from torch.profiler import ProfilerActivity, profile

    target = hf_batchspec.enable(build("llama", seed=5).to("cuda"))
    draft = perturbed(build("llama", seed=5), 0.05).to("cuda")
    prompts = [[5, 6, 7], [9] * 6, [3, 4], [8]]
    ids, mask = left_pad(prompts, 0)
    static = dict(cache_implementation="static", max_batch_size=4) if compiled else {}

    def syncs_and_rounds(max_new):
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            out = target.generate(ids.cuda(), attention_mask=mask.cuda(), assistant_model=draft, num_assistant_tokens=3,
                                  max_new_tokens=max_new, do_sample=False, pad_token_id=0, eos_token_id=None,
                                  speculation="always", return_dict_in_generate=True, **static)
        return cuda_syncs(prof), out.spec_stats.rounds

    syncs_and_rounds(40), syncs_and_rounds(8)  # warm-up: compile every shape
    (long_syncs, long_rounds), (short_syncs, short_rounds) = syncs_and_rounds(40), syncs_and_rounds(8)
    per_round = (long_syncs - short_syncs) / (long_rounds - short_rounds)
    print(f"host syncs per round ({'compiled' if compiled else 'eager'}): {per_round:.2f}")
    assert per_round <= 1.05, per_round
