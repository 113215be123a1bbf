"""One model and its ragged cache: (tokens, positions) in, logits out.

This is the only place that calls a model's forward. It hides the cache keyword's name, builds the masks
from positions, clamps the position ids of padding queries and keeps the logits the caller asks for.
"""

from __future__ import annotations

import weakref

import torch

from . import compat
from .cache import RaggedCache
from .masks import attention_layout, build_masks, check_cache_length


def decoder_layers(config) -> int:
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "model_type", None) == "whisper":
        return int(config.decoder_layers)  # an encoder-decoder config's num_hidden_layers names the encoder's
    return int(config.get_text_config().num_hidden_layers)


def input_device(model: torch.nn.Module) -> torch.device:
    """Where the model wants its input ids (the embedding's device, also under accelerate dispatch; where accelerate
    offloaded the embedding, `meta` outside its forward, the device its hook runs it on)."""
    embedding = model.get_input_embeddings()
    device = embedding.weight.device
    if device.type == "meta":
        execution = getattr(getattr(embedding, "_hf_hook", None), "execution_device", None)
        if execution is not None:
            return torch.device(execution)
    return device


def compute_dtype(model: torch.nn.Module) -> torch.dtype:
    dtype = model.get_input_embeddings().weight.dtype
    return dtype if dtype.is_floating_point else torch.float32


# Cache lengths `hf_batchspec.warmup` compiled, by target model (weakly: a model's entry goes with it). A later
# compiled call takes the shortest that holds its prompts and budget (`decoding.static_length`) instead of its own
# power of two, so that it runs the warmed graphs.
_WARMED_LENGTHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _base(model: torch.nn.Module) -> torch.nn.Module:
    # generate runs on a PEFT wrapper's base model: the registry keys on what the decode loop is given
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def warmed_lengths(model: torch.nn.Module) -> tuple[int, ...]:
    """Cache lengths (slots per row) compiled for this target by `hf_batchspec.warmup`, ascending."""
    return tuple(sorted(_WARMED_LENGTHS.get(_base(model), ())))


def add_warmed_length(model: torch.nn.Module, length: int) -> None:
    _WARMED_LENGTHS.setdefault(_base(model), set()).add(int(length))


# Draft widths whose fused round program has run, by target model (weakly) and by what else the program's graphs
# are specific to (`decoding._Decoder._program_key`): `_Decoder._compile_widths` runs the others before a call's
# first round, with every row idle.
_RAN_WIDTHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def ran_widths(model: torch.nn.Module, key: tuple) -> set[int]:
    """The draft widths whose program has run for this target in the shapes `key` names (the set itself: a caller
    adds the widths it runs)."""
    return _RAN_WIDTHS.setdefault(_base(model), {}).setdefault(key, set())


def rows_dynamic(*values) -> None:
    """Let a compiled program take any number of rows (2 or more) in one graph, within a call and across calls:
    dim 0 of these tensors is marked dynamic, and for a `ModelRunner` dim 0 of its cache's keys and values.

    Why both: a call's tail moves its live rows into smaller row buckets (`decoding.static_rows`), and a later call
    with another batch size has another row bucket and a cache of another row count (its slots plus staging rows).
    With any of those sizes static, each would be a compile of its own (measured on CPU: about as long as the first
    one each; before the caches were marked, `TORCH_LOGS=recompiles` named `draft.cache.layers[0].keys` "size
    mismatch at index 0" on a call at batch 4 after one at batch 8). With them dynamic, the first compile serves
    every row count from 2 up, whatever the call. A tensor of one row is left alone: dynamo specialises sizes 0 and
    1 anyway (so `_Decoder` never gives a compiled forward fewer than 2 rows where more are allowed)."""
    if torch.compiler.is_compiling():
        return
    for value in values:  # (other values, a program's constants, are left alone)
        if isinstance(value, ModelRunner):
            value.mark_cache_rows_dynamic()
        elif isinstance(value, torch.Tensor) and value.dim() and value.shape[0] > 1:
            torch._dynamo.maybe_mark_dynamic(value, 0)


def compiled_call(model: torch.nn.Module, compile_config):
    """transformers' compiled `model.__call__` (`get_compiled_call`), compiled anew where the one the model holds is
    another model's. transformers keeps it on the instance (`_compiled_call`, with the config it was made for), so a
    `copy.deepcopy` of a model that has run a compiled call holds the original's bound call, and a config that
    compares equal returns it: the copy's compiled forwards would run the original's weights over the copy's cache
    (seen with a draft made by copying a target, and with a target made so: its output was neither model's)."""
    held = model.__dict__.get("_compiled_call")
    if held is not None and getattr(getattr(held, "_torchdynamo_orig_callable", None), "__self__", model) is not model:
        del model.__dict__["_compiled_call"]
        model.__dict__.pop("_last_compile_config", None)
    return model.get_compiled_call(compile_config)


class ModelRunner:
    """With `static` set, every decode forward (all rows, a query width of 1 or k+1) attends over the whole
    preallocated cache, so its shapes never change with the rows' lengths; with a `compile_config` those
    forwards run through transformers' `get_compiled_call` (prefills, whose widths vary, stay eager)."""

    def __init__(self, model: torch.nn.Module, batch_size: int, max_cache_len: int, compile_config=None,
                 static: bool = False, staging: int = 0, encoder=None):
        self.model = model
        self.layout = attention_layout(model.config)
        check_cache_length(model.config, max_cache_len)
        self.static = static or compile_config is not None
        self.cache = RaggedCache(decoder_layers(model.config), batch_size, max_cache_len,
                                 static_addresses=compile_config is not None, staging=staging)
        self._decode_call = compiled_call(model, compile_config) if compile_config is not None else model
        self.device = input_device(model)
        self.dtype = compute_dtype(model)
        self._cache_kwarg = compat.cache_kwarg(model)
        self._keeps_logits = compat.accepts(model, "logits_to_keep")
        self.on_rows = None  # called with each forward's original row indices (per-row LoRA adapters)
        self._cache_rows_marked = False
        # an encoder-decoder model (or a draft that reads an encoder output): its per-row cross-attention store and
        # decoder keywords (`encoder_decoder.Seq2SeqBinding`); None for a decoder-only model
        self.seq2seq = None
        if encoder is not None:
            from .encoder_decoder import Seq2SeqBinding

            self.seq2seq = Seq2SeqBinding(model, encoder, self.cache)

    def mark_cache_rows_dynamic(self) -> None:
        """Dim 0 (R = slots + staging rows) of the cache's keys and values `[R, H, S, D]`, inputs of every compiled
        decode program that runs this model, is marked dynamic (see `rows_dynamic`). Once, after the first prefill
        allocated them: a compiled cache's tensors never move (static addresses), and the mark stays on them."""
        if self._cache_rows_marked:
            return
        tensors = [t for layer in self.cache.layers if layer.is_initialized for t in (layer.keys, layer.values)]
        cross = self.cache.cross.tensors() if self.cache.cross is not None else []  # an encoder-decoder's store
        for tensor in tensors + cross:
            if tensor.shape[0] > 1:
                torch._dynamo.maybe_mark_dynamic(tensor, 0)
        self._cache_rows_marked = len(tensors) == 2 * len(self.cache.layers)

    def forward(
        self,
        tokens: torch.Tensor,  # [b, q]
        positions: torch.Tensor,  # [b, q] position = slot of each token
        position_limit: torch.Tensor,  # [b] highest position id a real token of the row can have
        kv_len: int,  # slots the attention reads (host int: max slot in the forward + 1)
        keep: int | torch.Tensor = 0,  # logits to return: last `keep` columns (0 = all) or column indices
        rows: torch.Tensor | None = None,  # [b] cache rows, when the forward covers only some rows
        row_ids=None,  # [b] host array: the original prompt index of each row (for `on_rows`)
        prefill: bool = False,  # a prompt's first forward: never compiled (its width varies with the prompts)
        hidden: bool = False,  # also return the last hidden states [b, q, H] (a drafter that reads the verify's)
        start: int | None = None,  # host-known: every row's positions are start..start+q-1 (see `common_start`)
        eager: bool = False,  # a decode forward of a width no program has (a draft's catch-up): never compiled
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:  # [b, kept, V] (and [b, q, H] with `hidden`)
        if self.on_rows is not None:
            self.on_rows(row_ids)
        tokens = tokens.to(self.device)
        positions = positions.to(self.device)
        first = None
        if self.cache.offsets is not None:  # left-aligned (the paper's layout): slot = offset + position
            first = torch.as_tensor(self.cache.offsets, device=self.device)
            first = first if rows is None else first[rows.to(self.device)]
        slots = positions if first is None else positions + first.unsqueeze(1)
        # Padding queries past a row's end share the cache's last slot, which no real token is ever written
        # to or read from: the cache stays bounded by rows x (longest prompt + max_new_tokens).
        slots = slots.clamp(max=self.cache.num_slots - 1)
        decode = rows is None and not prefill
        kv_len = self.cache.num_slots if self.static and decode else min(kv_len, self.cache.num_slots)
        compiled = decode and not eager and self._decode_call is not self.model
        if compiled or first is not None or rows is not None or start is None or start + tokens.shape[1] > kv_len:
            start = None  # (a compiled program's positions are its inputs, never constants)
        self.cache.begin(slots, kv_len, rows, start)
        if prefill and self.seq2seq is not None:  # admitted inputs: their cross keys and values into their rows
            cache_rows = rows if rows is not None else torch.arange(len(tokens), device=self.device)
            self.seq2seq.admit(row_ids, cache_rows)
        # Padding queries (beyond a row's budget) may sit past the row's last real position; their output is
        # discarded, but an absolute-position model must not see ids it was never trained on.
        position_ids = torch.minimum(positions, position_limit.to(self.device).unsqueeze(1))
        kwargs = {
            self._cache_kwarg: self.cache,
            "attention_mask": build_masks(self.layout, slots, kv_len, self.dtype, first, start),
            "position_ids": position_ids,
            "use_cache": True,
        }
        if isinstance(keep, torch.Tensor):
            keep = keep.to(self.device)
        if self._keeps_logits:
            kwargs["logits_to_keep"] = keep
        if hidden:
            kwargs["output_hidden_states"] = True
        if compiled:
            masks = kwargs["attention_mask"]
            # the cache reads the slots from its plan (`begin`): an input of the graph too
            rows_dynamic(tokens, position_ids, slots, *(masks.values() if isinstance(masks, dict) else (masks,)), self)
        if self.seq2seq is None:
            kwargs["input_ids"] = tokens
        else:  # the same inputs under an encoder-decoder model's names, with its cross-attention store
            kwargs = self.seq2seq.forward_kwargs(kwargs, tokens, self._cache_kwarg, self.dtype)
        out = (self._decode_call if compiled else self.model)(**kwargs)
        logits = out.logits
        if not self._keeps_logits:
            logits = logits[:, -keep:] if isinstance(keep, int) and keep else logits
            logits = logits[:, keep] if isinstance(keep, torch.Tensor) else logits
        return (logits, out.hidden_states[-1]) if hidden else logits
