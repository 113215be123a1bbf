"""Whisper at batch > 1 with a draft: every row equals Whisper's own generate of that input alone (no draft, the same
settings), for both draft kinds transformers accepts (a decoder-only draft reading the target's encoder output, and
an encoder-decoder draft with its own encoder), EQSPEC and EXSPEC with refills; the encoder runs once per input;
sampling keeps the target's law; and what is not served is refused before any forward."""

from __future__ import annotations

import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

import hf_batchspec
from hf_batchspec import BatchSpecError, UnsupportedModelError
from hf_batchspec.speculation import CostModel
from tests import whisper_models as W
from tests.toolkit import ForwardCount, chi_square_rejects


@pytest.fixture(scope="module")
def models():
    target = hf_batchspec.enable(W.target())
    return dict(target=target, decoder=W.decoder_draft(target), encoder_decoder=W.encoder_decoder_draft(target),
                own_encoder=W.encoder_decoder_draft(target, own_encoder_seed=3))


def trimmed(row: torch.Tensor) -> list[int]:
    """A transcription's token ids through its end: Whisper's output drops the prompt and the final EOS, and a
    batch pads shorter rows with pad (= EOS here)."""
    ids = row.tolist()
    return ids[: ids.index(W.EOS)] if W.EOS in ids else ids


def alone(target, features, **call) -> list[list[int]]:
    return [trimmed(target.generate(features[i:i + 1], **call)[0]) for i in range(len(features))]


SETTINGS = {
    "en_transcribe": dict(language="en", task="transcribe"),
    "fr_translate": dict(language="fr", task="translate"),
    "languages_per_row": None,  # a language per input, drawn below
    "detected_language": dict(),
    "timestamps": dict(language="en", return_timestamps=True),
    "prompt_ids": dict(language="en", prompt_ids=torch.tensor([W.SOPREV, 30, 31])),
    "no_begin_suppress": dict(language="en", begin_suppress_tokens=None),
    # inputs whose no-speech probability is above 6e-5 (about a third of these) are skipped: empty
    "no_speech": dict(language="en", no_speech_threshold=6e-5, logprob_threshold=0.0, temperature=(0.0,)),
}


@st.composite
def calls(draw):
    n = draw(st.integers(1, 6))
    frames = [draw(st.integers(4, W.FRAMES)) for _ in range(n)]
    seeds = [draw(st.integers(0, 1000)) for _ in range(n)]
    name = draw(st.sampled_from(sorted(SETTINGS)))
    setting = SETTINGS[name]
    if setting is None:
        setting = dict(language=[draw(st.sampled_from(["en", "fr"])) for _ in range(n)])
    return dict(frames=frames, seeds=seeds, setting=setting, max_new=draw(st.integers(1, 24)),
                k=draw(st.integers(1, 6)),
                draft=draw(st.sampled_from(["decoder", "encoder_decoder", "own_encoder", "prompt_lookup"])),
                strategy=draw(st.sampled_from(["eqspec", "exspec"])), slots=draw(st.integers(1, 4)),
                stop=draw(st.sampled_from([None, 100, 164])))


def features_of(frames, seeds) -> torch.Tensor:  # [n, MEL_BINS, FRAMES]: each input zero-padded to 30 s, as a processor does
    batch = torch.zeros(len(frames), W.MEL_BINS, W.FRAMES)
    for row, (length, seed) in enumerate(zip(frames, seeds)):
        batch[row, :, :length] = W.features(1, length, seed)[0]
    return batch


@settings(max_examples=12, deadline=None)
@given(call=calls())
def test_every_row_equals_whisper_alone(models, call):
    target = models["target"]
    features = features_of(call["frames"], call["seeds"])
    eos = W.EOS if call["stop"] is None else [W.EOS, call["stop"]]
    common = dict(max_new_tokens=call["max_new"], eos_token_id=eos, **call["setting"])
    expected = []
    for row in range(len(features)):  # each input alone: its own language when they differ
        own = dict(common)
        if isinstance(own.get("language"), list):
            own["language"] = own["language"][row]
        expected += alone(target, features[row:row + 1], **own)
    extra = dict(max_batch_size=call["slots"]) if call["strategy"] == "exspec" else {}
    source = (dict(prompt_lookup_num_tokens=call["k"]) if call["draft"] == "prompt_lookup" else
              dict(assistant_model=models[call["draft"]], num_assistant_tokens=call["k"]))
    out = target.generate(features, batch_spec=call["strategy"], speculation="always", **source, **extra, **common)
    assert [trimmed(row) for row in out] == expected
    stats = target.batch_spec_stats  # the last call Whisper made of ours (one per language group of rows)
    assert stats.strategy == call["strategy"] and (stats.accepted_tokens <= stats.drafted_tokens).all()
    assert stats.new_tokens.sum() >= len(features) and (stats.new_tokens >= 1).all()


DRAFT_KINDS = ("decoder", "encoder_decoder", "own_encoder")


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_each_setting_with_each_draft_kind(models, name):
    """Every generation setting at least once with every draft kind, whatever the property test draws: 4 inputs
    through 2 slots (refills), every row equal to Whisper alone."""
    target = models["target"]
    features = features_of([32, 20, 9, 27], [sorted(SETTINGS).index(name), 11, 12, 13])
    setting = SETTINGS[name] or dict(language=["en", "fr", "fr", "en"])
    for draft in DRAFT_KINDS:
        expected = []
        for row in range(len(features)):
            own = dict(setting)
            if isinstance(own.get("language"), list):
                own["language"] = own["language"][row]
            expected += alone(target, features[row:row + 1], max_new_tokens=16, **own)
        out = target.generate(features, assistant_model=models[draft], batch_spec="exspec", max_batch_size=2,
                              speculation="always", max_new_tokens=16, **setting)
        assert [trimmed(row) for row in out] == expected, draft


def test_drafts_are_accepted_and_rows_refill(models):
    """A decoding whose drafts mostly agree (the draft is the target's first layers), with more inputs than slots:
    several tokens per round, and the queued inputs admitted into freed slots."""
    target = models["target"]
    features = W.features(6, seed=4)
    out = target.generate(features, assistant_model=models["decoder"], batch_spec="exspec", max_batch_size=2,
                          num_assistant_tokens=4, speculation="always", max_new_tokens=20, language="en")
    stats = target.batch_spec_stats
    assert [trimmed(row) for row in out] == alone(target, features, max_new_tokens=20, language="en")
    assert stats.accepted_tokens.sum() > stats.drafted_tokens.sum() / 2
    assert stats.cache_rows <= 2 + 1  # two slots and a staging row, however many inputs wait


@pytest.mark.parametrize("kind", ["decoder", "encoder_decoder"])
def test_admissions_while_drafting_is_off_write_the_drafts_store_when_it_resumes(models, kind):
    """Off at first (a draft step costs 0.8 plain steps: no k pays at the prior's acceptance), inputs admitted
    into freed slots skip the draft's prefill and its cross-attention store; a probe finds the drafts right,
    drafting resumes, and each such row's store is written from its own input's encoder output before the draft's
    first forward over it. The draft here is the target's whole decoder, so with the right store every draft is
    the target's own token (another input's store, or none, would not be); every row equals Whisper alone."""
    target = models["target"]
    whole = target.config.decoder_layers
    draft = W.decoder_draft(target, whole) if kind == "decoder" else W.encoder_decoder_draft(target, whole)
    cost = CostModel(target_call=1.0, target_token=0.0, draft_call=0.8, draft_token=0.0)
    features = W.features(6, seed=4)
    out = target.generate(features, assistant_model=draft, batch_spec="exspec", max_batch_size=2, max_new_tokens=24,
                          language="en", speculation=cost)
    stats = target.batch_spec_stats
    assert [trimmed(row) for row in out] == alone(target, features, max_new_tokens=24, language="en")
    assert stats.draft_prefill_calls < stats.target_prefill_calls  # admitted while off: no prefill, no store
    assert stats.draft_widths[0] == 0 and max(stats.draft_widths) > 1  # off, then on after a probe
    assert stats.accepted_tokens.sum() == stats.drafted_tokens.sum() > 0


@pytest.mark.parametrize("draft", ["decoder", "encoder_decoder"])
def test_each_encoder_runs_once_per_input(models, draft):
    """The target's encoder over each input once (transformers runs it while preparing the call, batched); a draft
    with an encoder of its own runs it once per input too; the decoder-only draft runs none."""
    target, assistant = models["target"], models[draft]
    encoders = [target.get_encoder()] + ([assistant.get_encoder()] if draft == "encoder_decoder" else [])
    with ForwardCount(*encoders) as forwards:
        target.generate(W.features(5, seed=2), assistant_model=assistant, batch_spec="exspec", max_batch_size=2,
                        max_new_tokens=12, language="en")
    rows = {"target": forwards.rows_of(encoders[0]), "draft": forwards.rows_of(encoders[-1]) if len(encoders) > 1
            else 0}
    assert rows == {"target": 5, "draft": 5 if draft == "encoder_decoder" else 0}


def enumerated_first_two(target, features, prompt: list[int], temperature: float) -> dict[tuple, float]:
    """The exact law of the first two generated tokens of Whisper's sampling of one input: its processors
    (suppress_tokens everywhere, begin_suppress_tokens at the first position) on the raw logits, then the
    temperature."""
    config = target.generation_config
    vocab = target.config.vocab_size
    with torch.no_grad():
        encoded = target.get_encoder()(features).last_hidden_state
        ids = torch.tensor([prompt + [t] for t in range(vocab)])
        logits = target(encoder_outputs=(encoded.expand(vocab, -1, -1),), decoder_input_ids=ids).logits.float()
    suppressed = torch.tensor(config.suppress_tokens)
    first, second = logits[0, len(prompt) - 1].clone(), logits[:, len(prompt)].clone()
    first[suppressed] = second[:, suppressed] = -float("inf")
    first[torch.tensor(config.begin_suppress_tokens)] = -float("inf")
    p1 = torch.softmax(first / temperature, -1)
    p2 = torch.softmax(second / temperature, -1)
    return {(a, b): (p1[a] * p2[a, b]).item() for a in range(vocab) for b in range(vocab) if p1[a] > 1e-9}


def test_sampling_keeps_whispers_law(models):
    """Whisper samples when temperature > 0: the first two tokens of many samples of one input, drafted by the
    decoder-only draft (drafts accepted and rejected), follow the target's processed law (chi-square). The third
    token lets the round after the first token draft two."""
    target = models["target"]
    features = W.features(1, seed=5)
    rows, temperature = 3000, 0.7
    prompt = [W.SOT, W.EN, W.TRANSCRIBE, W.NOTS]
    out = target.generate(features.expand(rows, -1, -1), assistant_model=models["decoder"], batch_spec="eqspec",
                          num_assistant_tokens=2, speculation="always", max_new_tokens=3, language="en",
                          temperature=temperature, generator=torch.Generator().manual_seed(7))
    stats = target.batch_spec_stats
    assert 0 < stats.accepted_tokens.sum() < stats.drafted_tokens.sum()
    samples = torch.tensor([(row.tolist() + [W.EOS, W.EOS])[:2] for row in out])
    rejects, report = chi_square_rejects(samples, enumerated_first_two(target, features, prompt, temperature))
    assert not rejects, report


@pytest.mark.parametrize("draft", ["decoder", "own_encoder"])
def test_long_form_equals_whisper_alone(models, draft):
    """Audio over 30 s: Whisper's own window loop (timestamps, seek) calls ours once per window over the files still
    running; every file's transcription equals Whisper's long-form decoding of that file alone."""
    target = models["target"]
    frames = [45, 80, 3 * W.FRAMES + 7]
    features = torch.zeros(len(frames), W.MEL_BINS, max(frames))
    mask = torch.zeros(len(frames), max(frames), dtype=torch.long)
    for row, length in enumerate(frames):
        features[row, :, :length] = W.features(1, length, seed=10 + row)[0]
        mask[row, :length] = 1
    call = dict(language="en", max_new_tokens=12)
    expected = [trimmed(target.generate(features[i:i + 1, :, :length], **call)[0]) for i, length in enumerate(frames)]
    out = target.generate(features, attention_mask=mask, assistant_model=models[draft], batch_spec="exspec",
                          max_batch_size=2, speculation="always", **call)
    assert [trimmed(row) for row in out] == expected
    assert len(expected[2]) > 12  # several windows' tokens


@pytest.mark.parametrize("draft", ["decoder", "own_encoder"])
def test_long_form_conditioned_on_previous_tokens_equals_whisper_alone(models, draft):
    """`condition_on_prev_tokens` with `max_new_tokens`: each window's prompt holds the file's previous tokens, so
    the rows' prompts differ in length (left-padded by Whisper); each row reads its own prompt, begin index and
    no-speech column. A frequent token as EOS ends windows at different lengths, so the prompts do differ. Every
    file equals its conditioned decoding alone, with timestamps and with token timestamps too."""
    target = models["target"]
    frames = [45, 80, 3 * W.FRAMES + 7, 40, 5 * W.FRAMES + 3]
    features = torch.zeros(len(frames), W.MEL_BINS, max(frames))
    mask = torch.zeros(len(frames), max(frames), dtype=torch.long)
    for row, length in enumerate(frames):
        features[row, :, :length] = W.features(1, length, seed=30 + row)[0]
        mask[row, :length] = 1
    for extra in (dict(eos_token_id=164), dict(return_timestamps=True)):
        call = dict(language="en", condition_on_prev_tokens=True, max_new_tokens=12, **extra)
        expected = [target.generate(features[i:i + 1, :, :length], attention_mask=mask[i:i + 1, :length], **call)[0]
                    for i, length in enumerate(frames)]
        out = target.generate(features, attention_mask=mask, assistant_model=models[draft], batch_spec="exspec",
                              max_batch_size=2, speculation="always", **call)
        assert [row[row != W.EOS].tolist() for row in out] == [row[row != W.EOS].tolist() for row in expected]
        assert len({len(row[row != W.EOS]) for row in expected}) > 1


def test_conditioned_token_timestamps_equal_whisper_alone():
    """Token timestamps of conditioned windows: each row's own prompt length counts as its decoder input ids. (The
    inputs are chosen where the time warping has no near-tie: over these models' 16 encoder frames a change of 1e-6
    in the weights can move a token by a frame, as it did for seed 40's third file, ours and alone 8e-7 apart.)"""
    target = hf_batchspec.enable(W.target(attn_implementation="eager"))
    target.generation_config.alignment_heads = [[2, 0], [3, 1], [3, 3]]
    frames = [45, 3 * W.FRAMES + 7, 80]
    features = torch.zeros(len(frames), W.MEL_BINS, max(frames))
    mask = torch.zeros(len(frames), max(frames), dtype=torch.long)
    for row, length in enumerate(frames):
        features[row, :, :length] = W.features(1, length, seed=50 + row)[0]
        mask[row, :length] = 1
    call = dict(language="en", condition_on_prev_tokens=True, max_new_tokens=12, eos_token_id=164,
                return_token_timestamps=True)
    expected = [target.generate(features[i:i + 1, :, :length], attention_mask=mask[i:i + 1, :length], **call)
                for i, length in enumerate(frames)]
    out = target.generate(features, attention_mask=mask, assistant_model=W.decoder_draft(target),
                          batch_spec="exspec", speculation="always", **call)
    for row, alone_out in enumerate(expected):
        width = alone_out["sequences"].shape[1]
        assert out["sequences"][row, :width].tolist() == alone_out["sequences"][0].tolist()
        torch.testing.assert_close(out["token_timestamps"][row, :width], alone_out["token_timestamps"][0])


def test_scores_and_logprob_fallback(models):
    """`output_scores` per row and step equal Whisper's own alone (the processed scores its `logprob_threshold`
    fallback decides from), and a call with a fallback threshold that no row falls below equals Whisper alone."""
    target = models["target"]
    features = W.features(3, seed=3)
    call = dict(max_new_tokens=10, language="en", return_dict_in_generate=True, output_scores=True)
    ours = target.generate(features, assistant_model=models["decoder"], batch_spec="exspec", speculation="always",
                           **call)
    for row in range(len(features)):
        alone_scores = target.generate(features[row:row + 1], **call).scores
        expected = torch.stack([step[0] for step in alone_scores])  # [T, V]
        got = torch.stack([step[row] for step in ours.scores[: len(alone_scores)]])
        assert torch.equal(torch.isfinite(expected), torch.isfinite(got))
        torch.testing.assert_close(got[torch.isfinite(got)], expected[torch.isfinite(expected)], atol=1e-4, rtol=0)
    fallback = dict(max_new_tokens=12, language="en", logprob_threshold=-100.0, temperature=(0.0, 0.4, 0.8))
    out = target.generate(features, assistant_model=models["decoder"], batch_spec="exspec", **fallback)
    assert [trimmed(row) for row in out] == alone(target, features, **fallback)


def no_speech_probabilities(target, features) -> list[float]:
    """Each input's probability of the no-speech token at the start of transcript (the first window), as Whisper's
    detection computes it: the logits at the SOT column, which read no other prompt token."""
    with torch.no_grad():
        logits = target(input_features=features[..., :W.FRAMES],
                        decoder_input_ids=torch.full((len(features), 1), W.SOT)).logits[:, 0]
    return logits.float().softmax(-1)[:, W.NOSPEECH].tolist()


@pytest.mark.parametrize("form", ["short", "long"])
def test_no_speech_detection_equals_whisper_alone(models, form):
    """`no_speech_threshold` (with `logprob_threshold`): Whisper skips a window whose no-speech probability is above
    it and whose average log-probability is below; ours gives each row the probability of its own prefill (where
    transformers runs a forward of its own over the padded batch). A threshold between the inputs' probabilities
    skips some rows and not others; every file equals Whisper's decoding of it alone."""
    target = models["target"]
    frames = [W.FRAMES] * 6 if form == "short" else [45, 80, 3 * W.FRAMES + 7, 40, 50, 70]  # all long-form
    features = torch.zeros(len(frames), W.MEL_BINS, max(frames))
    mask = torch.zeros(len(frames), max(frames), dtype=torch.long)
    for row, length in enumerate(frames):
        features[row, :, :length] = W.features(1, length, seed=5 + row)[0]
        mask[row, :length] = 1
    probs = sorted(no_speech_probabilities(target, features))
    threshold = (probs[2] + probs[3]) / 2  # three inputs' first windows above it, three below
    assert probs[3] - probs[2] > 1e-3 * probs[3]  # not a near-tie that float noise could flip
    call = dict(language="en", max_new_tokens=10, logprob_threshold=0.0, temperature=(0.0,))
    if form == "long":
        call["attention_mask"] = mask
    def alone_with(i, length, **extra):
        own = dict(call, attention_mask=mask[i:i + 1, :length]) if form == "long" else call
        return trimmed(target.generate(features[i:i + 1, :, :length], **own, **extra)[0])

    expected = [alone_with(i, length, no_speech_threshold=threshold) for i, length in enumerate(frames)]
    undetected = [alone_with(i, length) for i, length in enumerate(frames)]
    out = target.generate(features, assistant_model=models["decoder"], batch_spec="exspec", max_batch_size=2,
                          speculation="always", no_speech_threshold=threshold, **call)
    assert [trimmed(row) for row in out] == expected
    assert any(expected) and expected != undetected  # some windows skipped, not all
    if form == "short":  # the rows above the threshold skipped (empty), the others as without detection
        assert [ids or None for ids in expected].count(None) == 3
        assert all(ids in ([], plain) for ids, plain in zip(expected, undetected))


@pytest.mark.parametrize("form", ["short", "long"])
def test_token_timestamps_equal_whisper_alone(form):
    """`return_token_timestamps=True`: each row's token timestamps (dynamic time warping over its alignment heads'
    cross-attention weights) equal Whisper's for that input alone, and so do its tokens. The weights of a row's
    every position come from whichever forward read that position's token (prefill, verify or plain step); a
    rejected draft's are overwritten. transformers' batched call normalises over the longest row's steps."""
    target = hf_batchspec.enable(W.target(attn_implementation="eager"))
    target.generation_config.alignment_heads = [[2, 0], [3, 1], [3, 3], [1, 2]]
    drafts = dict(decoder=W.decoder_draft(target), prompt_lookup=None)
    frames = [W.FRAMES, 20, 9, W.FRAMES, 27] if form == "short" else [45, 80, 3 * W.FRAMES + 7, 40]
    features = torch.zeros(len(frames), W.MEL_BINS, W.FRAMES if form == "short" else max(frames))
    mask = torch.zeros(len(frames), features.shape[2], dtype=torch.long)
    for row, length in enumerate(frames):
        features[row, :, :length] = W.features(1, length, seed=20 + row)[0]
        mask[row, :length] = 1
    call = dict(language="en", max_new_tokens=14, return_token_timestamps=True)
    alone_outputs = [target.generate(features[i:i + 1, :, :features.shape[2] if form == "short" else length],
                                     attention_mask=mask[i:i + 1, :features.shape[2] if form == "short" else length],
                                     **call) for i, length in enumerate(frames)]
    for name, draft in drafts.items():
        source = dict(assistant_model=draft) if draft is not None else dict(prompt_lookup_num_tokens=3)
        for strategy in ("exspec", "eqspec"):
            out = target.generate(features, attention_mask=mask, batch_spec=strategy, speculation="always",
                                  **source, **call, **(dict(max_batch_size=2) if strategy == "exspec" else {}))
            for row, expected in enumerate(alone_outputs):
                width = expected["sequences"].shape[1]
                assert out["sequences"][row, :width].tolist() == expected["sequences"][0].tolist(), (name, row)
                torch.testing.assert_close(out["token_timestamps"][row, :width], expected["token_timestamps"][0])
    stamps = torch.stack([expected["token_timestamps"][0, -1] for expected in alone_outputs])
    assert len(set(stamps.tolist())) > 1  # the rows' timestamps differ: the test can tell rows apart


def test_token_timestamps_refused_compiled(models, no_forward):
    target = models["target"]
    with pytest.raises(BatchSpecError, match="return_token_timestamps"):
        target.generate(W.features(2), assistant_model=models["decoder"], batch_spec="exspec", max_new_tokens=4,
                        language="en", return_token_timestamps=True,
                        compile_config=transformers.CompileConfig())
    assert not no_forward


@pytest.mark.slow  # two models' decode forwards compiled: about a minute on 2 CPU cores (tox -e slow)
def test_compiled_rounds_equal_whisper_alone(models):
    """With `compile_config` both models' decode forwards run compiled with static shapes (idle rows, row buckets,
    the cross store at static addresses); every row, with timestamps and both draft kinds, equals Whisper alone."""
    target = models["target"]
    features = W.features(6, seed=5)
    call = dict(language="en", return_timestamps=True, max_new_tokens=20)
    expected = alone(target, features, **call)
    for draft in ("encoder_decoder", "decoder"):
        out = target.generate(features, assistant_model=models[draft], batch_spec="exspec", max_batch_size=4,
                              speculation="always", num_assistant_tokens=3,
                              compile_config=transformers.CompileConfig(), **call)
        assert [trimmed(row) for row in out] == expected, draft
        stats = target.batch_spec_stats  # static shapes: a power-of-two row bucket and cache length
        assert (stats.cache_rows, stats.cache_slots_per_row) == (4, 64)


@pytest.mark.parametrize("draft", ["decoder", "encoder_decoder"])
def test_a_batch_streamer_gets_every_rows_transcription(models, draft):
    """Short-form audio streamed by input row, through refills: each row's streamed tokens, through its EOS, are its
    transcription as Whisper's generate returns it, equal to Whisper alone (the decoder prompt is not streamed)."""
    target = models["target"]
    features = features_of([32, 20, 9, 27, 14], [21, 22, 23, 24, 25])
    streamer = hf_batchspec.BatchIteratorStreamer()
    out = target.generate(features, assistant_model=models[draft], batch_spec="exspec", max_batch_size=2,
                          speculation="always", max_new_tokens=16, language="en", streamer=streamer)
    streamed: dict[int, list[int]] = {}
    for row, ids in streamer:  # generate has returned: every row's tokens, then the end, are queued
        streamed.setdefault(row, []).extend(ids)
    expected = alone(target, features, max_new_tokens=16, language="en")
    assert [trimmed(row) for row in out] == expected
    assert sorted(streamed) == list(range(len(features)))
    assert [trimmed(torch.tensor(streamed[row])) for row in range(len(features))] == expected


REFUSED = {
    "decoder_input_ids": (dict(decoder_input_ids=torch.tensor([[W.SOT]] * 2)), "decoder_input_ids"),
    "beams": (dict(num_beams=2), "num_beams"),
    "early_exit": (dict(assistant_model=None, assistant_early_exit=2), "encoder-decoder target"),
    "condition_on_prev_tokens_without_budget": (dict(condition_on_prev_tokens=True, max_new_tokens=None,
                                                     attention_mask=torch.ones(2, 3 * W.FRAMES),
                                                     features=W.features(2, frames=3 * W.FRAMES)),
                                                "condition_on_prev_tokens needs max_new_tokens"),
    "condition_on_prev_tokens_past_positions": (dict(condition_on_prev_tokens=True, max_new_tokens=40,
                                                     attention_mask=torch.ones(2, 3 * W.FRAMES),
                                                     features=W.features(2, frames=3 * W.FRAMES)),
                                                "max_new_tokens=28 or less"),
    "frame_mask_shape": (dict(attention_mask=torch.ones(2, 5)), "frame mask"),
    "frame_mask_values": (dict(attention_mask=torch.full((2, W.FRAMES), 2)), "only 0"),
    "frame_mask_empty_row": (dict(attention_mask=torch.tensor([[1] * W.FRAMES, [0] * W.FRAMES])), "all zeros"),
    "prompt_ids_outside_vocabulary": (dict(prompt_ids=torch.tensor([W.SOPREV, W.VOCAB + 44])),
                                      "prompt_ids holds 300, outside the vocabulary"),
    "encoder_outputs": (dict(encoder_outputs=(torch.zeros(2, W.FRAMES // 2, 64),)), "`encoder_outputs`"),
    "text_streamer_for_a_batch": (dict(streamer=transformers.generation.streamers.BaseStreamer()),
                                  "BatchIteratorStreamer"),
    "streamer_long_form": (dict(streamer=hf_batchspec.BatchIteratorStreamer(),
                                attention_mask=torch.ones(2, 3 * W.FRAMES),
                                features=W.features(2, frames=3 * W.FRAMES)), "long-form"),
}


@pytest.fixture
def no_forward(models):
    encoders = [models[name].get_encoder() for name in ("target", "encoder_decoder")]
    with ForwardCount(*models.values(), *encoders) as forwards:
        yield forwards


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_before_any_forward(models, no_forward, case):
    kwargs, message = dict(REFUSED[case][0]), REFUSED[case][1]
    features = kwargs.pop("features", W.features(2))
    call = dict(assistant_model=models["decoder"], batch_spec="exspec", max_new_tokens=4, language="en")
    call.update(kwargs)
    with pytest.raises(BatchSpecError, match=message):
        models["target"].generate(features, **call)
    assert not no_forward


BAD_FEATURES = {
    "float64": (W.features(2).double(), "float64"),
    "wrong_bins": (torch.randn(2, 40, W.FRAMES), "mel bins"),
    "two_dims": (torch.randn(2, W.FRAMES), r"\[batch, 80, frames\]"),
    "long_form_without_mask": (W.features(2, frames=3 * W.FRAMES), "frame mask"),
    "ids_not_features": (torch.ones(2, 80, W.FRAMES, dtype=torch.long), "int64"),
}


@pytest.mark.parametrize("case", sorted(BAD_FEATURES))
def test_bad_features_refused_before_any_forward(models, no_forward, case):
    features, message = BAD_FEATURES[case]
    with pytest.raises(BatchSpecError, match=message):
        models["target"].generate(features, assistant_model=models["decoder"], batch_spec="exspec",
                                  max_new_tokens=4, language="en")
    assert not no_forward


def test_a_draft_with_a_shorter_position_table_refused(models):
    """A decoder-only draft whose table holds fewer positions than the call reads failed with an index error mid-call;
    refused before the decoders run, with the numbers."""
    target = models["target"]
    short = W.decoder_draft(target)
    short.config.max_target_positions = 16
    short.model.decoder.embed_positions = type(short.model.decoder.embed_positions)(16, short.config.d_model)
    with ForwardCount(target, short) as forwards, pytest.raises(BatchSpecError, match="table holds 16 positions"):
        target.generate(W.features(2), assistant_model=short, batch_spec="exspec", max_new_tokens=20, language="en")
    assert not forwards


def test_drafts_that_cannot_read_the_encoder_refused(models, no_forward):
    target = models["target"]
    narrow = W.decoder_draft(target)
    wide_config = W.config(decoder_layers=1, d_model=32)
    narrow = transformers.WhisperForCausalLM(wide_config).eval()
    with pytest.raises(BatchSpecError, match="d_model is 32"):
        target.generate(W.features(2), assistant_model=narrow, batch_spec="exspec", max_new_tokens=4, language="en")
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=W.VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)).eval()
    with pytest.raises(BatchSpecError, match="must read an encoder output"):
        target.generate(W.features(2), assistant_model=llama, batch_spec="exspec", max_new_tokens=4, language="en")
    assert not no_forward


def test_other_encoder_decoder_models_refused():
    """A decoder whose positions come from its input ids and one shared cache length (M2M100, NLLB) cannot decode
    rows of different lengths in one forward: refused when enabled, with the reason (tests/test_seq2seq.py: T5)."""
    m2m = transformers.M2M100ForConditionalGeneration(transformers.M2M100Config(
        vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32))
    with pytest.raises(UnsupportedModelError, match="one length shared by the batch"):
        hf_batchspec.enable(m2m)


def test_batch_one_and_no_draft_stay_whispers(models):
    """Without a draft, or at batch 1 without batch_spec, the call is Whisper's own generate, unchanged."""
    target = models["target"]
    features = W.features(3, seed=6)
    plain = target.generate(features, max_new_tokens=10, language="en")
    assert [trimmed(row) for row in plain] == alone(target, features, max_new_tokens=10, language="en")
    one = target.generate(features[:1], assistant_model=models["decoder"], max_new_tokens=10, language="en")
    assert trimmed(one[0]) == alone(target, features[:1], max_new_tokens=10, language="en")[0]


def test_speech_recognition_pipeline_batched(models):
    """transformers' ASR pipeline with the draft and batch_size=B: the texts of the plain pipeline (no draft, one
    input at a time), batches served by batch_spec (its default at batch > 1)."""
    import numpy as np

    target = models["target"]
    tokenizer, extractor = W.tokenizer(), W.feature_extractor()
    audio = [np.random.default_rng(i).standard_normal(400 + 300 * i).astype(np.float32) for i in range(5)]
    call = dict(generate_kwargs=dict(language="en", max_new_tokens=12, num_beams=1))
    plain = transformers.pipeline("automatic-speech-recognition", model=target, tokenizer=tokenizer,
                                  feature_extractor=extractor, device="cpu")
    ours = transformers.pipeline("automatic-speech-recognition", model=target, tokenizer=tokenizer,
                                 feature_extractor=extractor, assistant_model=models["decoder"], device="cpu")
    expected = [plain(x, **call)["text"] for x in audio]
    target.batch_spec_stats = None
    assert [r["text"] for r in ours(audio, batch_size=4, **call)] == expected
    assert target.batch_spec_stats is not None and target.batch_spec_stats.num_rows == 4  # the batch of 4 was ours
    assert len(set(expected)) > 1


def test_token_timestamps_of_one_input_take_our_path():
    """transformers' batch-1 assisted generation fails on token timestamps (the speech-recognition pipeline's last
    batch of one, with `return_timestamps="word"`): a call of one input with a draft takes ours, equal to Whisper's
    own decoding of it without a draft."""
    target = hf_batchspec.enable(W.target(attn_implementation="eager"))
    target.generation_config.alignment_heads = [[2, 0], [3, 1]]
    features, mask = W.features(1, seed=8), torch.ones(1, W.FRAMES, dtype=torch.long)
    call = dict(language="en", max_new_tokens=10, return_token_timestamps=True, attention_mask=mask)
    expected = target.generate(features, **call)
    target.batch_spec_stats = None
    out = target.generate(features, assistant_model=W.decoder_draft(target), **call)
    assert target.batch_spec_stats is not None  # ours served it
    assert out["sequences"].tolist() == expected["sequences"].tolist()
    torch.testing.assert_close(out["token_timestamps"], expected["token_timestamps"])
