"""The `generate` entry point: dispatch between transformers' own generate and batch speculative decoding.

The call is planned first (`plan.plan_call`: every refusal, before transformers prepares anything); then the
mixin lets transformers do all of generate()'s preparation (merging `generation_config` with kwargs, special
tokens, max length, logits processors, stopping criteria) by handing it our decode loop as a `custom_generate`
callable, which HF calls with everything prepared.
"""

from __future__ import annotations

import contextlib
import functools
import inspect

import numpy as np
import torch
from transformers import GenerationMixin
from transformers.generation.utils import GenerateEncoderDecoderOutput

from . import alignment, encoder_decoder, validation
from .decoding import DecodeResult, DecodeSettings, speculative_decode
from .encoder_decoder import EncoderSide
from .errors import BatchSpecError
from .masks import right_pack
from .plan import CallPlan, plan_call
from .processors import SOURCE_READERS, ScoreProcessing
from .speculation import CostModel
from .stats import BatchSpecGenerateOutput, BatchSpecSeq2SeqOutput, BatchSpecStats
from .stopping import extra_criteria
from .streaming import BatchStreamer, token_sink


def _ends_batch_streamer_on_error(generate):
    """When generate raises, a BatchStreamer it was given ends with that error (its consumer, blocked on the next
    tokens in another thread, raises it) instead of never ending."""
    signature = inspect.signature(generate)

    @functools.wraps(generate)
    def wrapper(self, *args, **kwargs):
        try:
            return generate(self, *args, **kwargs)
        except BaseException as error:
            try:
                streamer = signature.bind_partial(self, *args, **kwargs).arguments.get("streamer")
            except TypeError:  # arguments generate itself refused: no streamer was handed over
                streamer = None
            if isinstance(streamer, BatchStreamer):
                streamer.end(error)
            raise

    return wrapper


class BatchSpeculativeGenerationMixin:
    """Adds `batch_spec=` to `generate`: speculative decoding for batches of any size.

    Takes over when `assistant_model` is given and `batch_spec` is "eqspec" or "exspec", or left unset with a
    batch larger than one (transformers' assisted generation still serves batch 1 then). Every other call goes
    to transformers' `generate` unchanged. Mix it in first: `class MyLlama(BatchSpeculativeGenerationMixin,
    LlamaForCausalLM)`, or use `hf_batchspec.enable(model)` on a loaded model.
    """

    def __init__(self, *args, **kwargs):
        # Refused before any weight is built, with enable()'s message: even plain generate breaks on such a class.
        validation.check_decoder_only(type(self), args[0] if args else kwargs.get("config"))
        super().__init__(*args, **kwargs)

    @_ends_batch_streamer_on_error
    @torch.no_grad()
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        generation_config=None,
        logits_processor=None,
        stopping_criteria=None,
        prefix_allowed_tokens_fn=None,
        synced_gpus: bool | None = None,
        assistant_model=None,
        streamer=None,
        batch_spec: str | None = None,
        max_batch_size: int | None = None,
        sort_by_length: bool | None = None,
        generator: torch.Generator | None = None,
        speculation: str | CostModel | None = None,
        **kwargs,
    ):
        plan = plan_call(self, inputs, kwargs, generation_config=generation_config, logits_processor=logits_processor,
                         prefix_allowed_tokens_fn=prefix_allowed_tokens_fn, synced_gpus=synced_gpus,
                         assistant_model=assistant_model, streamer=streamer, batch_spec=batch_spec,
                         max_batch_size=max_batch_size, sort_by_length=sort_by_length, generator=generator,
                         speculation=speculation)
        if plan.strategy is None:
            # what the caller passed, as passed: Whisper's generate reads `"assistant_model" in kwargs`, and its
            # synced_gpus defaults to False
            given = dict(synced_gpus=synced_gpus, assistant_model=assistant_model, streamer=streamer)
            return super().generate(
                # by position: an encoder-decoder model's generate names it after its inputs (or they are in kwargs)
                *([] if inputs is None else [inputs]), generation_config=generation_config,
                logits_processor=logits_processor, stopping_criteria=stopping_criteria,
                prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
                **{name: value for name, value in given.items() if value is not None}, **kwargs)
        return self._generate_planned(plan, inputs, logits_processor, stopping_criteria, prefix_allowed_tokens_fn)

    def _extract_token_timestamps(self, generate_outputs, alignment_heads, time_precision=0.02, num_frames=None,
                                  num_input_ids=None):
        """Whisper's token timestamps (its generate calls this after each decoding): for our output, each row's
        from its own alignment weights (`alignment.row_timestamps`), as it would be decoding that row alone."""
        extract = super()._extract_token_timestamps
        record = getattr(generate_outputs, "batch_spec_alignment", None)
        if record is None:
            return extract(generate_outputs, alignment_heads, time_precision, num_frames, num_input_ids)
        weights, prompt_lengths, new_tokens = record
        return alignment.row_timestamps(extract, self.config.decoder_layers, weights, prompt_lengths, new_tokens,
                                        generate_outputs.sequences, time_precision, num_frames, num_input_ids)

    def _generate_planned(self, plan: CallPlan, inputs, logits_processor, stopping_criteria,
                          prefix_allowed_tokens_fn=None):
        """transformers prepares the call (the model's own generate for an encoder-decoder model: Whisper builds
        the decoder prompt and processors), then hands it to the decode loop; its own refusals while it prepares,
        before any forward, become the library's error type."""
        handed_over = []  # set once transformers has prepared the call and hands it to the decode loop
        recording = encoder_decoder.recording_encoder_inputs(self) if plan.seq2seq else contextlib.nullcontext()

        def after_preparation(model, input_ids, logits_processor=None, stopping_criteria=None,
                              generation_config=None, **model_kwargs):
            handed_over.append(True)
            return _batch_spec_decode(model, input_ids, logits_processor, stopping_criteria, generation_config,
                                      plan=plan, encoder_inputs=encoder_inputs, **model_kwargs)

        generate = super().generate if plan.seq2seq else functools.partial(GenerationMixin.generate, self)
        try:
            with recording as encoder_inputs:
                return generate(*([] if inputs is None else [inputs]), generation_config=plan.generation_config,
                                logits_processor=logits_processor, stopping_criteria=stopping_criteria,
                                prefix_allowed_tokens_fn=prefix_allowed_tokens_fn, custom_generate=after_preparation,
                                **plan.kwargs)
        except (ValueError, TypeError) as error:
            if handed_over or isinstance(error, BatchSpecError):
                raise
            raise BatchSpecError(f"transformers refused this call before any work: {error}") from error


def _batch_spec_decode(
    model,
    input_ids: torch.Tensor,  # [B, W] left-padded prompts, as the caller gave them (repeated for n samples)
    logits_processor=None,
    stopping_criteria=None,
    generation_config=None,
    *,
    plan: CallPlan,
    encoder_inputs: list | None = None,
    **model_kwargs,
):
    """Called by transformers' generate() once it has prepared the call (see the module docstring). For an
    encoder-decoder model (`encoder_inputs`: what its encoder was called with), `input_ids` are the decoder prompts
    and `model_kwargs` hold the encoder's output, which the decode loop reads by row."""
    encoder = None
    raw_attention_mask = plan.attention_mask
    if encoder_inputs is not None:
        encoder_mask = model_kwargs.pop("attention_mask", None)  # the encoder's (Whisper's reads none)
        encoder = EncoderSide(model, model_kwargs.pop("encoder_outputs")[0], encoder_inputs[-1] if encoder_inputs
                              else None, mask=None if model.config.model_type == "whisper" else encoder_mask)
        raw_attention_mask = model_kwargs.pop("decoder_attention_mask", None)  # left-padded decoder prompts
    alignment_heads = encoder_decoder.alignment_heads(model, generation_config) if encoder is not None else None
    if alignment_heads:
        model_kwargs.pop("output_attentions", None)  # Whisper's, for token timestamps: the alignment record's
    validation.check_prepared(generation_config, logits_processor, model_kwargs)
    # transformers drops an all-ones mask (5.23+); the caller's own mask is the reference when it gave one.
    attention_mask = raw_attention_mask if raw_attention_mask is not None else model_kwargs.get("attention_mask")
    if attention_mask is not None and attention_mask.shape[0] != input_ids.shape[0]:
        # num_return_sequences: transformers repeated each prompt n times (its rows together); the caller's mask too
        attention_mask = attention_mask.repeat_interleave(input_ids.shape[0] // attention_mask.shape[0], 0)
    lengths = validation.prompt_lengths(attention_mask, input_ids)
    max_new = generation_config.max_length - input_ids.shape[1]
    if max_new < 1:  # an encoder-decoder model's decoder prompt is known here first (decoder-only: `plan_call`)
        raise BatchSpecError(
            f"Nothing to generate: max_length={generation_config.max_length} is not beyond the input length "
            f"{input_ids.shape[1]}; set max_new_tokens."
        )
    validation.warn_past_positions(model, lengths, max_new)
    if plan.seq2seq:
        draft = plan.source.model if plan.source.model is not None and encoder_decoder.reads_encoder(
            plan.source.model) else None
        encoder_decoder.check_positions({"target model": model, "assistant_model": draft}, input_ids.shape[1], max_new)
        validation.check_cache_memory(model, plan.source.model, min(plan.max_batch_size, input_ids.shape[0]),
                                      input_ids.shape[1], max_new)
    settings = DecodeSettings(
        max_new, plan.num_assistant_tokens, _stop_ids(generation_config), plan.max_batch_size, plan.sort_by_length,
        do_sample=bool(generation_config.do_sample), generator=plan.generator, schedule=plan.schedule,
        confidence_threshold=plan.confidence_threshold, cost_model=plan.cost_model,
        realign_every_round=plan.strategy == "eqspec-realign", static_shapes=plan.static_shapes,
        compile_config=plan.compile_config,
        processing=ScoreProcessing(logits_processor, max_new, sources=_sources(logits_processor, input_ids, lengths,
                                                                            encoder_inputs),
                                   prompt_width=input_ids.shape[1]),
        criteria=tuple(extra_criteria(stopping_criteria)) + ((plan.stop_strings,) if plan.stop_strings else ()),
        output_scores=bool(generation_config.output_scores), output_logits=bool(generation_config.output_logits),
        copies=generation_config.num_return_sequences or 1,
        encoder=encoder,
        alignment_heads=alignment_heads,
    )
    stats = BatchSpecStats(plan.strategy, plan.num_assistant_tokens, input_ids.shape[0])
    prompts = right_pack(input_ids, lengths.to(input_ids.device), fill=0)
    adapters = plan.adapters
    on_tokens = token_sink(plan.streamer, input_ids)
    with adapters or contextlib.nullcontext(), contextlib.closing(encoder) if encoder else contextlib.nullcontext():
        result = speculative_decode(model, plan.source, prompts, lengths.cpu().numpy(), settings, stats,
                                    on_rows=adapters.select if adapters else None, on_tokens=on_tokens)
    if plan.streamer is not None:
        plan.streamer.end()
    assistant_model = plan.assistant_model
    if (plan.schedule == "heuristic" and assistant_model is not None and result.draft_lengths is not None
            and len(result.draft_lengths)):
        # as transformers does: the heuristic's state carries over to the next call through the draft's config
        assistant_model.generation_config.num_assistant_tokens = int(round(float(result.draft_lengths.mean())))
    sequences = _assemble(input_ids, result, generation_config.pad_token_id)
    if settings.processing.no_speech is not None:
        # what Whisper's window loop reads after the call (`no_speech_prob[row]`), each row's own probability
        settings.processing.no_speech._no_speech_prob = result.no_speech
    # also where a model's own generate post-processes the output (Whisper returns no BatchSpecGenerateOutput)
    model.batch_spec_stats = stats
    if generation_config.return_dict_in_generate and encoder is not None:
        # the layout an encoder-decoder model's own generate post-processes (Whisper splits it by row); token
        # timestamps come from each row's own alignment weights (`_extract_token_timestamps` below)
        if model.config.model_type != "whisper":  # a text model's output is the caller's: with the statistics
            return BatchSpecSeq2SeqOutput(sequences=sequences, scores=result.scores, logits=result.logits,
                                          spec_stats=stats)
        output = GenerateEncoderDecoderOutput(sequences=sequences, scores=result.scores, logits=result.logits)
        if result.alignment is not None:
            output.batch_spec_alignment = (result.alignment, result.prompt_lengths, result.new_tokens)
        return output
    if generation_config.return_dict_in_generate:
        return BatchSpecGenerateOutput(sequences=sequences, scores=result.scores, logits=result.logits,
                                       spec_stats=stats)
    return sequences


def _sources(logits_processor, input_ids: torch.Tensor,  # [N, W] the decoder prompts, left-padded
             lengths: torch.Tensor,  # [N]
             encoder_inputs: list | None) -> list | None:  # [N] of [L_n]
    """Each row's source without padding, for the processors that read it (`processors.SOURCE_READERS`): a text
    encoder's input ids (its mask's tokens; a row's copies share their input's), else the row's own prompt."""
    if not any(isinstance(p, SOURCE_READERS) for p in logits_processor or []):
        return None
    if not encoder_inputs:  # a decoder-only model: its prompt
        return [row[row.shape[0] - int(n):] for row, n in zip(input_ids, lengths.tolist())]
    args, kwargs = encoder_inputs[-1]
    ids = kwargs.get("input_ids", args[0] if args else None)
    mask = kwargs.get("attention_mask")
    copies = input_ids.shape[0] // ids.shape[0]
    real = [row if mask is None else row[mask[i].bool()] for i, row in enumerate(ids)]
    return [real[n // copies] for n in range(input_ids.shape[0])]


def _stop_ids(config) -> torch.Tensor | None:
    eos = config.eos_token_id
    if eos is None:
        return None
    return torch.as_tensor([eos] if isinstance(eos, int) else list(eos), dtype=torch.long)


def _assemble(input_ids: torch.Tensor, result: DecodeResult, pad_token_id) -> torch.Tensor:  # [B, W + max new]
    """HF's output layout: each prompt as given, its new tokens, then pad_token_id up to the longest row."""
    new = torch.as_tensor(result.new_tokens)
    width = int(new.max())
    cols = torch.arange(width)
    index = torch.as_tensor(result.prompt_lengths).unsqueeze(1) + cols  # [B, width] slots of the new tokens
    generated = result.tokens.gather(1, index.to(result.tokens.device)).cpu()
    fill = 0 if pad_token_id is None else int(np.atleast_1d(pad_token_id)[0])
    generated = generated.masked_fill(cols >= new.unsqueeze(1), fill)
    return torch.cat((input_ids, generated.to(input_ids.device)), 1)


@functools.lru_cache(maxsize=None)
def _with_mixin(cls: type) -> type:
    # Same name and module as the original class so save_pretrained() records the real architecture.
    return type(cls.__name__, (BatchSpeculativeGenerationMixin, cls), {"__module__": cls.__module__,
                                                                        "__qualname__": cls.__qualname__})


def enable(model):
    """Add batch speculative decoding to a loaded causal LM; returns the same object (idempotent).

    A PEFT wrapper forwards generate() to its base model, so the mixin goes on the base model's class.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(base, BatchSpeculativeGenerationMixin):
        validation.check_causal_lm(base)
        base.__class__ = _with_mixin(type(base))
    return model
