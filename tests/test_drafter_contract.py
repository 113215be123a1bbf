"""The drafter contract: every registered source is exact through every hook the loop calls (admission, staging,
copies for num_return_sequences, departures, rollback), and the round itself, unit-tested with drafts chosen in
advance (`ScriptedDrafter`): accepted prefixes, budgets, the hooks' arguments and the verify outputs a source asks
for."""

from __future__ import annotations

import tempfile
from functools import lru_cache

import numpy as np
import pytest
import torch

import hf_batchspec
from hf_batchspec import decoding
from hf_batchspec.drafters import SOURCES, Drafter, ScriptedDrafter, ScriptedSource
from hf_batchspec.errors import BatchSpecError
from hf_batchspec.stats import BatchSpecStats
from tests.mtp_models import build as build_mtp
from tests.test_gemma4_assistant import PROMPTS as GEMMA4_PROMPTS
from tests.test_gemma4_assistant import pair as gemma4_pair
from tests.toolkit import left_pad, plain_greedy
from tests.toolkit import target_model
from tests.test_other_tokenizer import setup as other_tokenizer_setup
from tests.tiny_models import VOCAB, perturbed

PROMPTS = [[5, 6, 7, 5, 6, 7, 5, 6], [9] * 11, [3, 4], list(range(10, 30)), [40, 41, 42], [7, 8, 7, 8, 7]]


def _source_kwargs(kind: str, target):
    """The generate arguments that ask for each registered source, and the target they draft for."""
    if kind == "model":
        return target, dict(assistant_model=perturbed(target, 0.05), num_assistant_tokens=3)
    if kind == "early-exit":
        return target, dict(assistant_early_exit=1, num_assistant_tokens=3)
    if kind == "lookup":
        return target, dict(prompt_lookup_num_tokens=3)
    if kind == "other-tokenizer":
        other_target, target_tok, draft, draft_tok = other_tokenizer_setup("chars")
        return other_target, dict(assistant_model=draft, tokenizer=target_tok, assistant_tokenizer=draft_tok,
                                  num_assistant_tokens=3)
    if kind == "mtp":
        return _mtp_target(), dict(use_mtp=True)
    if kind == "gemma4-assistant":
        gemma, assistant = gemma4_pair(2)
        return gemma, dict(assistant_model=assistant, num_assistant_tokens=3)
    raise AssertionError(f"the registry has a source this test does not know: {kind!r}; add its arguments here")


@lru_cache(maxsize=None)
def _mtp_target():
    return hf_batchspec.enable(build_mtp("glm4_moe", 2, tempfile.mkdtemp(prefix="mtp_contract_")))


@pytest.mark.parametrize("kind", [spec.kind for spec in SOURCES])
@pytest.mark.parametrize("call", ["exspec-refill", "copies", "realign"])
def test_every_registered_source_is_exact_through_every_hook(kind, call):
    """exspec with 2 slots for 6 prompts (admission, staging rows and their copies, departures, rollback),
    num_return_sequences (rows copied at admission; sampling at top_k=1, which draws plain greedy's tokens) and
    the paper's realigned layout (every row moved each round): each row equals plain greedy of its prompt alone.
    A source that forgot a hook with state of its own fails."""
    target, kwargs = _source_kwargs(kind, target_model("llama"))
    spec = next(spec for spec in SOURCES if spec.kind == kind)
    assert issubclass(spec.drafter, Drafter) and spec.drafter.propose is not Drafter.propose
    prompts = {"other-tokenizer": [[5, 6, 7, 8], [9] * 6, [10, 11], [12, 13, 14, 15, 16]],
               "gemma4-assistant": GEMMA4_PROMPTS}.get(kind, PROMPTS)
    ids, mask = left_pad(prompts, 0)
    common = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0,
                  speculation="always", return_dict_in_generate=True, **kwargs)
    copies = 1
    if call == "exspec-refill":
        out = target.generate(ids, batch_spec="exspec", max_batch_size=2, **common)
    elif call == "copies":  # sampling with top_k=1: each copy draws the argmax, plain greedy's token
        copies = 2
        common.update(do_sample=True, top_k=1, num_return_sequences=2)
        out = target.generate(ids, batch_spec="exspec", max_batch_size=3, **common)
    else:
        if kind in ("other-tokenizer", "mtp", "gemma4-assistant"):  # refused before any work, with its reason
            with pytest.raises(BatchSpecError, match="realign"):
                target.generate(ids, batch_spec="eqspec-realign", **common)
            return
        out = target.generate(ids, batch_spec="eqspec-realign", **common)
    for row, prompt in enumerate(prompts):
        expected = plain_greedy(target, prompt, 12, None)
        for copy in range(copies):
            assert out.sequences[row * copies + copy, ids.shape[1]:].tolist() == expected


def _decode(target, prompts, drafter, k, max_new, max_batch_size=8, **settings):
    """The decode loop over `prompts` with a prepared drafter, as `generate` runs it."""
    lengths = np.array([len(p) for p in prompts])
    packed = torch.zeros((len(prompts), int(lengths.max())), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        packed[row, : len(prompt)] = torch.tensor(prompt)
    stats = BatchSpecStats("exspec", k, len(prompts))
    result = decoding.speculative_decode(
        target, ScriptedSource(drafter), packed, lengths,
        decoding.DecodeSettings(max_new_tokens=max_new, num_assistant_tokens=k, stop_ids=None,
                                max_batch_size=max_batch_size, **settings), stats)
    rows = [result.tokens[row, length: length + new].tolist()
            for row, (length, new) in enumerate(zip(lengths, result.new_tokens))]
    return rows, stats


def test_a_draft_of_the_right_tokens_is_accepted_whole():
    """Scripted with plain greedy's own continuation, every draft is accepted: each round keeps k + 1 tokens."""
    target = target_model("llama")
    prompts, k, max_new = PROMPTS[:4], 3, 17
    truth = [plain_greedy(target, p, max_new, None) for p in prompts]
    drafter = ScriptedDrafter(truth, np.array([len(p) for p in prompts]))
    rows, stats = _decode(target, prompts, drafter, k, max_new)
    assert rows == truth
    assert stats.rounds == 4  # 1 token from the prefill, then 4 rounds of k + 1 = 4 tokens
    assert (stats.accepted_tokens == 12).all() and (stats.drafted_tokens == 12).all()


@pytest.mark.parametrize("wrong_at", [0, 1, 3, 4])
def test_a_wrong_draft_ends_the_accepted_prefix_there(wrong_at):
    """Drafts scripted from the truth with one wrong token at generated position `wrong_at + 1` (position 0 is the
    prefill's token): the first round (k = 4 drafts, positions 1-4) keeps the drafts before it and the target's
    own token in its place, and the drafts from it on count as offered and not accepted. At position 5 it is the
    round's bonus token, never drafted: nothing is rejected. The output is exact either way."""
    target = target_model("llama")
    prompts, k, max_new = PROMPTS[:3], 4, 13
    truth = [plain_greedy(target, p, max_new, None) for p in prompts]
    script = [list(t) for t in truth]
    for row in script:
        row[wrong_at + 1] = (row[wrong_at + 1] + 1) % VOCAB
    drafter = ScriptedDrafter(script, np.array([len(p) for p in prompts]))
    rows, stats = _decode(target, prompts, drafter, k, max_new)
    assert rows == truth
    first = drafter.calls[[name for name, _ in drafter.calls].index("rollback")]
    _, (lengths, old_lengths, _) = first
    assert (lengths - old_lengths).tolist() == [min(wrong_at, k) + 1] * len(prompts)
    assert (stats.drafted_tokens - stats.accepted_tokens == max(k - wrong_at, 0)).all()


def test_the_loop_tells_a_drafter_of_admissions_departures_and_copies():
    """exspec with 2 slots: every prompt is admitted once, into a slot or a staging row (then copied into a slot),
    and rows leave by `select_rows` once nothing waits."""
    target = target_model("llama")
    prompts = PROMPTS
    truth = [plain_greedy(target, p, 6, None) for p in prompts]
    script = [list(t) for t in truth]
    script[-1] = [(t + 1) % VOCAB for t in script[-1]]  # the last prompt drafts nothing right: it leaves last
    drafter = ScriptedDrafter(script, np.array([len(p) for p in prompts]))
    rows, _ = _decode(target, prompts, drafter, 2, 6, max_batch_size=2)
    assert rows == truth
    admitted = np.concatenate([args[0] for name, args in drafter.calls if name == "admit"])
    assert sorted(admitted.tolist()) == list(range(len(prompts)))
    names = [name for name, _ in drafter.calls]
    assert "copy_rows" in names and "select_rows" in names


def test_a_drafter_that_asks_gets_the_verify_hidden_states():
    """`verify_outputs={"hidden_states"}`: each round hands the drafter the target's last hidden state at the
    verified positions, equal to what a plain forward of the row's tokens gives there."""
    target = target_model("llama")
    prompts, k, max_new = PROMPTS[:3], 2, 9
    truth = [plain_greedy(target, p, max_new, None) for p in prompts]
    drafter = ScriptedDrafter(truth, np.array([len(p) for p in prompts]), verify_outputs={"hidden_states"})
    rows, stats = _decode(target, prompts, drafter, k, max_new)
    assert rows == truth and len(drafter.verified) == stats.rounds
    for row, (prompt, new) in enumerate(zip(prompts, truth)):
        sequence = torch.tensor([prompt + new])
        with torch.no_grad():
            reference = target(sequence, output_hidden_states=True).hidden_states[-1][0]  # [T, H]
        outputs = drafter.verified[0]  # the first round: every row present, in prompt order
        length, kept = int(outputs.lengths[row]), int(outputs.count[row])
        got = outputs.hidden_states[row, :kept]  # positions length-1 .. length+kept-2: the kept tokens' inputs
        torch.testing.assert_close(got, reference[length - 1: length - 1 + kept], rtol=1e-4, atol=1e-4)
