"""The whole-step compiled programs (`device_round`) on every test architecture: exact against plain greedy, every
round a device round. Compiling all 24 takes about 15 minutes on 2 CPU cores, too long for the default suite:
marked slow (`tox -e slow`, or `pytest -m slow tests/test_compiled_architectures.py`); the default suite compiles
the programs on Llama and on Qwen3 with sliding layers (tests/test_compiled.py)."""

from __future__ import annotations

import pytest
from transformers import CompileConfig

import hf_batchspec
from tests.toolkit import left_pad, plain_greedy
from tests.tiny_models import ARCHITECTURES, build, perturbed

PROMPTS = [[5, 6, 7], [9] * 6, [3, 4], [8], [11, 12, 13, 14], [15]]
MAX_NEW = 12


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_device_round_on_every_architecture(arch):
    target = hf_batchspec.enable(build(arch, seed=0))
    draft = perturbed(target, 0.05)
    ids, mask = left_pad(PROMPTS, 0)
    out = target.generate(ids, attention_mask=mask, assistant_model=draft, max_new_tokens=MAX_NEW, do_sample=False,
                          eos_token_id=None, pad_token_id=0, return_dict_in_generate=True, speculation="always",
                          num_assistant_tokens=3, max_batch_size=4, compile_config=CompileConfig())
    assert out.spec_stats.fused_rounds == out.spec_stats.rounds > 0
    for row, prompt in enumerate(PROMPTS):
        assert out.sequences[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, MAX_NEW, None), f"row {row}"
