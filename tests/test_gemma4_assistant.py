"""Gemma 4 assistants batched: a tiny Gemma 4 target (with and without shared KV layers) and a tiny
Gemma4AssistantForCausalLM made for it. Greedy output equals plain greedy of each prompt alone; each round's drafts
equal what the assistant drafts from scratch for that row (transformers' forward over the target's keys, values and
last hidden state of the row's committed tokens); sampling keeps the target's distribution; what it cannot serve is
refused before any work."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import Gemma4AssistantConfig, Gemma4AssistantForCausalLM, Gemma4ForCausalLM, Gemma4TextConfig

import hf_batchspec
from hf_batchspec import decoding
from hf_batchspec.drafters import Gemma4AssistantDrafter
from hf_batchspec.errors import BatchSpecError
from hf_batchspec.stats import BatchSpecStats
from tests.toolkit import check_sampling_law, draw_stop_ids, left_pad, plain_greedy
from tests.toolkit.counting import recording

V = 6  # a small vocabulary: a random assistant agrees with the target now and then
PROMPTS = [[3, 4, 5, 3, 4, 5, 3], [5, 4], [3, 3, 4, 4, 5, 5], [4, 5, 3, 2, 3], [5]]
KV = dict(vocab_size=V, num_attention_heads=4, num_key_value_heads=2, head_dim=16, global_head_dim=32,
          sliding_window=4, max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=1)
_PAIRS: dict = {}


def pair(shared: int, seed: int = 0, head_scale: float = 1.0):
    """(target, assistant); `shared` target layers reuse earlier layers' keys and values."""
    key = (shared, seed, head_scale)
    if key not in _PAIRS:
        torch.manual_seed(seed)
        target = Gemma4ForCausalLM(Gemma4TextConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_kv_shared_layers=shared,
            layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
            vocab_size_per_layer_input=V, hidden_size_per_layer_input=8, **KV)).eval()
        assistant = Gemma4AssistantForCausalLM(Gemma4AssistantConfig(text_config=Gemma4TextConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            layer_types=["sliding_attention", "full_attention"], vocab_size_per_layer_input=0,
            hidden_size_per_layer_input=0, **KV), backbone_hidden_size=64)).eval()
        with torch.no_grad():
            target.get_input_embeddings().weight.mul_(head_scale)  # tied head: a spread for the sampling test
        _PAIRS[key] = hf_batchspec.enable(target), assistant
    return _PAIRS[key]


@pytest.mark.parametrize("shared", [0, 2])
@pytest.mark.parametrize("strategy", ["eqspec", "exspec"])
def test_assistant_greedy_equals_plain_greedy(shared, strategy):
    target, assistant = pair(shared)
    ids, mask = left_pad(PROMPTS, 0)
    extra = dict(max_batch_size=2) if strategy == "exspec" else {}  # refills, staging rows, departures
    out = target.generate(ids, attention_mask=mask, assistant_model=assistant, batch_spec=strategy,
                          num_assistant_tokens=3, max_new_tokens=14, do_sample=False, eos_token_id=None,
                          pad_token_id=0, speculation="always", return_dict_in_generate=True, **extra)
    assert out.spec_stats.accepted_tokens.sum() > 0
    for row, prompt in enumerate(PROMPTS):
        assert out.sequences[row, ids.shape[1]:].tolist() == plain_greedy(target, prompt, 14, None)


def reference_drafts(target, assistant, sequence: list[int], pending: int, k: int) -> list[int]:
    """The assistant's k drafts for a row whose pending token sits at `pending`, from scratch: the target over the
    committed tokens before it (its store layers' keys and values, its last hidden state), then transformers'
    assistant forward at batch 1, at that position each step."""
    with torch.no_grad():
        out = target(torch.tensor([sequence[:pending]]), output_hidden_states=True, return_shared_kv_states=True,
                     use_cache=False)
        hidden = out.hidden_states[-1][:, -1:]
        shared = dict(out.shared_kv_states)
        token, drafts = torch.tensor([[sequence[pending]]]), []
        for _ in range(k):
            embeds = torch.cat((target.get_input_embeddings()(token), hidden), -1)
            step = assistant(inputs_embeds=embeds, position_ids=torch.tensor([[pending]]), attention_mask=None,
                             shared_kv_states=shared)
            token = step.logits[:, -1:].argmax(-1)
            hidden = step.last_hidden_state
            drafts.append(int(token))
    return drafts


Recording = recording(Gemma4AssistantDrafter)  # the assistant's drafter, keeping each round's rows, lengths, drafts


@dataclass(frozen=True)
class RecordingSource:
    """A draft source that builds `Recording` over the decoder's own target runner."""

    assistant: torch.nn.Module
    seen: list
    kind: str = "gemma4-assistant"
    stages: bool = True

    def build(self, slots, cache_len, options, compile_config=None, *, staging=0, target=None, **_):
        drafter = Recording(self.assistant, target, slots, options, staging)
        drafter.seen = self.seen
        return drafter


@pytest.mark.parametrize("shared", [0, 2])
def test_assistant_drafts_are_transformers_drafts(shared):
    """Every round, every row's drafts equal the assistant's own from-scratch drafts for its committed tokens:
    the assistant reads each row's own slots of the target's cache through its masks, and the hidden state handed
    over from the verify (or the prefill) is the target's at the row's last committed position. Rows are admitted,
    staged and leave (exspec, 2 slots for 5 prompts)."""
    target, assistant = pair(shared)
    max_new, seen = 12, []
    lengths = np.array([len(p) for p in PROMPTS])
    packed = torch.zeros((len(PROMPTS), int(lengths.max())), dtype=torch.long)
    for row, prompt in enumerate(PROMPTS):
        packed[row, : len(prompt)] = torch.tensor(prompt)
    result = decoding.speculative_decode(
        target, RecordingSource(assistant, seen), packed, lengths,
        decoding.DecodeSettings(max_new_tokens=max_new, num_assistant_tokens=3, stop_ids=None, max_batch_size=2),
        BatchSpecStats("exspec", 3, len(PROMPTS)))
    truth = [plain_greedy(target, p, max_new, None) for p in PROMPTS]
    assert [result.tokens[r, n: n + max_new].tolist() for r, n in enumerate(lengths)] == truth
    assert len(seen) >= 10
    for row_ids, row_lengths, drafts in seen:
        for b, (prompt_id, length) in enumerate(zip(row_ids, row_lengths)):
            sequence = PROMPTS[prompt_id] + truth[prompt_id]
            expected = reference_drafts(target, assistant, sequence, int(length) - 1, drafts.shape[1])
            assert drafts[b].tolist() == expected, (prompt_id, int(length) - 1)


NEW, ROWS = 3, 15000
SAMPLE_PROMPT = [3, 4, 5, 3]


def test_assistant_sampling_keeps_the_target_distribution():
    """Deterministic drafts (argmax) verified by speculative sampling with a one-hot q: the joint law of the first
    tokens is the target's (chi-square against the enumerated exact joint)."""
    target, assistant = pair(0, seed=5, head_scale=3.0)
    check_sampling_law(target, SAMPLE_PROMPT, ROWS, NEW, V, 3, assistant_model=assistant, num_assistant_tokens=2)


def test_assistant_refusals():
    target, assistant = pair(0)
    ids, mask = left_pad(PROMPTS[:2], 0)
    call = dict(attention_mask=mask, assistant_model=assistant, batch_spec="eqspec", max_new_tokens=4, pad_token_id=0)
    for extra, message in ((dict(cache_implementation="static"), "not served with a Gemma 4 assistant"),
                           (dict(batch_spec="eqspec-realign"), "does not realign a Gemma 4 assistant")):
        with pytest.raises(BatchSpecError, match=message):
            target.generate(ids, **{**call, **extra})
    from tests.tiny_models import build

    llama = hf_batchspec.enable(build("llama"))
    with pytest.raises(BatchSpecError, match="drafts from a Gemma 4 target"):
        llama.generate(ids, **call)


@settings(max_examples=6)
@given(prompts=st.lists(st.lists(st.integers(2, V - 1), min_size=1, max_size=12), min_size=1, max_size=6),
       max_new=st.integers(1, 14), strategy=st.sampled_from(["eqspec", "exspec"]), pool=st.integers(1, 4),
       shared=st.sampled_from([0, 2]), k=st.integers(1, 4), data=st.data())
def test_assistant_property_equals_plain_greedy(prompts, max_new, strategy, pool, shared, k, data):
    """Any prompts, budget, k, pool and EOS (drawn from the free run, so that rows stop inside accepted blocks):
    each row equals plain greedy of its prompt alone, trimmed at EOS."""
    target, assistant = pair(shared)
    eos = draw_stop_ids(data, target, prompts, max_new, max_size=1)
    ids, mask = left_pad(prompts, 0)
    extra = dict(max_batch_size=pool) if strategy == "exspec" else {}
    out = target.generate(ids, attention_mask=mask, assistant_model=assistant, batch_spec=strategy,
                          num_assistant_tokens=k, max_new_tokens=max_new, do_sample=False,
                          eos_token_id=list(eos) or None, pad_token_id=0, speculation="always", **extra)
    for row, prompt in enumerate(prompts):
        expected = plain_greedy(target, prompt, max_new, eos or None)
        assert out[row, ids.shape[1]: ids.shape[1] + len(expected)].tolist() == expected
