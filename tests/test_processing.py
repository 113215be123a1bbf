"""Logits processors and stopping criteria: greedy with them equals transformers' greedy with them, row by row.

Each verified position is processed with its own row's exact prefix, so the property is the same as for plain
greedy: every row equals `generate` of its prompt alone with the same settings (token ids, through the stop).
"""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import PreTrainedTokenizerFast, StoppingCriteria, StoppingCriteriaList

from tests.reference import left_pad
from tests.test_equivalence import draft_model, requests, target_model
from tests.tiny_models import VOCAB

PROCESSOR_SETTINGS = {
    "repetition_penalty": dict(repetition_penalty=1.8),
    "no_repeat_ngram": dict(no_repeat_ngram_size=2),
    "bad_words": dict(bad_words_ids=[[7], [9, 10], [20, 21, 22]]),
    "min_new_tokens": dict(min_new_tokens=6),
    "min_length": dict(min_length=18),
    "sequence_bias": dict(sequence_bias={(11,): 4.0, (12, 13): -3.0}),
    "suppress_tokens": dict(suppress_tokens=[4, 5, 6]),
    "forced_bos": dict(forced_bos_token_id=1),
    "combined": dict(repetition_penalty=1.5, no_repeat_ngram_size=3, min_new_tokens=3),
}


def alone(target, prompt, max_new, eos, **kwargs):
    ids = torch.tensor([prompt])
    out = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                          eos_token_id=eos, pad_token_id=0, **kwargs)
    new = out[0, len(prompt):].tolist()
    return new


def check_rows(target, draft, prompts, max_new, k, eos, strategy="exspec", **kwargs):
    ids, mask = left_pad(prompts, 0)
    out = target.generate(ids, attention_mask=mask, assistant_model=draft, batch_spec=strategy,
                          num_assistant_tokens=k, max_new_tokens=max_new, do_sample=False, eos_token_id=eos,
                          pad_token_id=0, return_dict_in_generate=True, max_batch_size=3, **kwargs)
    for row, prompt in enumerate(prompts):
        expected = alone(target, prompt, max_new, eos, **kwargs)
        n = int(out.spec_stats.new_tokens[row])
        assert out.sequences[row, ids.shape[1]:ids.shape[1] + n].tolist() == expected, f"row {row}"
    return out


@pytest.mark.parametrize("name", sorted(PROCESSOR_SETTINGS))
@settings(max_examples=4)
@given(req=requests(max_rows=6, max_prompt=16, max_new=24))
def test_greedy_with_processors_equals_plain_greedy(name, req):
    target = target_model("llama")
    # eos = 2 (the config's), frequent enough in this model to matter for the length rules
    check_rows(target, draft_model("llama", req["draft"]), req["prompts"], req["max_new"], req["k"], [2, 3],
               **PROCESSOR_SETTINGS[name])


class SumDivisible(StoppingCriteria):
    """Stops a row when its last two tokens sum to a multiple of 13: a custom criterion over the prefix."""

    def __call__(self, input_ids, scores, **kwargs):
        return (input_ids[:, -2:].sum(-1) % 13) == 0


@settings(max_examples=8)
@given(req=requests(max_rows=8, max_prompt=16, max_new=24))
def test_custom_stopping_criteria_inside_accepted_blocks(req):
    target = target_model("qwen3")
    out = check_rows(target, draft_model("qwen3", req["draft"]), req["prompts"], req["max_new"], req["k"], None,
                     stopping_criteria=StoppingCriteriaList([SumDivisible()]))
    assert out.spec_stats.new_tokens.sum() > 0


def letter_tokenizer() -> PreTrainedTokenizerFast:
    """A BPE tokenizer over letters with exactly VOCAB ids, trained on seeded random text: multi-letter tokens
    overlap, so stop strings can end inside a token or span several."""
    rng = random.Random(0)
    text = ["".join(rng.choice("abcdefgh") for _ in range(40)) for _ in range(400)]
    model = Tokenizer(BPE(unk_token="<pad>"))
    model.decoder = decoders.Fuse()
    trainer = BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=list("abcdefgh"),
                         show_progress=False)
    model.train_from_iterator(text, trainer)
    assert model.get_vocab_size() == VOCAB
    return PreTrainedTokenizerFast(tokenizer_object=model, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


@settings(max_examples=8)
@given(req=requests(max_rows=6, max_prompt=12, max_new=24), data=st.data())
def test_stop_strings_end_rows_inside_accepted_blocks(req, data):
    target = target_model("llama")
    tokenizer = letter_tokenizer()
    free = alone(target, req["prompts"][0], req["max_new"], None)
    text = tokenizer.decode(free)
    start = data.draw(st.integers(0, max(0, len(text) - 3)), label="start")
    stop = text[start:start + data.draw(st.integers(1, 3), label="length")] or "a"
    check_rows(target, draft_model("llama", req["draft"]), req["prompts"], req["max_new"], req["k"], None,
               stop_strings=[stop], tokenizer=tokenizer)
