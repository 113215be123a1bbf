"""RaggedCache against references built by hand, and against a real model run with HF's DynamicCache."""

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from hf_batchspec.cache import RaggedCache
from hf_batchspec.compat import cache_kwarg
from hf_batchspec.masks import additive_mask
from tests.tiny_models import build


def filled(batch=3, heads=2, slots=8, dim=4):
    cache = RaggedCache(num_layers=2, batch_size=batch, max_cache_len=slots)
    keys = torch.arange(batch * heads * slots * dim, dtype=torch.float32).reshape(batch, heads, slots, dim)
    cache.begin(torch.arange(slots).expand(batch, slots), kv_len=slots)
    for layer in range(2):
        cache.update(keys + layer, -keys - layer, layer)
    cache.set_lengths(np.full(batch, slots))
    return cache, keys


def test_writes_land_at_per_row_slots():
    cache = RaggedCache(num_layers=1, batch_size=2, max_cache_len=6)
    new = torch.ones(2, 1, 2, 3)
    new[1] *= 2
    cache.begin(torch.tensor([[0, 1], [3, 4]]), kv_len=5)
    keys, values = cache.update(new, -new, 0)
    assert keys.shape == (2, 1, 5, 3)
    assert keys[0, 0, :, 0].tolist() == [1, 1, 0, 0, 0]
    assert keys[1, 0, :, 0].tolist() == [0, 0, 0, 2, 2]
    assert torch.equal(values, -keys)


@pytest.mark.parametrize("batch, staging", [(1, 0), (3, 0), (3, 2)])
def test_a_shared_first_slot_writes_what_the_per_row_index_writes(batch, staging):
    """`begin(start=)`: every row's queries at slots start.. (a batch of one, rows of one length) are written as one
    slice per tensor. Caches and returned views equal those of the per-row index, staging rows untouched."""
    caches = [RaggedCache(num_layers=1, batch_size=batch, max_cache_len=9, staging=staging) for _ in range(2)]
    torch.manual_seed(0)
    before = torch.randn(batch + staging, 2, 9, 4)
    for cache in caches:
        cache.begin(torch.arange(9).expand(batch + staging, 9), kv_len=9)
        cache.update(before, -before, 0)
    new = torch.randn(batch, 2, 3, 4)
    slots = torch.arange(4, 7).expand(batch, 3)
    outs = []
    for cache, start in zip(caches, (None, 4)):
        cache.begin(slots, kv_len=7, start=start)
        outs.append(cache.update(new, -new, 0))
    (keys, values), (sliced_keys, sliced_values) = outs
    assert torch.equal(keys, sliced_keys) and torch.equal(values, sliced_values) and keys.shape == (batch, 2, 7, 4)
    assert torch.equal(caches[0].layers[0].keys, caches[1].layers[0].keys)
    assert torch.equal(caches[1].layers[0].keys[:batch, :, 4:7], new)
    assert torch.equal(caches[1].layers[0].keys[batch:], before[batch:])  # staged prompts' rows keep theirs


def test_rollback_moves_lengths_without_copying():
    cache, _ = filled()
    before = [layer.keys.data_ptr() for layer in cache.layers]
    snapshot = cache.layers[0].keys.clone()
    cache.rollback(np.array([3, 8, 0]))
    assert cache.lengths.tolist() == [3, 8, 0]
    assert [layer.keys.data_ptr() for layer in cache.layers] == before
    assert torch.equal(cache.layers[0].keys, snapshot)
    assert cache.get_seq_length() == 8
    with pytest.raises(ValueError):
        cache.rollback(np.array([4, 8, 0]))  # rollback cannot grow a row


def test_select_rows_keeps_chosen_rows_in_order():
    cache, keys = filled()
    cache.rollback(np.array([5, 6, 7]))
    cache.select_rows(torch.tensor([2, 0]))
    assert cache.batch_size == 2 and cache.lengths.tolist() == [7, 5]
    assert torch.equal(cache.layers[1].keys, keys[[2, 0]] + 1)
    assert torch.equal(cache.layers[1].values, -keys[[2, 0]] - 1)


def test_realign_matches_hand_built_shift():
    cache, keys = filled()
    shift = torch.tensor([0, 2, 5])
    cache.realign(shift)
    expected = keys.clone()
    for row, s in enumerate(shift.tolist()):  # reference: slot j takes slot j + s, by hand
        expected[row, :, : 8 - s] = keys[row, :, s:]
    valid = [8 - s for s in shift.tolist()]
    assert cache.lengths.tolist() == valid
    for row, n in enumerate(valid):
        assert torch.equal(cache.layers[0].keys[row, :, :n], expected[row, :, :n])


def test_left_align_moves_each_row_to_its_offset_and_back():
    cache, keys = filled()
    lengths = [3, 5, 1]
    cache.set_lengths(np.array(lengths))
    cache.left_align(np.array([2, 0, 4]))  # every row now ends at slot 5 (exclusive)
    for row, (n, offset) in enumerate(zip(lengths, [2, 0, 4])):
        assert torch.equal(cache.layers[0].keys[row, :, offset:offset + n], keys[row, :, :n])
    cache.left_align(np.array([0, 1, 0]))  # moves left for rows 0 and 2, right for row 1
    for row, (n, offset) in enumerate(zip(lengths, [0, 1, 0])):
        assert torch.equal(cache.layers[0].keys[row, :, offset:offset + n], keys[row, :, :n])
    assert cache.offsets.tolist() == [0, 1, 0]


def test_from_left_padded_matches_per_row_prefill():
    """A padded DynamicCache prefill, realigned, holds each row's own keys at slots 0..len-1."""
    model = build("llama")
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    width = 5
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    padded = DynamicCache(config=model.config)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, position_ids=position_ids, **{cache_kwarg(model): padded},
              use_cache=True)
    ragged = RaggedCache.from_left_padded(padded, mask, max_cache_len=12)
    assert ragged.lengths.tolist() == [5, 2, 3]
    for row, p in enumerate(prompts):
        alone = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=torch.tensor([p]), **{cache_kwarg(model): alone}, use_cache=True)
        for ours, ref in zip(ragged.layers, alone.layers):
            torch.testing.assert_close(ours.keys[row, :, : len(p)], ref.keys[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ours.values[row, :, : len(p)], ref.values[0], atol=1e-5, rtol=1e-5)


def test_model_forward_through_ragged_cache_equals_alone():
    """Rows of different lengths decoded together, with a rollback, give each row's own logits."""
    model = build("qwen3")
    rows = [[5, 6, 7, 8], [9, 10]]
    cache = RaggedCache(num_layers=2, batch_size=2, max_cache_len=10)
    packed = torch.tensor([row + [0] * (4 - len(row)) for row in rows])  # right-packed: slot = position
    positions = torch.arange(4).expand(2, 4)

    def step(tokens, pos, kv_len):
        cache.begin(pos, kv_len)
        mask = additive_mask(pos, kv_len, torch.float32)
        with torch.no_grad():
            return model(input_ids=tokens, position_ids=pos, attention_mask=mask,
                         **{cache_kwarg(model): cache}).logits

    step(packed, positions, 4)
    cache.set_lengths(np.array([4, 2]))
    # both rows get 2 tokens at their own positions; then row 0 rolls back one and rewrites it differently
    step(torch.tensor([[20, 21], [22, 23]]), torch.tensor([[4, 5], [2, 3]]), 6)
    cache.set_lengths(np.array([6, 4]))
    cache.rollback(np.array([5, 4]))
    logits = step(torch.tensor([[30], [31]]), torch.tensor([[5], [4]]), 6)
    for row, seq in enumerate([[5, 6, 7, 8, 20, 30], [9, 10, 22, 23, 31]]):
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([seq])).logits[0, -1]
        torch.testing.assert_close(logits[row, -1], alone, atol=1e-4, rtol=1e-4)


def test_crop_follows_transformers_contract_per_row():
    """Negative: remove that many tokens from every row; 0: nothing; positive: keep at most that many (the
    4.x meaning, still served by transformers 5.17). Nothing is copied either way."""
    cache, _ = filled()
    cache.set_lengths(np.array([8, 5, 2]))
    cache.crop(-3)
    assert cache.lengths.tolist() == [5, 2, 0]
    cache.crop(0)
    assert cache.lengths.tolist() == [5, 2, 0]
    cache.set_lengths(np.array([8, 5, 2]))
    cache.crop(4)
    assert cache.lengths.tolist() == [4, 4, 2]
