"""The call plan: every rule-table refusal happens before transformers prepares anything, the caller's arguments
are never changed, the tables and docs/api.md agree, and the plan's reading of settings agrees with transformers'."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import transformers
from transformers import CompileConfig, GenerationConfig, GenerationMixin

import hf_batchspec
from hf_batchspec import BatchSpecError, plan, rules
from hf_batchspec.processors import unsupported_processors
from tests.toolkit import left_pad, plain_greedy
from tests.toolkit import build

DOCS = Path(__file__).resolve().parents[1] / "docs" / "api.md"


@pytest.fixture(scope="module")
def pair():
    return hf_batchspec.enable(build("llama")), build("llama", seed=5)


@pytest.fixture
def prepared(pair, monkeypatch):
    """Counts transformers' preparations of a call (its first step merges the generation config) and the models'
    forwards; a refusal must leave both at zero."""
    counts = {"prepared": 0, "forwards": 0}
    merge = GenerationMixin._prepare_generation_config

    def counting(self, *args, **kwargs):
        counts["prepared"] += 1
        return merge(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "_prepare_generation_config", counting)
    handles = [m.register_forward_pre_hook(lambda *a: counts.__setitem__("forwards", counts["forwards"] + 1))
               for m in pair]
    yield counts
    for handle in handles:
        handle.remove()


def _call(pair, **overrides):
    ids, mask = left_pad([[5, 6, 7], [8, 9]], pad_id=0)
    call = dict(attention_mask=mask, assistant_model=pair[1], batch_spec="exspec", max_new_tokens=4)
    call.update(overrides)
    return ids, call


# A value each rule refuses, per rule: a new rule without a case here fails `test_every_value_rule_has_a_case`.
BAD_VALUES = {
    "batch_spec": "fastest", "max_new_tokens": 2.5, "max_length": 7.5, "max_batch_size": 0, "sort_by_length": "no",
    "num_assistant_tokens": 0, "num_assistant_tokens_schedule": "sometimes", "assistant_confidence_threshold": 1.5,
    "prompt_lookup_num_tokens": -1, "max_matching_ngram_size": 0, "use_mtp": "yes", "generator": 3,
    "compile_config": {"fullgraph": True}, "cache_implementation": "offloaded", "speculation": "sometimes",
    "prefix_allowed_tokens_fn": [3],
}


def _value_call(name: str, value, pair) -> tuple:
    """A call whose only fault is `name=value` (a source's own settings with that source)."""
    ids, call = _call(pair)
    if name in ("prompt_lookup_num_tokens", "max_matching_ngram_size"):
        call.pop("assistant_model")
        call["prompt_lookup_num_tokens"] = 2
    if name == "use_mtp":
        call.pop("assistant_model")
    if name == "max_length":
        call.pop("max_new_tokens")
    call[name] = value
    return ids, call


def test_every_value_rule_has_a_case():
    assert set(BAD_VALUES) == set(rules.VALUE_RULES)


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_value_rules_refuse_before_preparation(pair, prepared, name):
    ids, call = _value_call(name, BAD_VALUES[name], pair)
    with pytest.raises(BatchSpecError, match=f"{name} must be") as error:
        pair[0].generate(ids, **call)
    assert repr(BAD_VALUES[name]) in str(error.value)
    assert prepared == {"prepared": 0, "forwards": 0}


# A value that turns each not-served setting on.
NOT_SERVED_VALUES = {
    "negative_prompt_ids": torch.tensor([[5]]),
    "speculation_type": "eagle", "assistant_ensemble_weight": 0.5, "cache_config": {"backend": "quanto"},
    "max_cache_len": 64, "prefill_chunk_size": 4, "penalty_alpha": 0.6, "dola_layers": "low", "low_memory": True,
    "token_healing": True, "continuous_batching_config": {"max_batch_tokens": 8}, "num_beams": 2,
    "output_attentions": True, "output_hidden_states": True, "use_cache": False, "guidance_scale": 1.5,
    "watermarking_config": transformers.SynthIDTextWatermarkingConfig(ngram_len=5, keys=[654, 400, 836, 123, 340]),
}


def test_every_not_served_setting_has_a_case():
    assert set(NOT_SERVED_VALUES) == set(rules.NOT_SERVED)


@pytest.mark.parametrize("name", sorted(NOT_SERVED_VALUES))
def test_not_served_settings_refuse_before_preparation(pair, prepared, name):
    ids, call = _call(pair, **{name: NOT_SERVED_VALUES[name]})
    with pytest.raises(BatchSpecError, match=f"`{name}`"):
        pair[0].generate(ids, **call)
    assert prepared == {"prepared": 0, "forwards": 0}


@pytest.mark.parametrize("name", ["num_beams", "watermarking_config", "guidance_scale"])
def test_resolved_settings_count_the_models_config_too(pair, prepared, name):
    """A row that reads the resolved setting refuses a checkpoint's value: transformers would build the feature from
    it (rows that read the caller's request leave a checkpoint's defaults alone: `test_checkpoint_defaults_...`)."""
    target = pair[0]
    saved = copy.deepcopy(target.generation_config)
    setattr(target.generation_config, name, NOT_SERVED_VALUES[name])
    try:
        ids, call = _call(pair)
        with pytest.raises(BatchSpecError, match=f"`{name}`"):
            target.generate(ids, **call)
    finally:
        target.generation_config = saved
    assert prepared == {"prepared": 0, "forwards": 0}


@pytest.mark.parametrize("name", ["guidance_scale", "watermarking_config"])
def test_processor_rows_name_processors_transformers_builds_and_we_do_not_serve(pair, name):
    """Each processor row holds: from that setting transformers builds a processor that `processors.SUPPORTED` does
    not serve (so the row refuses what the backstop after the preparation would, only earlier)."""
    target = pair[0]
    config, _ = target._prepare_generation_config(GenerationConfig(do_sample=True, **{name: NOT_SERVED_VALUES[name]}))
    config._eos_token_tensor = torch.tensor([2])
    built = target._get_logits_processor(config, input_ids_seq_length=3, encoder_input_ids=torch.tensor([[5, 6, 7]]),
                                         device="cpu", model_kwargs={})
    assert unsupported_processors(built)


def test_incompatibilities_refuse_before_preparation(pair, prepared):
    ids, call = _call(pair, batch_spec="eqspec-realign", compile_config=CompileConfig())
    with pytest.raises(BatchSpecError, match="eqspec-realign"):
        pair[0].generate(ids, **call)
    assert prepared == {"prepared": 0, "forwards": 0}


def test_every_incompatibility_names_features_a_call_can_have():
    """A row whose features no call can have would never refuse: each feature is a strategy, a source, or one of
    `plan.call_features`' flags."""
    from hf_batchspec.drafters.registry import SOURCES

    possible = set(rules.STRATEGIES) | {f"source:{spec.kind}" for spec in SOURCES} | {"static", "adapters"}
    for rule in rules.incompatibilities():
        assert rule.features <= possible, rule


@pytest.mark.parametrize("name, value", [("model_kwarg", dict(logits_to_keep=1)),
                                         ("unknown", dict(frobnicate=True))])
def test_unknown_model_kwargs_refuse_before_preparation(pair, prepared, name, value):
    ids, call = _call(pair, **value)
    with pytest.raises(BatchSpecError, match="Model kwargs"):
        pair[0].generate(ids, **call)
    assert prepared == {"prepared": 0, "forwards": 0}


def test_nothing_to_generate_is_ours_before_preparation(pair, prepared):
    ids, call = _call(pair)
    call.pop("max_new_tokens")
    with pytest.raises(BatchSpecError, match="Nothing to generate") as error:
        pair[0].generate(ids, max_length=2, **call)
    assert "max_length=2" in str(error.value)
    assert prepared == {"prepared": 0, "forwards": 0}


def test_the_callers_arguments_are_never_changed(pair):
    """Settings the decode loop serves itself are taken out of what transformers is handed, from copies: the
    caller's kwargs and generation config stay as they were (a caller reusing them gets the same call again)."""
    target, draft = pair
    ids, _ = _call(pair)
    tokenizer = None
    config = GenerationConfig(max_new_tokens=4, cache_implementation="static", compile_config=CompileConfig(),
                              disable_compile=True, do_sample=False)
    kwargs = dict(attention_mask=torch.ones_like(ids), prompt_lookup_num_tokens=2, max_matching_ngram_size=2,
                  pad_token_id=0)
    before_kwargs, before_config = dict(kwargs), config.to_dict()
    first = target.generate(ids, generation_config=config, tokenizer=tokenizer, **kwargs)
    assert kwargs == before_kwargs and config.to_dict() == before_config
    second = target.generate(ids, generation_config=config, tokenizer=tokenizer, **kwargs)
    assert torch.equal(first, second)
    for row, prompt in enumerate(ids.tolist()):
        assert first[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, 4, None)


def test_docs_list_the_tables():
    text = DOCS.read_text()
    begin, end = text.index("<!-- rules:begin -->\n"), text.index("<!-- rules:end -->")
    assert text[begin + len("<!-- rules:begin -->\n"):end] == rules.markdown(), (
        "docs/api.md's rule list differs from the tables: paste rules.markdown() between the markers")


@pytest.mark.parametrize("max_new_tokens, max_length, width, positions",
                         [(4, None, 3, 64), (None, 9, 3, 64), (None, None, 3, 64), (None, None, 60, 64),
                          (None, None, 3, 10_000), (5, 9, 3, 64), (None, 2, 3, 64)])
def test_new_token_budget_agrees_with_transformers(pair, max_new_tokens, max_length, width, positions):
    """The plan's budget (decided before the preparation) is the one transformers' `_prepare_generated_length`
    gives the decode loop afterwards."""
    target = pair[0]
    kwargs = {name: value for name, value in (("max_new_tokens", max_new_tokens), ("max_length", max_length))
              if value is not None}
    settings = plan.CallSettings(kwargs, None, target.generation_config)
    config, _ = target._prepare_generation_config(None, **kwargs)
    saved = target.config.max_position_embeddings
    target.config.max_position_embeddings = positions
    try:
        prepared = target._prepare_generated_length(config, has_default_max_length=max_length is None,
                                                    has_default_min_length=True, model_input_name="input_ids",
                                                    input_ids_length=width, inputs_tensor=torch.zeros(1, width))
        assert plan.new_token_budget(settings, width, positions) == prepared.max_length - width
    finally:
        target.config.max_position_embeddings = saved


def test_new_token_budget_without_a_position_limit(pair):
    """A config without max_position_embeddings: transformers' default 20 new tokens, uncapped."""
    settings = plan.CallSettings({}, None, pair[0].generation_config)
    assert plan.new_token_budget(settings, 3, None) == 20 and plan.new_token_budget(settings, 300, None) == 20


def test_settings_read_with_transformers_precedence(pair):
    target = pair[0]
    model_config = GenerationConfig(max_new_tokens=7, eos_token_id=3, do_sample=False)
    call_config = GenerationConfig(max_new_tokens=5)
    settings = plan.CallSettings({"max_new_tokens": 4}, call_config, model_config)
    assert settings.get("max_new_tokens") == 4  # the kwarg
    assert plan.CallSettings({}, call_config, model_config).get("max_new_tokens") == 5  # the call's config
    assert plan.CallSettings({}, call_config, model_config).get("eos_token_id") == 3  # the model's
    assert plan.CallSettings({}, call_config, model_config).given("eos_token_id") is None  # no request
    assert plan.CallSettings({}, GenerationConfig(max_new_tokens=7), model_config).given("max_new_tokens") is None
    assert settings.model_kwargs() == {}
    assert plan.CallSettings({"attention_mask": 1, "tokenizer": 2, "top_k": 3}, None,
                             target.generation_config).model_kwargs() == {"attention_mask": 1}


def test_transformers_own_refusal_is_ours_after_the_plan(pair, prepared):
    """A call the tables accept may still be refused by transformers while it prepares (a processor's value):
    then in the library's error type, and before any forward."""
    ids, call = _call(pair, do_sample=True, temperature=-1.0)
    with pytest.raises(BatchSpecError, match="transformers refused this call before any work"):
        pair[0].generate(ids, **call)
    assert prepared["prepared"] == 1 and prepared["forwards"] == 0


def test_routed_calls_are_not_planned(pair, prepared):
    """A call transformers serves (no draft source) goes to its generate with the caller's arguments as given."""
    ids, call = _call(pair)
    call.pop("assistant_model"), call.pop("batch_spec")
    out = pair[0].generate(ids, **call, pad_token_id=0)
    assert out.shape == (2, ids.shape[1] + 4) and prepared["prepared"] == 1
