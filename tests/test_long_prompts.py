"""Long prompts are prefilled a few rows per forward, so a call's peak memory stays at transformers' level or
below (issue 22: 8 x 999 tokens peaked at +254 MB RSS against transformers' +159-182 MB on the bundled pair, all
rows in one prefill forward; scripts/long_prompt_memory.py measures it)."""

from __future__ import annotations

import pytest

import hf_batchspec
from hf_batchspec import decoding
from tests.toolkit import ForwardCount, left_pad, plain_greedy
from tests.tiny_models import build, perturbed

PROMPTS = [[5 + (3 * i + j) % 100 for j in range(4 + i % 5)] for i in range(7)]  # 4 to 8 tokens each


CALLS = {
    "eqspec": dict(batch_spec="eqspec"),
    "exspec": dict(batch_spec="exspec", max_batch_size=4),  # refills, through staging rows too
    "exspec_static": dict(batch_spec="exspec", max_batch_size=4, cache_implementation="static"),
    "prompt_lookup": dict(batch_spec="exspec", max_batch_size=4, prompt_lookup_num_tokens=2),
}


@pytest.mark.parametrize("case", sorted(CALLS))
def test_prefill_forwards_stay_within_the_token_budget(monkeypatch, case):
    """With a budget of 16 padded tokens, no prefill forward of either model covers more (two 8-token prompts at
    most), and every row is still plain greedy's: grouping rows changes no row's prefix."""
    monkeypatch.setattr(decoding, "PREFILL_TOKENS", 16)
    target = hf_batchspec.enable(build("llama"))
    draft = perturbed(target, 0.05)
    call = dict(CALLS[case])
    models = {"target": target}
    if "prompt_lookup_num_tokens" not in call:
        call["assistant_model"] = models["draft"] = draft
    ids, mask = left_pad(PROMPTS, 0)
    with ForwardCount(*models.values()) as forwards:
        # drafting every round: with auto a draft that is off skips its prefills (ModelDrafter.defer)
        out = target.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0,
                              eos_token_id=None, speculation="always", **call)
    names = {id(model): name for name, model in models.items()}
    # (model, rows, width) of each forward whose queries start at position 0
    prefills = [(names[id(m)], rows, width) for m, rows, width in forwards.prefills()]
    assert prefills and all(rows * width <= 16 for _, rows, width in prefills), prefills
    for name in models:  # every prompt prefilled once by each model
        assert sum(rows for m, rows, _ in prefills if m == name) == len(PROMPTS), prefills
    for row, prompt in enumerate(PROMPTS):
        assert out[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, 6, None), f"row {row}"
