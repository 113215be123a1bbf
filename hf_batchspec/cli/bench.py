"""`python -m hf_batchspec bench`: every decoding method side by side, on the same prompts and models.

Each method generates for the same prompts, with the same models, stop ids and `max_new_tokens`. The token
count every method is credited with is the same: each row's new tokens up to and including its first stop,
from the batch-1 greedy reference (so a method cannot look faster by generating past EOS). Wall time is
measured here, around whole calls, after an untimed warm-up, as the fastest of `--repeats` runs (on a shared
machine other processes only ever add time); time inside model forwards comes from
`profiling.ForwardTimer`, from outside the decode loop.
"""

from __future__ import annotations

import argparse
import sys

import torch

from ..profiling import ForwardTimer
from .args import (DTYPES, K_HELP, HelpFormatter, add_source_arguments, add_threads_argument, batch_sizes, name_list,
                   positive_int, set_threads)
from .harness import Bench, Result
from .loaders import DRAFT_INITS, is_bundled_target, load_other_draft, load_pair, load_prompts, parameter_count
from .methods import BASELINES, OUR_GROUPS, OURS, Method, default_names, described
from .report import (TABLE_LEGEND, describe_setup, header, plot, read_json, require_matplotlib, setup_line, table,
                     write_json)


def plan_runs(args, bench: Bench, tokenizer, cost="auto", compiled_cost="auto", setup: dict | None = None) -> list:
    """What `run_bench` will run, in order: [(method, batch size, run, uses the draft)]. Builds the calls only; nothing
    generates here (the other-tokenizer draft is loaded, or its rows skipped with a line saying why)."""
    plan = [("hf-greedy-b1", 1, bench.hf_greedy(1), False)]
    if "assisted" in args.methods:
        plan += [("hf-assisted-b1 (defaults: k=20, threshold 0.4)", 1, bench.hf_assisted(20, 0.4), True),
                 (f"hf-assisted-b1 (k={args.k}, threshold off)", 1, bench.hf_assisted(args.k, 0.0), True)]
    ours = [OURS[name] for name in args.ours]
    other = None
    if "uad" in args.methods or any(method.source == "other" for method in ours):
        rows = ", ".join(["uad"] * ("uad" in args.methods) + [m.name for m in ours if m.source == "other"])
        if args.other_draft is None and not is_bundled_target(args.target):
            print(f"skipped {rows}: the bundled draft with another tokenizer was trained for the bundled target, "
                  f"not for --target {args.target}; pass --other-draft PATH (a draft for this target) to run them")
        elif (loaded := load_other_draft(args.other_draft, DTYPES[args.dtype], args.device)) is None:
            print(f"skipped {rows}: no draft with another tokenizer (--other-draft; the bundled one is made by "
                  "scripts/train_demo_pair)")
        else:
            other = dict(assistant_model=loaded[0], tokenizer=tokenizer, assistant_tokenizer=loaded[1])
            if setup is not None:
                setup["other_draft_parameters"] = parameter_count(loaded[0])
    if other is not None and "uad" in args.methods:
        plan.append(("hf-universal-assisted-b1 (HF defaults)", 1, bench.hf_batch_one(**other), False))
    if "lookup" in args.methods:
        plan.append(("hf-prompt-lookup-b1", 1, bench.hf_batch_one(prompt_lookup_num_tokens=args.lookup_tokens), False))
    if "early-exit" in args.methods:
        plan.append(("hf-early-exit-b1", 1, bench.hf_batch_one(assistant_early_exit=args.early_exit), False))
    if "mtp" in args.methods:
        plan.append(("hf-mtp-b1", 1, bench.hf_batch_one(use_mtp=True), False))

    def source(method: Method) -> dict:
        """The draft source's generate kwargs: num_assistant_tokens=--k only on a constant-k row."""
        k = dict(num_assistant_tokens=args.k) if method.constant_k else {}
        return {"draft": lambda: dict(assistant_model=bench.draft, **k),
                "lookup": lambda: dict(prompt_lookup_num_tokens=args.lookup_tokens),  # HF needs it, defaults or not
                "early-exit": lambda: dict(assistant_early_exit=args.early_exit, **k),
                "mtp": lambda: dict(use_mtp=True),  # k is the number of MTP layers
                "other": lambda: dict(**other, **k)}[method.source]()

    runnable = [m for m in ours if m.source != "other" or other is not None]
    for b in args.batch_sizes:
        if b > 1:
            plan.append(("hf-greedy", b, bench.hf_greedy(b), False))
        if "cb" in args.methods:
            plan.append(("hf-continuous-batching", b, bench.hf_continuous_batching(b), False))
        if args.compile:
            plan.append(("hf-compiled-greedy (static cache)", b, bench.hf_compiled_greedy(b), False))
        for method in runnable:
            speculation = cost if method.speculation == "auto" else method.speculation
            plan.append((method.row, b, bench.ours(method.strategy, b, speculation, source=source(method)), True))
        for method in [m for m in runnable if m.compiled] if args.compile else ():
            speculation = compiled_cost if method.speculation == "auto" else method.speculation
            plan.append((method.row + "-compiled", b, bench.ours(method.strategy, b, speculation, source=source(method),
                                                                 compile_config=bench.compile_config()), True))
    return plan


def run_bench(args, on_batch_size=None, setup: dict | None = None) -> list[Result]:
    """Every planned method at every batch size; `on_batch_size(results so far)` after each batch size, so a run
    cut short (a time limit) still leaves what it measured. A `setup` dict is filled in with what the run used
    (`describe_setup`) once the models are loaded, before anything is timed, so each partial write records it."""
    from tqdm.auto import tqdm

    dtype = DTYPES[args.dtype]
    target, draft, tokenizer = load_pair(args.target, args.draft, dtype, args.device, args.draft_init)
    prompts = load_prompts(args.prompts, tokenizer, args.num_prompts)
    if setup is not None:
        setup.update(describe_setup(args, target, draft, prompts))
        print(setup_line(setup), flush=True)
    bench = Bench(target, draft, prompts, args.max_new_tokens, args.k, args.device, args.repeats, args.calls)
    cost = compiled_cost = "auto"
    if args.calibrate:  # once, before anything is timed, as a deployment would
        from .profiling import calibrate

        cost = calibrate(target, draft, rows=max(args.batch_sizes))
        print(f"calibrated: {cost}")
        if args.compile:  # the compiled rows' auto decides with the compiled forwards' costs
            compiled_cost = calibrate(target, draft, rows=max(args.batch_sizes), compile_config=bench.compile_config())
            print(f"calibrated (compiled): {compiled_cost}")
    plan = plan_runs(args, bench, tokenizer, cost, compiled_cost, setup)
    results, groups = [], {}  # HF greedy at batch 1 comes first: its rows are the reference
    for name, b, fn, spec in plan:
        groups.setdefault(b, []).append((name, fn, spec))
    for b, methods in tqdm(groups.items(), desc="bench (batch sizes)", disable=args.quiet):
        if args.compile:  # each batch size's warm-up compiles its own shapes, from nothing
            torch._dynamo.reset()
        runnable, warmups = [], []
        for method in methods:  # a baseline that cannot run here is reported, not fatal
            # untimed first-call costs; a compiled method warms up on the timed shapes (its compile time)
            prompts = bench.prompts if getattr(method[1], "compiled", False) else bench.prompts[:2]
            try:
                with ForwardTimer() as clock:
                    method[1](prompts, warmup=True)
                runnable.append(method)
                warmups.append(clock.wall_seconds)
            except Exception as error:
                print(f"{method[0]} (batch {b}) failed: {type(error).__name__}: {error}")
        measured = bench.compare(runnable, b, warmed=True)
        for result, warmup in zip(measured, warmups):
            result.warmup_seconds = round(warmup, 2)
        results += measured
        if on_batch_size is not None:
            on_batch_size(results)
    if args.compile and args.device.startswith("cuda"):
        from torch._dynamo.utils import counters

        print(f"inductor: {counters['inductor'].get('cudagraph_skips', 0)} compiled graph(s) ran without CUDA graphs")
    return results


def parse_args(argv=None) -> argparse.Namespace:
    """The bench's options; `--plot` without matplotlib is refused here, before anything loads."""
    parser = argparse.ArgumentParser(prog="hf-batchspec bench", description=__doc__.split("\n\n")[0],
                                     epilog=TABLE_LEGEND, formatter_class=HelpFormatter)
    add_source_arguments(parser)
    parser.add_argument("--num-prompts", type=int, default=32, help="how many prompts to take, from the first")
    parser.add_argument("--batch-sizes", type=batch_sizes, default="1,2,4,8,16,32", metavar="B,B,...",
                        help="batch sizes to run ours and batched HF at: comma-separated positive integers, "
                             "e.g. 1,2,4,8")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="new tokens per prompt at most")
    parser.add_argument("--k", type=positive_int, default=3, metavar="K",
                        help="num_assistant_tokens (k) for ours and for HF assisted: " + K_HELP)
    parser.add_argument("--methods", type=name_list(tuple(BASELINES), "--methods"), default=default_names(BASELINES),
                        metavar="NAME,...",
                        help="HF baselines to run besides greedy, comma-separated, '' for none: "
                             + described(BASELINES, ", "))
    # by default every row the bundled pair can run (exspec-mtp needs a --target whose checkpoint has MTP layers)
    parser.add_argument("--ours", type=name_list(tuple(OURS), "--ours", OUR_GROUPS), default=default_names(OURS),
                        metavar="NAME,...",
                        help="our methods to run, comma-separated: " + described(OURS, "; ") + ". The -default rows make the call a user "
                        "makes with no num_assistant_tokens and no speculation argument (the library's defaults, "
                        "whatever they are); the others pass speculation and num_assistant_tokens=--k explicitly, "
                        "so they stay constant-k rows (exspec-auto: speculation='auto'). 'defaults' selects all "
                        "four -default rows. With --compile, " + ", ".join(m.name for m in OURS.values() if m.compiled)
                        + " also run compiled (<name>-compiled)")
    parser.add_argument("--calls", choices=("one", "per-batch"), default="one",
                        help="how our exspec rows take the prompts: one call over all of them with max_batch_size = "
                             "the batch (a freed slot takes the next prompt), or per-batch: one generate per batch of "
                             "prompts, as a user looping over batches calls it (at batch 1, one prompt per call)")
    parser.add_argument("--other-draft", metavar="PATH",
                        help="a draft with a tokenizer of its own (model and tokenizer in one directory) for uad and "
                             "the exspec-other rows. Default: the bundled one, but only with the bundled target: "
                             "it was trained for that target, so with another --target those rows are skipped "
                             "(and a line says so) unless --other-draft is given")
    parser.add_argument("--draft-init", choices=DRAFT_INITS, default="trained",
                        help="random: the draft's config (--draft's, or the bundled draft's) with freshly "
                             "initialised weights, seeded with torch.manual_seed(0): a draft that rarely agrees "
                             "with the target (low acceptance), to show what speculation costs when it does not "
                             "pay. Rows stay exact either way")
    parser.add_argument("--lookup-tokens", type=positive_int, default=10, metavar="K",
                        help="prompt_lookup_num_tokens for prompt lookup, HF's at batch 1 and ours (exspec-lookup)")
    parser.add_argument("--early-exit", type=positive_int, default=2, metavar="N",
                        help="assistant_early_exit: the target's first N layers draft (HF's at batch 1 and ours, "
                             "exspec-early-exit, with k=--k)")
    parser.add_argument("--compile", action="store_true",
                        help="also run transformers' static-cache compiled greedy and ours with compile_config "
                             "(torch.compile; on CPU forced with CompileConfig._compile_all_devices), each warmed "
                             "up on the timed shapes")
    parser.add_argument("--calibrate", action="store_true",
                        help="exspec-auto with a cost model measured here (hf_batchspec.calibrate) instead of the "
                             "estimate speculation='auto' uses")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="the models' dtype")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    add_threads_argument(parser)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method; the fastest counts")
    parser.add_argument("--json", help="write the results here (JSON; --from-json reads it back)")
    parser.add_argument("--plot", help="write a PNG (throughput vs batch size; time breakdown); needs matplotlib: "
                                       'pip install -e ".[bench]"')
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--whisper", action="store_true",
                        help="bench Whisper instead (batched speculative transcription; `--whisper -h` for its "
                             "options)")
    parser.add_argument("--from-json", help="print (and --plot) a saved run instead of running one; reads files "
                                            "with a setup and the older ones without")
    args = parser.parse_args(argv)
    if args.plot:
        require_matplotlib(parser)
    return args


def main(argv=None) -> None:
    """`hf-batchspec bench`: run (or, with --from-json, read back) and print the table; --json and --plot write it."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--whisper" in argv:  # speech: its own rows and table (`whisper_bench`)
        from .whisper_bench import main as whisper_main

        return whisper_main([arg for arg in argv if arg != "--whisper"])
    args = parse_args(argv)
    if args.from_json:
        setup, results = read_json(args.from_json)
        threads = sorted({r.threads for r in results if r.threads is not None})
        print(f"results from {args.from_json}, torch threads {'/'.join(map(str, threads)) or 'not recorded'}")
        print(setup_line(setup) if setup else "setup not recorded (a file from before the bench recorded it)")
    else:
        set_threads(args.threads)  # before the models load
        print(header(args.device, args.dtype), flush=True)
        setup = {}
        results = run_bench(args, on_batch_size=lambda so_far: write_json(so_far, args.json, setup) if args.json
                            else None, setup=setup)
    print(table(results))
    if args.json:
        write_json(results, args.json, setup)
    if args.plot:
        plot(results, args.plot, setup)


if __name__ == "__main__":
    main()
