"""The models' shapes: Llama configs sharing a tokenizer's vocabulary and special ids, the target's and the two
drafts' sizes in one place."""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from .bpe import VOCAB_SIZE

MAX_POSITIONS = 512


def make_config(tokenizer: PreTrainedTokenizerFast, *, layers: int, hidden: int, intermediate: int,
                heads: int, kv_heads: int, vocab_size: int = VOCAB_SIZE) -> LlamaConfig:
    """A Llama config sharing vocabulary and special ids with ``tokenizer``.

    Target and draft must share the vocabulary exactly -- speculative decoding
    compares their distributions token by token.  Embeddings are tied to halve
    the largest weight matrix; grouped-query attention (``kv_heads < heads``)
    is used so the demo exercises the same KV-cache shapes as modern models.
    (The draft with a tokenizer of its own passes its own ``vocab_size``.)
    """
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def build_model(config: LlamaConfig) -> LlamaForCausalLM:
    """Instantiate in float32 with SDPA attention (the fastest exact CPU path)."""
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config)
    return model.float()


def target_config(tokenizer: PreTrainedTokenizerFast, layers: int) -> LlamaConfig:
    """The target: ``layers`` x 256 wide (6 layers bundled, ~3.8 M parameters), 4 heads, 2 KV heads."""
    return make_config(tokenizer, layers=layers, hidden=256, intermediate=512, heads=4, kv_heads=2)


def draft_config(tokenizer: PreTrainedTokenizerFast, vocab_size: int = VOCAB_SIZE) -> LlamaConfig:
    """Either draft: one layer, 128 wide, 2 heads, 1 KV head (the other-tokenizer draft passes its vocabulary)."""
    return make_config(tokenizer, layers=1, hidden=128, intermediate=256, heads=2, kv_heads=1, vocab_size=vocab_size)
