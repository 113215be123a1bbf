import pytest
import torch
import transformers

from hf_batchspec.errors import UnsupportedModelError
from hf_batchspec.masks import (FULL, SLIDING, AttentionLayout, additive_mask, attention_layout, build_masks,
                                common_start, right_pack)


def test_right_pack_moves_prompts_to_slot_zero():
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10], [0, 0, 0, 3]])
    packed = right_pack(ids, torch.tensor([2, 4, 1]), fill=-1)
    assert packed.tolist() == [[5, 6, -1, -1], [7, 8, 9, 10], [3, -1, -1, -1]]


def test_additive_mask_causal_and_window():
    positions = torch.tensor([[2, 3], [0, 1]])
    mask = additive_mask(positions, kv_len=5, dtype=torch.float32)
    allowed = (mask == 0).squeeze(1).int().tolist()
    assert allowed == [[[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0]]]
    assert mask.min().item() == torch.finfo(torch.float32).min and mask.dtype == torch.float32
    windowed = (additive_mask(positions, 5, torch.float32, window=2) == 0).squeeze(1).int().tolist()
    assert windowed[0] == [[0, 1, 1, 0, 0], [0, 0, 1, 1, 0]]  # p - slot < 2


def test_a_step_that_reads_every_slot_gets_the_same_mask_as_zeros():
    """With a shared first position (`common_start`), a one-token step reading slots 0..start gets zeros, equal to
    `additive_mask`; any other forward (a window that reaches back less far, several queries, rows at their own
    positions) gets `additive_mask` itself."""
    assert common_start([4, 4, 4]) == 4 and common_start([4, 5]) is None and common_start([7]) == 7
    for window in (None, 3, 8):
        layout = AttentionLayout(windows={FULL: None, SLIDING: window}, as_dict=True)
        for slots, start in ((torch.tensor([[5], [5]]), 5), (torch.tensor([[5, 6], [5, 6]]), 5),
                             (torch.tensor([[5], [2]]), None)):
            kv_len = int(slots.max()) + 1
            masks = build_masks(layout, slots, kv_len, torch.float32, start=start)
            assert torch.equal(masks[FULL], additive_mask(slots, kv_len, torch.float32))
            assert torch.equal(masks[SLIDING], additive_mask(slots, kv_len, torch.float32, window))


def test_layouts_read_from_configs():
    assert attention_layout(transformers.LlamaConfig()).windows == {FULL: None}
    assert attention_layout(transformers.MistralConfig(sliding_window=7)).windows == {FULL: 7}
    qwen = transformers.Qwen3Config(num_hidden_layers=3, use_sliding_window=True, sliding_window=5, max_window_layers=1)
    layout = attention_layout(qwen)
    assert layout.as_dict and layout.windows == {FULL: None, SLIDING: 5}


def test_recurrent_layers_are_refused():
    config = transformers.LlamaConfig()
    config.layer_types = ["full_attention", "linear_attention"]
    with pytest.raises(UnsupportedModelError, match="linear_attention"):
        attention_layout(config)
