"""The bench's timing harness: every method generates for the same prompts, with the same models, stop ids and
`max_new_tokens`, and is credited with the same tokens (each row's new tokens up to and including its first stop,
from the batch-1 greedy reference), so a method cannot look faster by generating past EOS. Wall time is measured
around whole calls, after an untimed warm-up, as the fastest of `repeats` runs (on a shared machine other processes
only ever add time); time inside model forwards comes from `profiling.ForwardTimer`, from outside the decode loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..profiling import ForwardTimer
from .loaders import left_pad


@dataclass
class Result:
    method: str
    batch_size: int
    seconds: float
    tokens: int
    exact_rows: int
    rows: int
    tokens_per_round: float | None = None
    target_calls: int | None = None
    draft_calls: int | None = None
    bookkeeping: float | None = None  # share of wall time outside model forwards
    peak_memory_mb: float | None = None
    threads: int | None = None  # torch.get_num_threads() during the run (absent from older JSON files)
    warmup_seconds: float | None = None  # the untimed first run: with --compile, compiling its shapes

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def _chunks(prompts: list, size: int) -> list[list]:
    """Consecutive batches of `size` prompts, as batched greedy and eqspec take them."""
    return [prompts[start:start + size] for start in range(0, len(prompts), size)]


def _trim(tokens: list[int], stops: set[int]) -> list[int]:
    """`tokens` through the first stop: what every method is credited with, whatever it generated after."""
    for i, t in enumerate(tokens):
        if t in stops:
            return tokens[: i + 1]
    return tokens


class Bench:
    """Builds each method's call on one set of prompts and models and times them; the first timed rows (HF greedy
    at batch 1) are the reference every other method's rows are compared with."""

    def __init__(self, target, draft, prompts, max_new_tokens, k, device, repeats=1, calls="one"):
        self.target, self.draft, self.prompts, self.device = target, draft, prompts, device
        # our exspec rows: "one" call over every prompt (max_batch_size = the batch), or "per-batch": one call per
        # batch of prompts, as a user loops over batches (and as HF greedy runs)
        self.calls = calls
        self.max_new, self.k, self.repeats = max_new_tokens, k, repeats
        config = target.generation_config
        eos = config.eos_token_id
        self.stops = set([eos] if isinstance(eos, int) else eos or [])
        self.pad = config.pad_token_id if config.pad_token_id is not None else (min(self.stops) if self.stops else 0)
        self.common = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.pad,
                           eos_token_id=sorted(self.stops) or None)
        self.reference = None

    def _rows_from(self, out, width, count):  # out: [B, W + new]
        return [_trim(out[row, width:].tolist(), self.stops) for row in range(count)]

    def timed(self, name, batch_size, fn, spec=False) -> Result:
        """One method timed alone (warmed up first): `compare` of one."""
        return self.compare([(name, fn, spec)], batch_size)[0]

    def compare(self, methods, batch_size, warmed=False) -> list[Result]:
        """Time `methods` ([(name, fn, uses the draft)]) at one batch size, taking turns: each of `repeats`
        passes runs every method once, and a method's fastest run counts. On a shared machine a slow spell
        then falls on all methods alike instead of on whichever happened to run during it."""
        for _, fn, _ in [] if warmed else methods:
            fn(self.prompts[: min(2, len(self.prompts))], warmup=True)  # untimed: first-call costs
        best = [None] * len(methods)  # (timer, rows, stats, peak memory)
        for _ in range(self.repeats):
            for i, (_, fn, spec) in enumerate(methods):
                if self.device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                # a compiled forward is timed from outside only: hooks on it would make torch.compile recompile
                timed = () if getattr(fn, "compiled", False) else (self.target, self.draft) if spec else (
                    self.target,)
                with ForwardTimer(*timed) as timer:
                    rows, stats = fn(self.prompts, warmup=False)
                peak = torch.cuda.max_memory_allocated() / 2**20 if self.device.startswith("cuda") else None
                if best[i] is None or timer.wall_seconds < best[i][0].wall_seconds:
                    best[i] = (timer, rows, stats, peak)
        return [self._result(name, batch_size, *measured) for (name, _, _), measured in zip(methods, best)]

    def _result(self, name, batch_size, timer, rows, stats, peak) -> Result:
        if self.reference is None:
            self.reference = rows
        exact = sum(r == ref for r, ref in zip(rows, self.reference))
        tokens = sum(len(r) for r in self.reference)
        result = Result(name, batch_size, timer.wall_seconds, tokens, exact, len(rows),
                        bookkeeping=timer.bookkeeping_share if timer.models else None, peak_memory_mb=peak,
                        threads=torch.get_num_threads())
        if stats:
            result.tokens_per_round = round(sum(s.tokens_per_round * s.row_rounds.sum() for s in stats)
                                            / max(1, sum(s.row_rounds.sum() for s in stats)), 3)
            result.target_calls = sum(s.target_forward_calls for s in stats)
            result.draft_calls = sum(s.draft_forward_calls for s in stats)
        return result

    # -- methods: each takes the prompts and returns (rows of new tokens trimmed at the first stop, stats) --
    def hf_greedy(self, batch_size, **generate_kwargs):
        """transformers' greedy on consecutive batches of `batch_size` prompts (at batch 1: the reference)."""
        def run(prompts, warmup):
            rows = []
            for chunk in _chunks(prompts, batch_size):
                ids, mask, width = left_pad(chunk, self.pad, self.device)
                out = self.target.generate(ids, attention_mask=mask, **self.common, **generate_kwargs)
                rows += self._rows_from(out, width, len(chunk))
            return rows, []
        run.compiled = "compile_config" in generate_kwargs
        return run

    def hf_assisted(self, num_assistant_tokens, threshold):
        """transformers' assisted generation with the draft, one prompt at a time (it refuses batch > 1), with a
        constant schedule of `num_assistant_tokens` and `threshold` (restored on the draft's config after)."""
        def run(prompts, warmup):
            config = self.draft.generation_config
            saved = (config.num_assistant_tokens, config.assistant_confidence_threshold,
                     config.num_assistant_tokens_schedule)
            config.num_assistant_tokens, config.assistant_confidence_threshold = num_assistant_tokens, threshold
            config.num_assistant_tokens_schedule = "constant"
            try:
                rows = []
                for p in prompts:
                    ids, mask, width = left_pad([p], self.pad, self.device)
                    out = self.target.generate(ids, attention_mask=mask, assistant_model=self.draft, **self.common)
                    rows += self._rows_from(out, width, 1)
                return rows, []
            finally:
                (config.num_assistant_tokens, config.assistant_confidence_threshold,
                 config.num_assistant_tokens_schedule) = saved
        return run

    def hf_batch_one(self, **source):
        """transformers' own assisted generation at batch 1 with a draft source of its own (prompt lookup, early
        exit, a draft with another tokenizer), one prompt at a time: the batch-1 baseline of our batched sources."""
        def run(prompts, warmup):
            rows = []
            for p in prompts:
                ids, mask, width = left_pad([p], self.pad, self.device)
                out = self.target.generate(ids, attention_mask=mask, **source, **self.common)
                rows += self._rows_from(out, width, 1)
            return rows, []
        return run

    def hf_continuous_batching(self, batch_size):
        """transformers' continuous batching (`generate_batch`), `batch_size` requests at a time."""
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        def run(prompts, warmup):
            config = GenerationConfig(**self.common)
            # sized explicitly: on a CPU transformers would otherwise plan its paged cache from a share of all RAM
            cb = ContinuousBatchingConfig(max_requests_per_batch=batch_size, num_blocks=256, max_batch_tokens=512)
            outputs = self.target.generate_batch(inputs=prompts, generation_config=config,
                                                 continuous_batching_config=cb, progress_bar=False)
            ordered = [outputs[key] for key in sorted(outputs, key=lambda k: int(k.split("_")[-1]))]
            return [_trim(list(o.generated_tokens), self.stops) for o in ordered], []
        return run

    def compile_config(self):
        """transformers' CompileConfig as its own generate uses it; on a CPU it compiles only when forced."""
        from transformers import CompileConfig

        config = CompileConfig()
        if not self.device.startswith("cuda"):
            config._compile_all_devices = True
        return config

    def hf_compiled_greedy(self, batch_size):
        """transformers' fastest greedy: a static cache (sized once for the longest prompt, so every chunk reuses
        one compiled step) and `compile_config`, as `generate` compiles it."""
        from transformers import GenerationConfig

        sizing = {}
        if hasattr(GenerationConfig(), "max_cache_len"):  # transformers >= 5.2x: one cache size for all chunks
            sizing["max_cache_len"] = max(len(p) for p in self.prompts) + self.max_new
        return self.hf_greedy(batch_size, cache_implementation="static", compile_config=self.compile_config(),
                              **sizing)

    def ours(self, strategy, batch_size, speculation="always", k=None, source=None, **generate_kwargs):
        """Ours, drafting from `source` (generate kwargs; default: the draft model with k drafts per round).
        `speculation=None` passes no `speculation` at all: the library's default, whatever it is at the time."""
        source = source or dict(assistant_model=self.draft, num_assistant_tokens=k or self.k)
        chosen = {} if speculation is None else dict(speculation=speculation)

        def run(prompts, warmup):
            kwargs = dict(batch_spec=strategy, **chosen, return_dict_in_generate=True, **source, **self.common,
                          **generate_kwargs)
            one = strategy == "exspec" and self.calls == "one"
            chunks = [prompts] if one else _chunks(prompts, batch_size)
            if strategy == "exspec":
                kwargs["max_batch_size"] = batch_size
            rows, stats = [], []
            for chunk in chunks:
                ids, mask, width = left_pad(chunk, self.pad, self.device)
                out = self.target.generate(ids, attention_mask=mask, **kwargs)
                rows += self._rows_from(out.sequences, width, len(chunk))
                stats.append(out.spec_stats)
            return rows, stats
        run.compiled = "compile_config" in generate_kwargs
        return run
