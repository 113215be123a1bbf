"""A generate() call as a plan: what the caller asked for, read once, checked against the rule tables (`rules`) and
the input checks (`validation`), resolved into what the decode loop runs, before transformers prepares anything.

`plan_call` returns a frozen `CallPlan`; it never changes the caller's kwargs (the kwargs and generation config
handed on to transformers are new objects, without the settings the decode loop serves itself). The one reader of
settings is `CallSettings`: `get` with transformers' precedence (the kwarg, else the call's generation config, else
the model's), `given` for what the caller asked for.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

import torch
from transformers import CompileConfig, GenerationConfig
from transformers.generation.stopping_criteria import StopStringCriteria

from . import compat, encoder_decoder, rules, validation
from .errors import BatchSpecError
from .peft_support import RowAdapters, row_adapters, unwrapped_draft
from .rules import check_value
from .runner import input_device
from .speculation import CostModel
from .streaming import BatchStreamer

if TYPE_CHECKING:
    from .drafters import DraftSource
    from .speculation import MeasuredCosts

DEFAULT_NUM_ASSISTANT_TOKENS = 5
DEFAULT_MAX_BATCH_SIZE = 32
_HF_DEFAULTS = GenerationConfig()  # every field unset (transformers 5 fills its defaults in while it prepares)
_GLOBAL_DEFAULTS = _HF_DEFAULTS._get_default_generation_params()  # those defaults: max_length 20, ...
# Options of ours, arguments of our generate (the rules.APPLIES_TO rows).
OWN_OPTIONS = tuple(rules.APPLIES_TO)
# What transformers' generate takes out of kwargs before splitting them (its generation-mode arguments).
_GENERATION_MODE_KWARGS = ("tokenizer", "assistant_tokenizer")
# Model kwargs the decode loop reads (the mask, the caller's positions, checked by `validation.check_inputs`) or
# that the input checks refuse by name (`inputs_embeds`, `input_ids` given twice).
_READ_MODEL_KWARGS = ("attention_mask", "position_ids", "input_ids", "inputs_embeds")
_SOURCE_HINT = ("pass assistant_model=... (a small model with the target's tokenizer), prompt_lookup_num_tokens=... "
                "(prompt lookup) or assistant_early_exit=... (the target's first layers draft)")


@dataclass(frozen=True)
class CallSettings:
    """A call's settings, read one way everywhere.

    `get(name)`: as transformers resolves it, the kwarg, else the call's `generation_config`, else the model's.
    `given(name)`: only what the caller asked for: a kwarg, or a value of an explicit `generation_config` other
    than transformers' default and the model's own (a checkpoint's defaults are no request)."""

    kwargs: Mapping[str, Any]
    call_config: GenerationConfig | None
    model_config: GenerationConfig

    def get(self, name: str):
        if self.kwargs.get(name) is not None:
            return self.kwargs[name]
        for config in (self.call_config, self.model_config):
            value = getattr(config, name, None)
            if value is not None:
                return value
        return None

    def given(self, name: str):
        if name in self.kwargs:
            return self.kwargs[name]
        if self.call_config is None:
            return None
        value = getattr(self.call_config, name, None)
        defaults = (_GLOBAL_DEFAULTS.get(name), getattr(self.model_config, name, None))
        return None if any(value == default for default in defaults) else value

    def asks_for(self, name: str) -> bool:
        """Whether the call turns `name` on (set, and not False)."""
        value = self.get(name)
        return value is not None and value is not False

    def model_kwargs(self) -> dict:
        """The kwargs transformers will pass to the forward: those that are no attribute of a `GenerationConfig`
        (`GenerationConfig.update`'s split), without its generation-mode arguments."""
        return {name: value for name, value in self.kwargs.items()
                if not hasattr(_HF_DEFAULTS, name) and name not in _GENERATION_MODE_KWARGS}


@dataclass(frozen=True)
class CallPlan:
    """Everything the decode loop needs of a call, decided before transformers prepares it.

    `strategy` None: transformers' own generate serves the call (and nothing else here is set)."""

    strategy: str | None
    seq2seq: bool = False
    source: "DraftSource | None" = None
    assistant_model: Any = None
    num_assistant_tokens: int = DEFAULT_NUM_ASSISTANT_TOKENS
    schedule: str = "constant"
    confidence_threshold: float | None = None
    max_batch_size: int = 1
    sort_by_length: bool = False
    generator: torch.Generator | None = None
    cost_model: "CostModel | MeasuredCosts | None" = None
    static_shapes: int = 0  # 0, or the most rows compiled programs are sized for
    compile_config: CompileConfig | None = None
    stop_strings: StopStringCriteria | None = None
    streamer: Any = None
    adapters: RowAdapters | None = None
    attention_mask: torch.Tensor | None = None  # [B, W] the caller's own (transformers drops an all-ones one)
    # handed on to transformers' generate, without the settings the decode loop serves
    generation_config: GenerationConfig | None = None
    kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


def plan_call(model, inputs, kwargs: Mapping[str, Any], *, generation_config=None, logits_processor=None,
              prefix_allowed_tokens_fn=None, synced_gpus=None, assistant_model=None, streamer=None, batch_spec=None,
              max_batch_size=None, sort_by_length=None, generator=None, speculation=None) -> CallPlan:
    """The call's plan, or a refusal (`BatchSpecError`, naming the cause and what to change) before any work."""
    seq2seq = encoder_decoder.is_encoder_decoder(model)  # the inputs are the encoder's (Whisper: features)
    settings = CallSettings(MappingProxyType(dict(kwargs)), generation_config, model.generation_config)
    main_input = inputs if inputs is not None else kwargs.get(model.main_input_name if seq2seq else "input_ids")
    batch_size = batch_size_of(main_input, kwargs.get("inputs_embeds"))
    sources = draft_sources(assistant_model, settings)
    copies = settings.get("num_return_sequences") or 1
    rows = None if batch_size is None else batch_size * copies  # the rows transformers would decode
    options = dict(max_batch_size=max_batch_size, sort_by_length=sort_by_length, speculation=speculation,
                   generator=generator)
    # Whisper's token timestamps: transformers' batch-1 assisted generation fails on its cross-attentions (a size
    # mismatch in `_extract_token_timestamps`), so a call of one input takes ours
    assisted_cannot = "return_token_timestamps" if seq2seq and settings.get("return_token_timestamps") else None
    strategy = choose_strategy(batch_spec, sources, rows, streamer, assisted_cannot)
    check_routing(strategy, sources, options)
    if strategy is None:
        return CallPlan(None)

    check_not_served(settings, synced_gpus)
    check_value("prefix_allowed_tokens_fn", prefix_allowed_tokens_fn)
    check_value("max_new_tokens", settings.get("max_new_tokens"))
    if settings.get("max_new_tokens") is None:
        check_value("max_length", settings.get("max_length"))
    assistant_model = unwrapped_draft(assistant_model)
    source, lookup_k = resolve_draft_source(sources, model, assistant_model, settings)
    draft = source.model  # the model that drafts (None for prompt lookup)
    validation.check_callers_processors(logits_processor)  # the caller's own (those from settings: rules.NOT_SERVED)
    if seq2seq:
        encoder_decoder.check_source(source, model)
        encoder_decoder.check_call(model, main_input, kwargs, generation_config, streamer=streamer)
        if model.config.model_type != "whisper":  # a text encoder's ids (Whisper's features: check_call)
            validation.check_token_ids(main_input, kwargs.get("attention_mask"), int(model.config.vocab_size),
                                       encoder=True)
            validation.check_unmasked_source(main_input, kwargs.get("attention_mask"), settings.get("pad_token_id"))
    else:
        check_model_kwargs(settings)
        input_ids = main_input
        vocab = validation.vocab_size(model, *[m for m in (draft,) if m is not None and source.tokenizers is None])
        validation.check_inputs(input_ids, kwargs.get("attention_mask"), settings.get("pad_token_id"), vocab,
                                kwargs.get("inputs_embeds"), settings.get("eos_token_id"),
                                kwargs.get("position_ids"))  # the caller's: transformers prepares its own later
    max_batch_size, sort_by_length = pool_options(strategy, max_batch_size, sort_by_length, rows)
    # the draft's own settings live in its generation_config; an early-exit draft is the target itself
    draft_settings = assistant_model if assistant_model is not None else model if draft is not None else None
    num_assistant_tokens = lookup_k or resolve_num_assistant_tokens(settings, draft_settings)
    schedule, confidence_threshold = resolve_draft_schedule(settings.kwargs, draft_settings)
    check_value("generator", generator)
    static, compile_config = resolve_compile(settings, model, draft)
    if seq2seq:
        encoder_decoder.check_compiled(settings.get("return_token_timestamps"), compile_config)
    do_sample = bool(settings.get("do_sample"))
    adapters = row_adapters(model, rows)  # PEFT's adapter_names=, if the caller gave them
    rules.check_compatible(call_features(strategy, source, static, adapters))
    if source.spec.check is not None:
        source.spec.check(source, do_sample)
    if not seq2seq:  # an encoder-decoder model's own generate builds the decoder prompt: its width is known then
        max_new = new_token_budget(settings, input_ids.shape[1], getattr(model.config, "max_position_embeddings", None))
        if max_new < 1:
            raise BatchSpecError(f"Nothing to generate: max_length={settings.get('max_length')} is not beyond the "
                                 f"input length {input_ids.shape[1]}; set max_new_tokens.")
        validation.check_cache_memory(model, draft, min(max_batch_size, rows), input_ids.shape[1], max_new)
    cost_model = resolve_speculation(speculation, model, source, compiled=compile_config is not None, static=static,
                                     do_sample=do_sample)
    stop_strings = stop_string_criteria(settings)
    # static shapes: rows are padded to a power of two, never past what the caller allowed at once
    static_row_limit = max_batch_size if strategy == "exspec" else (1 << 62)
    return CallPlan(
        strategy, seq2seq=seq2seq, source=source, assistant_model=assistant_model,
        num_assistant_tokens=num_assistant_tokens, schedule=schedule, confidence_threshold=confidence_threshold,
        max_batch_size=max_batch_size, sort_by_length=sort_by_length, generator=generator, cost_model=cost_model,
        static_shapes=static and static_row_limit, compile_config=compile_config, stop_strings=stop_strings,
        streamer=streamer, adapters=adapters, attention_mask=None if seq2seq else kwargs.get("attention_mask"),
        generation_config=handed_on_config(generation_config, model.generation_config),
        kwargs=MappingProxyType(handed_on_kwargs(kwargs)))


# -- routing ---------------------------------------------------------------------------------------------------

def batch_size_of(input_ids, inputs_embeds) -> int | None:
    """The call's batch size, from `input_ids` or else `inputs_embeds` (None when neither is a batch)."""
    for tensor in (input_ids, inputs_embeds):
        if isinstance(tensor, torch.Tensor) and tensor.dim() >= 2:
            return int(tensor.shape[0])
    return None


def draft_sources(assistant_model, settings: CallSettings) -> list[str]:
    """The draft sources the call asks for (`drafters.registry.ASKED_BY`, transformers' argument names)."""
    from .drafters.registry import ASKED_BY

    given = ["assistant_model"] if assistant_model is not None else []
    return given + [name for name in ASKED_BY if name != "assistant_model" and settings.asks_for(name)]


def choose_strategy(batch_spec: str | None, sources: list[str], rows: int | None, streamer=None,
                    assisted_cannot: str | None = None) -> str | None:
    """Which path serves this call: None for transformers' own generate, else "eqspec" or "exspec" (or
    "eqspec-realign": eqspec in the paper's left-padded layout, realigned every round, to measure that cost).

    `rows` counts prompts x num_return_sequences, the rows transformers would decode: its assisted generation
    serves one row only, so 1 prompt x 4 samples is a batch. A `BatchStreamer` (hf_batchspec's own, which
    transformers' generate cannot feed) asks for batch speculative decoding, at batch 1 too, and so does a call
    that transformers' assisted generation fails on (`assisted_cannot` names it: Whisper's token timestamps)."""
    check_value("batch_spec", batch_spec)
    own_streamer = isinstance(streamer, BatchStreamer)
    if not sources:
        if batch_spec is not None:
            raise BatchSpecError(f"batch_spec={batch_spec!r} needs a draft source: {_SOURCE_HINT}.")
        if own_streamer:
            raise BatchSpecError(
                f"{type(streamer).__name__} streams batch speculative decoding, which needs a draft source: "
                f"{_SOURCE_HINT}; or, for transformers' own generate (batch 1), pass transformers' "
                "TextIteratorStreamer instead."
            )
        return None
    if batch_spec is None:
        # transformers' own path serves a call of one row; inputs that are no batch of rows at all (no ids, 1-D or
        # empty ids) come here too, so that our input checks name the cause instead of a failure deep inside
        return None if rows == 1 and not own_streamer and assisted_cannot is None else "exspec"
    return batch_spec


def check_routing(strategy: str | None, sources: list[str], options: dict) -> None:
    """Refuse options the chosen path would drop, naming the real cause (`rules.APPLIES_TO`).

    `options` holds our own arguments as passed (None = not passed). When transformers' generate serves the call
    (strategy None) none of them applies, and the reason is either the missing draft source or, at one row with
    `batch_spec` unset, that transformers' own assisted generation serves it."""
    for name, rule in rules.APPLIES_TO.items():
        if options.get(name) is None or strategy in rule.strategies:
            continue
        if strategy is None and not sources:
            raise BatchSpecError(f"`{name}` applies to batch speculative decoding, which needs a draft source: "
                                 f"{_SOURCE_HINT}; or drop `{name}`.")
        if strategy is None:
            raise BatchSpecError(
                f"`{name}` applies to batch speculative decoding, but at batch 1 with batch_spec unset transformers' "
                f"own assisted generation serves the call: pass batch_spec='exspec' to use `{name}` at batch 1.")
        only = " or ".join(f"batch_spec={s!r}" for s in rule.strategies)
        raise BatchSpecError(
            f"`{name}` applies to {only} only ({rule.why}); batch_spec={strategy!r} decodes every prompt at once: "
            f"drop `{name}` or use {only}.")
    if strategy is not None and len(sources) > 1:
        raise BatchSpecError(f"{sources[0]} and {sources[1]} are two draft sources; a call drafts from one: drop one "
                             "of them.")


# -- what the path does not serve --------------------------------------------------------------------------------

def check_not_served(settings: CallSettings, synced_gpus) -> None:
    """Settings of generate() that the batch speculative path does not serve (yet), `rules.NOT_SERVED`: refused,
    never dropped; synced_gpus and a cache of the caller's, too."""
    for name, rule in rules.NOT_SERVED.items():
        value = settings.get(name) if rule.read == "get" else settings.given(name)
        if rule.on(value):
            raise BatchSpecError(f"`{name}`={value!r} is not supported with batch_spec ({rule.why}): drop it, or call "
                                 "without assistant_model for transformers' own generate.")
    if synced_gpus:
        raise BatchSpecError(
            "synced_gpus is not supported with batch_spec; split the prompts across processes instead "
            "(accelerate's PartialState().split_between_processes)."
        )
    for name in compat.user_cache_kwargs(settings.kwargs):
        raise BatchSpecError(f"`{name}` is not supported with batch_spec: the call builds its own per-row caches.")


def check_model_kwargs(settings: CallSettings) -> None:
    """Kwargs that reach the forward and that the decode loop does not read: refused, not dropped (a decoder-only
    call; an encoder-decoder model's own generate makes model kwargs of its own, checked once it has)."""
    unknown = sorted(set(settings.model_kwargs()) - set(_READ_MODEL_KWARGS))
    if unknown:
        raise BatchSpecError(f"Model kwargs {unknown} are not supported with batch_spec: the decode loop would not "
                             "pass them to the model's forwards. Drop them.")


def call_features(strategy: str, source: "DraftSource", static: bool, adapters) -> frozenset[str]:
    """What `rules.incompatibilities()` reads of a call."""
    features = {strategy, f"source:{source.kind}"}
    features |= {"static"} if static else set()
    features |= {"adapters"} if adapters else set()
    return frozenset(features)


# -- settings resolved ---------------------------------------------------------------------------------------------

def new_token_budget(settings: CallSettings, width: int, max_positions: int | None) -> int:
    """New tokens per row as transformers' `_prepare_generated_length` decides them for prompts `width` wide:
    max_new_tokens; else max_length less the width; else (neither set) its default max_length of 20 past the
    prompt, capped at max_position_embeddings."""
    max_new_tokens = settings.get("max_new_tokens")
    if max_new_tokens is not None:
        return int(max_new_tokens)
    max_length = settings.get("max_length")
    if max_length is not None:
        return int(max_length) - width
    length = _GLOBAL_DEFAULTS["max_length"] + width
    return (length if max_positions is None else min(length, max_positions)) - width


def resolve_draft_source(sources: list[str], target, assistant_model, settings: CallSettings,
                         ) -> tuple["DraftSource", int | None]:
    """The call's drafter, and its draft length when the source fixes it (prompt lookup's
    prompt_lookup_num_tokens; None: num_assistant_tokens decides), from the source table (`drafters.registry`).
    An argument that configures another source is refused."""
    from .drafters import registry

    return registry.resolve(sources[0] if sources else "assistant_model", target, assistant_model, settings)


def resolve_num_assistant_tokens(settings: CallSettings, draft) -> int:
    """kwarg first, then an explicit generation_config, then the draft's generation_config, then our default.

    HF's assisted generation reads the value from the draft's config only and ignores the kwarg; users pass
    the kwarg and expect it to work. A value equal to GenerationConfig's default (20) counts as unset: at
    batch > 1 every draft costs a verified token per row, and 5 is the paper's and a safer default.
    """
    candidates = [settings.kwargs.get("num_assistant_tokens")]
    for config in (settings.call_config, getattr(draft, "generation_config", None)):
        value = getattr(config, "num_assistant_tokens", None)
        candidates.append(None if value == _GLOBAL_DEFAULTS.get("num_assistant_tokens") else value)
    value = next((v for v in candidates if v is not None), DEFAULT_NUM_ASSISTANT_TOKENS)
    check_value("num_assistant_tokens", value)
    return value


def resolve_draft_schedule(kwargs: Mapping[str, Any], draft) -> tuple[str, float | None]:
    """(num_assistant_tokens_schedule, assistant_confidence_threshold): kwarg first, then the draft's
    generation_config as transformers reads it. The threshold's transformers default (0.4) counts as unset:
    at batch > 1 it costs a host sync per draft step, so it applies only when asked for."""
    config = getattr(draft, "generation_config", None)
    schedule = kwargs.get("num_assistant_tokens_schedule") or getattr(config, "num_assistant_tokens_schedule", None)
    schedule = schedule or "constant"
    check_value("num_assistant_tokens_schedule", schedule)
    threshold = kwargs.get("assistant_confidence_threshold")
    if threshold is None:
        threshold = getattr(config, "assistant_confidence_threshold", None)
        threshold = None if threshold == _GLOBAL_DEFAULTS.get("assistant_confidence_threshold") else threshold
    check_value("assistant_confidence_threshold", threshold)
    return schedule, threshold or None


def pool_options(strategy: str, max_batch_size, sort_by_length, rows: int) -> tuple[int, bool]:
    """EXSPEC's pool size and admission order (`check_routing` refused them for every other path)."""
    if strategy != "exspec":
        return rows, False
    check_value("sort_by_length", sort_by_length)
    if max_batch_size is None:
        max_batch_size = min(rows, DEFAULT_MAX_BATCH_SIZE)
    check_value("max_batch_size", max_batch_size)
    return int(max_batch_size), bool(sort_by_length)


def resolve_compile(settings: CallSettings, target, draft) -> tuple[bool, CompileConfig | None]:
    """(static shapes, compile config) as transformers decides for its own greedy: a caller's `compile_config`
    compiles on any device; `cache_implementation="static"` gives static shapes, compiled by default on CUDA
    (transformers' auto-compile); `disable_compile=True` turns compiling off. Both models' decode forwards
    compile; prefills stay eager."""
    implementation = settings.given("cache_implementation")
    if implementation is None and settings.get("cache_implementation") == "static":
        # asked for by the model's generation config (transformers' recipe for its compiled decoding:
        # `model.generation_config.cache_implementation = "static"`), or by a call's config that repeats it; other
        # values there are a checkpoint's defaults ("hybrid", ...), which our own caches serve
        implementation = "static"
    check_value("cache_implementation", implementation)
    compile_config = settings.given("compile_config")
    check_value("compile_config", compile_config)
    static = implementation == "static" or compile_config is not None
    if compile_config is None and implementation == "static" and input_device(target).type == "cuda":
        compile_config = getattr(settings.model_config, "compile_config", None) or CompileConfig()
    if settings.get("disable_compile"):
        compile_config = None
    if compile_config is not None:
        for role, model in (("target model", target), ("assistant_model", draft)):
            reason = compat.compile_obstacle(model) if model is not None else None
            if reason:
                raise BatchSpecError(f"compile_config: the {role} cannot be compiled ({reason}); drop "
                                     "compile_config / cache_implementation='static', or pass disable_compile=True.")
    return static, compile_config


def resolve_speculation(speculation, target, source: "DraftSource", *, compiled: bool, static: bool,
                        do_sample: bool) -> "CostModel | MeasuredCosts | None":
    """What decides each round's draft length: None (draft every round, as transformers' assisted generation
    does: `speculation="always"`), a fixed `CostModel` (one the caller passed, e.g. from `hf_batchspec.calibrate`),
    or for `"auto"` (the default: draft only where it pays) a prior estimated from the models and whether their
    forwards are compiled, corrected by this process's measured rounds (`MeasuredCosts`, shared across calls with
    the same models and mode). Sampling keeps the prior alone, so that a seeded run repeats.

    "auto" is the default at every batch size the decode loop serves, batch 1 included (`batch_spec` given): a
    draft that does not pay costs a caller who loops over single prompts as much as one who batches (measured:
    0.43x of plain greedy at batch 1 with a draft that rarely agrees, drafting every round), and the measured
    costs and acceptance carry from call to call, so a loop of one-prompt calls learns as one call does."""
    from .speculation import measured_costs

    if speculation is None:
        speculation = "auto"
    check_value("speculation", speculation)
    if isinstance(speculation, CostModel):
        return speculation
    if speculation == "always":
        return None
    def prior():  # the models' sizes, summed over every parameter: once per target and source, not per call
        return source.spec.prior(target, source, compiled)
    if do_sample:
        return prior()
    return measured_costs(target, _source_key(target, source, compiled, static), prior)


def _source_key(target, source: "DraftSource", compiled: bool, static: bool) -> tuple:
    """What a round's cost depends on besides the target's identity: the draft source (its weights, by their first
    tensor, and depth: an early exit shares the target's weights but not its depth; or prompt lookup), another
    tokenizer, the forward mode, and where the target now is and in which dtype (a model moved or cast costs
    otherwise)."""
    from .runner import decoder_layers

    model = source.model
    weights = None if model is None else next(model.parameters(), None)
    depth = None if model is None else decoder_layers(model.config)
    dtype = getattr(next(target.parameters(), None), "dtype", None)
    return (source.kind, None if weights is None else id(weights), depth, compiled, static, input_device(target).type,
            str(dtype))


def stop_string_criteria(settings: CallSettings) -> StopStringCriteria | None:
    """transformers' StopStringCriteria, built here (transformers drops `tokenizer` before calling a custom
    decoding loop)."""
    stop_strings = settings.get("stop_strings")
    if not stop_strings:
        return None
    tokenizer = settings.kwargs.get("tokenizer")
    if tokenizer is None:
        raise BatchSpecError("stop_strings needs the tokenizer: pass tokenizer=... to generate().")
    return StopStringCriteria(tokenizer=tokenizer, stop_strings=stop_strings)


# -- what transformers is handed ----------------------------------------------------------------------------------

def served_settings() -> tuple[str, ...]:
    """Settings the decode loop serves itself, which transformers' preparation must not see: it would build a
    cache, a compiled forward, a batch-1 candidate generator or stop-string criteria of its own."""
    from .drafters import registry

    return ("cache_implementation", "compile_config", "disable_compile", "stop_strings") + registry.taken_out()


def handed_on_kwargs(kwargs: Mapping[str, Any]) -> dict:
    """A copy of the caller's kwargs without `served_settings()`."""
    served = served_settings()
    return {name: value for name, value in kwargs.items() if name not in served}


def handed_on_config(generation_config: GenerationConfig | None, model_config: GenerationConfig):
    """The generation config handed to transformers: the caller's (or, when the model's holds a served setting,
    the model's), copied without `served_settings()`; the caller's own object is never changed."""
    config = generation_config if generation_config is not None else model_config
    served = [name for name in served_settings() if getattr(config, name, None) not in (None, False)]
    if not served:
        return generation_config
    config = copy.deepcopy(config)
    for name in served:
        setattr(config, name, None)
    return config
