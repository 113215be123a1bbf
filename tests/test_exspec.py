"""EXSPEC: a pool of `max_batch_size` slots refilled from a queue of prompts, exact and bounded."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hf_batchspec
from hf_batchspec import RaggedCache
from tests.toolkit import left_pad, most_frequent_token, plain_greedy
from tests.toolkit import draft_model, target_model
from tests.toolkit.checks import check_against_plain_greedy
from tests.toolkit.strategies import requests


class CacheWatch:
    """Looks at the caches the models really receive (forward pre-hooks), and at every verify forward."""

    def __init__(self, *models):
        self.max_rows = self.max_slots = 0
        self.verify_batches = []
        self.handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True) for m in models]
        self.target = models[0]

    def _hook(self, module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if not isinstance(cache, RaggedCache):
            return  # a reference run of transformers' own generate
        for layer in cache.layers:
            if layer.keys is not None:
                self.max_rows = max(self.max_rows, layer.keys.shape[0])
                self.max_slots = max(self.max_slots, layer.keys.shape[2])
        keep = kwargs.get("logits_to_keep")
        if module is self.target and isinstance(keep, int) and keep == 0:
            # verify keeps every column; prefills keep a column index tensor, draft steps the last column
            self.verify_batches.append(kwargs["input_ids"].shape[0])

    def close(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("arch", ["llama", "qwen3_sliding", "gpt2"])
@settings(max_examples=15)
@given(req=requests(max_rows=40, max_prompt=24, max_new=24), data=st.data())
def test_exspec_equals_plain_greedy_with_bounded_cache(arch, req, data):
    target = target_model(arch)
    draft = draft_model(arch, req["draft"])
    max_batch_size = data.draw(st.integers(1, 8), label="max_batch_size")
    sort = data.draw(st.booleans(), label="sort_by_length")
    watch = CacheWatch(target, draft) if draft is not target else CacheWatch(target)
    try:
        stats = check_against_plain_greedy(target, draft, req, data, strategy="exspec",
                                           max_batch_size=max_batch_size, sort_by_length=sort)
    finally:
        watch.close()
    longest = max(len(p) for p in req["prompts"])
    # the slots, and a quarter more (at least 1) for prompts prefilled ahead while others wait
    waiting = len(req["prompts"]) > max_batch_size
    assert watch.max_rows <= max_batch_size + (max(1, max_batch_size // 4) if waiting else 0)
    assert stats.staged_prompts <= len(req["prompts"]) - max_batch_size if waiting else stats.staged_prompts == 0
    assert watch.max_slots <= longest + req["max_new"]
    assert watch.verify_batches == stats.active_rows  # the stats report the batches the target really ran


def test_finished_rows_are_replaced_while_prompts_wait():
    target = target_model("llama")
    draft = draft_model("llama", "perturbed")
    generator = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 128, (int(n),), generator=generator).tolist()
               for n in torch.randint(1, 30, (30,), generator=generator)]
    ids, mask = left_pad(prompts, 0)
    eos = most_frequent_token(target, prompts[:6], 20)  # different budgets per row come from stop ids
    out = target.generate(ids, attention_mask=mask, assistant_model=draft, batch_spec="exspec", max_batch_size=4,
                          max_new_tokens=20, do_sample=False, eos_token_id=eos, pad_token_id=0,
                          return_dict_in_generate=True)
    stats = out.spec_stats
    assert stats.admitted_batches > 1 and max(stats.waiting_rows) > 0
    # one prompt per prefill beyond the free slots waits in a staging row and takes the next slot by a copy
    assert stats.staged_prompts > 0
    assert stats.target_prefill_calls < len(prompts) - stats.staged_prompts + 1
    for active, waiting in zip(stats.active_rows, stats.waiting_rows):
        if waiting:
            assert active == 4, "a slot stayed empty while prompts waited"
    assert stats.occupancy > 0.8
    for row, prompt in enumerate(prompts):  # and rows come back in input order
        new = plain_greedy(target, prompt, 20, (eos,))
        assert out.sequences[row, ids.shape[1]:ids.shape[1] + len(new)].tolist() == new


def test_exspec_is_the_default_for_batches(target=None):
    target = target_model("llama")
    ids, mask = left_pad([[5, 6], [7, 8, 9]], 0)
    out = target.generate(ids, attention_mask=mask, assistant_model=draft_model("llama", "perturbed"),
                          max_new_tokens=4, do_sample=False, pad_token_id=0, return_dict_in_generate=True)
    assert out.spec_stats.strategy == "exspec"


@pytest.mark.parametrize("kwargs", [dict(batch_spec="eqspec", max_batch_size=2),
                                    dict(batch_spec="eqspec", sort_by_length=True),
                                    dict(batch_spec="exspec", max_batch_size=0)])
def test_pool_options_are_checked(kwargs):
    target = target_model("llama")
    ids, mask = left_pad([[5, 6], [7, 8, 9]], 0)
    with pytest.raises(hf_batchspec.BatchSpecError, match="max_batch_size|sort_by_length"):
        target.generate(ids, attention_mask=mask, assistant_model=target, max_new_tokens=3, **kwargs)


def test_forward_timer_sees_every_forward_the_stats_count():
    """`ForwardTimer` counts every forward the stats count (the target is hooked once when it is its own draft
    too), times something inside them, and unhooks the models when its block ends: a forward after it adds
    nothing."""
    from hf_batchspec.profiling import ForwardTimer

    target = target_model("llama")
    draft = draft_model("llama", "perturbed")
    ids, mask = left_pad([[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]], 0)
    hooks = lambda: [len(m._forward_pre_hooks) + len(m._forward_hooks) for m in (target, draft)]  # noqa: E731
    before = hooks()
    with ForwardTimer(target, draft) as timer:
        out = target.generate(ids, attention_mask=mask, assistant_model=draft, batch_spec="exspec", max_batch_size=2,
                              max_new_tokens=9, do_sample=False, pad_token_id=0, eos_token_id=None,
                              speculation="always", return_dict_in_generate=True)
    stats = out.spec_stats
    assert timer.calls == stats.target_forward_calls + stats.draft_forward_calls
    assert timer.forward_seconds > 0.0 and timer.wall_seconds > 0.0  # a timer that never adds reads 0
    assert stats.target_prefill_calls == stats.draft_prefill_calls == stats.admitted_batches >= 2
    calls, seconds = timer.calls, timer.forward_seconds
    with torch.no_grad():
        target(ids[:1])
    assert (timer.calls, timer.forward_seconds) == (calls, seconds), "a hook outlived the timer's block"
    assert hooks() == before
    with ForwardTimer(target, target) as self_timer:  # the same model twice: one pair of hooks
        with torch.no_grad():
            target(ids[:1])
    assert self_timer.calls == 1
