"""Tiny Whisper models that run on CPU in seconds: a target with random weights whose last decoder layers are nearly
residual, and two drafts made from its first decoder layers (so that drafts are often accepted): a decoder-only
`WhisperForCausalLM` that reads the target's encoder output (distil-whisper's kind) and a full encoder-decoder
Whisper with an encoder of its own. Special tokens and timestamps sit at the top of the vocabulary, as in real
checkpoints, and the timestamp rows of the head are shrunk so that timestamps are rare unless forced."""

from __future__ import annotations

import copy

import torch
from transformers import GenerationConfig, WhisperConfig, WhisperForCausalLM, WhisperForConditionalGeneration

EOS, SOT, EN, FR, TRANSLATE, TRANSCRIBE, SOLM, SOPREV, NOSPEECH, NOTS = range(200, 210)  # timestamps: 210..255
VOCAB = 256
MEL_BINS = 80
FRAMES = 32  # one 30 s window of these models (2 x max_source_positions mel frames)
DRAFT_LAYERS = 2


def config(decoder_layers: int = 4, d_model: int = 64, encoder_layers: int = 2) -> WhisperConfig:
    return WhisperConfig(
        vocab_size=VOCAB, num_mel_bins=MEL_BINS, d_model=d_model, encoder_layers=encoder_layers,
        decoder_layers=decoder_layers, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
        decoder_ffn_dim=128, max_source_positions=FRAMES // 2, max_target_positions=64, pad_token_id=EOS,
        bos_token_id=EOS, eos_token_id=EOS, decoder_start_token_id=SOT, suppress_tokens=None,
        begin_suppress_tokens=None, tie_word_embeddings=False, init_std=0.2)


def generation_config(**overrides) -> GenerationConfig:
    settings = dict(decoder_start_token_id=SOT, eos_token_id=EOS, pad_token_id=EOS, bos_token_id=EOS, max_length=64,
                    lang_to_id={"<|en|>": EN, "<|fr|>": FR}, task_to_id={"translate": TRANSLATE,
                                                                         "transcribe": TRANSCRIBE},
                    no_timestamps_token_id=NOTS, is_multilingual=True, prev_sot_token_id=SOPREV,
                    suppress_tokens=[1, 2, 3], begin_suppress_tokens=[EOS, 4], max_initial_timestamp_index=10)
    settings.update(overrides)
    return GenerationConfig(**settings)


def target(seed: int = 0, attn_implementation: str = "sdpa") -> WhisperForConditionalGeneration:
    torch.manual_seed(seed)
    cfg = config()
    cfg._attn_implementation = attn_implementation
    model = WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for layer in model.model.decoder.layers[DRAFT_LAYERS:]:  # nearly residual: the first layers' drafts agree
            for linear in (layer.self_attn.out_proj, layer.encoder_attn.out_proj, layer.fc2):
                linear.weight.mul_(0.05)
                linear.bias.mul_(0.05)
        model.proj_out.weight[NOTS + 1:].mul_(0.3)  # timestamps rare unless forced
    model.generation_config = generation_config()
    return model


def _copy_decoder(source, decoder) -> None:
    for name in ("embed_tokens", "embed_positions", "layer_norm"):
        getattr(decoder, name).load_state_dict(getattr(source, name).state_dict())
    for i, layer in enumerate(decoder.layers):
        layer.load_state_dict(source.layers[i].state_dict())


def decoder_draft(model: WhisperForConditionalGeneration, layers: int = DRAFT_LAYERS) -> WhisperForCausalLM:
    """distil-whisper's kind: a decoder of the target's first `layers` layers, reading the target's encoder output."""
    cfg = copy.deepcopy(model.config)
    cfg.decoder_layers = layers
    draft = WhisperForCausalLM(cfg).eval()
    _copy_decoder(model.model.decoder, draft.model.decoder)
    draft.proj_out.load_state_dict(model.proj_out.state_dict())
    draft.generation_config = generation_config()
    return draft


def encoder_decoder_draft(model: WhisperForConditionalGeneration, layers: int = DRAFT_LAYERS,
                          own_encoder_seed: int | None = None) -> WhisperForConditionalGeneration:
    """A smaller Whisper with an encoder of its own: the target's encoder (or, with `own_encoder_seed`, a random
    one: its drafts then disagree more) and the target's first `layers` decoder layers."""
    cfg = copy.deepcopy(model.config)
    cfg.decoder_layers = layers
    if own_encoder_seed is not None:
        torch.manual_seed(own_encoder_seed)
    draft = WhisperForConditionalGeneration(cfg).eval()
    if own_encoder_seed is None:
        draft.model.encoder.load_state_dict(model.model.encoder.state_dict())
    _copy_decoder(model.model.decoder, draft.model.decoder)
    draft.proj_out.load_state_dict(model.proj_out.state_dict())
    draft.generation_config = generation_config()
    return draft


def features(n: int, frames: int = FRAMES, seed: int = 0) -> torch.Tensor:  # [n, MEL_BINS, frames]
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, MEL_BINS, frames, generator=generator)


def tokenizer():
    """A WhisperTokenizer for these models' vocabulary: ids 0..199 single byte-level characters, then the special
    tokens and timestamps at Whisper's names (what the ASR pipeline decodes with)."""
    from transformers import WhisperTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {chars[i]: i for i in range(EOS)}
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|fr|>", "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
    specials += [f"<|{0.02 * i:.2f}|>" for i in range(VOCAB - NOTS - 1)]
    vocab.update({token: EOS + i for i, token in enumerate(specials)})
    return WhisperTokenizer(vocab=vocab, merges=[], additional_special_tokens=specials[1:], pad_token=specials[0])


def feature_extractor():
    """Log-mel features of one window of these models (FRAMES frames) from 1 s of 1600 Hz audio."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=MEL_BINS, sampling_rate=1600, hop_length=1600 // FRAMES,
                                   chunk_length=1, n_fft=128)
