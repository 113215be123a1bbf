"""Streaming: every row's tokens arrive in order, as rounds keep them, and add up to the output."""

from threading import Thread

import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

import hf_batchspec
from tests.toolkit import left_pad
from tests.toolkit import draft_model, target_model

PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16, 17], [18], [19, 20]]


def test_batch_iterator_streamer_from_another_thread():
    target = target_model("llama")
    ids, mask = left_pad(PROMPTS, 0)
    streamer = hf_batchspec.BatchIteratorStreamer(timeout=120)
    result = {}
    kwargs = dict(attention_mask=mask, assistant_model=draft_model("llama", "perturbed"), batch_spec="exspec",
                  max_batch_size=2, max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None,
                  streamer=streamer, return_dict_in_generate=True)
    thread = Thread(target=lambda: result.setdefault("out", target.generate(ids, **kwargs)))
    thread.start()
    received = {row: [] for row in range(len(PROMPTS))}
    chunks = 0
    for row, tokens in streamer:
        received[row].extend(tokens)
        chunks += 1
    thread.join()
    out = result["out"]
    for row in range(len(PROMPTS)):
        assert received[row] == out.sequences[row, ids.shape[1]:].tolist()
    # one chunk per row for its first token, then one per round it took part in
    assert chunks == len(PROMPTS) + out.spec_stats.row_rounds.sum()


class Collect(BaseStreamer):
    def __init__(self):
        self.calls = []
        self.ended = False

    def put(self, value):
        self.calls.append(value.reshape(-1).tolist())

    def end(self):
        self.ended = True


def test_transformers_streamer_at_batch_one():
    target = target_model("llama")
    streamer = Collect()
    ids = torch.tensor([PROMPTS[0]])
    out = target.generate(ids, assistant_model=draft_model("llama", "perturbed"), batch_spec="eqspec",
                          max_new_tokens=9, do_sample=False, pad_token_id=0, eos_token_id=None, streamer=streamer)
    assert streamer.ended and streamer.calls[0] == PROMPTS[0]  # the prompt first, as transformers does
    assert sum(streamer.calls[1:], []) == out[0, 4:].tolist()


class Boom(StoppingCriteria):
    """Raises on its third call: generate fails after some rounds have already streamed tokens."""

    def __init__(self):
        self.calls = 0

    def __call__(self, input_ids, scores, **kwargs):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("boom from a stopping criterion")
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@pytest.mark.parametrize("failure", ["while decoding", "before any work"])
def test_batch_iterator_streamer_ends_with_the_producers_error(failure):
    """When generate raises, the consumer's iteration raises that error instead of blocking forever. The
    streamer's timeout and the join's bound the test, so a regression fails instead of hanging."""
    target = target_model("llama")
    ids, mask = left_pad(PROMPTS, 0)
    if failure == "before any work":
        ids = ids.clone()
        ids[0, -1] = 10_000  # outside the vocabulary: refused by validation, after the streamer was handed over
    streamer = hf_batchspec.BatchIteratorStreamer(timeout=30)
    errors = []

    def produce():
        try:
            target.generate(ids, attention_mask=mask, assistant_model=draft_model("llama", "perturbed"),
                            max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None, streamer=streamer,
                            stopping_criteria=StoppingCriteriaList([Boom()]))
        except Exception as error:  # noqa: BLE001 - the consumer must see this same error
            errors.append(error)

    thread = Thread(target=produce, daemon=True)
    thread.start()
    expected = RuntimeError if failure == "while decoding" else hf_batchspec.BatchSpecError
    with pytest.raises(expected) as raised:
        for _ in streamer:
            pass
    thread.join(timeout=30)
    assert not thread.is_alive() and len(errors) == 1 and raised.value is errors[0]
