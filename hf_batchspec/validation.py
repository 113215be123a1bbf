"""Checks that run before any forward pass: every unsupported request fails here with what to change."""

from __future__ import annotations

import copy

import torch
from transformers import GenerationConfig
from transformers.generation.stopping_criteria import StopStringCriteria

from . import compat
from .errors import BatchSpecError, UnsupportedModelError
from .masks import attention_layout
from .processors import unsupported_processors
from .speculation import CostModel

STRATEGIES = ("eqspec", "exspec", "eqspec-realign")
DEFAULT_NUM_ASSISTANT_TOKENS = 5
DEFAULT_MAX_BATCH_SIZE = 32
_HF_DEFAULTS = GenerationConfig()
SUPPORTED_ATTENTION = ("eager", "sdpa")
# model_kwargs that transformers' own generate() prepares; anything else came from the caller
_PREPARED_MODEL_KWARGS = {"attention_mask", "position_ids", "logits_to_keep", "cache", "past_key_values", "use_cache"}
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
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModelError(
            f"The {role} ({type(model).__name__}) is an encoder-decoder model; hf-batchspec supports decoder-only "
            "causal LMs."
        )
    for name in ("attention_mask", "position_ids"):
        if not compat.accepts(model, name):
            raise UnsupportedModelError(f"The {role}'s forward does not take `{name}`, which per-row decoding needs.")
    implementation = getattr(config, "_attn_implementation", None) or "sdpa"
    if implementation not in SUPPORTED_ATTENTION:
        raise UnsupportedModelError(
            f"The {role} uses attn_implementation={implementation!r}; per-row masks need one of "
            f"{SUPPORTED_ATTENTION}. Load it with attn_implementation='sdpa'."
        )
    attention_layout(config)


def check_pair(target: torch.nn.Module, draft) -> None:
    if draft is None:
        raise BatchSpecError("batch_spec needs a draft model: pass assistant_model=...")
    check_causal_lm(target, "target model")
    check_causal_lm(draft, "assistant_model")
    vocab_t = target.config.get_text_config().vocab_size
    vocab_d = draft.config.get_text_config().vocab_size
    if vocab_t != vocab_d:
        raise BatchSpecError(
            f"The target's vocabulary ({vocab_t} tokens) and the assistant's ({vocab_d}) differ; hf-batchspec needs "
            "a draft that shares the target's tokenizer (drafts with another tokenizer are not supported)."
        )


def choose_strategy(batch_spec: str | None, assistant_model, batch_size: int | None) -> str | None:
    """Which path serves this call: None for transformers' own generate, else "eqspec" or "exspec" (or
    "eqspec-realign": eqspec in the paper's left-padded layout, realigned every round, to measure that cost)."""
    if batch_spec is not None and batch_spec not in STRATEGIES:
        raise BatchSpecError(f"batch_spec={batch_spec!r} is not one of {STRATEGIES} (or None).")
    if assistant_model is None:
        if batch_spec is not None:
            raise BatchSpecError(f"batch_spec={batch_spec!r} needs a draft model: pass assistant_model=...")
        return None
    if batch_spec is None:
        return "exspec" if batch_size is not None and batch_size > 1 else None
    return batch_spec


def check_call(kwargs: dict, *, prefix_allowed_tokens_fn, synced_gpus):
    """Arguments of generate() that the batch speculative path does not serve (yet)."""
    given = {
        "prefix_allowed_tokens_fn": prefix_allowed_tokens_fn,
        "negative_prompt_ids": kwargs.get("negative_prompt_ids"),
        "assistant_tokenizer": kwargs.get("assistant_tokenizer"),
        "inputs_embeds": kwargs.get("inputs_embeds"),
        "prompt_lookup_num_tokens": kwargs.get("prompt_lookup_num_tokens"),
        "assistant_early_exit": kwargs.get("assistant_early_exit"),
    }
    for name, value in given.items():
        if value is not None and not (isinstance(value, list) and not value):
            raise BatchSpecError(f"`{name}` is not supported with batch_spec; drop it or call without assistant_model.")
    if synced_gpus:
        raise BatchSpecError(
            "synced_gpus is not supported with batch_spec; split the prompts across processes instead "
            "(accelerate's PartialState().split_between_processes)."
        )
    for name in compat.user_cache_kwargs(kwargs):
        raise BatchSpecError(f"`{name}` is not supported with batch_spec: the call builds its own per-row caches.")


def check_padding(input_ids: torch.Tensor | None, attention_mask, pad_token_id) -> None:
    """Refuse padded input without a mask: positions and masks come from the mask, never from token values."""
    if input_ids is None:
        raise BatchSpecError("batch_spec needs `input_ids` (inputs_embeds are not supported).")
    if not isinstance(input_ids, torch.Tensor):
        raise BatchSpecError(f"input_ids must be a torch.LongTensor [batch, length]; got {type(input_ids).__name__} "
                             "(tokenize with return_tensors='pt').")
    if input_ids.dim() != 2:
        raise BatchSpecError(f"input_ids must be [batch, length]; got shape {tuple(input_ids.shape)}.")
    if attention_mask is None and pad_token_id is not None and input_ids.shape[1] > 1:
        if bool((input_ids[:, 0] == pad_token_id).any()):
            raise BatchSpecError(
                f"input_ids look left-padded (a row starts with pad_token_id={pad_token_id}) but no attention_mask "
                "was given: pass the attention_mask returned by the tokenizer."
            )


def prompt_lengths(attention_mask: torch.Tensor | None, input_ids: torch.Tensor) -> torch.Tensor:  # [B]
    """Real tokens per row from a left-padding mask; anything else is refused."""
    if attention_mask is None:
        return torch.full((input_ids.shape[0],), input_ids.shape[1], dtype=torch.long, device=input_ids.device)
    if attention_mask.shape != input_ids.shape:
        raise BatchSpecError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids {tuple(input_ids.shape)}."
        )
    mask = attention_mask.long()
    if bool(((mask != 0) & (mask != 1)).any()):
        raise BatchSpecError("attention_mask must hold only 0 and 1.")
    if bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise BatchSpecError(
            "attention_mask has padding after real tokens (right padding or holes); batched generation with a "
            "decoder-only model needs left padding: set tokenizer.padding_side = 'left'."
        )
    lengths = mask.sum(-1)
    if bool((lengths == 0).any()):
        raise BatchSpecError("A row of attention_mask is all zeros: every prompt needs at least one token.")
    return lengths


def check_generation_config(config: GenerationConfig, logits_processor, stopping_criteria, model_kwargs) -> None:
    if config.num_beams and config.num_beams > 1:
        raise BatchSpecError("Beam search (num_beams > 1) is not supported with batch_spec; use num_beams=1.")
    if config.num_return_sequences and config.num_return_sequences > 1:
        raise BatchSpecError(
            "num_return_sequences > 1 is not supported with batch_spec; repeat the prompt in the batch instead."
        )
    for name, feature in _NOT_YET.items():
        if getattr(config, name, False):
            raise BatchSpecError(
                f"{feature} ({name}=True) is not supported with batch_spec yet; pass {name}=False "
                "(greedy decoding) or call without assistant_model."
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
    """EXSPEC's pool size and admission order; EQSPEC decodes every prompt at once and takes neither."""
    if strategy != "exspec":
        for name, value in (("max_batch_size", max_batch_size), ("sort_by_length", sort_by_length)):
            if value is not None:
                raise BatchSpecError(
                    f"`{name}` applies to batch_spec='exspec' only; eqspec decodes every prompt at once."
                )
        return batch_size, False
    if max_batch_size is None:
        max_batch_size = min(batch_size, DEFAULT_MAX_BATCH_SIZE)
    if not isinstance(max_batch_size, int) or isinstance(max_batch_size, bool) or max_batch_size < 1:
        raise BatchSpecError(f"max_batch_size must be a positive integer; got {max_batch_size!r}.")
    return max_batch_size, bool(sort_by_length)


SPECULATION = ("always", "auto")


def resolve_speculation(speculation, target, draft) -> CostModel | None:
    """None (draft every round, as transformers' assisted generation does), or the cost model that
    `speculation="auto"` decides with: the given `CostModel`, or one estimated from the models."""
    if speculation is None or speculation == "always":
        return None
    if isinstance(speculation, CostModel):
        return speculation
    if speculation == "auto":
        return CostModel.estimate(target, draft)
    raise BatchSpecError(
        f"speculation={speculation!r} is not supported; use 'always' (draft num_assistant_tokens every round, "
        f"the default), 'auto' (draft only as much as pays, from a cost model estimated from the models), or "
        f"a hf_batchspec.CostModel (e.g. from hf_batchspec.calibrate(target, draft))."
    )


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
