"""Counters of what really ran: forward calls of modules (hooks, so that the library's own statistics are checked
against the models, not against themselves), the graphs dynamo compiled, the host's blocking reads of tensors (on
any device: each is a sync on a GPU) and the host syncs a CUDA profile recorded."""

from __future__ import annotations

import torch


class ForwardCount:
    """The forwards the given modules really run (forward pre-hooks), from construction until `close()` (or the
    end of a `with` block). Each call is kept as (module, id of the cache it got, rows, first position):

    - `total`: all calls; `calls`: per (module, cache) [calls, rows over those calls] (the target and the draft
      each decode with a cache of their own, which tells their calls apart even when the draft is the target);
    - `prefills`: (module, rows, width) of each call whose positions start at 0.

    The same module given twice is hooked once."""

    def __init__(self, *modules):
        self.events: list[tuple] = []
        self.handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True) for m in dict.fromkeys(modules)]

    def _hook(self, module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        tokens = kwargs.get("input_ids", args[0] if args else None)
        if tokens is None:
            tokens = kwargs.get("input_features", kwargs.get("inputs_embeds"))
        positions = kwargs.get("position_ids")
        first = int(positions.min()) if isinstance(positions, torch.Tensor) and positions.numel() else None
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else (0, 0)
        self.events.append((module, id(cache), shape[0], shape[1] if len(shape) > 1 else 0, first))

    @property
    def total(self) -> int:
        return len(self.events)

    def __bool__(self) -> bool:  # `assert not forwards`: nothing ran
        return bool(self.events)

    def of(self, module) -> int:
        return sum(1 for event in self.events if event[0] is module)

    def rows_of(self, module) -> int:
        return sum(event[2] for event in self.events if event[0] is module)

    @property
    def calls(self) -> dict:
        out: dict = {}
        for module, cache, rows, _, _ in self.events:
            count = out.setdefault((module, cache), [0, 0])
            count[0] += 1
            count[1] += rows
        return out

    def prefills(self, module=None) -> list[tuple]:
        return [(m, rows, width) for m, _, rows, width, first in self.events
                if first == 0 and (module is None or m is module)]

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def __enter__(self) -> "ForwardCount":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Blocking reads of device data into the host: each is a sync on a GPU.
READS = ("cpu", "item", "tolist", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__")


class CountedReads:
    """Counts calls of the tensor methods that read device data into the host, while `active`."""

    def __init__(self, monkeypatch):
        self.active, self.count = False, 0
        for name in READS:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _original=original, **kwargs):
                if self.active:
                    self.count += 1
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)
        original_nonzero = torch.nonzero

        def nonzero(*args, **kwargs):
            if self.active:
                self.count += 1
            return original_nonzero(*args, **kwargs)

        monkeypatch.setattr(torch, "nonzero", nonzero)


def cuda_syncs(prof) -> int:
    """Host syncs in a torch profile (`torch.profiler.profile` with the CUDA activity), counted as transformers'
    own tests count them: cudaStreamSynchronize and cudaDeviceSynchronize events."""
    names = [event.name for event in prof.events()]
    return sum(names.count(name) for name in ("cudaStreamSynchronize", "cudaDeviceSynchronize"))


def unique_graphs() -> int:
    """Graphs dynamo has compiled in this process: a call that compiled nothing leaves it unchanged."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def recording(drafter_class: type) -> type:
    """`drafter_class` keeping what each round proposed: (row ids, row lengths, drafts) appended to the instance's
    `seen` list (set it before the decode loop runs), so that a test checks every round's drafts against its own
    reference."""

    class Recording(drafter_class):
        def propose(self, rows, tokens, k, budget):
            proposal = super().propose(rows, tokens, k, budget)
            self.seen.append((rows.ids_h.copy(), rows.lengths_h.copy(), proposal.drafts.clone()))
            return proposal

    Recording.__name__ = Recording.__qualname__ = f"Recording{drafter_class.__name__}"
    return Recording
