"""Encoder-decoder models (Whisper, BART, mBART, Marian): which are served, what a call's encoder gives each model, and a decoder forward
on the ragged cache.

The decode loop is the decoder-only one: the decoder's self-attention is the ragged cache, a verify is k+1 tokens
per row at that row's own positions. What an encoder-decoder model adds is per row and constant:
- the encoder runs once per input, batched, before decoding (transformers runs the target's while it prepares the
  call; a draft with an encoder of its own runs it here on the same inputs, `EncoderSide.states_for`);
- each row's cross-attention keys and values are projected once, when its input is admitted to a cache row
  (`cross_cache.CrossStore`), and move with the row;
- a decoder forward gets per-row positions and the additive self-attention mask under the decoder's names, and a
  placeholder encoder output (`Seq2SeqBinding.forward_kwargs`).

Which decoders can take per-row positions (docs/notes_whisper.md §3): Whisper's learned position table is read at
the `decoder_position_ids` / `position_ids` it is given, so rows at different positions in one forward are exact.
BART, mBART and Marian compute positions from one length shared by the batch (the cache's) and look them up in a
table: for them the lookup's output is replaced, for the call, by the table at each row's own positions
(`PerRowPositions`), and each row's encoder mask goes with its cross store. T5 and its kin compute a relative bias
from one shared query offset, and others (M2M100, LED, ProphetNet, ...) positions of their own kind: refused.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from .errors import BatchSpecError, UnsupportedModelError

# model_type of the encoder-decoder models served: Whisper's decoder reads per-row position ids; the others' position
# table is read at per-row positions by `PerRowPositions`
POSITION_TABLES = ("bart", "mbart", "marian", "pegasus", "blenderbot", "blenderbot-small", "plbart", "mvp",
                   "bigbird_pegasus")
SERVED = ("whisper",) + POSITION_TABLES
# Kinds refused for a reason of their own (the others: positions or a relative bias from one shared length)
REFUSED_WHY = {
    "led": "its decoder builds no attention mask for a one-token step, so a row's query would read every cache slot, "
           "other positions' included",
}
# Served kinds with settings that are not: what the setting changes, for the refusal
NOT_SERVED_SETTINGS = {
    "bigbird_pegasus": ("attention_type", "original_full", "block-sparse attention lays out an encoder's blocks over "
                                                            "the batch's padded length"),
    "mvp": ("use_prompt", False, "prompt keys and values are prepended inside each attention, beside the cache"),
}


def is_encoder_decoder(model) -> bool:
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def reads_encoder(model) -> bool:
    """A model whose decoder cross-attends to an encoder output: an encoder-decoder model, or a decoder-only draft
    made for one (`WhisperForCausalLM`, distil-whisper's kind, which reads the target's encoder output)."""
    return is_encoder_decoder(model) or getattr(getattr(model, "config", None), "model_type", None) == "whisper"


def check_served(model_class: type, config, role: str = "model") -> None:
    """Refuse an encoder-decoder model whose decoder cannot take rows at different positions in one forward."""
    if not getattr(config, "is_encoder_decoder", False):
        return
    model_type = getattr(config, "model_type", None)
    if model_type not in SERVED:
        why = REFUSED_WHY.get(model_type, "whose decoder computes positions (or a relative position bias) from one "
                                          "length shared by the batch in a way hf-batchspec cannot give per row, so "
                                          "rows of different lengths cannot decode in one forward")
        raise UnsupportedModelError(
            f"The {role} ({model_class.__name__}) is an encoder-decoder model of type {model_type!r}, {why}. "
            f"hf-batchspec serves decoder-only causal LMs and these encoder-decoder models: {', '.join(SERVED)}; "
            "call without batch_spec and assistant_model for transformers' own generate.")
    if model_type in NOT_SERVED_SETTINGS:
        name, served, why = NOT_SERVED_SETTINGS[model_type]
        if getattr(config, name, served) != served:
            raise UnsupportedModelError(
                f"The {role} ({model_class.__name__}) has {name}={getattr(config, name)!r}, which hf-batchspec does "
                f"not serve ({why}); {name}={served!r} is served. Call without batch_spec and assistant_model for "
                "transformers' own generate.")


class PerRowPositions:
    """A decoder's position table read at each row's own positions: the output of its `embed_positions` lookup (made
    from one length shared by the batch) is replaced by `table[positions + offset]` `[b, q, D]`, for the forwards of
    one call (`close` removes the hook). `positions` is set before each forward."""

    def __init__(self, table: torch.nn.Module):
        self.positions: torch.Tensor | None = None  # [b, q]
        self._handles = [table.register_forward_pre_hook(self._from_start, with_kwargs=True),
                         table.register_forward_hook(self._lookup)]

    def _from_start(self, module, args, kwargs):
        """The table's own lookup (whose output `_lookup` replaces) counted from position 0: from the cache's
        length, the longest row's, its last rounds' padding queries could run past the table."""
        if self.positions is None:
            return None
        def start(value):  # a cache length, or the positions transformers computed from it
            return torch.zeros_like(value) if isinstance(value, torch.Tensor) else 0 if value is not None else None

        args = args[:1] + tuple(start(value) for value in args[1:])  # (input or its shape, cache length, positions)
        kwargs = {name: start(value) if name in ("cache_length", "past_key_values_length", "position_ids") else value
                  for name, value in kwargs.items()}
        return args, kwargs

    def _lookup(self, module, args, output):
        if self.positions is None:
            return output
        # the table's last row bounds a query past it: the input of a row's last token (position prompt +
        # max_new_tokens - 1 may be the table's end), whose output is past the budget and never read
        weight = _table_weight(module)
        ids = (self.positions.to(weight.device) + getattr(module, "offset", 0)).clamp(max=weight.shape[0] - 1)
        return torch.nn.functional.embedding(ids, weight).to(device=output.device, dtype=output.dtype)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def _table_weight(table: torch.nn.Module) -> torch.Tensor:  # [positions, D]
    """A position table's weight, also where accelerate offloads it: its hook puts the weight back on `meta` once
    the table's own forward returns, before a forward hook runs; the weight is then read from the hook's map."""
    weight = table.weight
    if weight.device.type != "meta":
        return weight
    weights_map = getattr(getattr(table, "_hf_hook", None), "weights_map", None)
    if weights_map is None:
        raise BatchSpecError(f"The decoder's position table ({type(table).__name__}) has its weight on the meta "
                             "device and no offload map to read it from: load the model's weights.")
    return weights_map["weight"]


def decoder_of(model) -> torch.nn.Module:
    decoder = model.get_decoder()
    return getattr(decoder, "decoder", decoder)  # WhisperForCausalLM wraps its decoder once more


def position_table_size(model) -> int | None:
    """Positions a decoder's learned (or fixed) position table holds, None where it has none."""
    table = getattr(decoder_of(model), "embed_positions", None)
    weight = getattr(table, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return None
    return int(weight.shape[0]) - int(getattr(table, "offset", 0))


def check_positions(models: dict, width: int, max_new: int) -> None:
    """Before any decoder forward: every model's decoder position table holds the positions of the tokens it reads,
    the decoder prompt's and every generated token's but the last (`width + max_new - 1` of them). transformers
    fails past the table with an index error inside the forward; a draft with a shorter table than its target's
    would fail there mid-call."""
    for role, model in models.items():
        size = position_table_size(model) if model is not None else None
        if size is not None and width + max_new - 1 > size:
            raise BatchSpecError(
                f"The {role}'s decoder position table holds {size} positions, and this call reads up to "
                f"{width + max_new - 1} (a decoder prompt of {width} tokens + max_new_tokens={max_new}, but the last): "
                f"lower max_new_tokens to {size - width + 1} or less"
                + (", or pass a draft whose table is as long as the target's." if role == "assistant_model" else "."))


def cross_projections(model) -> list:
    """Per decoder layer, `states [n, S, E] -> (keys, values) [n, H, S, D]`: what its cross-attention computes from
    an encoder output on a row's first forward in transformers."""
    def projection(attention):
        def project(states):
            device = attention.k_proj.weight.device  # a dispatched layer's own device (meta: its offload hook's)
            states = states if device.type == "meta" else states.to(device)
            n, s, _ = states.shape
            keys = attention.k_proj(states).view(n, s, -1, attention.head_dim).transpose(1, 2)
            values = attention.v_proj(states).view(n, s, -1, attention.head_dim).transpose(1, 2)
            return keys, values
        return project
    attentions = [layer.encoder_attn for layer in decoder_of(model).layers]
    for attention in attentions:
        for linear in (attention.k_proj, attention.v_proj):
            if linear.weight.device.type == "meta" and getattr(linear, "_hf_hook", None) is None:
                raise BatchSpecError(
                    f"{type(model).__name__}'s cross-attention projections are offloaded without a hook of their own "
                    "(accelerate's device_map put a whole block, or the whole model, on disk), so they cannot be run "
                    "alone to project each row's encoder output: let device_map place the decoder's layers "
                    "(e.g. more max_memory), or call without batch_spec.")
    return [projection(attention) for attention in attentions]


def encoder_width(model) -> int:
    return int(model.config.d_model)


@dataclass
class EncoderSide:
    """A call's encoder outputs, by input (row ids of the decode loop index them): the target's, and those of each
    draft with an encoder of its own, computed once on the inputs the target's encoder read."""

    target: torch.nn.Module
    states: torch.Tensor  # [N, S, E] the target's encoder output for each input
    inputs: tuple | None = None  # (args, kwargs) the target's encoder was called with, for a draft's own encoder
    mask: torch.Tensor | None = None  # [N, S] 1 where an input's encoder output is real (padded inputs: BART)
    _own: dict = field(default_factory=dict)
    _hooks: list = field(default_factory=list)

    def close(self) -> None:
        """The call is over: the position hooks it put on decoders go."""
        for hook in self._hooks:
            hook.close()
        self._hooks.clear()

    def states_for(self, model) -> torch.Tensor:  # [N, S, E]
        if model is self.target or not is_encoder_decoder(model):
            return self.states  # a decoder-only draft reads the target's encoder output, as in transformers
        key = id(model)
        if key not in self._own:
            if self.inputs is None:
                raise BatchSpecError("The draft has an encoder of its own, but the inputs of the target's encoder "
                                     "were not recorded; call generate on the target.")
            args, kwargs = self.inputs
            device = next(model.get_encoder().parameters()).device
            args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
            kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
            own = model.get_encoder()(*args, **kwargs).last_hidden_state  # [N', S', E'] per input
            # num_return_sequences: transformers expanded the target's output to each input's copies (consecutive),
            # and the rows count copies; the recorded inputs are the inputs
            self._own[key] = own.repeat_interleave(self.states.shape[0] // own.shape[0], 0)
        return self._own[key]


class Seq2SeqBinding:
    """One model's view of a call's encoder side: its cross-attention store (on its runner's cache) and the keywords
    of its decoder forward."""

    def __init__(self, model, encoder: EncoderSide, cache):
        from transformers.cache_utils import EncoderDecoderCache

        from .cross_cache import CrossStore

        self.model = model
        self.encoder = encoder
        self.conditional = is_encoder_decoder(model)  # decoder_* keywords; else a decoder-only draft's own names
        self.projections = cross_projections(model)
        # as many rows as the self-attention side: the slots and the staging rows
        cache.cross = CrossStore(len(self.projections), cache.layers[0].batch_size, cache._plan,
                                 cache.static_addresses)
        self.cache = cache
        self.wrapped = EncoderDecoderCache(cache, cache.cross)
        # every layer reads the store (attention layers only ever set these, never clear them)
        self.wrapped.is_updated = {layer: True for layer in range(len(self.projections))}
        self._width = encoder_width(model)
        self.positions = None
        if model.config.model_type in POSITION_TABLES:
            self.positions = PerRowPositions(decoder_of(model).embed_positions)
            encoder._hooks.append(self.positions)

    def admit(self, row_ids, cache_rows: torch.Tensor) -> None:  # [n] inputs, [n] the cache rows they take
        """Project the admitted inputs' encoder outputs into their rows' cross store (one matmul pair per layer)."""
        states = self.encoder.states_for(self.model)
        index = torch.as_tensor(row_ids, device=states.device)
        mask = None if self.encoder.mask is None else self.encoder.mask[index.to(self.encoder.mask.device)]
        self.cache.cross.admit(self.projections, states[index], cache_rows, mask)

    def forward_kwargs(self, kwargs: dict, tokens: torch.Tensor, cache_kwarg: str,
                       dtype: torch.dtype) -> dict:  # tokens: [b, q]
        """`ModelRunner.forward`'s keywords (a decoder-only model's) under this model's names, with the cross store."""
        out = dict(kwargs)
        out[cache_kwarg] = self.wrapped
        # never read: every layer reads the cross store (`is_updated`); only its width and row count matter
        out["encoder_outputs"] = (tokens.new_zeros((tokens.shape[0], 1, self._width), dtype=dtype),)
        if not self.conditional:  # a decoder-only draft (WhisperForCausalLM) takes a causal LM's names
            out["input_ids"] = tokens
            return out
        out["decoder_input_ids"] = tokens
        out["decoder_attention_mask"] = out.pop("attention_mask")
        positions = out.pop("position_ids")
        if self.positions is not None:  # the position table, read at each row's positions for this forward
            self.positions.positions = positions
        else:
            out["decoder_position_ids"] = positions
        encoder_mask = self._encoder_mask(tokens.shape[1], dtype, tokens.device)
        if encoder_mask is not None:
            out["attention_mask"] = encoder_mask
        return out

    def _encoder_mask(self, queries: int, dtype, device) -> torch.Tensor | None:  # [b, 1, q, S] additive
        """The rows' encoder padding as an additive mask, which transformers passes through as is (None when the
        encoder output has no padding: Whisper's)."""
        rows_mask = self.cache.cross.row_mask()  # [b, S]
        if rows_mask is None:
            return None
        blocked = (rows_mask == 0).to(device)[:, None, None, :].expand(-1, 1, queries, -1)
        return torch.zeros(blocked.shape, dtype=dtype, device=device).masked_fill(blocked, torch.finfo(dtype).min)


def check_pair(target, draft) -> None:
    """A draft of an encoder-decoder target: an encoder-decoder model of the same kind (its own encoder reads the
    same inputs) or a decoder-only draft made for it, whose cross-attention reads the target's encoder output."""
    if not reads_encoder(target):
        if reads_encoder(draft):
            raise BatchSpecError(f"The assistant_model ({type(draft).__name__}) reads an encoder output, but the "
                                 f"target ({type(target).__name__}) has no encoder: pass a causal LM draft.")
        return
    whisper = target.config.model_type == "whisper"
    if not reads_encoder(draft) or (not is_encoder_decoder(draft) and not whisper):
        kinds = (f"a smaller {type(target).__name__}, or a decoder-only draft made for it (WhisperForCausalLM, "
                 "distil-whisper's kind)") if whisper else (f"a smaller {type(target).__name__} (an encoder-decoder "
                                                            "model; decoder-only drafts are served for Whisper only)")
        raise BatchSpecError(f"The target ({type(target).__name__}) is an encoder-decoder model; its draft must read "
                             f"an encoder output too: {kinds}. Got {type(draft).__name__}.")
    if draft.config.model_type != target.config.model_type:
        raise BatchSpecError(f"The draft is a {draft.config.model_type} model and the target a "
                             f"{target.config.model_type} model: pass a draft of the target's kind.")
    if is_encoder_decoder(draft):
        for name in ("num_mel_bins", "max_source_positions"):
            if getattr(draft.config, name, None) != getattr(target.config, name, None):
                raise BatchSpecError(
                    f"The draft's encoder reads other inputs than the target's ({name}: "
                    f"{getattr(draft.config, name, None)} against {getattr(target.config, name, None)}): pass a draft "
                    "whose encoder takes the target's input features.")
    elif encoder_width(draft) != encoder_width(target):
        raise BatchSpecError(
            f"The decoder-only draft cross-attends to the target's encoder output, {encoder_width(target)} wide, but "
            f"its d_model is {encoder_width(draft)}: pass a draft made for this target (or one with an encoder of its "
            "own).")


# The draft sources an encoder-decoder target serves: a draft model, or prompt lookup (which needs no model)
SOURCE_KINDS = ("model", "lookup")


def check_source(source, target) -> None:
    if is_encoder_decoder(target) and source.kind not in SOURCE_KINDS:
        raise BatchSpecError(
            f"{source.spec.label} is not served for an encoder-decoder target ({type(target).__name__}): pass "
            "assistant_model=... (a smaller model of the target's kind, or a decoder-only draft made for it) or "
            "prompt_lookup_num_tokens=...")


# What an encoder-decoder call does not serve: why, and what to do instead (the decoder prompt is the model's generate's
# to build: Whisper's from language, task and prompt_ids, the others' the decoder start token)
NOT_SERVED = {
    "decoder_input_ids": "the decoder prompt is built by the model's generate (Whisper: from language, task and "
                         "prompt_ids; others: the decoder start token)",
    "decoder_attention_mask": "it masks a decoder prompt, which the model's generate builds",
    "encoder_outputs": "the encoder runs once per input inside the call (pass the encoder's inputs instead)",
}


def check_call(model, features, kwargs: dict, generation_config, *, streamer) -> None:
    """What an encoder-decoder call is refused before any work, besides the rule tables (`rules`): options not
    served, features that the encoder cannot read, long-form audio without what makes it exact, and streamers it
    cannot feed (`check_streamer`). What transformers' preparation would refuse later (after running the encoder)
    is refused here."""
    config = generation_config if generation_config is not None else model.generation_config
    whisper = model.config.model_type == "whisper"
    for name, why in NOT_SERVED.items():
        if kwargs.get(name) is not None:
            raise BatchSpecError(f"`{name}` is not supported with batch_spec ({why}): drop it, or call without "
                                 "assistant_model for transformers' own generate.")
    if not whisper:  # a text encoder's ids are checked with a decoder's (`validation.check_token_ids`)
        check_streamer(streamer, features, kwargs, config, long_form=False)
        return
    if not isinstance(features, torch.Tensor):
        raise BatchSpecError(f"input_features must be a tensor [batch, {model.config.num_mel_bins}, frames] of log-mel "
                             f"features (a WhisperProcessor's output); got {type(features).__name__}.")
    bins = model.config.num_mel_bins
    if features.dim() != 3 or features.shape[1] != bins or features.shape[0] == 0 or features.shape[2] == 0:
        raise BatchSpecError(f"input_features must be [batch, {bins}, frames] (this model reads {bins} mel bins); "
                             f"got shape {tuple(features.shape)}.")
    if features.device.type == "meta":
        raise BatchSpecError("input_features are on the meta device (no data): pass the feature extractor's output.")
    dtype = model.get_encoder().conv1.weight.dtype
    if features.dtype != dtype:
        raise BatchSpecError(f"input_features are {features.dtype} but the model computes in {dtype}: pass "
                             f"input_features.to({dtype}).")
    window = 2 * model.config.max_source_positions  # mel frames of one 30 s window
    mask = kwargs.get("attention_mask")
    if mask is not None and (not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (features.shape[0],
                                                                                          features.shape[2])):
        raise BatchSpecError(f"attention_mask must be the features' frame mask [batch, frames] = "
                             f"{(features.shape[0], features.shape[2])}; got {getattr(mask, 'shape', mask)}.")
    if mask is not None and bool(((mask != 0) & (mask != 1)).any()):
        raise BatchSpecError("attention_mask (the features' frame mask) must hold only 0 (padding) and 1 (audio); it "
                             "holds other values: pass the feature extractor's (return_attention_mask=True).")
    if mask is not None and bool((mask.sum(-1) == 0).any()):
        raise BatchSpecError(f"Row {int((mask.sum(-1) == 0).nonzero()[0])} of attention_mask (the frame mask) is all "
                             "zeros: every input needs audio.")
    check_prompt_ids(kwargs.get("prompt_ids"), int(model.config.vocab_size))
    check_streamer(streamer, features, kwargs, config, long_form=features.shape[2] > window)
    if features.shape[2] > window:
        # Long-form: Whisper's own window loop calls the decode loop once per window over the files still running.
        if features.shape[0] > 1 and mask is None:
            raise BatchSpecError(
                f"input_features of {features.shape[2]} frames are long-form audio (over {window} frames, 30 s), "
                "and a batch of them needs the frame mask (as Whisper's own batched long-form decoding does): pass "
                "the feature extractor's attention_mask (return_attention_mask=True).")
        if kwargs.get("condition_on_prev_tokens", getattr(config, "condition_on_prev_tokens", None)):
            check_conditioned_budget(model, kwargs, config)


def check_conditioned_budget(model, kwargs: dict, config) -> None:
    """Long-form with `condition_on_prev_tokens`: each window's prompt holds the previous window's tokens, so rows'
    prompts differ in length (left-padded, each row's own prompt and begin index here). Served with
    `max_new_tokens`, each window's budget, which transformers gives every row alike; without it, its batched budget
    is `max_length` minus the batch's padded prompt width, where a file alone gets `max_length` minus its own, so a
    window that reaches it would differ. A budget that the longest conditioned prompt could push past the decoder's
    positions is refused too (transformers raises mid-call, at the window where a prompt grows that long)."""
    max_new = kwargs.get("max_new_tokens", getattr(config, "max_new_tokens", None))
    if max_new is None:
        raise BatchSpecError(
            "condition_on_prev_tokens needs max_new_tokens with batch_spec: without it transformers' batched "
            "long-form budget is max_length minus the batch's padded prompt width, so a window that reaches it would "
            "not equal the file's transcription alone. Pass max_new_tokens (each window's budget), or drop "
            "condition_on_prev_tokens.")
    positions = int(model.config.max_target_positions)
    prompt_ids = kwargs.get("prompt_ids")
    start = len(prompt_ids) if prompt_ids is not None else 1  # the previous-text token, or prompt_ids in its place
    longest = start + positions // 2 - 1 + 4  # + the previous tokens kept (transformers' cut-off) + forced tokens
    if max_new + longest > positions:
        raise BatchSpecError(
            f"condition_on_prev_tokens: a window's prompt may hold up to {longest} tokens, and max_new_tokens="
            f"{max_new} would take it past the decoder's {positions} positions (transformers raises mid-call there): "
            f"pass max_new_tokens={positions - longest} or less.")


def check_prompt_ids(prompt_ids, vocab_size: int) -> None:
    """Whisper's `prompt_ids` (a processor's `get_prompt_ids`): integer ids inside the vocabulary, checked before
    the encoder runs (transformers fails inside the decoder's embedding)."""
    if prompt_ids is None:
        return
    if not isinstance(prompt_ids, torch.Tensor) or prompt_ids.dtype.is_floating_point or prompt_ids.dtype == torch.bool:
        raise BatchSpecError(f"prompt_ids must be a tensor of token ids (processor.get_prompt_ids(text, "
                             f"return_tensors='pt')); got {getattr(prompt_ids, 'dtype', type(prompt_ids).__name__)}.")
    outside = (prompt_ids < 0) | (prompt_ids >= vocab_size)
    if bool(outside.any()):
        raise BatchSpecError(f"prompt_ids holds {int(prompt_ids[outside][0])}, outside the vocabulary [0, "
                             f"{vocab_size}): the ids must come from the model's own tokenizer.")


def alignment_heads(model, generation_config) -> tuple | None:
    """The alignment heads whose cross-attention weights a call keeps, when Whisper's generate asks for token
    timestamps (`return_token_timestamps`: it has checked that the generation config names them)."""
    if not getattr(generation_config, "return_token_timestamps", False):
        return None
    return tuple(tuple(pair) for pair in generation_config.alignment_heads)


def check_compiled(return_token_timestamps, compile_config) -> None:
    if return_token_timestamps and compile_config is not None:
        raise BatchSpecError("return_token_timestamps reads every decoder forward's cross-attention weights (eager "
                             "attention), which a compiled forward does not give: drop compile_config (and "
                             "cache_implementation='static') for this call, or drop return_token_timestamps.")


def check_streamer(streamer, inputs, kwargs: dict, config, *, long_form: bool) -> None:
    """A streamer is served for one decoding of the whole batch (short-form audio, or a text encoder's inputs): a
    `BatchStreamer` gets each row's generated tokens by input row (the decoder prompt is not streamed), a
    transformers streamer the one row's decoder prompt and then its tokens, as transformers' generate gives them.
    Refused before the encoder runs: long-form audio (Whisper decodes window by window over the files still
    running, so a decoding's rows are not the inputs), and a transformers streamer for more than one row."""
    if streamer is None:
        return
    from .streaming import check_streamer_rows

    if long_form:
        raise BatchSpecError("a streamer is not supported with batch_spec for long-form audio (over 30 s: Whisper "
                             "decodes it window by window over the files still running): drop streamer, or stream "
                             "inputs of up to 30 s.")
    copies = kwargs.get("num_return_sequences", getattr(config, "num_return_sequences", None)) or 1
    check_streamer_rows(streamer, (inputs.shape[0] if isinstance(inputs, torch.Tensor) and inputs.dim() >= 1 else 1)
                        * copies)


@contextlib.contextmanager
def recording_encoder_inputs(model):
    """Record what the model's encoder is called with while generate runs (`EncoderSide.inputs`): a draft with an
    encoder of its own runs it on the very same inputs (Whisper pads features to a window before its encoder)."""
    calls: list = []
    handle = model.get_encoder().register_forward_pre_hook(
        lambda module, args, kwargs: calls.append((args, dict(kwargs))), with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()
