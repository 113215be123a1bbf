"""Multi-token prediction (`use_mtp=True`) batched: DeepSeek-V3-style and GLM-4-MoE-style targets whose checkpoints
carry MTP layers (`tests/mtp_models.py`), loaded as transformers loads them. Greedy output equals plain greedy of
each prompt alone; each round's drafts equal transformers' own MTP drafts for that row's prefix (its
`MtpModel` run from scratch); drafts are accepted; sampling keeps the target's distribution."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.cache_utils import MtpCache
from transformers.modeling_layers import MtpModel

import hf_batchspec
from hf_batchspec import decoding
from hf_batchspec.drafters import DraftOptions, MTPDrafter, ScriptedSource
from hf_batchspec.errors import BatchSpecError
from hf_batchspec.processors import ScoreProcessing
from hf_batchspec.stats import BatchSpecStats
from tests.mtp_models import build
from tests.toolkit import check_sampling_law, draw_stop_ids, left_pad, plain_greedy
from tests.toolkit.counting import recording

PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16], [30, 31, 32], [40]]
CASES = [("deepseek_v3", 1), ("deepseek_v3", 2), ("glm4_moe", 1), ("glm4_moe", 3)]
_MODELS: dict = {}
# weights whose greedy runs repeat tokens, which MTP layers copied from the last layer then predict (other seeds of
# the DeepSeek-V3 config alternate between two tokens, and its MTP drafts, transformers' too, lag one behind)
SEEDS = {"deepseek_v3": 1, "glm4_moe": 0}


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    def get(arch: str, layers: int):
        if (arch, layers) not in _MODELS:
            directory = tmp_path_factory.mktemp(f"{arch}_{layers}")
            _MODELS[arch, layers] = hf_batchspec.enable(build(arch, layers, directory, seed=SEEDS[arch]))
        return _MODELS[arch, layers]
    return get


@pytest.mark.parametrize("arch,layers", CASES)
@pytest.mark.parametrize("strategy", ["eqspec", "exspec"])
def test_mtp_greedy_equals_plain_greedy(targets, arch, layers, strategy):
    target = targets(arch, layers)
    ids, mask = left_pad(PROMPTS, 0)
    extra = dict(max_batch_size=2) if strategy == "exspec" else {}  # refills, staging rows, departures
    out = target.generate(ids, attention_mask=mask, use_mtp=True, batch_spec=strategy, max_new_tokens=16,
                          do_sample=False, eos_token_id=None, pad_token_id=0, speculation="always",
                          return_dict_in_generate=True, **extra)
    stats = out.spec_stats
    assert stats.drafted_tokens.sum() > 0 and stats.num_assistant_tokens == layers  # k is the MTP depth
    for row, prompt in enumerate(PROMPTS):
        assert out.sequences[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, 16, None)
    assert stats.acceptance_rate > 0.5  # MTP layers initialised from the target's last layer agree with it


Recording = recording(MTPDrafter)  # the MTP drafter, keeping each round's rows, lengths and drafts


@pytest.mark.parametrize("arch,layers", CASES)
@pytest.mark.parametrize("max_batch_size", [5, 2])
def test_mtp_drafts_are_transformers_drafts(targets, arch, layers, max_batch_size):
    """Each round, every row's drafts equal what transformers' MtpModel drafts from scratch for that row's
    committed tokens (the target's hidden states over them, a fresh MtpCache): the ragged per-layer caches, the
    window each layer recomputes and the ring of hidden states reproduce its definition, rows admitted, staged
    and leaving included. Rounds that draft fewer than K (a row's last tokens) draft its first ones."""
    target = targets(arch, layers)
    mtp = MtpModel.from_pretrained(target, device_map={"": "cpu"}).eval()
    max_new = 14
    truth = [plain_greedy(target, p, max_new, None) for p in PROMPTS]
    lengths = np.array([len(p) for p in PROMPTS])
    packed = torch.zeros((len(PROMPTS), int(lengths.max())), dtype=torch.long)
    for row, prompt in enumerate(PROMPTS):
        packed[row, : len(prompt)] = torch.tensor(prompt)
    options = DraftOptions(False, None, ScoreProcessing([]), None, False)
    staging = 1 if max_batch_size < len(PROMPTS) else 0
    drafter = Recording(mtp, max_batch_size, int(lengths.max()) + max_new, options, staging)
    drafter.seen = []
    result = decoding.speculative_decode(
        target, ScriptedSource(drafter), packed, lengths,
        decoding.DecodeSettings(max_new_tokens=max_new, num_assistant_tokens=layers, stop_ids=None,
                                max_batch_size=max_batch_size), BatchSpecStats("exspec", layers, len(PROMPTS)))
    assert [result.tokens[r, n: n + max_new].tolist() for r, n in enumerate(lengths)] == truth
    checked = 0
    with torch.no_grad():
        for ids, row_lengths, drafts in drafter.seen:
            for b, (prompt_id, length) in enumerate(zip(ids, row_lengths)):
                sequence = PROMPTS[prompt_id] + truth[prompt_id]
                pending = int(length) - 1  # position L of the row's pending token
                hidden = target(torch.tensor([sequence[:pending]]), output_hidden_states=True).hidden_states[-1]
                expected, _, _ = mtp(input_ids=torch.tensor([sequence[1: pending + 1]]), last_hidden_states=hidden,
                                     attention_mask=torch.ones(1, pending, dtype=torch.long),
                                     position_ids=torch.arange(1, pending + 1)[None],
                                     mtp_cache=MtpCache(config=target.config.get_mtp_config()))
                assert drafts[b].tolist() == expected[0, : drafts.shape[1]].tolist(), (prompt_id, pending)
                checked += 1
    assert checked >= 20


V, NEW, ROWS = 5, 3, 20000
SAMPLE_PROMPT = [1, 3, 0, 2]


def test_mtp_sampling_keeps_the_target_distribution(tmp_path):
    """Sampled MTP drafts (from the MTP layers' processed distribution) verified by speculative sampling: the joint
    law of the first tokens is the target's (chi-square against the enumerated exact joint)."""
    target = hf_batchspec.enable(build("glm4_moe", 2, tmp_path, seed=3, vocab=V, head_scale=3.0))
    check_sampling_law(target, SAMPLE_PROMPT, ROWS, NEW, V, 7, use_mtp=True)


def test_mtp_refusals(targets):
    """What use_mtp does not serve is refused before any work, with what to do instead."""
    target = targets("glm4_moe", 1)
    ids, mask = left_pad(PROMPTS[:2], 0)
    call = dict(attention_mask=mask, use_mtp=True, max_new_tokens=4, pad_token_id=0)
    for extra, message in ((dict(num_assistant_tokens=3), "one token per MTP layer"),
                           (dict(batch_spec="eqspec-realign"), "does not realign use_mtp"),
                           (dict(cache_implementation="static"), "not served with use_mtp yet"),
                           (dict(max_matching_ngram_size=2), "max_matching_ngram_size configures prompt lookup")):
        with pytest.raises(BatchSpecError, match=message):
            target.generate(ids, **call, **extra)
    plain = hf_batchspec.enable(build_plain())
    with pytest.raises(BatchSpecError, match="declares no multi-token-prediction layers"):
        plain.generate(ids, attention_mask=mask, use_mtp=True, max_new_tokens=4, pad_token_id=0)


def build_plain():
    from tests.tiny_models import build as tiny

    model = tiny("llama")
    model.config.num_mtp_layers = 0
    return model


COSTLY = hf_batchspec.CostModel(target_call=1.0, target_token=0.0, draft_call=0.8, draft_token=0.0)


@st.composite
def mtp_requests(draw):
    """Prompts drawn as token lists (so a failure shrinks to a small prompt), a budget, a strategy and pool."""
    prompts = draw(st.lists(st.lists(st.integers(2, 127), min_size=1, max_size=12), min_size=1, max_size=6))
    return dict(prompts=prompts, max_new=draw(st.integers(1, 14)),
                strategy=draw(st.sampled_from(["eqspec", "exspec"])), pool=draw(st.integers(1, 4)))


@settings(max_examples=6)
@given(req=mtp_requests(), data=st.data())
def test_mtp_property_equals_plain_greedy(targets, req, data):
    """Any prompts, budget, pool, EOS (drawn from the free run, so that rows stop inside accepted blocks) and
    speculation policy (a costly draft starts off and comes back after a probe: rows whose MTP layers skipped
    positions): each row equals plain greedy of its prompt alone, trimmed at EOS."""
    arch, layers = data.draw(st.sampled_from(CASES), label="model")
    target = targets(arch, layers)
    prompts, max_new = req["prompts"], req["max_new"]
    eos = draw_stop_ids(data, target, prompts, max_new, max_size=1)
    ids, mask = left_pad(prompts, 0)
    extra = dict(max_batch_size=req["pool"]) if req["strategy"] == "exspec" else {}
    speculation = data.draw(st.sampled_from(["always", "auto", COSTLY]), label="speculation")
    out = target.generate(ids, attention_mask=mask, use_mtp=True, batch_spec=req["strategy"], max_new_tokens=max_new,
                          do_sample=False, eos_token_id=list(eos) or None, pad_token_id=0, speculation=speculation,
                          **extra)
    for row, prompt in enumerate(prompts):
        expected = plain_greedy(target, prompt, max_new, eos or None)
        assert out[row, ids.shape[1]: ids.shape[1] + len(expected)].tolist() == expected
