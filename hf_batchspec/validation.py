"""Checks that run before any forward pass: every unsupported request fails here with what to change."""

from __future__ import annotations

import copy
import os
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import CompileConfig, GenerationConfig
from transformers.generation.stopping_criteria import StopStringCriteria
from transformers.utils import logging


from . import compat, encoder_decoder
from .drafters.registry import ASKED_BY
from .errors import BatchSpecError, UnsupportedModelError
from .masks import attention_layout
from .processors import unsupported_processors
from .runner import input_device
from .speculation import CostModel
from .streaming import BatchStreamer

if TYPE_CHECKING:
    from .drafters import DraftSource
    from .speculation import MeasuredCosts

STRATEGIES = ("eqspec", "exspec", "eqspec-realign")
DEFAULT_NUM_ASSISTANT_TOKENS = 5
DEFAULT_MAX_BATCH_SIZE = 32
_HF_DEFAULTS = GenerationConfig()
SUPPORTED_ATTENTION = ("eager", "sdpa")
# model_kwargs that transformers' own generate() prepares; anything else came from the caller
_PREPARED_MODEL_KWARGS = {"attention_mask", "position_ids", "logits_to_keep", "cache", "past_key_values", "use_cache"}
# Under transformers' logger hierarchy, so that its verbosity settings (set_verbosity_error, ...) apply here too.
logger = logging.get_logger(f"transformers.{__name__}")
# generation_config fields whose feature arrives in a later release: asked for, they raise
_NOT_YET = {
    "output_attentions": "output_attentions",
    "output_hidden_states": "output_hidden_states",
}


def check_causal_lm(model: torch.nn.Module, role: str = "model") -> None:
    """A decoder-only HF model with an LM head, whose attention we can drive with per-row masks."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "can_generate") or not model.can_generate():
        raise UnsupportedModelError(
            f"The {role} ({type(model).__name__}) is not a transformers causal LM with a generation head; "
            "load it with AutoModelForCausalLM."
        )
    check_decoder_only(type(model), config, role)
    # an encoder-decoder model takes them under the decoder's names (`encoder_decoder.Seq2SeqBinding`)
    for name in () if encoder_decoder.reads_encoder(model) else ("attention_mask", "position_ids"):
        if not compat.accepts(model, name):
            raise UnsupportedModelError(f"The {role}'s forward does not take `{name}`, which per-row decoding needs.")
    implementation = getattr(config, "_attn_implementation", None) or "sdpa"
    if implementation not in SUPPORTED_ATTENTION:
        raise UnsupportedModelError(
            f"The {role} uses attn_implementation={implementation!r}; per-row masks need one of "
            f"{SUPPORTED_ATTENTION}. Load it with attn_implementation='sdpa'."
        )
    attention_layout(config)


def check_decoder_only(model_class: type, config, role: str = "model") -> None:
    """Encoder-decoder models other than those served (`encoder_decoder.SERVED`) are refused by `enable` and when a
    class with the mixin is built, with the same message: even plain generate would break on such a class."""
    encoder_decoder.check_served(model_class, config, role)


def check_pair(target: torch.nn.Module, draft) -> None:
    if draft is None:
        raise BatchSpecError("batch_spec needs a draft model: pass assistant_model=...")
    check_causal_lm(target, "target model")
    if encoder_decoder.reads_encoder(target):  # first: it names what an encoder-decoder target's draft must be
        encoder_decoder.check_pair(target, draft)
        check_causal_lm(draft, "assistant_model")
    else:  # first: a draft of a model it cannot be (an encoder-decoder one) is named as such
        check_causal_lm(draft, "assistant_model")
        encoder_decoder.check_pair(target, draft)
    vocab_t = target.config.get_text_config().vocab_size
    vocab_d = draft.config.get_text_config().vocab_size
    if vocab_t != vocab_d:
        raise BatchSpecError(
            f"The target's vocabulary ({vocab_t} tokens) and the assistant's ({vocab_d}) differ: a draft with "
            "another tokenizer needs both tokenizers, as in transformers: pass tokenizer=<the target's> and "
            "assistant_tokenizer=<the draft's>."
        )


# Where drafts come from, by the generate() argument that asks for it (transformers' names; `drafters.registry`).
DRAFT_SOURCES = ASKED_BY
_SOURCE_HINT = ("pass assistant_model=... (a small model with the target's tokenizer), prompt_lookup_num_tokens=... "
                "(prompt lookup) or assistant_early_exit=... (the target's first layers draft)")


def draft_sources(assistant_model, kwargs: dict, generation_config, model_config) -> list[str]:
    """The draft sources the call asks for, as transformers resolves its settings (the kwarg, else the call's
    config, else the model's)."""
    given = ["assistant_model"] if assistant_model is not None else []
    return given + [name for name in DRAFT_SOURCES
                    if name != "assistant_model" and asks_for(name, kwargs, generation_config, model_config)]


def asks_for(name: str, kwargs: dict, generation_config, model_config) -> bool:
    """Whether the call turns on the draft source `name` (set, and not False)."""
    value = setting(name, kwargs, generation_config, model_config)
    return value is not None and value is not False


def choose_strategy(batch_spec: str | None, sources: list[str], rows: int | None, streamer=None) -> str | None:
    """Which path serves this call: None for transformers' own generate, else "eqspec" or "exspec" (or
    "eqspec-realign": eqspec in the paper's left-padded layout, realigned every round, to measure that cost).

    `rows` counts prompts x num_return_sequences, the rows transformers would decode: its assisted generation
    serves one row only, so 1 prompt x 4 samples is a batch. A `BatchStreamer` (hf_batchspec's own, which
    transformers' generate cannot feed) asks for batch speculative decoding, at batch 1 too."""
    if batch_spec is not None and batch_spec not in STRATEGIES:
        raise BatchSpecError(f"batch_spec={batch_spec!r} is not one of {STRATEGIES} (or None).")
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
        return None if rows == 1 and not own_streamer else "exspec"
    return batch_spec


# Options of ours that only batch speculative decoding reads.
OWN_OPTIONS = ("max_batch_size", "sort_by_length", "speculation", "generator")


def check_routing(strategy: str | None, sources: list[str], rows: int | None, options: dict, kwargs: dict,
                  generation_config, model_config) -> None:
    """Refuse options the chosen path would drop, naming the real cause.

    `rows` counts prompts x num_return_sequences; `options` holds our own arguments as passed (None = not passed).
    When transformers' generate serves the call (strategy None) none of them applies, and the reason is either the
    missing `assistant_model` or, at one row with `batch_spec` unset, that transformers' own assisted generation
    serves it.
    """
    given = [name for name in OWN_OPTIONS if options.get(name) is not None]
    if strategy is None and given:
        name = given[0]
        if not sources:
            raise BatchSpecError(
                f"`{name}` applies to batch speculative decoding, which needs a draft source: {_SOURCE_HINT}; or "
                f"drop `{name}`."
            )
        raise BatchSpecError(
            f"`{name}` applies to batch speculative decoding, but at batch 1 with batch_spec unset transformers' "
            f"own assisted generation serves the call: pass batch_spec='exspec' to use `{name}` at batch 1."
        )
    if strategy is not None and strategy != "exspec":
        for name in ("max_batch_size", "sort_by_length"):
            if options.get(name) is not None:
                raise BatchSpecError(
                    f"`{name}` applies to batch_spec='exspec' only (a pool of slots refilled from a queue); "
                    f"batch_spec={strategy!r} decodes every prompt at once: drop `{name}` or use batch_spec='exspec'."
                )
    if strategy is not None and len(sources) > 1:
        raise BatchSpecError(f"{sources[0]} and {sources[1]} are two draft sources; a call drafts from one: drop one "
                             "of them.")


def caller_setting(name: str, kwargs: dict, generation_config, model_config):
    """A setting the caller asked for: passed as a keyword, or in an explicit `generation_config` with a value
    other than transformers' default and the model's own (a checkpoint's defaults are not a request)."""
    if name in kwargs:
        return kwargs[name]
    if generation_config is None:
        return None
    value = getattr(generation_config, name, None)
    defaults = (getattr(_HF_DEFAULTS, name, None), getattr(model_config, name, None))
    return None if any(value == default for default in defaults) else value


CACHE_IMPLEMENTATIONS = (None, "dynamic", "static")


def resolve_compile(kwargs: dict, generation_config, model_config, target, draft, strategy: str,
                    ) -> tuple[bool, CompileConfig | None]:
    """(static shapes, compile config) as transformers decides for its own greedy: a caller's `compile_config`
    compiles on any device; `cache_implementation="static"` gives static shapes, compiled by default on CUDA
    (transformers' auto-compile); `disable_compile=True` turns compiling off. Both models' decode forwards
    compile; prefills stay eager."""
    implementation = caller_setting("cache_implementation", kwargs, generation_config, model_config)
    if implementation not in CACHE_IMPLEMENTATIONS:
        raise BatchSpecError(
            f"cache_implementation={implementation!r} is not supported with batch_spec: the call builds its own "
            "per-row caches. Use 'static' (fixed shapes, compiled on CUDA as transformers does) or drop it."
        )
    compile_config = caller_setting("compile_config", kwargs, generation_config, model_config)
    if compile_config is not None and not isinstance(compile_config, CompileConfig):
        raise BatchSpecError(f"compile_config must be a transformers.CompileConfig; got "
                             f"{type(compile_config).__name__}.")
    static = implementation == "static" or compile_config is not None
    if compile_config is None and implementation == "static" and input_device(target).type == "cuda":
        compile_config = getattr(model_config, "compile_config", None) or CompileConfig()
    if setting("disable_compile", kwargs, generation_config, model_config):
        compile_config = None
    if static and strategy == "eqspec-realign":
        raise BatchSpecError("batch_spec='eqspec-realign' moves every row of both caches each round, which static "
                             "shapes exclude: use 'eqspec' or 'exspec' with compile_config / cache_implementation.")
    if compile_config is not None:
        for role, model in (("target model", target), ("assistant_model", draft)):
            reason = compat.compile_obstacle(model) if model is not None else None
            if reason:
                raise BatchSpecError(f"compile_config: the {role} cannot be compiled ({reason}); drop "
                                     "compile_config / cache_implementation='static', or pass disable_compile=True.")
    return static, compile_config


def without_cache_settings(kwargs: dict, generation_config):
    """Take cache_implementation / compile_config / disable_compile out of the call (resolved by
    `resolve_compile`), so that transformers' preparation builds no cache of its own."""
    for name in ("cache_implementation", "compile_config", "disable_compile"):
        kwargs.pop(name, None)
    if generation_config is not None and (generation_config.cache_implementation is not None
                                          or generation_config.compile_config is not None):
        generation_config = copy.deepcopy(generation_config)
        generation_config.cache_implementation = generation_config.compile_config = None
    return generation_config


def setting(name: str, kwargs: dict, generation_config, model_config):
    """A generation setting as transformers resolves it: the kwarg, else the call's config, else the model's."""
    if kwargs.get(name) is not None:
        return kwargs[name]
    for config in (generation_config, model_config):
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


# Settings of generate() that the batch speculative path does not serve (yet): what to do instead.
_NOT_SERVED = {
    "prefix_allowed_tokens_fn": "its constraint reads the padded batch layout",
    "negative_prompt_ids": "classifier-free guidance needs a second, unconditional batch",
    "speculation_type": "transformers' other speculation types are not batched",
    "assistant_ensemble_weight": "ensemble verification changes the output distribution; batch_spec is lossless",
    "cache_config": "batch_spec builds its own per-row caches",
    "max_cache_len": "batch_spec sizes its own per-row caches (prompt width + max_new_tokens)",
    "prefill_chunk_size": "batch_spec prefills each admitted prompt in one forward",
    "penalty_alpha": "contrastive search is another decoding method",
    "dola_layers": "DoLa decoding is another decoding method",
    "low_memory": "it applies to contrastive search only",
    "token_healing": "token healing rewrites the prompt, which batch_spec does not do",
    "continuous_batching_config": "it configures transformers' generate_batch, not generate",
}


def check_call(kwargs: dict, *, prefix_allowed_tokens_fn, synced_gpus, generation_config=None, model_config=None):
    """Arguments of generate() that the batch speculative path does not serve (yet): refused, never dropped.

    A setting counts as given when the caller passed it as a keyword, or in an explicit `generation_config` with
    a value other than transformers' default and the model's own; the model's `generation_config` (a checkpoint's
    defaults, e.g. Gemma's cache_implementation="hybrid") is not the caller's request.
    """
    given = {"prefix_allowed_tokens_fn": prefix_allowed_tokens_fn}
    for name in _NOT_SERVED:
        given.setdefault(name, caller_setting(name, kwargs, generation_config, model_config))
    for name, value in given.items():
        if value is not None and value is not False and not (isinstance(value, list) and not value):
            raise BatchSpecError(
                f"`{name}` is not supported with batch_spec ({_NOT_SERVED[name]}): drop it, or call without "
                "assistant_model for transformers' own generate."
            )
    if synced_gpus:
        raise BatchSpecError(
            "synced_gpus is not supported with batch_spec; split the prompts across processes instead "
            "(accelerate's PartialState().split_between_processes)."
        )
    for name in compat.user_cache_kwargs(kwargs):
        raise BatchSpecError(f"`{name}` is not supported with batch_spec: the call builds its own per-row caches.")


def batch_size_of(input_ids, inputs_embeds) -> int | None:
    """The call's batch size, from `input_ids` or else `inputs_embeds` (None when neither is a batch)."""
    for tensor in (input_ids, inputs_embeds):
        if isinstance(tensor, torch.Tensor) and tensor.dim() >= 2:
            return int(tensor.shape[0])
    return None


def check_inputs(input_ids, attention_mask, pad_token_id, vocab_size: int, inputs_embeds=None, eos_token_id=None,
                 position_ids=None) -> None:
    """Every tensor argument, before any work: dtype, dimensions, shapes that agree, and values (ids inside the
    vocabulary of both models, a 0/1 left-padding mask, the caller's position_ids if any). Positions and masks come
    from the mask, never from token values, so a bad mask or id would otherwise surface deep inside a forward, or
    not at all."""
    if input_ids is None:
        if inputs_embeds is not None:
            raise BatchSpecError(
                "inputs_embeds is not supported with assistant_model at batch > 1 (or with batch_spec): batch "
                "speculative decoding needs token ids, which the draft reads and the target verifies. Pass input_ids."
            )
        raise BatchSpecError("batch_spec needs `input_ids` [batch, length] (the tokenizer's return_tensors='pt').")
    if inputs_embeds is not None:
        raise BatchSpecError("Pass either input_ids or inputs_embeds, not both (batch_spec decodes from input_ids).")
    if not isinstance(input_ids, torch.Tensor):
        raise BatchSpecError(f"input_ids must be a torch.LongTensor [batch, length]; got {type(input_ids).__name__} "
                             "(tokenize with return_tensors='pt').")
    if input_ids.dim() != 2:
        raise BatchSpecError(f"input_ids must be [batch, length]; got shape {tuple(input_ids.shape)}.")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise BatchSpecError(
            f"input_ids must hold integer token ids (torch.long); got dtype {input_ids.dtype}. Use the tokenizer's "
            "input_ids as returned (return_tensors='pt'), or convert ids with .long()."
        )
    if input_ids.dtype not in EMBEDDABLE_ID_DTYPES:
        raise BatchSpecError(
            f"input_ids have dtype {input_ids.dtype}; an embedding takes token ids as torch.long (or torch.int32) "
            "only, and transformers' own generate fails inside the forward with these: pass input_ids.long()."
        )
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise BatchSpecError(f"input_ids is empty (shape {tuple(input_ids.shape)}): every prompt needs a token.")
    real = check_attention_mask(attention_mask, input_ids)  # [B, W] bool: the tokens that are prompt, not padding
    ids = input_ids.long()  # [B, W] compared in int64, where no id wraps
    outside = real & ((ids < 0) | (ids >= vocab_size))
    if bool(outside.any()):
        row, col = (int(i) for i in outside.nonzero()[0])
        raise BatchSpecError(
            f"input_ids[{row}, {col}] = {int(ids[row, col])} is outside the vocabulary [0, {vocab_size}) of "
            "the target and assistant models: the ids must come from the models' own tokenizer."
        )
    if attention_mask is None:
        check_unmasked_padding(input_ids, pad_token_id, eos_token_id)
    check_position_ids(position_ids, real)


# The index dtypes torch's embedding takes (transformers' mask inference reads these as token ids, too).
EMBEDDABLE_ID_DTYPES = (torch.int64, torch.int32)


def _id_list(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(v) for v in np.atleast_1d(value).tolist()]


def check_unmasked_padding(input_ids: torch.Tensor, pad_token_id, eos_token_id) -> None:
    """Without an attention_mask, padding is decided as transformers' `_prepare_attention_mask_for_generation`
    does: it infers attention_mask = (input_ids != pad_token_id) when pad_token_id occurs anywhere in input_ids
    and is not an eos id; otherwise every token is real (GPT-2 style pad == eos == bos included), and the call is
    served with an all-ones mask. An inferred mask is refused: the caller passes the tokenizer's mask instead."""
    pads, eos = _id_list(pad_token_id), _id_list(eos_token_id)
    if not pads or any(p in eos for p in pads):
        return
    found = torch.isin(input_ids, torch.tensor(pads, dtype=input_ids.dtype, device=input_ids.device))  # [B, W]
    if bool(found.any()):
        row, col = (int(i) for i in found.nonzero()[0])
        raise BatchSpecError(
            f"input_ids[{row}, {col}] is pad_token_id={pads[0]} and no attention_mask was given: transformers would "
            "infer attention_mask = (input_ids != pad_token_id) and mask it. Pass the attention_mask returned by the "
            "tokenizer (an all-ones one if those ids are real tokens)."
        )


def check_position_ids(position_ids, real: torch.Tensor) -> None:  # real: [B, W] bool, the prompts' tokens
    """A caller's position_ids (transformers honours them) are honoured when they are the positions each row
    decodes at: its real tokens counted from 0, as transformers derives them from the mask. Any other positions
    would be dropped by per-row decoding, so they are refused, naming the first row that differs."""
    if position_ids is None:
        return
    instead = ("batch_spec decodes each row at positions 0, 1, ... over its real tokens (from attention_mask): "
               "drop position_ids and pass the attention_mask, or call without a draft source for transformers' "
               "own generate.")
    if (not isinstance(position_ids, torch.Tensor) or position_ids.dim() != 2 or position_ids.dtype.is_floating_point
            or position_ids.shape[1] != real.shape[1] or position_ids.shape[0] not in (1, real.shape[0])):
        shape = tuple(position_ids.shape) if isinstance(position_ids, torch.Tensor) else type(position_ids).__name__
        raise BatchSpecError(f"position_ids must be an integer tensor [batch, length] like input_ids "
                             f"{tuple(real.shape)}; got {shape}. {instead}")
    expected = real.long().cumsum(-1) - 1  # [B, W] each row's real tokens counted from 0
    differs = real & (position_ids.to(real.device).long() != expected)  # [B, W]
    if bool(differs.any()):
        row = int(differs.any(-1).nonzero()[0])
        raise BatchSpecError(f"position_ids row {row} does not count that row's real tokens from 0 (at padding it "
                             f"may hold anything). {instead}")


def check_lengths(kwargs: dict, generation_config, model_config) -> None:
    """max_new_tokens must be a positive int (transformers runs 2.5 as 3 and refuses 0 only; a float budget would
    fail deep inside the decode loop); max_length, when it decides, an int."""
    value = setting("max_new_tokens", kwargs, generation_config, model_config)
    if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1):
        raise BatchSpecError(f"max_new_tokens must be a positive integer (new tokens per row); got {value!r}.")
    length = setting("max_length", kwargs, generation_config, model_config)
    if value is None and length is not None and (not isinstance(length, (int, np.integer))
                                                 or isinstance(length, bool)):
        raise BatchSpecError(f"max_length must be an integer (prompt plus new tokens); got {length!r}: or pass "
                             "max_new_tokens.")


def warn_past_positions(model, lengths: torch.Tensor, max_new: int) -> None:  # lengths: [B] real prompt tokens
    """transformers' MaxLengthCriteria warns when a call runs past config.max_position_embeddings; warned here once
    per call, before any forward. A row's last new token is never fed back, so the longest row feeds positions up
    to its length + max_new - 2 (transformers' `cur_len > max_position_embeddings` before the last step)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    longest = int(lengths.max())
    if limit is not None and longest + max_new - 2 >= limit:
        logger.warning(
            f"This call runs past the model's predefined maximum length (max_position_embeddings={limit}): its longest "
            f"prompt has {longest} tokens, and {max_new} new tokens take it to {longest + max_new}. Depending on the "
            "model, you may observe exceptions, performance degradation, or nothing at all (as transformers warns)."
        )


def _key_bytes_per_token(model) -> int:
    """Bytes of one layer's keys (or values) per token in a model's cache, from its config (kv heads x head dim); 0
    where the config does not say plainly (a config whose head sizes vary by layer refuses global reads)."""
    config = model.config.get_text_config()
    try:
        heads = getattr(config, "num_attention_heads", None)
        hidden = getattr(config, "hidden_size", None)
        head_dim = getattr(config, "head_dim", None) or (hidden // heads if hidden and heads else None)
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
    except Exception:  # noqa: BLE001 - transformers' per-layer configs raise their own error type on global reads
        return 0
    if not all(isinstance(v, int) and v > 0 for v in (head_dim, kv_heads)):
        return 0
    parameter = next(model.parameters(), None)
    return int(kv_heads) * int(head_dim) * (parameter.element_size() if parameter is not None else 4)


def _device_memory(device: torch.device) -> int | None:
    """Total memory of the device the caches would live on (None where unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            return None
    return None


def check_cache_memory(target, draft, rows: int, width: int, max_new: int) -> None:
    """The caches and the token buffer are preallocated for each row's prompt and whole budget (transformers' cache
    grows and stops with the rows): a budget for which one of those tensors alone is larger than the device's memory
    could never be allocated, and is refused with the numbers before anything is."""
    positions = rows * (width + max_new)
    largest = positions * max([8] + [_key_bytes_per_token(m) for m in (target, draft) if m is not None])
    memory = _device_memory(input_device(target))
    if memory is not None and largest > memory:
        raise BatchSpecError(
            f"max_new_tokens={max_new}: this call's caches are preallocated for every row's whole budget "
            f"({rows} rows x {width + max_new} positions): one of their tensors alone would take about "
            f"{largest / 2**30:.3g} GiB, more than the device's {memory / 2**30:.3g} GiB. Pass the max_new_tokens the "
            "call needs (rows stop at EOS), or fewer rows at once (max_batch_size with batch_spec='exspec').")


def check_attention_mask(attention_mask, input_ids: torch.Tensor) -> torch.Tensor:  # [B, W] bool
    """A left-padding mask: each row is zeros, then at least one one. Returns it as booleans."""
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    if not isinstance(attention_mask, torch.Tensor):
        raise BatchSpecError(f"attention_mask must be a tensor [batch, length]; got {type(attention_mask).__name__} "
                             "(tokenize with return_tensors='pt').")
    if attention_mask.shape != input_ids.shape:
        raise BatchSpecError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids {tuple(input_ids.shape)}: "
            "pass the mask the tokenizer returned with these ids."
        )
    if attention_mask.device != input_ids.device:
        raise BatchSpecError(f"attention_mask is on {attention_mask.device} but input_ids on {input_ids.device}: "
                             "move both to the same device.")
    if bool(((attention_mask != 0) & (attention_mask != 1)).any()):
        raise BatchSpecError("attention_mask must hold only 0 (padding) and 1 (real tokens); it holds other values.")
    mask = attention_mask != 0
    empty = ~mask.any(-1)
    if bool(empty.any()):
        raise BatchSpecError(f"Row {int(empty.nonzero()[0])} of attention_mask is all zeros: every prompt needs at "
                             "least one token.")
    rises = (mask[:, 1:] & ~mask[:, :-1]).sum(-1)  # [B] 0 -> 1 steps
    falls = (~mask[:, 1:] & mask[:, :-1]).sum(-1)  # [B] 1 -> 0 steps
    right = (falls == 1) & (rises == 0) & mask[:, 0]  # ones, then zeros
    if bool(right.any()):
        raise BatchSpecError(
            f"attention_mask row {int(right.nonzero()[0])} has its padding after the real tokens (right padding); "
            "batched generation with a decoder-only model needs left padding: set tokenizer.padding_side = 'left' "
            "before tokenizing."
        )
    holes = falls > 0
    if bool(holes.any()):
        row = int(holes.nonzero()[0])
        raise BatchSpecError(
            f"attention_mask row {row} has a 0 between real tokens (a hole inside the prompt); hf-batchspec needs "
            "each prompt's tokens contiguous, padding only on the left (positions count the real tokens). Remove "
            "the masked tokens from the prompt (re-tokenize it), or mask only left padding."
        )
    return mask


def prompt_lengths(attention_mask: torch.Tensor | None, input_ids: torch.Tensor) -> torch.Tensor:  # [B]
    """Real tokens per row of a left-padding mask (checked by `check_attention_mask` before any work)."""
    if attention_mask is None:
        return torch.full((input_ids.shape[0],), input_ids.shape[1], dtype=torch.long, device=input_ids.device)
    return (attention_mask != 0).long().sum(-1)


def vocab_size(*models) -> int:
    """Ids every model can embed: the smallest input embedding table (config.vocab_size where there is none)."""
    sizes = []
    for model in models:
        embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        size = getattr(embedding, "num_embeddings", None)
        sizes.append(int(size) if size is not None else int(model.config.get_text_config().vocab_size))
    return min(sizes)


def check_generation_config(config: GenerationConfig, logits_processor, stopping_criteria, model_kwargs) -> None:
    if config.num_beams and config.num_beams > 1:
        raise BatchSpecError("Beam search (num_beams > 1) is not supported with batch_spec; use num_beams=1.")
    for name, feature in _NOT_YET.items():
        if getattr(config, name, False):
            raise BatchSpecError(
                f"{feature} ({name}=True) is not supported with batch_spec yet; drop {name} (or pass "
                f"{name}=False), or call without assistant_model for transformers' own generate."
            )
    unsupported = unsupported_processors(logits_processor)
    if unsupported:
        names = ", ".join(type(p).__name__ for p in unsupported)
        raise BatchSpecError(
            f"These logits processors are not supported with batch_spec: {names} (their meaning depends on the "
            "padded batch layout or the batch index); remove the settings or processors that create them."
        )
    unknown = sorted(set(model_kwargs) - _PREPARED_MODEL_KWARGS)
    if unknown:
        raise BatchSpecError(f"Model kwargs {unknown} are not supported with batch_spec.")
    if model_kwargs.get("use_cache") is False:
        raise BatchSpecError("Speculative decoding needs the KV cache: drop use_cache=False.")


def resolve_draft_source(sources: list[str], target, assistant_model, kwargs: dict, generation_config,
                         ) -> tuple[DraftSource, int | None]:
    """The call's drafter, and its draft length when the source fixes it (prompt lookup's
    prompt_lookup_num_tokens; None: num_assistant_tokens decides), from the source table (`drafters.registry`).
    An argument that configures another source is refused."""
    from .drafters import registry

    model_config = target.generation_config
    settings = registry.Settings(get=lambda name: setting(name, kwargs, generation_config, model_config),
                                 given=lambda name: caller_setting(name, kwargs, generation_config, model_config),
                                 kwargs=kwargs)
    return registry.resolve(sources[0] if sources else "assistant_model", target, assistant_model, settings)


def check_source(source: DraftSource, do_sample: bool, static: bool, strategy: str) -> None:
    """What the call's draft source refuses once the call's mode is known (its registry entry's `check`)."""
    if source.spec.check is not None:
        source.spec.check(source, do_sample, static, strategy)


def without_draft_settings(kwargs: dict, generation_config):
    """Take the prompt lookup and early-exit settings out of the call (the drafter serves them), so that
    transformers' preparation does not set up its own batch-1 candidate generator."""
    from .drafters import registry

    names = registry.taken_out()
    for name in names:
        kwargs.pop(name, None)
    if generation_config is not None and any(getattr(generation_config, name, None) is not None for name in names):
        generation_config = copy.deepcopy(generation_config)
        for name in names:
            setattr(generation_config, name, None)
    return generation_config


def resolve_num_assistant_tokens(kwargs: dict, generation_config: GenerationConfig | None, draft) -> int:
    """kwarg first, then an explicit generation_config, then the draft's generation_config, then our default.

    HF's assisted generation reads the value from the draft's config only and ignores the kwarg; users pass
    the kwarg and expect it to work. A value equal to GenerationConfig's default (20) counts as unset: at
    batch > 1 every draft costs a verified token per row, and 5 is the paper's and a safer default.
    """
    candidates = [kwargs.get("num_assistant_tokens")]
    for config in (generation_config, getattr(draft, "generation_config", None)):
        value = getattr(config, "num_assistant_tokens", None)
        candidates.append(None if value == _HF_DEFAULTS.num_assistant_tokens else value)
    value = next((v for v in candidates if v is not None), DEFAULT_NUM_ASSISTANT_TOKENS)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BatchSpecError(f"num_assistant_tokens must be a positive integer; got {value!r}.")
    return value


SCHEDULES = ("constant", "heuristic", "heuristic_transient")


def resolve_draft_schedule(kwargs: dict, draft) -> tuple[str, float | None]:
    """(num_assistant_tokens_schedule, assistant_confidence_threshold): kwarg first, then the draft's
    generation_config as transformers reads it. The threshold's transformers default (0.4) counts as unset:
    at batch > 1 it costs a host sync per draft step, so it applies only when asked for."""
    config = getattr(draft, "generation_config", None)
    schedule = kwargs.get("num_assistant_tokens_schedule") or getattr(config, "num_assistant_tokens_schedule", None)
    schedule = schedule or "constant"
    if schedule not in SCHEDULES:
        raise BatchSpecError(f"num_assistant_tokens_schedule={schedule!r} is not one of {SCHEDULES}.")
    threshold = kwargs.get("assistant_confidence_threshold")
    if threshold is None:
        threshold = getattr(config, "assistant_confidence_threshold", None)
        threshold = None if threshold == _HF_DEFAULTS.assistant_confidence_threshold else threshold
    if threshold is not None and not 0 <= threshold < 1:
        raise BatchSpecError(f"assistant_confidence_threshold must be in [0, 1); got {threshold!r}.")
    return schedule, threshold or None


def pool_options(strategy: str | None, max_batch_size, sort_by_length, batch_size: int) -> tuple[int, bool]:
    """EXSPEC's pool size and admission order (`check_routing` refused them for every other path)."""
    if strategy != "exspec":
        return batch_size, False
    if sort_by_length is not None and not isinstance(sort_by_length, (bool, np.bool_)):
        raise BatchSpecError(f"sort_by_length must be True or False (admit the shortest prompts first); got "
                             f"{sort_by_length!r}.")
    if max_batch_size is None:
        max_batch_size = min(batch_size, DEFAULT_MAX_BATCH_SIZE)
    if not isinstance(max_batch_size, int) or isinstance(max_batch_size, bool) or max_batch_size < 1:
        raise BatchSpecError(f"max_batch_size must be a positive integer; got {max_batch_size!r}.")
    return max_batch_size, bool(sort_by_length)


SPECULATION = ("always", "auto")


def resolve_speculation(speculation, target, source: "DraftSource", *, compiled: bool, static: bool, rows: int,
                        do_sample: bool) -> "CostModel | MeasuredCosts | None":
    """What decides each round's draft length: None (draft every round, as transformers' assisted generation
    does: `speculation="always"`, and the default at batch 1), a fixed `CostModel` (one the caller passed, e.g.
    from `hf_batchspec.calibrate`), or for `"auto"` (the default at batch > 1: draft only where it pays) a
    prior estimated from the models and whether their forwards are compiled, corrected by this process's
    measured rounds (`MeasuredCosts`, shared across calls with the same models and mode). Sampling keeps the
    prior alone, so that a seeded run repeats."""
    from .speculation import measured_costs

    if speculation is None:
        speculation = "auto" if rows > 1 else "always"
    if speculation == "always":
        return None
    if isinstance(speculation, CostModel):
        return speculation
    if speculation != "auto":
        raise BatchSpecError(
            f"speculation={speculation!r} is not supported; use 'auto' (draft only as much as pays, from the "
            f"round costs measured in this process and each row's acceptance; the default at batch > 1), 'always' "
            f"(draft num_assistant_tokens every round, as transformers does; the default at batch 1), or a "
            f"hf_batchspec.CostModel (e.g. from hf_batchspec.calibrate(target, draft))."
        )
    prior = source.spec.prior(target, source, compiled)
    if do_sample:
        return prior
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


def check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise BatchSpecError(f"generator must be a torch.Generator; got {type(generator).__name__}.")


def stop_string_criteria(kwargs: dict, generation_config, model_config):
    """Build transformers' StopStringCriteria ourselves (transformers drops `tokenizer` before calling a custom
    decoding loop); returns (criterion or None, generation_config to hand on without stop_strings)."""
    stop_strings = kwargs.pop("stop_strings", None)
    config = generation_config if generation_config is not None else model_config
    if stop_strings is None and getattr(config, "stop_strings", None):
        stop_strings = config.stop_strings
        generation_config = copy.deepcopy(config)
        generation_config.stop_strings = None
    if not stop_strings:
        return None, generation_config
    tokenizer = kwargs.get("tokenizer")
    if tokenizer is None:
        raise BatchSpecError("stop_strings needs the tokenizer: pass tokenizer=... to generate().")
    return StopStringCriteria(tokenizer=tokenizer, stop_strings=stop_strings), generation_config
