"""Hypothesis strategies that draw the requests of the end-to-end properties themselves: prompts are lists of token
ids (not a seed that a generator turns into prompts), so that a failing example shrinks to fewer, shorter prompts
of smaller ids, and the reported example is the call that failed.

Prompt lengths are drawn first (as an integer, so that long prompts come as often as before, past the sliding
windows of `tests.tiny_models`), then that many ids."""

from __future__ import annotations

from hypothesis import strategies as st

from tests.toolkit.models import DRAFTS, VOCAB

FIRST_ID = 3  # ids 0-2 are pad, bos and eos of the tiny configs: a prompt is made of ordinary tokens


def token_ids(low: int = FIRST_ID, vocab: int = VOCAB):
    return st.integers(low, vocab - 1)


def prompt(max_len: int, min_len: int = 1, low: int = FIRST_ID, vocab: int = VOCAB):
    """One prompt: `min_len` to `max_len` ids in [low, vocab)."""
    return st.integers(min_len, max_len).flatmap(
        lambda n: st.lists(token_ids(low, vocab), min_size=n, max_size=n))


def prompts(max_rows: int, max_len: int, min_rows: int = 1, min_len: int = 1, low: int = FIRST_ID,
            vocab: int = VOCAB):
    """A batch of `min_rows` to `max_rows` prompts."""
    return st.lists(prompt(max_len, min_len, low, vocab), min_size=min_rows, max_size=max_rows)


@st.composite
def lookup_prompt(draw, max_len: int):
    """A prompt that repeats a span after a short head (so prompt lookup finds matches), or not, cut to a drawn
    length."""
    length = draw(st.integers(1, max_len))
    if draw(st.booleans()):
        span = draw(st.lists(token_ids(), min_size=1, max_size=6))
        head = draw(st.lists(token_ids(), max_size=5))
        return (head + span * length)[:length]
    return draw(st.lists(token_ids(), min_size=length, max_size=length))


@st.composite
def requests(draw, max_rows=12, max_prompt=40, max_new=40, max_k=8, drafts=DRAFTS):
    """A greedy request: prompts, k, a token budget and the kind of draft (`tests.toolkit.models.DRAFTS`)."""
    return dict(
        prompts=draw(prompts(max_rows, max_prompt), label="prompts"),
        k=draw(st.integers(1, max_k), label="k"),
        max_new=draw(st.integers(1, max_new), label="max_new"),
        draft=draw(st.sampled_from(drafts), label="draft"),
    )


@st.composite
def lookup_requests(draw, max_rows=10, max_prompt=40, max_new=32, max_k=6):
    """A request whose prompts repeat spans or not, mixed in one batch (for prompt lookup and early exit)."""
    return dict(prompts=draw(st.lists(lookup_prompt(max_prompt), min_size=1, max_size=max_rows), label="prompts"),
                k=draw(st.integers(1, max_k), label="k"), max_new=draw(st.integers(1, max_new), label="max_new"))
