"""Every refused request raises a clear error before any forward pass runs."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import LogitsProcessor, LogitsProcessorList, TextStreamer

import hf_batchspec
from hf_batchspec import BatchSpecError, UnsupportedModelError
from tests.toolkit import ForwardCount, left_pad, plain_greedy
from tests.tiny_models import build


@pytest.fixture(scope="module")
def pair():
    target = hf_batchspec.enable(build("llama"))
    return target, build("llama", seed=5)


@pytest.fixture
def no_forward(pair):
    """Counts forward calls of both models; the test asserts none happened."""
    with ForwardCount(*pair) as forwards:
        yield forwards


@pytest.fixture(scope="module")
def batch():
    return left_pad([[5, 6, 7], [8, 9]], pad_id=0)


class Custom(LogitsProcessor):
    def __call__(self, input_ids, scores):
        return scores


CASES = {
    "beams": (dict(num_beams=2), "num_beams"),
    "ngram_size_with_assistant": (dict(max_matching_ngram_size=3), "max_matching_ngram_size configures prompt lookup"),
    "bad_generator": (dict(generator=3), "generator"),
    "synthid_watermark": (dict(watermarking_config=transformers.SynthIDTextWatermarkingConfig(
        ngram_len=5, keys=[654, 400, 836, 123, 340])),
                          "SynthID"),
    "prefix_allowed_tokens_fn_not_callable": (dict(prefix_allowed_tokens_fn=[3]), "prefix_allowed_tokens_fn"),
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
    "offloaded_cache": (dict(cache_implementation="offloaded"), "cache_implementation='offloaded'"),
    "quantized_cache_in_generation_config": (
        dict(generation_config=transformers.GenerationConfig(cache_implementation="quantized", max_new_tokens=4)),
        "cache_implementation='quantized'"),
    "prompt_lookup_with_assistant": (dict(prompt_lookup_num_tokens=3), "assistant_model and prompt_lookup_num_tokens "
                                                                       "are two draft sources"),
    "early_exit_with_assistant": (dict(assistant_early_exit=1), "assistant_model and assistant_early_exit are two"),
    "max_cache_len": (dict(max_cache_len=64), "max_cache_len"),
    "contrastive_search": (dict(penalty_alpha=0.6, top_k=4), "penalty_alpha"),
    "max_batch_size_with_eqspec": (dict(max_batch_size=2), "batch_spec='exspec'"),
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


@pytest.mark.parametrize("max_length", [2, 3], ids=["shorter", "equal"])
def test_nothing_to_generate(pair, batch, no_forward, max_length):
    """A max_length no longer than the prompts (width 3) leaves nothing to generate: the plan refuses it before
    transformers prepares the call (which would refuse it with a message of its own), naming both lengths, before
    any forward. One token more is served: one plain-greedy token a row."""
    ids, mask = batch
    message = refused(pair, no_forward, "Nothing to generate", ids, attention_mask=mask,
                      assistant_model=pair[1], batch_spec="eqspec", max_length=max_length)
    assert f"max_length={max_length} is not beyond the input length 3" in message
    out = pair[0].generate(ids, attention_mask=mask, assistant_model=pair[1], batch_spec="eqspec", max_length=4,
                           do_sample=False, pad_token_id=0, eos_token_id=None)
    assert out.shape == (2, 4)
    for row in range(2):
        assert out[row, 3:].tolist() == plain_greedy(pair[0], [t for t, m in zip(ids[row].tolist(),
                                                                             mask[row].tolist()) if m], 1, None)


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


def refused(pair, no_forward, message, ids, **kwargs):
    with pytest.raises(BatchSpecError, match=message) as error:
        pair[0].generate(ids, **kwargs)
    assert not no_forward, "refused after a forward pass ran"
    return str(error.value)


@pytest.mark.parametrize("convert", [lambda ids: ids.float(), lambda ids: ids.float() + 0.7, lambda ids: ids.bool()],
                         ids=["float", "float_fraction", "bool"])
def test_input_ids_must_be_integers(pair, batch, no_forward, convert):
    ids, mask = batch
    refused(pair, no_forward, "integer token ids", convert(ids), attention_mask=mask, assistant_model=pair[1],
            max_new_tokens=8)


@pytest.mark.parametrize("bad_id", [-1, 128, 10_000])
def test_ids_outside_the_vocabulary(pair, batch, no_forward, bad_id):
    ids, mask = batch
    ids = ids.clone()
    ids[1, 2] = bad_id
    message = refused(pair, no_forward, "outside the vocabulary", ids, attention_mask=mask, assistant_model=pair[1],
                      max_new_tokens=4)
    assert "input_ids[1, 2]" in message and "[0, 128)" in message


def test_padding_ids_are_never_embedded(pair, batch):
    """Masked positions are padding: whatever id they hold (here one outside the vocabulary) is never read."""
    ids, mask = batch
    padded = ids.masked_fill(mask == 0, 500)
    out = pair[0].generate(padded, attention_mask=mask, assistant_model=pair[1], max_new_tokens=5, do_sample=False,
                           pad_token_id=0)
    expected = pair[0].generate(ids, attention_mask=mask, assistant_model=pair[1], max_new_tokens=5, do_sample=False,
                                pad_token_id=0)
    assert torch.equal(out[:, ids.shape[1]:], expected[:, ids.shape[1]:])


@pytest.mark.parametrize("value", [2, 0.5], ids=["two", "half"])
def test_mask_must_be_zeros_and_ones(pair, batch, no_forward, value):
    ids, mask = batch
    mask = mask.float() if isinstance(value, float) else mask.clone()
    mask[0, 1] = value
    refused(pair, no_forward, "only 0", ids, attention_mask=mask, assistant_model=pair[1], max_new_tokens=4)


def test_mask_must_match_the_ids(pair, batch, no_forward):
    ids, mask = batch
    refused(pair, no_forward, "attention_mask has shape", ids, attention_mask=mask[:, 1:], assistant_model=pair[1],
            max_new_tokens=4)
    refused(pair, no_forward, "attention_mask must be a tensor", ids, attention_mask=mask.tolist(),
            assistant_model=pair[1], max_new_tokens=4)


def test_hole_in_the_mask_is_named_as_such(pair, no_forward):
    ids = torch.tensor([[5, 6, 7, 8], [0, 9, 10, 11]])
    mask = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 1]])
    message = refused(pair, no_forward, "hole", ids, attention_mask=mask, assistant_model=pair[1], max_new_tokens=4)
    assert "row 0" in message and "padding_side" not in message


def test_empty_prompts_refused(pair, no_forward):
    ids = torch.zeros((2, 0), dtype=torch.long)
    refused(pair, no_forward, "empty", ids, attention_mask=ids, assistant_model=pair[1], max_new_tokens=4)


def test_inputs_embeds_batch_refused_with_our_message(pair, batch, no_forward):
    """The batch size comes from inputs_embeds too: a batch of embeddings must not reach transformers'
    batch-1 assisted generation."""
    ids, mask = batch
    embeds = pair[0].get_input_embeddings()(ids)
    message = refused(pair, no_forward, "inputs_embeds", None, inputs_embeds=embeds, attention_mask=mask,
                      assistant_model=pair[1], max_new_tokens=4)
    assert "input_ids" in message and "batch_size = 1" not in message


@pytest.mark.parametrize("option", [dict(max_batch_size=2), dict(sort_by_length=True), dict(speculation="auto"),
                                    dict(generator=torch.Generator())], ids=lambda o: next(iter(o)))
def test_our_options_without_assistant_name_the_missing_assistant(pair, no_forward, option):
    ids, mask = left_pad([[5 + i, 6, 7] for i in range(16)], pad_id=0)
    message = refused(pair, no_forward, "assistant_model", ids, attention_mask=mask, max_new_tokens=4, **option)
    assert "eqspec" not in message and "batch 1" not in message


@pytest.mark.parametrize("option", [dict(max_batch_size=2), dict(speculation="auto")], ids=lambda o: next(iter(o)))
def test_our_options_at_batch_one_name_batch_spec(pair, no_forward, option):
    ids = torch.tensor([[5, 6, 7]])
    message = refused(pair, no_forward, "batch_spec='exspec'", ids, attention_mask=torch.ones_like(ids),
                      assistant_model=pair[1], max_new_tokens=4, **option)
    assert "eqspec decodes" not in message


def test_mtp_on_a_model_without_mtp_layers_is_refused_with_the_cause(pair, batch, no_forward):
    ids, mask = batch
    message = refused(pair, no_forward, "use_mtp=True", ids, attention_mask=mask, max_new_tokens=4, use_mtp=True)
    assert "declares no multi-token-prediction layers" in message and "batch_size = 1" not in message


LOOKUP_CASES = {
    "k": (dict(prompt_lookup_num_tokens=0), "prompt_lookup_num_tokens must be a positive integer"),
    "ngram": (dict(prompt_lookup_num_tokens=3, max_matching_ngram_size=0), "max_matching_ngram_size must be"),
    "num_assistant_tokens": (dict(prompt_lookup_num_tokens=3, num_assistant_tokens=4), "`num_assistant_tokens` "
                             "configures a draft model"),
    "threshold": (dict(prompt_lookup_num_tokens=3, assistant_confidence_threshold=0.3), "configures a draft model"),
    "early_exit_all_layers": (dict(assistant_early_exit=2), "between 1 and 1 of the target's 2 decoder layers"),
    "early_exit_zero": (dict(assistant_early_exit=0), "between 1 and 1"),
    "both": (dict(prompt_lookup_num_tokens=3, assistant_early_exit=1), "two draft sources"),
    # an argument of another source is refused, not dropped (`drafters.registry.resolve`)
    "assistant_tokenizer_with_lookup": (dict(prompt_lookup_num_tokens=3, assistant_tokenizer=object()),
                                        "assistant_tokenizer configures a draft with another tokenizer, but this "
                                        "call drafts with prompt lookup"),
    "assistant_tokenizer_with_early_exit": (dict(assistant_early_exit=1, assistant_tokenizer=object()),
                                            "assistant_tokenizer configures a draft with another tokenizer"),
}


@pytest.mark.parametrize("case", sorted(LOOKUP_CASES))
def test_other_draft_sources_refuse_bad_settings_before_any_work(pair, batch, no_forward, case):
    ids, mask = batch
    option, message = LOOKUP_CASES[case]
    refused(pair, no_forward, message, ids, attention_mask=mask, max_new_tokens=4, **option)


def test_greedy_with_several_return_sequences_is_refused(pair, batch):
    ids, mask = batch
    with pytest.raises(ValueError, match="num_return_sequences"):  # transformers' own check, before any forward
        pair[0].generate(ids, attention_mask=mask, prompt_lookup_num_tokens=3, max_new_tokens=4, do_sample=False,
                         num_return_sequences=2, pad_token_id=0)


def test_checkpoint_cache_default_is_not_the_callers_request(pair, batch):
    """A checkpoint's own generation_config (Gemma's ships cache_implementation="hybrid") is not refused: the
    caller did not ask for it. The same setting passed by the caller is (test_refused_before_any_work)."""
    target, draft = pair
    ids, mask = batch
    target.generation_config.cache_implementation = "hybrid"
    try:
        out = target.generate(ids, attention_mask=mask, assistant_model=draft, max_new_tokens=3, do_sample=False,
                              pad_token_id=0)
    finally:
        target.generation_config.cache_implementation = None
    assert out.shape == (2, ids.shape[1] + 3)


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16])
def test_small_integer_ids_are_refused_naming_the_dtype(pair, batch, no_forward, dtype):
    """An embedding takes int32/int64 indices only (transformers' own generate fails inside the forward); the
    vocabulary check compared in the ids' own dtype, where 128 wraps, and blamed a valid id instead."""
    ids, mask = batch
    ids = ids.clone()
    ids[1, 2] = 89
    message = refused(pair, no_forward, str(dtype), ids.to(dtype), attention_mask=mask, assistant_model=pair[1],
                      max_new_tokens=4)
    assert ".long()" in message and "outside" not in message


def test_ids_past_int32_are_compared_without_wrapping(pair, batch, no_forward):
    """An id of 2**32 + 5 is outside any vocabulary; compared in a narrower dtype it would read as 5."""
    ids, mask = batch
    ids = ids.clone()
    ids[0, 1] = 2**32 + 5
    message = refused(pair, no_forward, "outside the vocabulary", ids, attention_mask=mask, assistant_model=pair[1],
                      max_new_tokens=4)
    assert str(2**32 + 5) in message


def test_callers_position_ids_that_differ_from_the_rows_positions_are_refused(pair, batch, no_forward):
    """transformers honours a caller's position_ids; per-row decoding counts each row's real tokens from 0, so
    other positions (here a plain arange over the padded width) would be dropped: refused, naming what to do."""
    ids, mask = batch
    positions = torch.arange(ids.shape[1]).expand_as(ids)  # [B, W]
    message = refused(pair, no_forward, "position_ids", ids, attention_mask=mask, position_ids=positions,
                      assistant_model=pair[1], max_new_tokens=4)
    assert "attention_mask" in message and "row 1" in message


@pytest.mark.parametrize("value", [2.5, 3.0, True, 0, -1], ids=["fraction", "float", "bool", "zero", "negative"])
def test_max_new_tokens_must_be_a_positive_int(pair, batch, no_forward, value):
    """2.5 crashed inside the decode loop (a float size); transformers runs it as 3 and refuses 0 only."""
    ids, mask = batch
    message = refused(pair, no_forward, "max_new_tokens must be a positive integer", ids, attention_mask=mask,
                      assistant_model=pair[1], max_new_tokens=value)
    assert repr(value) in message


def test_max_new_tokens_from_a_generation_config_is_checked_too(pair, batch, no_forward):
    ids, mask = batch
    config = transformers.GenerationConfig(max_new_tokens=4, do_sample=False)
    config.max_new_tokens = 2.5  # set after construction, as a caller may
    refused(pair, no_forward, "max_new_tokens must be a positive integer", ids, attention_mask=mask,
            assistant_model=pair[1], generation_config=config)


@pytest.mark.parametrize("value", ["no", 0.0, 1], ids=["str", "float", "int"])
def test_sort_by_length_must_be_a_bool(pair, batch, no_forward, value):
    """bool("no") is True: a string or number was taken as a truth value and the call ran another order."""
    ids, mask = batch
    refused(pair, no_forward, "sort_by_length must be True or False", ids, attention_mask=mask,
            assistant_model=pair[1], batch_spec="exspec", sort_by_length=value, max_new_tokens=4)


def test_pad_inside_a_prompt_without_a_mask_is_refused(pair, no_forward):
    """With pad_token_id != eos transformers infers attention_mask = input_ids != pad_token_id wherever the pad
    occurs, so a pad id inside a prompt is masked there; served with an all-ones mask it would differ."""
    ids = torch.tensor([[5, 6, 7], [8, 0, 9]])
    message = refused(pair, no_forward, "attention_mask", ids, assistant_model=pair[1], batch_spec="eqspec",
                      max_new_tokens=3, pad_token_id=0, eos_token_id=2)
    assert "pad_token_id=0" in message


def test_batch_streamer_without_a_draft_source_is_refused(pair, batch, no_forward):
    """A BatchIteratorStreamer streams batch speculative decoding; transformers' generate would call its put()."""
    ids, mask = batch
    message = refused(pair, no_forward, "BatchIteratorStreamer", ids, attention_mask=mask, max_new_tokens=4,
                      streamer=hf_batchspec.BatchIteratorStreamer())
    assert "assistant_model" in message and "TextIteratorStreamer" in message


def test_mixin_on_an_encoder_decoder_class_is_refused_at_construction():
    """The mixin as a base class of an encoder-decoder model broke even plain generate; refused when the model
    is built, with the message enable() gives."""
    config = transformers.T5Config(vocab_size=128, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)

    class MyT5(hf_batchspec.BatchSpeculativeGenerationMixin, transformers.T5ForConditionalGeneration):
        pass

    with pytest.raises(UnsupportedModelError) as built:
        MyT5(config)
    with pytest.raises(UnsupportedModelError) as enabled:
        hf_batchspec.enable(transformers.T5ForConditionalGeneration(config))
    assert str(built.value) == str(enabled.value).replace("T5ForConditionalGeneration", "MyT5")
    assert "encoder-decoder" in str(built.value)


def test_a_budget_whose_caches_cannot_fit_is_refused_with_the_numbers(pair, batch, no_forward):
    ids, mask = batch
    message = refused(pair, no_forward, "preallocated", ids, attention_mask=mask, assistant_model=pair[1],
                      batch_spec="exspec", max_new_tokens=10**12, pad_token_id=0)
    assert "GiB" in message and "max_new_tokens" in message


def test_transformers_own_refusals_while_preparing_come_as_ours(pair, batch, no_forward):
    """A processor's value that transformers checks while it prepares the call (before any forward) is refused in
    the library's error type, with transformers' message."""
    ids, mask = batch
    message = refused(pair, no_forward, "transformers refused this call before any work", ids, attention_mask=mask,
                      assistant_model=pair[1], batch_spec="exspec", max_new_tokens=4, do_sample=True,
                      temperature=-1.0, pad_token_id=0)
    assert "temperature" in message


@pytest.mark.parametrize("ids, message", [(torch.tensor([5, 6, 7]), r"\[batch, length\]"),
                                          (torch.zeros((0, 3), dtype=torch.long), "empty")],
                         ids=["1d", "no_rows"])
def test_ids_that_are_no_batch_get_our_message_without_batch_spec(pair, no_forward, ids, message):
    """Without batch_spec, a call of one row is transformers' own; ids that are no batch of rows at all come to our
    checks, which name the cause (transformers would fail deep inside)."""
    refused(pair, no_forward, message, ids, assistant_model=pair[1], max_new_tokens=4)


def _tiny(config_class, **fields):
    config = config_class(vocab_size=128, pad_token_id=0, bos_token_id=1, eos_token_id=2, **fields)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


SHAPE_WINDOWS = {  # models that apply a window from each forward's key length: served while the cache fits in it
    "gpt_neo": (transformers.GPTNeoConfig, dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                                                attention_types=[[["global", "local"], 1]], window_size=8,
                                                max_position_embeddings=128), "window_size=8"),
}


@pytest.mark.parametrize("arch", sorted(SHAPE_WINDOWS))
def test_a_cache_longer_than_a_window_the_model_applies_itself_is_refused(arch):
    """GPT-Neo's local layers slice their own mask buffer as if each row's queries were the newest keys: rows of
    different lengths were wrong past the window (the longest row alone right). Refused before any forward once the
    cache outgrows the window; exact within it."""
    config_class, fields, message = SHAPE_WINDOWS[arch]
    target = hf_batchspec.enable(_tiny(config_class, **fields))
    ids, mask = left_pad([[5, 6, 7], [8, 9]], pad_id=0)
    with ForwardCount(target) as forwards, pytest.raises(UnsupportedModelError, match=message):
        target.generate(ids, attention_mask=mask, prompt_lookup_num_tokens=2, batch_spec="exspec", max_new_tokens=12,
                        do_sample=False)
    assert not forwards
    out = target.generate(ids, attention_mask=mask, prompt_lookup_num_tokens=2, batch_spec="exspec", max_new_tokens=3,
                          do_sample=False, speculation="always")
    assert [row[ids.shape[1]:].tolist() for row in out] == [
        plain_greedy(target, prompt, 3) for prompt in ([5, 6, 7], [8, 9])]


MODELS_REFUSED = {  # model kinds whose cache cannot be laid out per row, with the cause the refusal names
    "openai_gpt": (transformers.OpenAIGPTConfig, dict(n_embd=32, n_layer=2, n_head=4, n_positions=64),
                   "takes no key/value cache"),
    "mamba": (transformers.MambaConfig, dict(hidden_size=32, state_size=8, num_hidden_layers=2),
              "recurrent state"),  # (5.17: no key/value cache; 5.25 takes `cache` but no position_ids)
    "doge": (getattr(transformers, "DogeConfig", None), dict(hidden_size=32, intermediate_size=64,
                                                             num_hidden_layers=2, num_attention_heads=4,
                                                             num_key_value_heads=2, keep_window_size=6),
             "dynamic mask"),
    "dory": (getattr(transformers, "DoryConfig", None), dict(hidden_size=32, intermediate_size=64,
                                                               num_hidden_layers=3, num_attention_heads=4,
                                                               num_key_value_heads=2, n_input_layers=1,
                                                               n_output_layers=1), "times per token"),
}


@pytest.mark.parametrize("arch", sorted(MODELS_REFUSED))
def test_models_whose_cache_is_not_per_row_are_refused_with_the_cause(arch):
    """OpenAI GPT takes no cache (the ragged cache vanished into its **kwargs, and every call crashed), Mamba keeps a
    recurrent state, Dory runs its middle layers several times per token with cache layers it adds itself, Doge's
    dynamic mask depends on each forward's keys (rows differed from their decoding alone)."""
    config_class, fields, message = MODELS_REFUSED[arch]
    if config_class is None:
        pytest.skip(f"this transformers has no {arch}")
    with pytest.raises(UnsupportedModelError, match=message):
        hf_batchspec.enable(_tiny(config_class, **fields))


def test_early_exit_of_a_model_with_per_layer_inputs_is_refused(no_forward):
    """Gemma 3n embeds an input per decoder layer, reshaped by the layer count: its first layers alone crashed."""
    config = transformers.Gemma3nTextConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, sliding_window=8, vocab_size_per_layer_input=128,
        hidden_size_per_layer_input=8, num_kv_shared_layers=2, laurel_rank=4, activation_sparsity_pattern=[0.0] * 4,
        altup_num_inputs=2, layer_types=["sliding_attention", "full_attention"] * 2, pad_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    target = hf_batchspec.enable(transformers.AutoModelForCausalLM.from_config(config).eval())
    ids, mask = left_pad([[5, 6, 7], [8, 9]], pad_id=0)
    with ForwardCount(target) as forwards, pytest.raises(BatchSpecError, match="per decoder layer"):
        target.generate(ids, attention_mask=mask, assistant_early_exit=1, batch_spec="exspec", max_new_tokens=4)
    assert not forwards


def test_models_and_inputs_without_data_are_refused(pair, batch, no_forward):
    """A draft whose weights are on the meta device (never loaded) and ids on it: refused by name before any forward
    (they failed deep inside a forward)."""
    ids, mask = batch
    with torch.device("meta"):
        ghost = build("llama", seed=5)
    with pytest.raises(UnsupportedModelError, match="meta device"):
        pair[0].generate(ids, attention_mask=mask, assistant_model=ghost, batch_spec="exspec", max_new_tokens=3)
    with pytest.raises(BatchSpecError, match="meta device"):
        pair[0].generate(ids.to("meta"), attention_mask=mask.to("meta"), assistant_model=pair[1], batch_spec="exspec",
                         max_new_tokens=3)
    assert not no_forward
