"""The tokenizers: byte-level BPE trained on the corpus, one for the target and its draft, another (another
vocabulary, other special ids) for the draft with a tokenizer of its own."""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

VOCAB_SIZE = 1024
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]
OTHER_VOCAB_SIZE = 1536
OTHER_SPECIAL_TOKENS = ["</s>", "<pad>", "<s>"]


def train_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE,
                    special_tokens: list[str] = SPECIAL_TOKENS) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer and wrap it for ``transformers``.

    Byte-level BPE is used because it can encode *any* string (no unknown
    tokens), which matters for a demo that users feed arbitrary prompts.  The
    vocabulary is deliberately tiny (1024) so the embedding matrix -- the
    largest part of a small model -- stays small.  ``padding_side="left"`` is
    what decoder-only batched generation needs: every row's last position is a
    real token, so new tokens are appended at the same column for all rows.

    Newlines are split off into their own pre-token before the usual GPT-2
    byte-level splitting.  Otherwise BPE learns merged "newline + indentation"
    tokens, and a prompt that ends in a bare newline (``"def f(n):\\n"``, the
    most natural way to ask for a function body) would end in a token the
    model has almost never seen in that position, derailing generation.

    ``vocab_size`` and the order of ``special_tokens`` (they take the first
    ids, in order) are parameters only for the draft with a tokenizer of its
    own; the target's tokenizer uses the defaults.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\n"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
