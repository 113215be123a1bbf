"""Every refused request raises a clear error before any forward pass runs."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import LogitsProcessor, LogitsProcessorList, TextStreamer

import hf_batchspec
from hf_batchspec import BatchSpecError, UnsupportedModelError
from tests.reference import left_pad
from tests.tiny_models import build


@pytest.fixture(scope="module")
def pair():
    target = hf_batchspec.enable(build("llama"))
    return target, build("llama", seed=5)


@pytest.fixture
def no_forward(pair):
    """Counts forward calls of both models; the test asserts none happened."""
    calls = []
    handles = [m.register_forward_pre_hook(lambda *a: calls.append(1)) for m in pair]
    yield calls
    for h in handles:
        h.remove()


@pytest.fixture(scope="module")
def batch():
    return left_pad([[5, 6, 7], [8, 9]], pad_id=0)


class Custom(LogitsProcessor):
    def __call__(self, input_ids, scores):
        return scores


CASES = {
    "beams": (dict(num_beams=2), "num_beams"),
    "return_sequences": (dict(num_return_sequences=2, do_sample=True), "num_return_sequences"),
    "bad_generator": (dict(generator=3), "generator"),
    "begin_suppress_tokens": (dict(begin_suppress_tokens=[3]), "SuppressTokensAtBeginLogitsProcessor"),
    "prefix_allowed_tokens_fn": (dict(prefix_allowed_tokens_fn=lambda b, ids: [3]), "prefix_allowed_tokens_fn"),
    "stop_strings_without_tokenizer": (dict(stop_strings=["ab"]), "tokenizer"),
    "output_attentions": (dict(output_attentions=True, return_dict_in_generate=True), "output_attentions"),
    "unknown_strategy": (dict(batch_spec="fastest"), "batch_spec='fastest'"),
    "custom_logits_processor": (dict(logits_processor=LogitsProcessorList([Custom()])), "Custom"),
    "hf_streamer_for_a_batch": (dict(streamer=TextStreamer(tokenizer=None)), "BatchIteratorStreamer"),
    "schedule": (dict(num_assistant_tokens_schedule="fastest"), "num_assistant_tokens_schedule"),
    "confidence": (dict(assistant_confidence_threshold=1.5), "assistant_confidence_threshold"),
    "bad_k": (dict(num_assistant_tokens=0), "num_assistant_tokens"),
    "use_cache": (dict(use_cache=False), "use_cache"),
    "user_cache": (dict(past_key_values=transformers.DynamicCache()), "past_key_values"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_before_any_work(pair, batch, no_forward, case):
    target, draft = pair
    kwargs, message = CASES[case]
    ids, mask = batch
    call = dict(attention_mask=mask, assistant_model=draft, batch_spec="eqspec", max_new_tokens=4, do_sample=False)
    call.update(kwargs)
    with pytest.raises(BatchSpecError, match=message):
        target.generate(ids, **call)
    assert not no_forward


def test_nothing_to_generate(pair, batch, no_forward):
    ids, mask = batch  # transformers itself refuses this one, with its own message
    with pytest.raises(ValueError, match="max_length"):
        pair[0].generate(ids, attention_mask=mask, assistant_model=pair[1], batch_spec="eqspec", max_length=2)
    assert not no_forward


def test_batch_spec_without_assistant(pair, batch, no_forward):
    ids, mask = batch
    with pytest.raises(BatchSpecError, match="assistant_model"):
        pair[0].generate(ids, attention_mask=mask, batch_spec="eqspec", max_new_tokens=3)
    assert not no_forward


def test_vocabularies_must_match(pair, batch, no_forward):
    ids, mask = batch
    other = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=200, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(BatchSpecError, match="vocabular"):
        pair[0].generate(ids, attention_mask=mask, assistant_model=other, batch_spec="eqspec", max_new_tokens=3)
    assert not no_forward


def test_padding_without_attention_mask(pair, batch, no_forward):
    ids, _ = batch
    with pytest.raises(BatchSpecError, match="attention_mask"):
        pair[0].generate(ids, assistant_model=pair[1], batch_spec="eqspec", max_new_tokens=3, pad_token_id=0)
    assert not no_forward


def test_right_padding_refused(pair, no_forward):
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    with pytest.raises(BatchSpecError, match="padding_side = 'left'"):
        pair[0].generate(ids, attention_mask=mask, assistant_model=pair[1], batch_spec="eqspec", max_new_tokens=3)
    assert not no_forward


def test_encoder_decoder_refused(pair, batch):
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=128, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2))
    with pytest.raises(UnsupportedModelError, match="encoder-decoder"):
        hf_batchspec.enable(t5)
    ids, mask = batch
    with pytest.raises(UnsupportedModelError, match="encoder-decoder"):
        pair[0].generate(ids, attention_mask=mask, assistant_model=t5, batch_spec="eqspec", max_new_tokens=3)


def test_model_without_lm_head_refused():
    with pytest.raises(UnsupportedModelError, match="AutoModelForCausalLM"):
        hf_batchspec.enable(transformers.LlamaModel(transformers.LlamaConfig(
            vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)))


def test_unsupported_attention_implementation(pair, batch):
    draft = build("llama", seed=3)
    draft.config._attn_implementation_internal = "flash_attention_2"
    ids, mask = batch
    with pytest.raises(UnsupportedModelError, match="attn_implementation"):
        pair[0].generate(ids, attention_mask=mask, assistant_model=draft, batch_spec="eqspec", max_new_tokens=3)


@pytest.mark.parametrize("bad", [[[1, 2], [3, 4]], torch.tensor([1, 2, 3])], ids=["list", "1d"])
def test_input_ids_must_be_a_2d_tensor(pair, no_forward, bad):
    with pytest.raises(BatchSpecError, match="input_ids must be"):
        pair[0].generate(bad, assistant_model=pair[1], batch_spec="eqspec", max_new_tokens=3)
    assert not no_forward
