"""Tiny BART, mBART and Marian translation-style models: a target with random weights whose last decoder layers are
nearly residual, and a draft of the same class with the target's encoder and first decoder layers (so that drafts
are often accepted)."""

from __future__ import annotations

import copy

import torch
import transformers

VOCAB, PAD, BOS, EOS = 128, 1, 0, 2
DRAFT_LAYERS = 2
CLASSES = {
    "bart": (transformers.BartConfig, transformers.BartForConditionalGeneration),
    "mbart": (transformers.MBartConfig, transformers.MBartForConditionalGeneration),
    "marian": (transformers.MarianConfig, transformers.MarianMTModel),
    # decoders with a position table (learned, or Pegasus' sinusoidal one) read as BART's
    "pegasus": (transformers.PegasusConfig, transformers.PegasusForConditionalGeneration),
    "blenderbot": (transformers.BlenderbotConfig, transformers.BlenderbotForConditionalGeneration),
    "blenderbot-small": (transformers.BlenderbotSmallConfig, transformers.BlenderbotSmallForConditionalGeneration),
    "plbart": (transformers.PLBartConfig, transformers.PLBartForConditionalGeneration),
    "mvp": (transformers.MvpConfig, transformers.MvpForConditionalGeneration),
    "bigbird_pegasus": (transformers.BigBirdPegasusConfig, transformers.BigBirdPegasusForConditionalGeneration),
}
# each kind's own names and settings beside the shared ones
EXTRA = {
    "bart": dict(forced_bos_token_id=BOS),
    "bigbird_pegasus": dict(attention_type="original_full"),
}


def config(arch: str, decoder_layers: int = 4, **overrides):
    config_class, _ = CLASSES[arch]
    settings = dict(vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=decoder_layers,
                    encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                    max_position_embeddings=64, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
                    decoder_start_token_id=EOS, init_std=0.2, tie_word_embeddings=False)
    return config_class(**{**settings, **EXTRA.get(arch, {}), **overrides})


def target(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    model = CLASSES[arch][1](config(arch)).eval()
    with torch.no_grad():
        for layer in model.get_decoder().layers[DRAFT_LAYERS:]:
            for linear in (layer.self_attn.out_proj, layer.encoder_attn.out_proj, layer.fc2):
                linear.weight.mul_(0.05)
                if linear.bias is not None:
                    linear.bias.mul_(0.05)
    model.generation_config.num_beams = 1  # tiny configs: greedy by default
    return model


def draft(model):
    """The target's class with its first `DRAFT_LAYERS` decoder layers and everything else copied."""
    cfg = copy.deepcopy(model.config)
    cfg.decoder_layers = DRAFT_LAYERS
    small = type(model)(cfg).eval()
    state = {name: value for name, value in model.state_dict().items()
             if ".decoder.layers." not in name or int(name.split(".decoder.layers.")[1].split(".")[0]) < DRAFT_LAYERS}
    small.load_state_dict(state, strict=False)
    small.generation_config = copy.deepcopy(model.generation_config)
    return small


def sources(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded source sentences of these lengths (each ending in EOS, as a tokenizer makes them) and their
    mask."""
    generator = torch.Generator().manual_seed(seed)
    return padded([torch.randint(3, VOCAB, (length - 1,), generator=generator).tolist() for length in lengths])


def padded(sentences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """These source sentences (ids without the EOS), each with EOS appended, right-padded, and their mask."""
    width = max(len(s) for s in sentences) + 1
    ids = torch.full((len(sentences), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(sentences), width), dtype=torch.long)
    for row, sentence in enumerate(sentences):
        ids[row, : len(sentence) + 1] = torch.tensor(sentence + [EOS], dtype=torch.long)
        mask[row, : len(sentence) + 1] = 1
    return ids, mask
