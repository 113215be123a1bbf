"""Time one decode forward of the bundled target: ours (eager and compiled, static shapes) beside transformers'
own static-cache step (eager and compiled), and ours compiled without its cache write.

Why: a compiled round is as fast as its forwards; this times one forward alone, beside transformers' own
compiled step, and shows what the cache write costs under compile (it once made our compiled step slower than
eager, when inductor functionalised it into a copy of the cache).
Usage: `python scripts/compiled_step.py [--rows 8] [--width 1] [--threads 1] [--model target|draft]`.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import CompileConfig, StaticCache

from hf_batchspec import RaggedLayer, compat
from hf_batchspec.cli.loaders import load_pair
from hf_batchspec.runner import ModelRunner

PROMPT, SLOTS = 40, 128


def per_call_ms(fn, repeats: int = 30) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def ours(model, rows: int, width: int, compile_config) -> float:
    runner = ModelRunner(model, rows, SLOTS, compile_config=compile_config, static=True)
    tokens = torch.randint(3, 100, (rows, PROMPT))
    runner.forward(tokens, torch.arange(PROMPT).expand(rows, PROMPT), torch.full((rows,), SLOTS - 1), PROMPT,
                   prefill=True)
    positions = (torch.arange(width) + PROMPT).expand(rows, width)
    limit = torch.full((rows,), SLOTS - 1)
    return per_call_ms(lambda: runner.forward(tokens[:, :width], positions, limit, PROMPT + width))


def transformers_step(model, rows: int, width: int, compile_config) -> float:
    cache = StaticCache(config=model.config, max_cache_len=SLOTS)
    tokens = torch.randint(3, 100, (rows, PROMPT))
    name = compat.cache_kwarg(model)  # `cache` from transformers 5.24 (`past_key_values` is deprecated there)
    model(input_ids=tokens, **{name: cache}, use_cache=True)
    call = model.get_compiled_call(compile_config) if compile_config else model

    def step():
        for layer in cache.layers:  # the same position every time (transformers' layers count what they wrote)
            if hasattr(layer, "cumulative_length"):
                layer.cumulative_length.fill_(PROMPT)
        return call(input_ids=tokens[:, :width], **{name: cache}, use_cache=True,
                    position_ids=(torch.arange(width) + PROMPT).expand(rows, width),
                    cache_position=torch.arange(width) + PROMPT)
    return per_call_ms(step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--width", type=int, default=1, help="query tokens per row (1: a step; k+1: a verify)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", choices=("target", "draft"), default="target", help="which bundled model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    target, draft, _ = load_pair(None, None, torch.float32, "cpu")
    target = target if args.model == "target" else draft
    config = CompileConfig(mode="default")
    with torch.no_grad():
        print(f"bundled {args.model}, {args.rows} rows x {args.width} tokens, {SLOTS} cache slots, "
              f"{args.threads} thread(s): ms per forward")
        print(f"  ours, eager (static shapes)       {ours(target, args.rows, args.width, None):7.2f}")
        print(f"  ours, compiled                    {ours(target, args.rows, args.width, config):7.2f}")
        print(f"  transformers StaticCache, eager   {transformers_step(target, args.rows, args.width, None):7.2f}")
        print(f"  transformers StaticCache, compiled {transformers_step(target, args.rows, args.width, config):6.2f}")
        update = RaggedLayer.update

        def without_write(self, key_states, value_states, *args, **kwargs):  # wrong output: timing only
            if not self.is_initialized:
                return update(self, key_states, value_states, *args, **kwargs)
            kv_len = self.get_seq_length()  # the slots this forward attends over
            return self.keys[:, :, :kv_len], self.values[:, :, :kv_len]
        RaggedLayer.update = without_write
        try:
            del target._compiled_call  # compile afresh with the patched update
            print(f"  ours, compiled, cache write removed (wrong output, timing only)"
                  f"{ours(target, args.rows, args.width, CompileConfig(mode='default', dynamic=False)):7.2f}")
        finally:
            RaggedLayer.update = update


if __name__ == "__main__":
    main()
