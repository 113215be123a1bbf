"""The compiled pair every compiled test shares, warmed up once per session: an inductor compile of the
whole-step programs costs tens of seconds on a CPU, and test_compiled and test_device_round run the same bucket
(4 rows, 64 slots, k=3). Session-scoped fixtures, registered in tests/conftest.py."""

from __future__ import annotations

import pytest
from transformers import CompileConfig

import hf_batchspec
from tests.tiny_models import build, perturbed
from tests.toolkit.counting import unique_graphs
from tests.toolkit.oracle import left_pad

@pytest.fixture(scope="session")
def compiled_pair():
    """A pair of its own (seed 11): the compiled tests count graphs, and nothing else compiles this model."""
    target = hf_batchspec.enable(build("llama", seed=11))
    return target, perturbed(target, 0.05, seed=12)


# a constant k (the default, speculation="auto", compiles a program per width it chooses)
COMPILED = dict(batch_spec="exspec", num_assistant_tokens=3, max_batch_size=4, compile_config=CompileConfig(),
                speculation="always")


def generate_compiled(target, draft, prompts, max_new, eos):
    ids, mask = left_pad(prompts, 0)
    out = target.generate(ids, attention_mask=mask, assistant_model=draft, max_new_tokens=max_new, do_sample=False,
                          eos_token_id=eos, pad_token_id=0, return_dict_in_generate=True, **COMPILED)
    return ids.shape[1], out


@pytest.fixture(scope="session")
def warmed(compiled_pair):
    """A warm-up covers every shape of the bucket (4 rows, 64 slots, k=3): the verify (width 4), a last token's
    plain step (width 1, a round where no row drafts), the draft's first step (width 2) and its later steps. The
    row buckets a call's tail moves into (2 rows) take the same graphs: their row count is dynamic."""
    target, draft = compiled_pair
    before = unique_graphs()
    generate_compiled(target, draft, [[5, 6, 7], [9] * 6, [3, 4], [8], [11, 12]], 24, None)
    generate_compiled(target, draft, [[5, 6], [7], [8, 9, 10], [11]], 2, None)
    return unique_graphs() - before


