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
import json
import re
import textwrap
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import torch

from .profiling import ForwardTimer

BUNDLED_PAIR = Path(__file__).parent / "demo_pair"


class OurMethod(NamedTuple):
    """One of our rows. `speculation` None and `constant_k` False are the library's defaults: the argument is not
    passed at all, so the row shows what a user gets from a plain call (and follows the defaults when they change);
    the other rows pass `speculation` and `num_assistant_tokens=--k` explicitly, so they stay what they say."""
    name: str  # the --ours name
    row: str  # the method's name in the table and the JSON
    strategy: str  # batch_spec
    source: str  # the draft source: "draft" (--draft), "lookup", "early-exit", "other" (--other-draft), "mtp"
    speculation: str | None  # "always" (constant k), "auto", or None: not passed (the library's default)
    constant_k: bool  # num_assistant_tokens=--k passed (prompt lookup passes --lookup-tokens either way: HF needs it)
    compiled: bool  # --compile adds `<row>-compiled`, the same call with compile_config
    help: str


OUR_TABLE = (
    OurMethod("eqspec", "eqspec", "eqspec", "draft", "always", True, False, "every batch decoded together"),
    OurMethod("eqspec-realign", "eqspec-realign (paper's layout)", "eqspec-realign", "draft", "always", True, False,
              "the paper's left-padded layout, realigned every round"),
    OurMethod("exspec", "exspec", "exspec", "draft", "always", True, True, "the draft model, k=--k every round"),
    OurMethod("exspec-auto", "exspec-auto", "exspec", "draft", "auto", True, True, "speculation='auto', k <= --k"),
    OurMethod("exspec-lookup", "exspec-lookup", "exspec", "lookup", "always", True, False,
              "prompt lookup, no draft model"),
    OurMethod("exspec-early-exit", "exspec-early-exit", "exspec", "early-exit", "always", True, False,
              "the target's first --early-exit layers draft"),
    OurMethod("exspec-other-tokenizer", "exspec-other-tokenizer", "exspec", "other", "always", True, False,
              "--other-draft, a draft with a tokenizer of its own"),
    OurMethod("exspec-mtp", "exspec-mtp", "exspec", "mtp", "always", False, False,
              "use_mtp=True: --target's own MTP layers draft, one token each (needs a checkpoint that has them)"),
    OurMethod("exspec-default", "exspec-default", "exspec", "draft", None, False, True,
              "the draft model with the library's defaults: no num_assistant_tokens, no speculation"),
    OurMethod("exspec-lookup-default", "exspec-lookup-default", "exspec", "lookup", None, False, False,
              "prompt lookup with the defaults: prompt_lookup_num_tokens=--lookup-tokens, no speculation"),
    OurMethod("exspec-early-exit-default", "exspec-early-exit-default", "exspec", "early-exit", None, False, False,
              "early exit with the defaults"),
    OurMethod("exspec-other-default", "exspec-other-default", "exspec", "other", None, False, False,
              "--other-draft with the defaults"),
)
OURS = {method.name: method for method in OUR_TABLE}  # by --ours name
OUR_GROUPS = {"defaults": tuple(method.name for method in OUR_TABLE if method.speculation is None)}  # --ours aliases
# the HF baselines --methods can add besides greedy
BASELINES = ("assisted", "lookup", "early-exit", "uad", "cb", "mtp")
BUNDLED_OTHER_DRAFT = BUNDLED_PAIR / "draft_other_tokenizer"  # a draft with a tokenizer of its own
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


DRAFT_INITS = ("trained", "random")


def load_pair(target: str | None, draft: str | None, dtype: torch.dtype, device: str, draft_init: str = "trained"):
    """The target (with the mixin), the draft and the target's tokenizer. `draft_init="random"`: the draft's config
    with freshly initialised weights (seeded: torch.manual_seed(0), the same weights every run), a draft that
    rarely agrees with the target, to show what speculation costs when acceptance is low."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    import hf_batchspec

    if draft_init not in DRAFT_INITS:
        raise ValueError(f"draft_init must be one of {DRAFT_INITS}; got {draft_init!r}")
    target = target or str(BUNDLED_PAIR / "target")
    draft = draft or str(BUNDLED_PAIR / "draft")
    tokenizer = AutoTokenizer.from_pretrained(target)
    load = lambda path: AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()  # noqa: E731
    if draft_init == "trained":
        draft_model = load(draft)
    else:
        state = torch.random.get_rng_state()
        torch.manual_seed(0)
        try:
            draft_model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(draft), dtype=dtype)
        finally:
            torch.random.set_rng_state(state)  # the bench's own draws (none today) stay as they were
        try:  # its stop and pad ids, as the trained draft has them
            draft_model.generation_config = GenerationConfig.from_pretrained(draft)
        except OSError:
            pass
        draft_model = draft_model.to(device).eval()
    return hf_batchspec.enable(load(target)), draft_model, tokenizer


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def load_other_draft(path: str | None, dtype: torch.dtype, device: str):
    """A draft with a tokenizer of its own and that tokenizer (None when there is none to load)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = path or (str(BUNDLED_OTHER_DRAFT) if BUNDLED_OTHER_DRAFT.is_dir() else None)
    if path is None:
        return None
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return model, AutoTokenizer.from_pretrained(path)


def load_prompts(path: str | None, tokenizer, count: int) -> list[list[int]]:
    """Spec-Bench format (one JSON object per line, the prompt in `turns[0]`); the bundled code prompts by default."""
    if path is None:
        lines = resources.files("hf_batchspec").joinpath("data/code_prompts.jsonl").read_text().splitlines()
    else:
        lines = Path(path).read_text().splitlines()
    texts = [json.loads(line)["turns"][0] for line in lines if line.strip()][:count]
    return [tokenizer(text, add_special_tokens=False)["input_ids"] or [tokenizer.bos_token_id] for text in texts]


def _left_pad(prompts, pad_id, device):
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):], mask[row, width - len(p):] = torch.tensor(p), 1
    return ids.to(device), mask.to(device), width


def _chunks(prompts: list, size: int) -> list[list]:
    """Consecutive batches of `size` prompts, as batched greedy and eqspec take them."""
    return [prompts[start:start + size] for start in range(0, len(prompts), size)]


def _trim(tokens: list[int], stops: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in stops:
            return tokens[: i + 1]
    return tokens


class Bench:
    def __init__(self, target, draft, prompts, max_new_tokens, k, device, repeats=1):
        self.target, self.draft, self.prompts, self.device = target, draft, prompts, device
        self.max_new, self.k, self.repeats = max_new_tokens, k, repeats
        config = target.generation_config
        eos = config.eos_token_id
        self.stops = set([eos] if isinstance(eos, int) else eos or [])
        self.pad = config.pad_token_id if config.pad_token_id is not None else (min(self.stops) if self.stops else 0)
        self.common = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.pad,
                           eos_token_id=sorted(self.stops) or None)
        self.reference = None

    def _rows_from(self, out, width, count):
        return [_trim(out[row, width:].tolist(), self.stops) for row in range(count)]

    def _timed(self, name, batch_size, fn, spec=False) -> Result:
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
        def run(prompts, warmup):
            rows = []
            for chunk in _chunks(prompts, batch_size):
                ids, mask, width = _left_pad(chunk, self.pad, self.device)
                out = self.target.generate(ids, attention_mask=mask, **self.common, **generate_kwargs)
                rows += self._rows_from(out, width, len(chunk))
            return rows, []
        run.compiled = "compile_config" in generate_kwargs
        return run

    def hf_assisted(self, num_assistant_tokens, threshold):
        def run(prompts, warmup):
            config = self.draft.generation_config
            saved = (config.num_assistant_tokens, config.assistant_confidence_threshold,
                     config.num_assistant_tokens_schedule)
            config.num_assistant_tokens, config.assistant_confidence_threshold = num_assistant_tokens, threshold
            config.num_assistant_tokens_schedule = "constant"
            try:
                rows = []
                for p in prompts:
                    ids, mask, width = _left_pad([p], self.pad, self.device)
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
                ids, mask, width = _left_pad([p], self.pad, self.device)
                out = self.target.generate(ids, attention_mask=mask, **source, **self.common)
                rows += self._rows_from(out, width, 1)
            return rows, []
        return run

    def hf_continuous_batching(self, batch_size):
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
            chunks = [prompts] if strategy == "exspec" else _chunks(prompts, batch_size)
            if strategy == "exspec":
                kwargs["max_batch_size"] = batch_size
            rows, stats = [], []
            for chunk in chunks:
                ids, mask, width = _left_pad(chunk, self.pad, self.device)
                out = self.target.generate(ids, attention_mask=mask, **kwargs)
                rows += self._rows_from(out.sequences, width, len(chunk))
                stats.append(out.spec_stats)
            return rows, stats
        run.compiled = "compile_config" in generate_kwargs
        return run


def is_bundled_target(target: str | None) -> bool:
    """Whether `--target` is the bundled target, for which the bundled drafts were trained."""
    bundled = BUNDLED_PAIR / "target"
    return target is None or (Path(target).is_dir() and Path(target).resolve() == bundled.resolve())


def describe_setup(args, target, draft, prompts) -> dict:
    """What a saved run was measured with: enough to read its numbers (and re-run it) without the command line."""
    import datetime
    import platform

    import transformers

    import hf_batchspec

    return dict(
        target=args.target or "hf_batchspec/demo_pair/target",
        target_parameters=parameter_count(target),
        draft=args.draft or "hf_batchspec/demo_pair/draft",
        draft_init=args.draft_init, draft_parameters=parameter_count(draft),
        other_draft=args.other_draft or (f"hf_batchspec/demo_pair/{BUNDLED_OTHER_DRAFT.name}" if is_bundled_target(
            args.target) and BUNDLED_OTHER_DRAFT.is_dir() else None),  # None: its rows were skipped
        k=args.k, lookup_tokens=args.lookup_tokens, early_exit=args.early_exit, max_new_tokens=args.max_new_tokens,
        prompts=args.prompts or "hf_batchspec/data/code_prompts.jsonl", num_prompts=len(prompts),
        batch_sizes=list(args.batch_sizes), methods=list(args.methods), ours=list(args.ours),
        repeats=args.repeats, compile=args.compile, calibrate=args.calibrate, threads=torch.get_num_threads(),
        device=args.device, device_name=torch.cuda.get_device_name(torch.device(args.device))
        if args.device.startswith("cuda") else platform.processor() or platform.machine(),
        dtype=args.dtype, torch=torch.__version__, transformers=transformers.__version__,
        hf_batchspec=hf_batchspec.__version__, python=platform.python_version(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def setup_line(setup: dict) -> str:
    """The setup in one line: the plot's title and the line printed above the table."""
    millions = lambda n: f"{n / 1e6:.1f}M params" if n is not None else "size ?"  # noqa: E731
    draft = setup["draft"] + (", random init" if setup.get("draft_init") == "random" else "")
    return (f"target {setup['target']} ({millions(setup.get('target_parameters'))}), draft {draft} "
            f"({millions(setup.get('draft_parameters'))}); k={setup['k']}, max_new_tokens={setup['max_new_tokens']}, "
            f"{setup['num_prompts']} prompts ({setup['prompts']}); {setup['device']} {setup['dtype']}, "
            f"torch threads {setup['threads']}; torch {setup['torch']}, transformers {setup['transformers']}, "
            f"hf_batchspec {setup['hf_batchspec']}, {setup['date']}")


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
                  "scripts/train_demo_pair.py)")
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

    def source(method: OurMethod) -> dict:
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
    bench = Bench(target, draft, prompts, args.max_new_tokens, args.k, args.device, args.repeats)
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


def table(results: list[Result]) -> str:
    greedy = {r.batch_size: r.tokens_per_second for r in results if r.method.startswith("hf-greedy")}
    assisted = next((r.tokens_per_second for r in results if r.method.startswith("hf-assisted-b1 (k=")), None)
    lines = [f"{'method':<48}{'batch':>6}{'tok/s':>9}{'vs HF greedy':>13}{'vs HF assisted b1':>18}"
             f"{'tok/round':>10}{'calls t/d':>12}{'outside fwd':>12}{'exact':>9}{'warm-up s':>11}"]
    for r in results:
        vs_greedy = f"{r.tokens_per_second / greedy[r.batch_size]:.2f}x" if r.batch_size in greedy else "-"
        vs_assisted = f"{r.tokens_per_second / assisted:.2f}x" if assisted else "-"
        calls = f"{r.target_calls}/{r.draft_calls}" if r.target_calls is not None else "-"
        per_round = f"{r.tokens_per_round:.2f}" if r.tokens_per_round is not None else "-"
        lines.append(f"{r.method:<48}{r.batch_size:>6}{r.tokens_per_second:>9.0f}{vs_greedy:>13}{vs_assisted:>18}"
                     f"{per_round:>10}{calls:>12}{'-' if r.bookkeeping is None else f'{r.bookkeeping:.0%}':>12}"
                     f"{r.exact_rows:>5}/{r.rows:<3}"
                     f"{'-' if r.warmup_seconds is None else f'{r.warmup_seconds:.1f}':>11}")
    return "\n".join(lines)


# (colour, marker, line style) per method, keyed by the method's name with its k written "K". Line styles say what
# kind of row it is: transformers' batched baselines dashed, ours with a constant k solid, ours with the library's
# defaults dash-dot, compiled rows dotted, batch-1 references (flat lines across the axis) thin dots; colours keep a
# draft source's family (blue: the draft model, green: prompt lookup, orange: early exit, red: another tokenizer).
STYLES = {
    "hf-greedy": ("black", "o", "--"),
    "hf-continuous-batching": ("#8c564b", "v", "--"),
    "hf-compiled-greedy (static cache)": ("#7f7f7f", "s", ":"),
    "eqspec": ("#9467bd", "D", "-"),
    "eqspec-realign (paper's layout)": ("#e377c2", "d", "-"),
    "exspec": ("#1f77b4", "p", "-"),
    "exspec-auto": ("#17becf", "^", "-"),
    "exspec-lookup": ("#2ca02c", "<", "-"),
    "exspec-early-exit": ("#ff7f0e", "P", "-"),
    "exspec-other-tokenizer": ("#d62728", "X", "-"),
    "exspec-default": ("#08306b", "*", "-."),
    "exspec-lookup-default": ("#00441b", ">", "-."),
    "exspec-early-exit-default": ("#a63603", "8", "-."),
    "exspec-other-default": ("#67000d", "x", "-."),
    "exspec-compiled": ("#3f51b5", "h", ":"),
    "exspec-auto-compiled": ("#00838f", "H", ":"),
    "exspec-default-compiled": ("#6a1b9a", "+", ":"),
    "hf-assisted-b1 (defaults: k=K, threshold 0.4)": ("#b39ddb", "", (0, (1, 1.5))),
    "hf-assisted-b1 (k=K, threshold off)": ("#64b5f6", "", (0, (1, 1.5))),
    "hf-prompt-lookup-b1": ("#81c784", "", (0, (1, 1.5))),
    "hf-early-exit-b1": ("#ffb74d", "", (0, (1, 1.5))),
    "hf-universal-assisted-b1 (HF defaults)": ("#e57373", "", (0, (1, 1.5))),
}
FALLBACK_STYLES = [(color, marker, "-") for color, marker in zip(
    ["#bcbd22", "#393b79", "#637939", "#843c39", "#7b4173", "#ad494a"], "12348+")]  # a method not in STYLES


def style_key(method: str) -> str:
    return re.sub(r"k=\d+", "k=K", method)


def plot_styles(methods) -> dict[str, tuple]:
    """Each method's (colour, marker, line style): from STYLES, so a method looks the same in every plot; a method
    the table lacks takes the next fallback style, none shared with another method."""
    styles, spare = {}, iter(FALLBACK_STYLES)
    for method in dict.fromkeys(methods):
        styles[method] = STYLES.get(style_key(method)) or next(spare, ("#999999", "x", "-"))
    return styles


def figure(results: list[Result], setup: dict | None = None):
    """The bench's figure: throughput against batch size and the share of wall time outside model forwards, every
    line labelled, the setup in the title. A few batch sizes sit equally spaced, each tick its own size (a log axis
    would label 1, 2 as 10^0, 2x10^0); many go on a log axis ticked at the sizes themselves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    line = lambda r: "hf-greedy" if r.method == "hf-greedy-b1" else r.method  # noqa: E731 (b1 starts its line)
    sizes = sorted({r.batch_size for r in results})
    categorical = len(sizes) <= 8
    x = (lambda b: sizes.index(b)) if categorical else (lambda b: b)  # noqa: E731
    # transformers' batch-1-only baselines (assisted, prompt lookup, ...): a flat line each, across the axis
    flat = [r for r in results if r.method.startswith("hf-") and "-b1" in r.method and "greedy" not in r.method]
    curves = [m for m in dict.fromkeys(line(r) for r in results if r not in flat)]
    styles = plot_styles([line(r) for r in results])
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.2))
    for method in curves:
        color, marker, dashes = styles[method]
        points = sorted((x(r.batch_size), r.tokens_per_second) for r in results if line(r) == method)
        left.plot(*zip(*points), marker=marker, linestyle=dashes, color=color, label=method, markersize=6)
        bookkeeping = sorted((x(r.batch_size), 100 * r.bookkeeping) for r in results
                             if line(r) == method and r.bookkeeping is not None)
        if bookkeeping:
            right.plot(*zip(*bookkeeping), marker=marker, linestyle=dashes, color=color, label=method, markersize=6)
    for r in flat:
        color, _, dashes = styles[r.method]
        left.axhline(r.tokens_per_second, linestyle=dashes, color=color, linewidth=1.8, label=f"{r.method}, batch 1")
    for axis in (left, right):
        if categorical:
            axis.set_xticks(range(len(sizes)), [str(b) for b in sizes])
            axis.set_xlim(-0.3, len(sizes) - 0.7)
        else:
            axis.set_xscale("log")
            axis.xaxis.set_major_locator(FixedLocator(sizes))
            axis.xaxis.set_minor_locator(NullLocator())
            axis.set_xticklabels([str(b) for b in sizes])
        axis.set_xlabel("batch size (exspec: max_batch_size)")
        axis.grid(alpha=0.3)
    left.set(ylabel="tokens/s", title="throughput (the fastest of the timed runs)")
    left.set_ylim(bottom=0)
    right.set(ylabel="% of wall time outside model forwards", title="bookkeeping (everything but model forwards)")
    right.set_ylim(bottom=0)
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.93), fontsize=8, frameon=False)
    if setup:
        title = textwrap.fill(setup_line(setup), 150)
    else:
        threads = sorted({r.threads for r in results if r.threads is not None})
        title = ("setup not recorded (a JSON file from before the bench recorded it)"
                 + (f"; torch threads {'/'.join(map(str, threads))}" if threads else ""))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot(results: list[Result], path: str, setup: dict | None = None) -> None:
    fig = figure(results, setup)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)


def require_matplotlib(parser: argparse.ArgumentParser) -> None:
    """`--plot` needs matplotlib, an optional dependency: checked before anything runs, so a long run does not end
    in an ImportError with nothing plotted."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        parser.error('--plot needs matplotlib, which is not installed: pip install -e ".[bench]" (from a checkout) '
                     "or pip install matplotlib")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help; the description and epilog as written (their line breaks kept)."""

    def _get_help_string(self, action):
        if action.default is None:  # unset means "not used", or a default the help itself describes
            return action.help
        return super()._get_help_string(action)


K_HELP = ("drafts per row and round. 3 is a middle choice for the bundled pair: the best constant draft length "
          "measured is 4-5 at batch 1 to 8 and 2-3 at batch 32 (docs/results.md); the library's own default, 5, "
          "follows the paper: pass --k 5 to run with it")

TABLE_LEGEND = """\
columns of the table:
  method, batch      the method and its batch size (exspec: max_batch_size; "-b1": one prompt at a time;
                     "-default": the call with the library's defaults, no speculation and no num_assistant_tokens
                     passed; "-compiled": with compile_config)
  tok/s              tokens per wall second, the fastest of --repeats runs. Every method is credited the same
                     tokens: each row's new tokens through its first EOS, from the HF greedy batch-1 reference
  vs HF greedy       tok/s relative to HF greedy at the same batch size
  vs HF assisted b1  tok/s relative to HF assisted generation at batch 1 with k=--k, threshold off
                     ("-" without --methods assisted)
  tok/round          tokens a row gains per verify round: accepted drafts + the target's own token (ours only)
  calls t/d          target/draft forward calls, prefills included (ours only)
  outside fwd        share of wall time outside model forwards, i.e. the decoding loop's own bookkeeping
                     ("-" for compiled methods: timing hooks on a compiled forward would make it recompile)
  exact              rows equal to the HF greedy batch-1 reference (token ids through the first EOS) / rows
  warm-up s          the untimed first run: 2 prompts, or with --compile the compiled methods' full run
                     (compiling every shape they use)
"""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def batch_sizes(text: str) -> list[int]:
    """`--batch-sizes`: comma-separated positive integers, e.g. 1,2,4,8."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1 or len(set(sizes)) < len(sizes):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, each once, e.g. 1,2,4,8; "
                                         f"got {text!r}")
    return sizes


def name_list(choices: tuple[str, ...], option: str, groups: dict[str, tuple[str, ...]] | None = None):
    """The parser of an option taking comma-separated names from `choices` (an empty string for none); a name in
    `groups` stands for its names. Each name once, in the order given."""
    groups = groups or {}

    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in choices and name not in groups]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown method {', '.join(map(repr, unknown))} for {option}: expected "
                                             f"comma-separated names from {', '.join((*choices, *groups))}, "
                                             f"or '' for none")
        return list(dict.fromkeys(part for name in names for part in groups.get(name, (name,))))
    return parse


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=positive_int, default=torch.get_num_threads(), metavar="N",
                        help="torch CPU threads (torch.set_num_threads), set before the models load; the default is "
                             "torch's current count. More threads than free cores can be many times slower (on a "
                             "small or shared machine, try 1)")


def set_threads(threads: int) -> None:
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)


def header(device: str, dtype: str) -> str:
    """One line saying what the numbers below were measured on."""
    import transformers

    name = f" ({torch.cuda.get_device_name(torch.device(device))})" if device.startswith("cuda") else ""
    return (f"device {device}{name}, dtype {dtype}, torch threads {torch.get_num_threads()}, "
            f"torch {torch.__version__}, transformers {transformers.__version__}")


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Which models and prompts: shared by `bench` and `demo`."""
    parser.add_argument("--target", help="HF model id or local path (default: the bundled demo target)")
    parser.add_argument("--draft", help="HF model id or local path (default: the bundled demo draft)")
    parser.add_argument("--prompts", help="JSONL in Spec-Bench format (turns[0]); default: bundled code prompts")


def write_json(results: list[Result], path: str, setup: dict | None = None) -> None:
    """{"setup": what the run used, "results": one object per row}; `read_json` also reads the older bare list."""
    rows = [{**asdict(r), "tokens_per_second": r.tokens_per_second} for r in results]
    Path(path).write_text(json.dumps({"setup": setup or None, "results": rows}, indent=1))


def read_json(path: str) -> tuple[dict | None, list[Result]]:
    """A saved run's setup (None in files from before it was recorded: a bare list of rows) and its rows."""
    saved = json.loads(Path(path).read_text())
    setup, rows = (saved.get("setup"), saved["results"]) if isinstance(saved, dict) else (None, saved)
    fields = Result.__dataclass_fields__
    return setup, [Result(**{k: v for k, v in row.items() if k in fields}) for row in rows]


def parse_args(argv=None) -> argparse.Namespace:
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
    parser.add_argument("--methods", type=name_list(BASELINES, "--methods"),
                        default=",".join(name for name in BASELINES if name != "mtp"),
                        metavar="NAME,...",
                        help="HF baselines to run besides greedy, comma-separated, '' for none: assisted (assisted "
                             "generation at batch 1, with HF's defaults and with k=--k), lookup (prompt lookup "
                             "decoding at batch 1), early-exit (early-exit self-speculation at batch 1), uad "
                             "(universal assisted decoding: a draft with another tokenizer, at batch 1), cb "
                             "(continuous batching at each batch size), mtp (use_mtp=True at batch 1: a --target "
                             "whose checkpoint has MTP layers; not in the default)")
    # by default every row the bundled pair can run (exspec-mtp needs a --target whose checkpoint has MTP layers)
    parser.add_argument("--ours", type=name_list(tuple(OURS), "--ours", OUR_GROUPS),
                        default=",".join(name for name, method in OURS.items() if method.source != "mtp"),
                        metavar="NAME,...",
                        help="our methods to run, comma-separated: " + "; ".join(
                            f"{m.name} ({m.help})" for m in OUR_TABLE) + ". The -default rows make the call a user "
                        "makes with no num_assistant_tokens and no speculation argument (the library's defaults, "
                        "whatever they are); the others pass speculation and num_assistant_tokens=--k explicitly, "
                        "so they stay constant-k rows (exspec-auto: speculation='auto'). 'defaults' selects all "
                        "four -default rows. With --compile, " + ", ".join(m.name for m in OUR_TABLE if m.compiled)
                        + " also run compiled (<name>-compiled)")
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
