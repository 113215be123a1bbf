"""Checks of models and inputs as code (the rule tables are `rules`; `plan.plan_call` runs both before
transformers prepares a call): every unsupported request fails with what to change, before any forward."""

from __future__ import annotations

import os

import numpy as np
import torch
from transformers import GenerationConfig
from transformers.utils import logging

from . import compat, encoder_decoder
from .errors import BatchSpecError, UnsupportedModelError
from .masks import attention_layout
from .processors import SOURCE_READERS, unsupported_processors
from .runner import input_device

SUPPORTED_ATTENTION = ("eager", "sdpa")
# model_kwargs that transformers' own generate() prepares; anything else came from the caller
_PREPARED_MODEL_KWARGS = {"attention_mask", "position_ids", "logits_to_keep", "cache", "past_key_values", "use_cache"}
# Under transformers' logger hierarchy, so that its verbosity settings (set_verbosity_error, ...) apply here too.
logger = logging.get_logger(f"transformers.{__name__}")


def check_causal_lm(model: torch.nn.Module, role: str = "model", own_cache: bool = True) -> None:
    """A decoder-only HF model with an LM head, whose attention we can drive with per-row masks (and, unless it
    reads another model's cache, `own_cache=False`: a Gemma 4 assistant, whose keys and values are its target's)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "can_generate") or not model.can_generate():
        raise UnsupportedModelError(
            f"The {role} ({type(model).__name__}) is not a transformers causal LM with a generation head; "
            "load it with AutoModelForCausalLM."
        )
    check_decoder_only(type(model), config, role)
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embedding, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.device.type == "meta" and getattr(embedding, "_hf_hook", None) is None:
        raise UnsupportedModelError(
            f"The {role}'s weights are on the meta device (not loaded, and no accelerate offload hook reads them): "
            "load them (from_pretrained, or to_empty() and load_state_dict()).")
    if own_cache and not (compat.accepts(model, "cache") or compat.accepts(model, "past_key_values")):
        raise UnsupportedModelError(
            f"The {role}'s forward ({type(model).__name__}) takes no key/value cache (`past_key_values`): a model "
            "with a recurrent state (Mamba, RWKV) or with no cache at all cannot be decoded per row; per-row decoding "
            "keeps, and rolls back, each row's keys and values.")
    # an encoder-decoder model takes them under the decoder's names (`encoder_decoder.Seq2SeqBinding`)
    for name in () if encoder_decoder.reads_encoder(model) else ("attention_mask", "position_ids"):
        if not compat.accepts(model, name):
            why = (" (a model with a recurrent state, such as Mamba or RWKV, or one whose positions come from the "
                   "batch's shared length, such as BLOOM's ALiBi, cannot be decoded per row)") if name == "position_ids" else ""
            raise UnsupportedModelError(f"The {role}'s forward does not take `{name}`, which per-row decoding "
                                        f"needs{why}.")
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


def check_pair(target: torch.nn.Module, draft, own_cache: bool = True) -> None:
    if draft is None:
        raise BatchSpecError("batch_spec needs a draft model: pass assistant_model=...")
    check_causal_lm(target, "target model")
    if encoder_decoder.reads_encoder(target):  # first: it names what an encoder-decoder target's draft must be
        encoder_decoder.check_pair(target, draft)
        check_causal_lm(draft, "assistant_model", own_cache)
    else:  # first: a draft of a model it cannot be (an encoder-decoder one) is named as such
        check_causal_lm(draft, "assistant_model", own_cache)
        encoder_decoder.check_pair(target, draft)
    vocab_t, vocab_d = output_vocab(target), output_vocab(draft)
    if vocab_t != vocab_d and encoder_decoder.reads_encoder(target):
        raise BatchSpecError(
            f"The target's decoder vocabulary ({vocab_t} tokens) and the assistant's ({vocab_d}) differ: an "
            "encoder-decoder target's draft must draft in its vocabulary; pass a draft made for this target.")
    if vocab_t != vocab_d:
        raise BatchSpecError(
            f"The target's vocabulary ({vocab_t} tokens) and the assistant's ({vocab_d}) differ: a draft with "
            "another tokenizer needs both tokenizers, as in transformers: pass tokenizer=<the target's> and "
            "assistant_tokenizer=<the draft's>."
        )


def output_vocab(model) -> int:
    """The ids a model's decoder embeds and scores: Marian's `decoder_vocab_size` where its decoder has a vocabulary
    of its own, else `vocab_size`."""
    config = model.config.get_text_config()
    return int(getattr(config, "decoder_vocab_size", None) or config.vocab_size)


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
    real = check_token_ids(input_ids, attention_mask, vocab_size)  # [B, W] bool: prompt tokens, not padding
    if attention_mask is None:
        check_unmasked_padding(input_ids, pad_token_id, eos_token_id)
    check_position_ids(position_ids, real)


def check_token_ids(input_ids, attention_mask, vocab_size: int, *, encoder: bool = False) -> torch.Tensor:  # [B, W]
    """Token ids and their mask, the checks a decoder's prompt and a text encoder's input share: an integer
    `[batch, length]` tensor an embedding takes, ids inside the vocabulary, a 0/1 mask of its shape with a token
    in every row. A decoder's prompt is left-padded (positions count its real tokens) and only its real tokens are
    read; an encoder reads every position of every row, from the first column (its mask pads on the right), so its
    padding ids are checked too. Returns the real tokens `[B, W]` (bool)."""
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
    if input_ids.device.type == "meta":
        raise BatchSpecError("input_ids are on the meta device (no data): pass the tokenizer's ids.")
    real = check_attention_mask(attention_mask, input_ids, left_padding=not encoder)  # [B, W] bool: not padding
    ids = input_ids.long()  # [B, W] compared in int64, where no id wraps
    read = torch.ones_like(real) if encoder else real  # an encoder embeds every position, its padding too
    outside = read & ((ids < 0) | (ids >= vocab_size))
    if bool(outside.any()):
        row, col = (int(i) for i in outside.nonzero()[0])
        raise BatchSpecError(
            f"input_ids[{row}, {col}] = {int(ids[row, col])} is outside the vocabulary [0, {vocab_size}) of "
            f"{'the encoder' if encoder else 'the target and assistant models'}: the ids must come from the models' "
            "own tokenizer."
        )
    return real


# The index dtypes torch's embedding takes (transformers' mask inference reads these as token ids, too).
EMBEDDABLE_ID_DTYPES = (torch.int64, torch.int32)


def _id_list(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(v) for v in np.atleast_1d(value).tolist()]


def check_unmasked_source(input_ids: torch.Tensor, attention_mask, pad_token_id) -> None:
    """A text encoder's batch without a mask: transformers infers none for an encoder-decoder model, so a padded
    source's encoder would read its padding as tokens and its output differ from the source's alone. Refused where
    `pad_token_id` occurs in a batch of more than one source."""
    pads = _id_list(pad_token_id)
    if attention_mask is not None or input_ids.shape[0] < 2:
        return
    found = _first_pad(input_ids, pads)
    if found is not None:
        raise BatchSpecError(
            f"input_ids[{found[0]}, {found[1]}] is pad_token_id={pads[0]} and no attention_mask was given: the "
            "encoder would read the padding as tokens (transformers infers no mask for an encoder-decoder model). "
            "Pass the tokenizer's attention_mask.")


def _first_pad(input_ids: torch.Tensor, pads: list[int]) -> tuple[int, int] | None:  # (row, column) of a pad id
    if not pads:
        return None
    found = torch.isin(input_ids, torch.tensor(pads, dtype=input_ids.dtype, device=input_ids.device))  # [B, W]
    return tuple(int(i) for i in found.nonzero()[0]) if bool(found.any()) else None


def check_unmasked_padding(input_ids: torch.Tensor, pad_token_id, eos_token_id) -> None:
    """Without an attention_mask, padding is decided as transformers' `_prepare_attention_mask_for_generation`
    does: it infers attention_mask = (input_ids != pad_token_id) when pad_token_id occurs anywhere in input_ids
    and is not an eos id; otherwise every token is real (GPT-2 style pad == eos == bos included), and the call is
    served with an all-ones mask. An inferred mask is refused: the caller passes the tokenizer's mask instead."""
    pads, eos = _id_list(pad_token_id), _id_list(eos_token_id)
    if any(p in eos for p in pads):
        return
    found = _first_pad(input_ids, pads)
    if found is not None:
        row, col = found
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


def check_attention_mask(attention_mask, input_ids: torch.Tensor, left_padding: bool = True) -> torch.Tensor:
    """A 0/1 mask of input_ids' shape with a one in every row; with `left_padding`, each row is zeros, then ones.
    Returns it as booleans `[B, W]`."""
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
    if not left_padding:  # an encoder's source: ones, then zeros (its positions count from the first column)
        left = rises > 0
        if bool(left.any()):
            row = int(left.nonzero()[0])
            raise BatchSpecError(
                f"attention_mask row {row} has padding before (or inside) the source's tokens; this encoder numbers "
                "positions from the first column, so a left-padded source is read shifted and its output differs "
                "from the source's alone: pad on the right (tokenizer.padding_side = 'right', these models' "
                "default).")
        return mask
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




def check_processors(logits_processor) -> None:
    """Logits processors whose meaning depends on the padded batch layout or the batch index are refused."""
    unsupported = unsupported_processors(logits_processor)
    if unsupported:
        raise BatchSpecError(
            f"These logits processors are not supported with batch_spec: "
            f"{', '.join(type(p).__name__ for p in unsupported)} (their meaning depends on the padded batch layout "
            "or the batch index); remove the settings or processors that create them.")


def check_callers_processors(logits_processor) -> None:
    """The caller's own processors: besides `check_processors`, those that read a source of their own (the ids they
    were built with); the generation settings that build them are served, each row reading its own source."""
    own = [p for p in logits_processor or [] if isinstance(p, SOURCE_READERS)]
    if own:
        raise BatchSpecError(
            f"{type(own[0]).__name__} passed in logits_processor holds the ids it was built with, which are not each "
            "row's own source: pass encoder_repetition_penalty= / encoder_no_repeat_ngram_size= instead (each row "
            "then reads its own source, without padding).")
    check_processors(logits_processor)


def check_prepared(config: GenerationConfig, logits_processor, model_kwargs: dict) -> None:
    """What transformers prepared, checked once more: the rule tables refuse every setting known to build a
    processor that is not served, and every model kwarg of a decoder-only call, before the preparation; this is the
    backstop for what they do not know (a processor a later transformers builds from a new setting, the model
    kwargs an encoder-decoder model's own generate makes). Still before any forward of the decoder."""
    check_processors(logits_processor)
    unknown = sorted(set(model_kwargs) - _PREPARED_MODEL_KWARGS)
    if unknown:
        raise BatchSpecError(f"Model kwargs {unknown} are not supported with batch_spec.")
    if model_kwargs.get("use_cache") is False or config.num_beams and config.num_beams > 1:
        raise BatchSpecError("Speculative decoding needs the KV cache and one beam: drop use_cache=False and "
                             "num_beams.")
