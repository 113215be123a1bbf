"""The generate() drop-in: dispatch, HF conventions for inputs and outputs, enable()."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from transformers import LlamaForCausalLM

import hf_batchspec
from hf_batchspec import BatchSpecGenerateOutput, BatchSpeculativeGenerationMixin
from tests.toolkit import left_pad, plain_greedy
from tests.tiny_models import build, perturbed


@pytest.fixture(scope="module")
def target():
    return hf_batchspec.enable(build("llama"))


@pytest.fixture(scope="module")
def draft(target):
    return perturbed(target, 0.05)


PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16, 17]]


def test_enable_is_idempotent_and_keeps_identity():
    model = build("llama")
    cls = type(model)
    assert hf_batchspec.enable(model) is model
    assert isinstance(model, BatchSpeculativeGenerationMixin) and isinstance(model, cls)
    mixed = type(model)
    assert hf_batchspec.enable(model) is model and type(model) is mixed
    assert type(model).__name__ == cls.__name__


def test_save_pretrained_records_the_real_architecture(tmp_path, target):
    target.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


def test_mixin_in_a_class_definition(draft):
    class MyLlama(BatchSpeculativeGenerationMixin, LlamaForCausalLM):
        pass

    base = build("llama")
    model = MyLlama(base.config).eval()
    model.load_state_dict(base.state_dict())
    ids, mask = left_pad(PROMPTS, 0)
    out = model.generate(ids, attention_mask=mask, assistant_model=draft, max_new_tokens=8, do_sample=False,
                         pad_token_id=0, eos_token_id=None)
    for row, prompt in enumerate(PROMPTS):
        assert out[row, ids.shape[1]:].tolist() == plain_greedy(base, prompt, 8, None)


def test_without_assistant_generate_is_transformers_own(target):
    ids, mask = left_pad(PROMPTS, 0)
    plain = build("llama")
    expected = plain.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(target.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0),
                       expected)


def test_batch_one_with_unset_batch_spec_uses_hf_assisted(target, draft):
    ids = torch.tensor([PROMPTS[0]])
    out = target.generate(ids, assistant_model=draft, max_new_tokens=6, do_sample=False, pad_token_id=0,
                          return_dict_in_generate=True)
    assert not isinstance(out, BatchSpecGenerateOutput)
    ours = target.generate(ids, assistant_model=draft, batch_spec="eqspec", max_new_tokens=6, do_sample=False,
                           pad_token_id=0, return_dict_in_generate=True)
    assert isinstance(ours, BatchSpecGenerateOutput)
    assert torch.equal(out.sequences, ours.sequences)


def test_batch_with_unset_batch_spec_takes_over(target, draft):
    ids, mask = left_pad(PROMPTS, 0)
    out = target.generate(ids, attention_mask=mask, assistant_model=draft, max_new_tokens=5, do_sample=False,
                          pad_token_id=0, return_dict_in_generate=True)
    assert isinstance(out, BatchSpecGenerateOutput) and out.spec_stats.rounds > 0


def test_max_length_and_input_ids_kwarg(target, draft):
    ids, mask = left_pad(PROMPTS, 0)
    out = target.generate(input_ids=ids, attention_mask=mask, assistant_model=draft, batch_spec="eqspec",
                          max_length=ids.shape[1] + 9, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert out.shape == (3, ids.shape[1] + 9)
    for row, prompt in enumerate(PROMPTS):
        assert out[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, 9, None)


def test_no_mask_without_padding(target, draft):
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    out = target.generate(ids, assistant_model=draft, batch_spec="eqspec", max_new_tokens=7, do_sample=False,
                          pad_token_id=0, eos_token_id=None)
    for row in range(2):
        assert out[row, 3:].tolist() == plain_greedy(target, ids[row].tolist(), 7, None)


def test_pad_equal_to_eos_and_eos_list(target, draft):
    free = [plain_greedy(target, p, 12, None) for p in PROMPTS]
    eos = [free[0][3], free[2][1]]
    ids, mask = left_pad(PROMPTS, eos[0])
    out = target.generate(ids, attention_mask=mask, assistant_model=draft, batch_spec="eqspec", max_new_tokens=12,
                          do_sample=False, eos_token_id=eos, pad_token_id=eos[0])
    for row, prompt in enumerate(PROMPTS):
        new = plain_greedy(target, prompt, 12, tuple(eos))
        got = out[row, ids.shape[1]:].tolist()
        assert got[: len(new)] == new and set(got[len(new):]) <= {eos[0]}


def test_generation_config_from_the_model_is_honoured(target, draft):
    ids, mask = left_pad(PROMPTS, 0)
    config = transformers.GenerationConfig(max_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=None)
    out = target.generate(ids, attention_mask=mask, assistant_model=draft, batch_spec="eqspec",
                          generation_config=config)
    assert out.shape[1] == ids.shape[1] + 4


def test_num_assistant_tokens_resolution(target):
    ids, mask = left_pad(PROMPTS, 0)
    draft = perturbed(target, 0.05)
    run = lambda **kw: target.generate(ids, attention_mask=mask, assistant_model=draft, batch_spec="eqspec",  # noqa
                                       max_new_tokens=6, do_sample=False, pad_token_id=0,
                                       return_dict_in_generate=True, **kw).spec_stats.num_assistant_tokens
    assert run() == 5  # HF's default of 20 counts as unset
    draft.generation_config.num_assistant_tokens = 3
    assert run() == 3  # the draft's own config, as HF reads it
    assert run(num_assistant_tokens=7) == 7  # the kwarg wins


@pytest.mark.parametrize("dtype", [torch.long, torch.int32])
def test_output_dtype_and_a_bool_mask_as_transformers(target, draft, dtype):
    """int32 or int64 ids with a boolean mask: the output has the dtype transformers' own generate gives for these
    ids (int64: it concatenates int64 tokens), and the rows are plain greedy's. (That the output stays on the
    inputs' device is the GPU lane's: tests/test_gpu.py.)"""
    ids, mask = left_pad(PROMPTS, 0)
    out = target.generate(ids.to(dtype), attention_mask=mask.bool(), assistant_model=draft, batch_spec="eqspec",
                          max_new_tokens=3, do_sample=False, pad_token_id=0, eos_token_id=None)
    theirs = target.generate(ids[:1].to(dtype), attention_mask=mask[:1].bool(), max_new_tokens=3, do_sample=False,
                             pad_token_id=0, eos_token_id=None)
    assert out.dtype == theirs.dtype == torch.long
    for row, prompt in enumerate(PROMPTS):
        assert out[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, 3, None)


def test_callers_position_ids_equal_to_the_rows_positions_are_honoured(target, draft):
    """position_ids that count each row's real tokens from 0 (transformers' own, from the mask) are the
    positions the rows decode at: served, equal to plain greedy."""
    ids, mask = left_pad(PROMPTS, 0)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, W] transformers' positions for a left-padded batch
    out = target.generate(ids, attention_mask=mask, position_ids=positions, assistant_model=draft, max_new_tokens=6,
                          do_sample=False, pad_token_id=0, eos_token_id=None)
    for row, prompt in enumerate(PROMPTS):
        assert out[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, 6, None)


def test_pad_equal_to_eos_as_first_token_without_a_mask(target, draft):
    """GPT-2 style: pad == eos == bos starts every row, no mask. transformers infers no padding when pad is an
    eos id, and runs every token; so must we, equal to plain greedy of each row (trimmed at eos)."""
    prompts = [[3, 5, 6, 7], [3, 9, 10, 11]]
    ids = torch.tensor(prompts)
    out = target.generate(ids, assistant_model=draft, max_new_tokens=10, do_sample=False, pad_token_id=3,
                          eos_token_id=3)
    for row, prompt in enumerate(prompts):
        new = plain_greedy(target, prompt, 10, (3,))
        got = out[row, ids.shape[1]:].tolist()
        assert got[: len(new)] == new and set(got[len(new):]) <= {3}


def test_one_prompt_with_several_samples_is_a_batch(target, draft):
    """1 prompt x 4 samples is 4 rows: transformers' assisted generation refuses it (batch 1 only), so it is
    routed by rows, not prompts, to batch speculative decoding."""
    ids = torch.tensor([PROMPTS[0]])
    out = target.generate(ids, assistant_model=draft, do_sample=True, num_return_sequences=4, max_new_tokens=5,
                          pad_token_id=0, eos_token_id=None, return_dict_in_generate=True)
    assert isinstance(out, BatchSpecGenerateOutput) and out.spec_stats.strategy == "exspec"
    assert out.sequences.shape == (4, ids.shape[1] + 5)
    assert (out.sequences[:, : ids.shape[1]] == ids).all()


def test_batch_streamer_at_batch_one_asks_for_batch_spec(target, draft):
    """hf_batchspec's own streamer at batch 1 with batch_spec unset: transformers' assisted path would call its
    put(); asking for it asks for batch speculative decoding, which streams every token of the output."""
    ids = torch.tensor([PROMPTS[2]])
    streamer = hf_batchspec.BatchIteratorStreamer(timeout=60)
    out = target.generate(ids, assistant_model=draft, max_new_tokens=7, do_sample=False, pad_token_id=0,
                          eos_token_id=None, streamer=streamer)
    streamed = [token for row, tokens in streamer for token in tokens]
    assert streamed == out[0, ids.shape[1]:].tolist() == plain_greedy(target, PROMPTS[2], 7, None)


def test_running_past_max_position_embeddings_warns_once(draft):
    """transformers warns when a call runs past the model's max_position_embeddings; so does ours, once per call
    and before any forward."""
    from transformers.testing_utils import CaptureLogger

    from hf_batchspec import validation

    short = hf_batchspec.enable(build("llama", max_position_embeddings=12))
    ids, mask = left_pad(PROMPTS, 0)  # longest prompt 7 tokens
    run = lambda n: short.generate(ids, attention_mask=mask, assistant_model=draft, max_new_tokens=n,  # noqa: E731
                                   do_sample=False, pad_token_id=0, eos_token_id=None)
    with CaptureLogger(validation.logger) as within:
        run(6)  # the last of 7 + 6 tokens is never fed back: positions 0..11, inside
    warned_at_first_forward = []
    with CaptureLogger(validation.logger) as past:
        hook = short.register_forward_pre_hook(
            lambda *a: warned_at_first_forward.append("max_position_embeddings" in past.io.getvalue()))
        try:
            run(7)  # positions up to 12
        finally:
            hook.remove()
    assert "max_position_embeddings" not in within.out
    assert past.out.count("max_position_embeddings=12") == 1 and warned_at_first_forward[0]
