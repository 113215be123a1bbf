"""What a call may ask for, as tables: one row a rule, with the message it raises.

Three families (`plan.plan_call` applies them, in that order, before transformers prepares anything):
- value rules: the values a setting takes (positive integers, ranges, choices, types);
- applies-to rules: the options of ours that only some paths read, and settings of generate() the batch
  speculative path does not serve (yet);
- incompatibilities: two features of one call that cannot go together (static shapes and the realigned layout,
  a draft with another tokenizer and static shapes, ...), each draft source adding its own (`SourceSpec.refuses`).

docs/api.md's list of refusals is generated from these tables (`rules.markdown()`; a test keeps it in step),
so a new rule is one row here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from transformers import CompileConfig, SynthIDTextWatermarkingConfig

from .errors import BatchSpecError

STRATEGIES = ("eqspec", "exspec", "eqspec-realign")
SCHEDULES = ("constant", "heuristic", "heuristic_transient")
SPECULATION = ("always", "auto")
CACHE_IMPLEMENTATIONS = ("dynamic", "static")


# -- value rules ----------------------------------------------------------------------------------------------

def _positive_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value >= 1


def _integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _flag(value) -> bool:
    return isinstance(value, (bool, np.bool_))


def _fraction(value) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not _flag(value) and 0 <= value < 1


def _speculation(value) -> bool:
    from .speculation import CostModel

    return isinstance(value, CostModel) or (isinstance(value, str) and value in SPECULATION)


@dataclass(frozen=True)
class ValueRule:
    """The values a setting accepts: `accepts(value)`, else refused as "name=value: name must be `expects`"."""

    name: str
    accepts: Callable[[object], bool]
    expects: str

    def check(self, value) -> None:
        """Refuse a set value (None is unset) that the rule does not accept."""
        if value is not None and not self.accepts(value):
            raise BatchSpecError(f"{self.name}={value!r}: {self.name} must be {self.expects}.")


VALUE_RULES: dict[str, ValueRule] = {rule.name: rule for rule in (
    ValueRule("batch_spec", lambda v: isinstance(v, str) and v in STRATEGIES, f"one of {STRATEGIES} (or None)"),
    ValueRule("max_new_tokens", _positive_int, "a positive integer (new tokens per row)"),
    ValueRule("max_length", _integer, "an integer (prompt plus new tokens): or pass max_new_tokens"),
    ValueRule("max_batch_size", _positive_int, "a positive integer (rows decoded at once)"),
    ValueRule("sort_by_length", _flag, "True or False (admit the shortest prompts first)"),
    ValueRule("num_assistant_tokens", _positive_int, "a positive integer (drafts per row and round)"),
    ValueRule("num_assistant_tokens_schedule", lambda v: isinstance(v, str) and v in SCHEDULES,
              f"one of {SCHEDULES}"),
    ValueRule("assistant_confidence_threshold", _fraction, "a number in [0, 1)"),
    ValueRule("prompt_lookup_num_tokens", _positive_int, "a positive integer (tokens copied per round)"),
    ValueRule("max_matching_ngram_size", _positive_int, "a positive integer (the longest n-gram matched)"),
    ValueRule("use_mtp", _flag, "True or False"),
    ValueRule("generator", lambda v: isinstance(v, torch.Generator), "a torch.Generator"),
    ValueRule("prefix_allowed_tokens_fn", callable, "a function (batch_id, input_ids) -> allowed token ids"),
    ValueRule("compile_config", lambda v: isinstance(v, CompileConfig), "a transformers.CompileConfig"),
    ValueRule("cache_implementation", lambda v: isinstance(v, str) and v in CACHE_IMPLEMENTATIONS,
              "'static' (fixed shapes, compiled on CUDA as transformers does; also when the model's "
              "generation_config says 'static', transformers' recipe for compiled decoding) or 'dynamic', or unset: "
              "the call builds its own per-row caches"),
    ValueRule("speculation", _speculation,
              "'auto' (draft only as much as pays, from the round costs measured in this process and each row's "
              "acceptance; the default), 'always' (draft num_assistant_tokens every round, as transformers' "
              "assisted generation does), or a hf_batchspec.CostModel (e.g. from "
              "hf_batchspec.calibrate(target, draft))"),
)}


def check_value(name: str, value) -> None:
    VALUE_RULES[name].check(value)


# -- applies-to rules ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AppliesTo:
    """An option of ours that only the batch speculative paths in `strategies` read."""

    name: str
    strategies: tuple[str, ...]
    why: str = ""


APPLIES_TO: dict[str, AppliesTo] = {rule.name: rule for rule in (
    AppliesTo("max_batch_size", ("exspec",), "a pool of slots refilled from a queue"),
    AppliesTo("sort_by_length", ("exspec",), "a pool of slots refilled from a queue"),
    AppliesTo("speculation", STRATEGIES),
    AppliesTo("generator", STRATEGIES),
)}


@dataclass(frozen=True)
class NotServed:
    """A setting of generate() the batch speculative path does not serve (yet): refused, never dropped.

    `read`: "given" counts what the caller asked for (a checkpoint's defaults, e.g. Gemma's
    cache_implementation="hybrid", are no request: our own caches serve the call); "get" counts the setting as
    transformers resolves it (a checkpoint's value makes transformers build the feature, too). `on(value)`: whether
    the value turns the feature on."""

    name: str
    why: str
    read: str = "given"
    on: Callable[[object], bool] = lambda value: value is not None and value is not False and value != []


def _not_one(value) -> bool:
    return value is not None and value != 1


NOT_SERVED: dict[str, NotServed] = {rule.name: rule for rule in (
    NotServed("negative_prompt_ids", "classifier-free guidance needs a second, unconditional batch"),
    NotServed("speculation_type", "transformers' other speculation types are not batched"),
    NotServed("assistant_ensemble_weight", "ensemble verification changes the output distribution; batch_spec is "
                                           "lossless"),
    NotServed("cache_config", "batch_spec builds its own per-row caches"),
    NotServed("max_cache_len", "batch_spec sizes its own per-row caches (prompt width + max_new_tokens)"),
    NotServed("prefill_chunk_size", "batch_spec prefills each admitted prompt in one forward"),
    NotServed("penalty_alpha", "contrastive search is another decoding method"),
    NotServed("dola_layers", "DoLa decoding is another decoding method"),
    NotServed("low_memory", "it applies to contrastive search only"),
    NotServed("token_healing", "token healing rewrites the prompt, which batch_spec does not do"),
    NotServed("continuous_batching_config", "it configures transformers' generate_batch, not generate"),
    NotServed("num_beams", "beam search is another decoding method: use num_beams=1 (transformers' speech-recognition "
                           "pipeline defaults to num_beams=5: pass generate_kwargs={'num_beams': 1})", read="get",
              on=lambda value: value is not None and value > 1),
    NotServed("output_attentions", "attention weights are not returned yet", read="get"),
    NotServed("output_hidden_states", "hidden states are not returned yet", read="get"),
    NotServed("use_cache", "speculative decoding needs the KV cache: drop use_cache=False", read="get",
              on=lambda value: value is False),
    # settings from which transformers builds a logits processor whose meaning depends on the padded batch layout
    # or the batch index (`processors.SUPPORTED` lists those served)
    NotServed("guidance_scale", "transformers' UnbatchedClassifierFreeGuidanceLogitsProcessor runs a forward of its "
                                "own over the padded batch", read="get", on=_not_one),
    NotServed("watermarking_config", "SynthID's watermark keeps a context state per batch row across steps (the "
                                     "green-list watermark, WatermarkingConfig, is served)", read="get",
              on=lambda value: isinstance(value, SynthIDTextWatermarkingConfig)
              or isinstance(value, dict) and "ngram_len" in value),
)}


# -- incompatibilities ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Incompatible:
    """Features of a call (`plan.call_features`) that cannot go together: refused when all are present."""

    features: frozenset[str]
    message: str


def incompatible(*features: str, message: str) -> Incompatible:
    return Incompatible(frozenset(features), message)


INCOMPATIBLE: tuple[Incompatible, ...] = (
    incompatible("static", "eqspec-realign", message=(
        "batch_spec='eqspec-realign' moves every row of both caches each round, which static shapes exclude: use "
        "'eqspec' or 'exspec' with compile_config / cache_implementation.")),
    incompatible("adapters", "static", message=(
        "Per-row LoRA adapters (adapter_names=) are not supported with static shapes yet: drop compile_config / "
        "cache_implementation='static'.")),
)


def incompatibilities() -> tuple[Incompatible, ...]:
    """Every incompatibility: the general ones, then each draft source's (`source:<kind>` with a feature)."""
    from .drafters.registry import SOURCES

    return INCOMPATIBLE + tuple(incompatible(f"source:{spec.kind}", feature, message=message)
                                for spec in SOURCES for feature, message in spec.refuses)


def check_compatible(features: frozenset[str]) -> None:
    for rule in incompatibilities():
        if rule.features <= features:
            raise BatchSpecError(rule.message)


# -- the tables as docs/api.md lists them -----------------------------------------------------------------------

def markdown() -> str:
    """The refusals of the tables, as docs/api.md's "Refused by the rule tables" section lists them."""
    lines = ["Values (`rules.VALUE_RULES`):", ""]
    lines += [f"- `{rule.name}`: {rule.expects}" for rule in VALUE_RULES.values()]
    lines += ["", "Options of ours that only some paths read (`rules.APPLIES_TO`):", ""]
    lines += [f"- `{rule.name}`: " + (f"batch_spec={rule.strategies[0]!r} only ({rule.why})"
                                      if len(rule.strategies) == 1 else "batch speculative decoding only")
              for rule in APPLIES_TO.values()]
    lines += ["", "Settings not served with batch_spec (`rules.NOT_SERVED`):", ""]
    lines += [f"- `{rule.name}`: {rule.why}" for rule in NOT_SERVED.values()]
    lines += ["", "Features that cannot go together (`rules.incompatibilities()`):", ""]
    lines += [f"- {' + '.join(f'`{f}`' for f in sorted(rule.features))}: {rule.message}"
              for rule in incompatibilities()]
    return "\n".join(lines) + "\n"
