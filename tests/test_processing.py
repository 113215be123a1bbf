"""Logits processors and stopping criteria: greedy with them equals transformers' greedy with them, row by row.

Each verified position is processed with its own row's exact prefix, so the property is the same as for plain
greedy: every row equals `generate` of its prompt alone with the same settings (token ids, through the stop).
"""

from __future__ import annotations

import functools
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import PreTrainedTokenizerFast, StoppingCriteria, StoppingCriteriaList, StopStringCriteria

from tests.toolkit import left_pad, plain_greedy
from tests.toolkit import draft_model, target_model
from tests.toolkit.strategies import requests
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
    # at each row's own first generated position (transformers' begin index is the padded width)
    "begin_suppress_tokens": dict(begin_suppress_tokens=[3, 7, 11, 20]),
    "forced_eos": dict(forced_eos_token_id=9),  # at each row's own last position
    "combined": dict(repetition_penalty=1.5, no_repeat_ngram_size=3, min_new_tokens=3),
    # the prompt is a decoder-only model's source: each row's own, without the padding transformers' batch holds
    "encoder_repetition_penalty": dict(encoder_repetition_penalty=3.0),
    "encoder_no_repeat_ngram": dict(encoder_no_repeat_ngram_size=1),  # (1: none of its tokens; 2 rarely bites here)
    # EOS raised from each row's own prompt length + 2 on (transformers' start counts the padded width)
    "exponential_decay": dict(exponential_decay_length_penalty=(2, 3.0)),
    # the green list seeded from each prefix's last token
    "watermark": dict(watermarking_config={"greenlist_ratio": 0.25, "bias": 6.0}),
}


def check_rows(target, draft, prompts, max_new, k, eos, strategy="exspec", **kwargs):
    ids, mask = left_pad(prompts, 0)
    out = target.generate(ids, attention_mask=mask, assistant_model=draft, batch_spec=strategy,
                          num_assistant_tokens=k, max_new_tokens=max_new, do_sample=False, eos_token_id=eos,
                          pad_token_id=0, return_dict_in_generate=True, **{"speculation": "always", **kwargs},
                          **({"max_batch_size": 3} if strategy == "exspec" else {}))
    for row, prompt in enumerate(prompts):
        expected = plain_greedy(target, prompt, max_new, eos, **kwargs)
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


def check_early_ends(out, prompts, max_new, criterion):
    """Every row that ended before `max_new` new tokens was ended by `criterion` on its last token (no EOS in
    these calls), and a row whose last kept token was an accepted draft ended early.

    A row gets one target token from the prefill and one per verify round (`target_tokens == row_rounds + 1`),
    unless a stop cut it inside a block of accepted drafts (`target_tokens == row_rounds`): the token budget
    never ends a row on a draft, since a row never drafts more than it still needs."""
    stats, width = out.spec_stats, max(len(p) for p in prompts)  # prompts come back left-padded
    on_draft = []
    for row, prompt in enumerate(prompts):
        n = int(stats.new_tokens[row])
        sequence = torch.tensor([prompt + out.sequences[row, width:width + n].tolist()])
        ended_early = n < max_new
        if ended_early:
            assert bool(criterion(sequence, None)[0]), f"row {row}: ended after {n} tokens, the criterion says go on"
        assert stats.target_tokens[row] - stats.row_rounds[row] in (0, 1), f"row {row}"
        if stats.target_tokens[row] == stats.row_rounds[row]:
            assert ended_early, f"row {row}: ended on a draft token without a stop"
            on_draft.append(row)
    return on_draft


@settings(max_examples=8)
@given(req=requests(max_rows=8, max_prompt=16, max_new=24))
def test_custom_stopping_criteria_inside_accepted_blocks(req):
    target = target_model("qwen3")
    out = check_rows(target, draft_model("qwen3", req["draft"]), req["prompts"], req["max_new"], req["k"], None,
                     stopping_criteria=StoppingCriteriaList([SumDivisible()]))
    check_early_ends(out, req["prompts"], req["max_new"], SumDivisible())


def seeded_prompts(seed: int, rows: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (int(n),), generator=generator).tolist()
            for n in torch.randint(2, 12, (rows,), generator=generator)]


def is_draft_position(n: int, k: int) -> bool:
    """With a draft that is always accepted, new token n (1-based) is a draft token: the prefill gives token 1,
    then each round k drafts and the target's bonus token."""
    return n > 1 and (n - 1) % (k + 1) != 0


@pytest.mark.parametrize("strategy", ["eqspec", "exspec"])
def test_custom_stopping_criterion_ends_a_row_on_an_accepted_draft(strategy):
    """The target as its own draft accepts every draft, so a row that the criterion stops at a draft position
    stops inside an accepted block: it must end there, as transformers' generate of its prompt alone does,
    with the tokens after it in the block dropped."""
    target, k, max_new = target_model("qwen3"), 3, 24
    criteria = StoppingCriteriaList([SumDivisible()])
    prompts = seeded_prompts(0, 8)
    out = check_rows(target, draft_model("qwen3", "self"), prompts, max_new, k, None, strategy,
                     stopping_criteria=criteria)
    stats = out.spec_stats
    lengths = stats.new_tokens.tolist()  # check_rows: each row ends where transformers' generate alone ends
    stopped = [row for row, n in enumerate(lengths) if is_draft_position(n, k) and n < max_new]
    assert stopped, f"no prompt stops on a draft position: {lengths} (choose other prompts)"
    on_draft = check_early_ends(out, prompts, max_new, SumDivisible())
    assert on_draft == stopped  # exactly those rows ended on a draft, and on a kept one


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
    free = plain_greedy(target, req["prompts"][0], req["max_new"], None)
    text = tokenizer.decode(free)
    start = data.draw(st.integers(0, max(0, len(text) - 3)), label="start")
    stop = text[start:start + data.draw(st.integers(1, 3), label="length")] or "a"
    out = check_rows(target, draft_model("llama", req["draft"]), req["prompts"], req["max_new"], req["k"], None,
                     stop_strings=[stop], tokenizer=tokenizer)
    check_early_ends(out, req["prompts"], req["max_new"], StopStringCriteria(tokenizer, [stop]))


@pytest.mark.parametrize("strategy", ["eqspec", "exspec"])
def test_stop_string_ends_a_row_on_an_accepted_draft(strategy):
    """A stop string taken from the target's own text, chosen so that transformers' generate of that prompt alone
    stops on a draft position: with the target as its own draft, the row ends inside an accepted block, exactly
    where transformers ends it."""
    target, k, max_new = target_model("llama"), 3, 24
    tokenizer = letter_tokenizer()
    prompts = seeded_prompts(0, 5)
    free = plain_greedy(target, prompts[0], max_new, None)
    stop = None
    for n in (n for n in range(2, max_new) if is_draft_position(n, k)):  # the text through new token n ends the stop
        candidate = tokenizer.decode(free[:n])[-3:]
        ended = plain_greedy(target, prompts[0], max_new, None, stop_strings=[candidate], tokenizer=tokenizer)
        if is_draft_position(len(ended), k) and len(ended) < max_new:
            stop = candidate
            break
    assert stop is not None, "no stop string of this text ends the row on a draft position (choose another prompt)"
    out = check_rows(target, draft_model("llama", "self"), prompts, max_new, k, None, strategy, stop_strings=[stop],
                     tokenizer=tokenizer)
    stats = out.spec_stats
    assert int(stats.new_tokens[0]) == len(ended) < max_new
    on_draft = check_early_ends(out, prompts, max_new, StopStringCriteria(tokenizer, [stop]))
    assert 0 in on_draft and stats.target_tokens[0] == stats.row_rounds[0]


def allowed_tokens(batch_id: int, sent: torch.Tensor) -> list[int]:
    """A constraint that reads both: the row's index in the call and its prefix's last token and length."""
    base = batch_id * 7 + int(sent[-1]) * 3 + len(sent)
    return sorted({(base + j) % VOCAB for j in range(0, 60, 2)} | {2})


@pytest.mark.parametrize("strategy", ["eqspec", "exspec"])
@settings(max_examples=4)
@given(req=requests(max_rows=6, max_prompt=16, max_new=20))
def test_prefix_allowed_tokens_fn_gets_each_rows_index_and_exact_prefix(strategy, req):
    """`prefix_allowed_tokens_fn(batch_id, input_ids)`: called with the row's index in the call (transformers'
    batch_id) and its exact prefix, without padding; each row equals its decoding alone under the constraint that
    row's index gives (alone, transformers passes batch_id 0)."""
    target = target_model("llama")
    prompts = req["prompts"]
    ids, mask = left_pad(prompts, 0)
    out = target.generate(ids, attention_mask=mask, assistant_model=draft_model("llama", req["draft"]),
                          batch_spec=strategy, num_assistant_tokens=req["k"], max_new_tokens=req["max_new"],
                          do_sample=False, eos_token_id=2, pad_token_id=0, speculation="always",
                          return_dict_in_generate=True, prefix_allowed_tokens_fn=allowed_tokens,
                          **({"max_batch_size": 3} if strategy == "exspec" else {}))
    for row, prompt in enumerate(prompts):
        expected = plain_greedy(target, prompt, req["max_new"], 2,
                                prefix_allowed_tokens_fn=functools.partial(_as_row, row))
        n = int(out.spec_stats.new_tokens[row])
        assert out.sequences[row, ids.shape[1]:ids.shape[1] + n].tolist() == expected, f"row {row}"


def _as_row(row: int, batch_id: int, sent: torch.Tensor) -> list[int]:
    return allowed_tokens(row, sent)
