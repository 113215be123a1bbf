"""Every clock of the package: where a generate call's wall time goes, and what a forward costs here.

Kept out of the decode loop's algorithm on purpose: `ForwardTimer` wraps the models from outside with forward
hooks, and `calibrate` times forwards before generate runs. The loop reads one clock, `RoundClock` (for a device
round, `LaunchClock`): each round's wall time, which `speculation="auto"` weighs (`speculation.MeasuredCosts`) so
that drafting runs only where it pays on this machine; greedy output never depends on it. Use `ForwardTimer`
around a call in benchmarks and examples:

    with ForwardTimer(target, draft) as timer:
        out = target.generate(...)
    timer.forward_seconds, timer.calls, timer.wall_seconds
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .speculation import CostModel


def synchronize() -> None:
    # A forward returns when its kernels are queued, not when a GPU has run them: wait for the devices.
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class RoundClock:
    """Wall time of one decode round, from `start()` to `stop()`. No device sync of its own: it is stopped after
    the round's one host sync, when the device has run the round."""

    def __init__(self):
        self._started = 0.0

    def start(self) -> None:
        self._started = time.perf_counter()

    def stop(self) -> float:  # seconds since start()
        return time.perf_counter() - self._started


class LaunchClock:
    """What a device round launched without waiting cost (`device_round.LaggedRead`): its host time from `start()` to
    `stop()`, or, on CUDA, the device time between two events around it where that is longer (a GPU that is the
    bottleneck). Read `seconds()` once the round's results have been waited for."""

    def __init__(self, cuda: bool):
        self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if cuda else None
        self._started = self._host = 0.0

    def start(self) -> None:
        self._started = time.perf_counter()
        if self._events is not None:
            self._events[0].record()

    def stop(self) -> None:
        if self._events is not None:
            self._events[1].record()
        self._host = time.perf_counter() - self._started

    def seconds(self) -> float:
        if self._events is None:
            return self._host
        return max(self._host, self._events[0].elapsed_time(self._events[1]) / 1e3)


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
        synchronize()
        self._started = time.perf_counter()

    def _post(self, module, args, kwargs, output):
        synchronize()
        self.forward_seconds += time.perf_counter() - self._started
        self.calls += 1

    def __enter__(self) -> "ForwardTimer":
        for model in self.models:
            self._handles.append(model.register_forward_pre_hook(self._pre, with_kwargs=True))
            self._handles.append(model.register_forward_hook(self._post, with_kwargs=True))
        synchronize()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize()
        self.wall_seconds = time.perf_counter() - self._t0
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def bookkeeping_share(self) -> float:
        """Share of wall time spent outside model forwards."""
        return 1.0 - self.forward_seconds / self.wall_seconds if self.wall_seconds else 0.0


def calibrate(target: torch.nn.Module, draft: torch.nn.Module, rows: int = 32, context: int = 64,
              repeats: int = 5, compile_config=None) -> CostModel:
    """Measure a `CostModel` on this machine: time forwards of each model at a few token counts (rows x 1,
    2 and 4 positions, over `context` cached tokens) and fit `call + token x n` by least squares.

    Optional: `speculation="auto"` measures its rounds as it goes. Pass the result as `speculation=` for fixed
    costs (the same decisions in every run, sampling included). With `compile_config` (transformers' CompileConfig)
    it measures the compiled static-shape forwards that `generate(..., compile_config=...)` runs (all `rows`
    rows, widths 1, 2 and 4, attention over the whole cache), compiling them first; pass the same
    `compile_config` and `max_batch_size=rows` to generate.
    """
    from .decoding import static_length
    from .runner import ModelRunner

    def measure(model) -> tuple[float, float]:
        static = compile_config is not None
        slots = static_length(context + 8) if static else context + 8
        runner = ModelRunner(model, rows, slots, compile_config, static)
        device = runner.device
        vocab = int(model.config.get_text_config().vocab_size)
        limits = torch.full((rows,), slots - 1, device=device)
        prefix = torch.randint(0, vocab, (rows, context), device=device)
        runner.forward(prefix, torch.arange(context, device=device).expand(rows, context), limits, context, keep=1,
                       prefill=True)
        sizes, seconds = [], []
        for batch in (rows,) if static else (1, rows // 2 or 1, rows):  # static shapes: every row, always
            for width in (1, 2, 4):
                tokens = torch.randint(0, vocab, (batch, width), device=device)
                positions = context + torch.arange(width, device=device).expand(batch, width)
                rows_index = torch.arange(batch, device=device) if batch < rows else None
                for attempt in range(repeats + 1):  # the first is a warm-up
                    synchronize()
                    start = time.perf_counter()
                    runner.forward(tokens, positions, limits[:batch], context + width, rows=rows_index)
                    synchronize()
                    if attempt:
                        sizes.append(batch * width)
                        seconds.append(time.perf_counter() - start)
        design = np.stack([np.ones(len(sizes)), np.asarray(sizes, dtype=np.float64)], 1)
        call, token = np.linalg.lstsq(design, np.asarray(seconds), rcond=None)[0]
        return max(float(call), 0.0), max(float(token), 0.0)

    with torch.no_grad():
        (t_call, t_token), (d_call, d_token) = measure(target), measure(draft)
    prior = CostModel.estimate(target, draft, compiled=compile_config is not None)
    return CostModel(t_call, t_token, d_call, d_token, prior.round_overhead)
