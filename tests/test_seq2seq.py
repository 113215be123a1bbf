"""BART, mBART and Marian at batch > 1 with a draft: every row equals the model's own greedy generate of that source
alone, with sources of different lengths (each row's encoder padding masked in its cross-attention) and rows at
different decoder positions in one forward (their position tables read per row); and the models that cannot be
served are refused."""

from __future__ import annotations

import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

import hf_batchspec
from hf_batchspec import BatchSpecError, UnsupportedModelError, encoder_decoder
from tests import seq2seq_models as S
from tests.toolkit import ForwardCount, strategies


@pytest.fixture(scope="module", params=sorted(S.CLASSES))
def pair(request):
    target = hf_batchspec.enable(S.target(request.param))
    return target, S.draft(target)


def trimmed(row: torch.Tensor) -> list[int]:
    """The generated ids after the decoder start, through the first EOS (excluded)."""
    ids = row.tolist()[1:]
    return ids[: ids.index(S.EOS)] if S.EOS in ids else ids


def alone(target, ids, mask, **call) -> list[list[int]]:
    return [trimmed(target.generate(ids[i:i + 1, : int(mask[i].sum())], do_sample=False, **call)[0])
            for i in range(len(ids))]


@settings(max_examples=6, deadline=None)
@given(sentences=strategies.prompts(max_rows=6, max_len=19, min_len=2, vocab=S.VOCAB), max_new=st.integers(1, 20),
       k=st.integers(1, 5), strategy=st.sampled_from(["eqspec", "exspec"]))
def test_every_row_equals_its_greedy_alone(pair, sentences, max_new, k, strategy):
    """Source sentences drawn as token lists (3 to 20 ids with their EOS), right-padded: each row equals greedy of
    its source alone."""
    target, draft = pair
    ids, mask = S.padded(sentences)
    extra = dict(max_batch_size=2) if strategy == "exspec" else {}
    out = target.generate(ids, attention_mask=mask, assistant_model=draft, batch_spec=strategy, do_sample=False,
                          num_assistant_tokens=k, speculation="always", max_new_tokens=max_new, **extra)
    assert [trimmed(row) for row in out] == alone(target, ids, mask, max_new_tokens=max_new)


def test_source_ids_by_keyword(pair):
    """`generate(input_ids=..., attention_mask=...)`, as transformers' examples call it, is served like the
    positional call."""
    target, draft = pair
    ids, mask = S.sources([5, 11, 7], seed=4)
    target.batch_spec_stats = None
    out = target.generate(input_ids=ids, attention_mask=mask, assistant_model=draft, max_new_tokens=10,
                          do_sample=False)
    assert target.batch_spec_stats is not None and target.batch_spec_stats.num_rows == 3
    assert [trimmed(row) for row in out] == alone(target, ids, mask, max_new_tokens=10)


def test_drafts_are_accepted(pair):
    target, draft = pair
    ids, mask = S.sources([5, 12, 8, 17], seed=3)
    out = target.generate(ids, attention_mask=mask, assistant_model=draft, batch_spec="exspec", max_batch_size=2,
                          num_assistant_tokens=4, speculation="always", max_new_tokens=16, do_sample=False)
    stats = target.batch_spec_stats
    assert [trimmed(row) for row in out] == alone(target, ids, mask, max_new_tokens=16)
    assert 0 < stats.accepted_tokens.sum() <= stats.drafted_tokens.sum()


def test_a_batch_streamer_gets_every_rows_output(pair):
    """Each source row's streamed tokens, through its EOS, are what generate returns for it after the decoder start
    (4 sources through 2 slots: refills)."""
    target, draft = pair
    ids, mask = S.sources([5, 12, 8, 17], seed=5)
    streamer = hf_batchspec.BatchIteratorStreamer()
    out = target.generate(ids, attention_mask=mask, assistant_model=draft, batch_spec="exspec", max_batch_size=2,
                          speculation="always", max_new_tokens=12, do_sample=False, streamer=streamer)
    streamed: dict[int, list[int]] = {}
    for row, tokens in streamer:  # generate has returned: every row's tokens, then the end, are queued
        streamed.setdefault(row, []).extend(tokens)
    assert sorted(streamed) == list(range(len(ids)))
    until_eos = [row[: row.index(S.EOS)] if S.EOS in row else row for row in (streamed[i] for i in range(len(ids)))]
    assert until_eos == [trimmed(row) for row in out]


def test_position_hooks_leave_with_the_call(pair):
    """The per-row position lookup is the call's: afterwards the model's own generate and forward are unchanged."""
    target, draft = pair
    ids, mask = S.sources([6, 9], seed=1)
    before = target.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    target.generate(ids, attention_mask=mask, assistant_model=draft, batch_spec="eqspec", max_new_tokens=8,
                    do_sample=False)
    table = target.get_decoder().embed_positions
    assert not table._forward_hooks and not table._forward_pre_hooks
    assert torch.equal(target.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False), before)


def test_bad_source_ids_refused_before_any_forward(pair):
    target, draft = pair
    ids, mask = S.sources([4, 6])
    with ForwardCount(target, draft, target.get_encoder()) as forwards:
        for bad, message in ((ids + S.VOCAB, "outside the vocabulary"), (ids.float(), "integer token ids"),
                             (ids[0], r"\[batch, length\]")):
            with pytest.raises(BatchSpecError, match=message):
                target.generate(bad, assistant_model=draft, batch_spec="eqspec", max_new_tokens=4)
        with pytest.raises(BatchSpecError, match="attention_mask"):
            target.generate(ids, attention_mask=mask[:, :2], assistant_model=draft, batch_spec="eqspec",
                            max_new_tokens=4)
        padded = ids.clone()
        padded[mask == 0] = S.VOCAB  # the encoder embeds its padding too (a decoder prompt's is never read)
        assert (mask == 0).any()
        with pytest.raises(BatchSpecError, match=r"input_ids\[0, 4\] = .* vocabulary .* of the encoder"):
            target.generate(padded, attention_mask=mask, assistant_model=draft, batch_spec="eqspec", max_new_tokens=4)
    assert not forwards


def test_decoder_only_draft_refused_for_text_models(pair):
    target, _ = pair
    causal = transformers.BartForCausalLM(S.config("bart", decoder_layers=1)).eval()
    ids, mask = S.sources([4, 6])
    with pytest.raises(BatchSpecError, match="served for Whisper only"):
        target.generate(ids, attention_mask=mask, assistant_model=causal, batch_spec="eqspec", max_new_tokens=4)


def test_t5_refused_with_the_reason():
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2))
    with pytest.raises(UnsupportedModelError, match="one length shared by the batch"):
        hf_batchspec.enable(t5)


def test_budget_to_the_end_of_the_position_table(pair):
    """A budget that reads the decoder's position table to its last row (the last token is never read) equals
    greedy alone: the table's own lookup, whose output is replaced per row, counts from 0 rather than from the
    cache's length (it ran past the table in the last rounds). One more token than the table holds is refused
    before any decoder forward, naming the table; transformers alone fails inside the forward."""
    target, draft = pair
    ids, mask = S.sources([5, 9, 3], seed=2)
    size = encoder_decoder.position_table_size(target)
    out = target.generate(ids, attention_mask=mask, assistant_model=draft, batch_spec="eqspec", do_sample=False,
                          num_assistant_tokens=3, speculation="always", max_new_tokens=size, eos_token_id=None)
    assert [row.tolist()[1:] for row in out] == [
        target.generate(ids[i:i + 1, : int(mask[i].sum())], do_sample=False, max_new_tokens=size,
                        eos_token_id=None)[0].tolist()[1:] for i in range(len(ids))]
    with ForwardCount(target, draft) as forwards, pytest.raises(BatchSpecError, match="position table holds"):
        target.generate(ids, attention_mask=mask, assistant_model=draft, batch_spec="eqspec", do_sample=False,
                        max_new_tokens=size + 1, eos_token_id=None)
    assert not forwards


def test_a_draft_with_a_shorter_position_table_is_refused(pair):
    target, _ = pair
    arch = target.config.model_type
    short = S.draft(hf_batchspec.enable(S.CLASSES[arch][1](S.config(arch, max_position_embeddings=12)).eval()))
    ids, mask = S.sources([5, 9], seed=2)
    with ForwardCount(target, short) as forwards, pytest.raises(BatchSpecError, match="assistant_model's decoder "
                                                                                      "position table holds 12"):
        target.generate(ids, attention_mask=mask, assistant_model=short, batch_spec="exspec", max_new_tokens=20)
    assert not forwards


def test_sources_that_the_encoder_would_read_shifted_or_padded_are_refused(pair):
    """Left-padded sources (these encoders number positions from the first column: every token was read shifted) and
    padded sources without a mask (transformers infers none for an encoder-decoder model): refused before any
    forward; transformers' batched call runs both, and its rows differ from each source alone."""
    target, draft = pair
    ids, mask = S.sources([4, 7], seed=3)
    left = torch.stack([row.roll(int((m == 0).sum())) for row, m in zip(ids, mask)])
    left_mask = torch.stack([m.roll(int((m == 0).sum())) for m in mask])
    with ForwardCount(target, draft, target.get_encoder()) as forwards:
        with pytest.raises(BatchSpecError, match="padding before"):
            target.generate(left, attention_mask=left_mask, assistant_model=draft, batch_spec="eqspec",
                            max_new_tokens=4)
        with pytest.raises(BatchSpecError, match="no attention_mask"):
            target.generate(ids, assistant_model=draft, batch_spec="eqspec", max_new_tokens=4)
    assert not forwards


@pytest.mark.parametrize("name", ["decoder_input_ids", "decoder_attention_mask", "encoder_outputs"])
def test_decoder_prompt_and_encoder_output_arguments_refused_by_name(pair, name):
    target, draft = pair
    ids, mask = S.sources([4, 7], seed=3)
    value = (torch.full((2, 1), S.EOS), torch.zeros((2, 1), dtype=torch.long),
             target.get_encoder()(input_ids=ids, attention_mask=mask))[
        ["decoder_input_ids", "decoder_attention_mask", "encoder_outputs"].index(name)]
    with ForwardCount(target, draft) as forwards, pytest.raises(BatchSpecError, match=f"`{name}` is not supported"):
        target.generate(ids, attention_mask=mask, assistant_model=draft, batch_spec="eqspec", max_new_tokens=4,
                        **{name: value})
    assert not forwards


def test_marian_draft_of_another_decoder_vocabulary_refused():
    """Marian's decoder may have a vocabulary of its own (`decoder_vocab_size`); a draft with another one could not
    embed the target's tokens (an index error mid-call before)."""
    target = hf_batchspec.enable(S.target("marian"))
    other = S.CLASSES["marian"][1](S.config("marian", decoder_layers=2, decoder_vocab_size=S.VOCAB - 20)).eval()
    ids, mask = S.sources([4, 7])
    with ForwardCount(target, other) as forwards, pytest.raises(BatchSpecError, match="decoder vocabulary"):
        target.generate(ids, attention_mask=mask, assistant_model=other, batch_spec="eqspec", max_new_tokens=4)
    assert not forwards


@pytest.mark.parametrize("arch, setting, message", [("bigbird_pegasus", dict(attention_type="block_sparse"),
                                                     "attention_type='block_sparse'"),
                                                    ("mvp", dict(use_prompt=True), "use_prompt=True")])
def test_served_kinds_with_a_setting_that_is_not_refused(arch, setting, message):
    model = S.CLASSES[arch][1](S.config(arch, **setting)).eval()
    with pytest.raises(UnsupportedModelError, match=message):
        hf_batchspec.enable(model)


@pytest.mark.parametrize("setting", [dict(encoder_no_repeat_ngram_size=1), dict(encoder_no_repeat_ngram_size=3),
                                     dict(encoder_repetition_penalty=4.0)], ids=["ban_1", "ban_3", "penalty"])
def test_rules_that_read_the_source_equal_greedy_alone(pair, setting):
    """The source n-gram ban (Blenderbot's default is 3) and the source repetition penalty: transformers holds the
    padded batch's sources by batch index; each row here reads its own source, without padding, as alone."""
    target, draft = pair
    ids, mask = S.sources([5, 12, 3, 9], seed=4)
    out = target.generate(ids, attention_mask=mask, assistant_model=draft, batch_spec="exspec", max_batch_size=2,
                          do_sample=False, speculation="always", max_new_tokens=12, **setting)
    assert [trimmed(row) for row in out] == alone(target, ids, mask, max_new_tokens=12, **setting)


@pytest.mark.parametrize("source", ["prompt_lookup", "default"])
def test_one_token_steps_equal_greedy_alone(pair, source):
    """Rounds of width 1 (prompt lookup rows without a match, the defaults' plain steps while drafting is off): the
    decoder's own mask logic for a one-token step must not bypass the per-row mask (LED's did: refused)."""
    target, draft = pair
    ids, mask = S.sources([6, 15, 14, 4], seed=2)
    call = dict(prompt_lookup_num_tokens=3) if source == "prompt_lookup" else dict(assistant_model=draft)
    out = target.generate(ids, attention_mask=mask, batch_spec="exspec", max_batch_size=2, do_sample=False,
                          max_new_tokens=12, **call)
    assert [trimmed(row) for row in out] == alone(target, ids, mask, max_new_tokens=12)


def test_led_refused_with_the_reason():
    config = transformers.LEDConfig(vocab_size=S.VOCAB, d_model=32, encoder_layers=1, decoder_layers=1,
                                    encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                    decoder_ffn_dim=32, attention_window=[8], max_encoder_position_embeddings=64,
                                    max_decoder_position_embeddings=64)
    with pytest.raises(UnsupportedModelError, match="one-token step"):
        hf_batchspec.enable(transformers.LEDForConditionalGeneration(config))


def test_samples_per_source_with_a_draft_of_its_own_encoder(pair):
    """num_return_sequences with sampling: the draft's own encoder runs on the inputs, and its output is expanded to
    each input's copies as the target's is (it was indexed by copy row: an index error)."""
    target, draft = pair
    ids, mask = S.sources([5, 9], seed=5)
    call = dict(attention_mask=mask, assistant_model=draft, batch_spec="exspec", max_batch_size=4, do_sample=True,
                num_return_sequences=3, max_new_tokens=8, speculation="always")
    first = target.generate(ids, generator=torch.Generator().manual_seed(3), **call)
    again = target.generate(ids, generator=torch.Generator().manual_seed(3), **call)
    assert first.shape[0] == 6 and torch.equal(first, again)
    assert target.batch_spec_stats.drafted_tokens.sum() > 0


def test_return_dict_in_generate_holds_the_statistics(pair):
    target, draft = pair
    ids, mask = S.sources([5, 9], seed=6)
    out = target.generate(ids, attention_mask=mask, assistant_model=draft, batch_spec="exspec", do_sample=False,
                          max_new_tokens=6, speculation="always", return_dict_in_generate=True, output_scores=True)
    assert isinstance(out, hf_batchspec.BatchSpecSeq2SeqOutput)
    assert isinstance(out, transformers.generation.utils.GenerateEncoderDecoderOutput)
    assert out.spec_stats is target.batch_spec_stats and out.spec_stats.rounds >= 1
    assert [trimmed(row) for row in out.sequences] == alone(target, ids, mask, max_new_tokens=6)
