"""Errors raised at the public boundary, before any forward pass runs."""


class BatchSpecError(ValueError):
    """A request hf-batchspec cannot serve as asked; the message says what to change."""


class UnsupportedModelError(BatchSpecError):
    """The model's architecture or configuration cannot be decoded exactly with a per-row cache."""
