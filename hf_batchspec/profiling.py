"""Where a generate call's wall time goes: model forwards vs everything else ("bookkeeping").

Kept out of the decode loop on purpose: `ForwardTimer` wraps the models from outside with forward hooks,
so the algorithm never reads a clock. Use it around a call in benchmarks and examples:

    with ForwardTimer(target, draft) as timer:
        out = target.generate(...)
    timer.forward_seconds, timer.calls, timer.wall_seconds
"""

from __future__ import annotations

import time

import torch


def _synchronize(device: torch.device | None = None) -> None:
    # Forward hooks fire when the Python call returns, not when a GPU finishes: wait for the device.
    if torch.cuda.is_available():
        torch.cuda.synchronize(device)


class ForwardTimer:
    """Accumulates the time spent inside the given models' forward calls (top-level calls only)."""

    def __init__(self, *models: torch.nn.Module):
        self.models = list(dict.fromkeys(models))  # the same model twice (a draft that is the target) counts once
        self.forward_seconds = 0.0
        self.wall_seconds = 0.0
        self.calls = 0
        self._handles = []
        self._started: float | None = None
        self._t0 = 0.0

    def _pre(self, module, args, kwargs):
        _synchronize()
        self._started = time.perf_counter()

    def _post(self, module, args, kwargs, output):
        _synchronize()
        self.forward_seconds += time.perf_counter() - self._started
        self.calls += 1

    def __enter__(self) -> "ForwardTimer":
        for model in self.models:
            self._handles.append(model.register_forward_pre_hook(self._pre, with_kwargs=True))
            self._handles.append(model.register_forward_hook(self._post, with_kwargs=True))
        _synchronize()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        _synchronize()
        self.wall_seconds = time.perf_counter() - self._t0
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def bookkeeping_share(self) -> float:
        """Share of wall time spent outside model forwards."""
        return 1.0 - self.forward_seconds / self.wall_seconds if self.wall_seconds else 0.0
