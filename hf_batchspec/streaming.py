"""Streaming for batches: each row's tokens are handed over as soon as a round keeps them.

transformers' `TextStreamer` / `TextIteratorStreamer` take batch 1 (they raise otherwise); they still work
here at batch 1. For batches, `BatchIteratorStreamer` yields `(row, token_ids)` (or `(row, text)` with a
tokenizer) in the order rounds keep them, from another thread, like `TextIteratorStreamer`:

    streamer = BatchIteratorStreamer(tokenizer)
    thread = Thread(target=model.generate, kwargs=dict(**batch, assistant_model=draft, streamer=streamer))
    thread.start()
    for row, text in streamer:
        print(row, text)
"""

from __future__ import annotations

from queue import Queue

import numpy as np
import torch
from transformers.generation.streamers import BaseStreamer

from .errors import BatchSpecError


class BatchStreamer(BaseStreamer):
    """Base class: override `on_tokens(row, token_ids)`, `on_end()` and, to see why a call failed, `on_error`."""

    def put_rows(self, rows: np.ndarray, tokens: list[list[int]]) -> None:
        for row, ids in zip(rows.tolist(), tokens):
            if ids:
                self.on_tokens(row, ids)

    def put(self, value) -> None:  # transformers' single-sequence entry point is not used for batches
        raise BatchSpecError("BatchStreamer receives tokens per row through put_rows().")

    def end(self, error: BaseException | None = None) -> None:
        """transformers calls end() when generation finishes; generate passes the error when it raised, so that a
        consumer waiting for tokens learns why none will come."""
        if error is None:
            self.on_end()
        else:
            self.on_error(error)

    def on_tokens(self, row: int, token_ids: list[int]) -> None:
        raise NotImplementedError

    def on_end(self) -> None:
        pass

    def on_error(self, error: BaseException) -> None:
        self.on_end()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class BatchIteratorStreamer(BatchStreamer):
    """Iterate over `(row, token_ids)` pairs, or `(row, text)` when a tokenizer is given.

    Text is decoded per row from all of its tokens so far and only the new part is yielded, so multi-token
    characters come out whole (as `TextIteratorStreamer` does).
    """

    def __init__(self, tokenizer=None, timeout: float | None = None, **decode_kwargs):
        self.tokenizer, self.timeout, self.decode_kwargs = tokenizer, timeout, decode_kwargs
        self.queue: Queue = Queue()
        self._tokens: dict[int, list[int]] = {}
        self._printed: dict[int, int] = {}
        self._stop = object()

    def on_tokens(self, row: int, token_ids: list[int]) -> None:
        if self.tokenizer is None:
            self.queue.put((row, token_ids))
            return
        tokens = self._tokens.setdefault(row, [])
        tokens.extend(token_ids)
        text = self.tokenizer.decode(tokens, **self.decode_kwargs)
        if text.endswith("\ufffd"):  # an unfinished multi-byte character: wait for the next tokens
            return
        new = text[self._printed.get(row, 0):]
        self._printed[row] = len(text)
        if new:
            self.queue.put((row, new))

    def on_end(self) -> None:
        self.queue.put(self._stop)

    def on_error(self, error: BaseException) -> None:
        self.queue.put(_Failed(error))  # raised in the consumer's thread by __next__

    def __iter__(self):
        return self

    def __next__(self):
        item = self.queue.get(timeout=self.timeout)
        if item is self._stop:
            raise StopIteration
        if isinstance(item, _Failed):
            self.queue.put(self._stop)  # iterating again ends instead of blocking
            raise item.error
        return item


def token_sink(streamer, input_ids: torch.Tensor):
    """The decode loop's callback `(rows, tokens)` for a given streamer, or None.

    A transformers streamer (batch 1 only) first gets the prompt, as transformers' generate gives it.
    """
    if streamer is None:
        return None
    if isinstance(streamer, BatchStreamer):
        return streamer.put_rows
    check_streamer_rows(streamer, input_ids.shape[0])
    streamer.put(input_ids.cpu())
    return lambda rows, tokens: streamer.put(torch.tensor(tokens[0])) if tokens[0] else None


def check_streamer_rows(streamer, rows: int) -> None:
    """A transformers streamer takes one sequence: refused for a call of more than one row (before any work where
    the caller knows the rows early, e.g. before an encoder runs)."""
    if not isinstance(streamer, BatchStreamer) and rows != 1:
        raise BatchSpecError(
            f"{type(streamer).__name__} streams one sequence; for a batch of {rows} use "
            "hf_batchspec.BatchIteratorStreamer (or another BatchStreamer)."
        )
