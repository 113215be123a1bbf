import pytest
import torch
import transformers

from hf_batchspec.errors import UnsupportedModelError
from hf_batchspec.masks import FULL, SLIDING, additive_mask, attention_layout, right_pack


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
