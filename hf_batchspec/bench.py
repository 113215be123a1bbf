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
import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch

from .profiling import ForwardTimer

BUNDLED_PAIR = Path(__file__).parent / "demo_pair"
OURS = ("eqspec", "eqspec-realign (paper's layout)", "exspec", "exspec-auto", "exspec-lookup", "exspec-early-exit",
        "exspec-other-tokenizer")
OUR_METHODS = ("eqspec", "eqspec-realign", "exspec", "exspec-auto", "exspec-lookup", "exspec-early-exit",
               "exspec-other-tokenizer")  # --ours names (with --compile, exspec's compiled rows come with exspec
# and exspec-auto)
BASELINES = ("assisted", "lookup", "early-exit", "uad", "cb")  # the HF baselines --methods can add besides greedy
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


def load_pair(target: str | None, draft: str | None, dtype: torch.dtype, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_batchspec

    target = target or str(BUNDLED_PAIR / "target")
    draft = draft or str(BUNDLED_PAIR / "draft")
    tokenizer = AutoTokenizer.from_pretrained(target)
    load = lambda path: AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()  # noqa: E731
    return hf_batchspec.enable(load(target)), load(draft), tokenizer


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
        """Ours, drafting from `source` (generate kwargs; default: the draft model with k drafts per round)."""
        source = source or dict(assistant_model=self.draft, num_assistant_tokens=k or self.k)

        def run(prompts, warmup):
            kwargs = dict(batch_spec=strategy, speculation=speculation, return_dict_in_generate=True, **source,
                          **self.common, **generate_kwargs)
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


def run_bench(args, on_batch_size=None) -> list[Result]:
    """Every planned method at every batch size; `on_batch_size(results so far)` after each batch size, so a run
    cut short (a time limit) still leaves what it measured."""
    from tqdm.auto import tqdm

    dtype = DTYPES[args.dtype]
    target, draft, tokenizer = load_pair(args.target, args.draft, dtype, args.device)
    prompts = load_prompts(args.prompts, tokenizer, args.num_prompts)
    bench = Bench(target, draft, prompts, args.max_new_tokens, args.k, args.device, args.repeats)
    cost = compiled_cost = "auto"
    if args.calibrate:  # once, before anything is timed, as a deployment would
        from .profiling import calibrate

        cost = calibrate(target, draft, rows=max(args.batch_sizes))
        print(f"calibrated: {cost}")
        if args.compile:  # the compiled rows' auto decides with the compiled forwards' costs
            compiled_cost = calibrate(target, draft, rows=max(args.batch_sizes), compile_config=bench.compile_config())
            print(f"calibrated (compiled): {compiled_cost}")
    plan = [("hf-greedy-b1", 1, bench.hf_greedy(1), False)]
    if "assisted" in args.methods:
        plan += [("hf-assisted-b1 (defaults: k=20, threshold 0.4)", 1, bench.hf_assisted(20, 0.4), True),
                 (f"hf-assisted-b1 (k={args.k}, threshold off)", 1, bench.hf_assisted(args.k, 0.0), True)]
    other = None
    if "uad" in args.methods or "exspec-other-tokenizer" in args.ours:
        loaded = load_other_draft(args.other_draft, DTYPES[args.dtype], args.device)
        if loaded is None:
            print("no draft with another tokenizer (--other-draft; the bundled one is made by "
                  "scripts/train_demo_pair.py): its rows are skipped")
        else:
            other = dict(assistant_model=loaded[0], tokenizer=tokenizer, assistant_tokenizer=loaded[1])
    if other is not None and "uad" in args.methods:
        plan.append(("hf-universal-assisted-b1 (HF defaults)", 1, bench.hf_batch_one(**other), False))
    lookup = dict(prompt_lookup_num_tokens=args.lookup_tokens)
    early_exit = dict(assistant_early_exit=args.early_exit, num_assistant_tokens=args.k)
    if "lookup" in args.methods:
        plan.append(("hf-prompt-lookup-b1", 1, bench.hf_batch_one(**lookup), False))
    if "early-exit" in args.methods:
        plan.append(("hf-early-exit-b1", 1, bench.hf_batch_one(assistant_early_exit=args.early_exit), False))
    for b in args.batch_sizes:
        if b > 1:
            plan.append(("hf-greedy", b, bench.hf_greedy(b), False))
        if "cb" in args.methods:
            plan.append(("hf-continuous-batching", b, bench.hf_continuous_batching(b), False))
        if args.compile:
            plan.append(("hf-compiled-greedy (static cache)", b, bench.hf_compiled_greedy(b), False))
        ours = {"eqspec": bench.ours("eqspec", b), "eqspec-realign (paper's layout)": bench.ours("eqspec-realign", b),
                "exspec": bench.ours("exspec", b), "exspec-auto": bench.ours("exspec", b, cost),
                "exspec-lookup": bench.ours("exspec", b, source=lookup),
                "exspec-early-exit": bench.ours("exspec", b, source=early_exit)}
        if other is not None:
            ours["exspec-other-tokenizer"] = bench.ours("exspec", b, source=dict(**other, num_assistant_tokens=args.k))
        if args.compile:
            ours["exspec-compiled"] = bench.ours("exspec", b, compile_config=bench.compile_config())
            ours["exspec-auto-compiled"] = bench.ours("exspec", b, compiled_cost, compile_config=bench.compile_config())
        plan += [(name, b, fn, True) for name, fn in ours.items() if name.split(" ")[0].removesuffix("-compiled")
                 in args.ours]
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


def plot(results: list[Result], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from error
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    line = lambda r: "hf-greedy" if r.method == "hf-greedy-b1" else r.method  # noqa: E731 (b1 starts its line)
    colors = {method: f"C{i}" for i, method in enumerate(dict.fromkeys(line(r) for r in results))}
    for method in dict.fromkeys(line(r) for r in results if r.batch_size > 1 or r.method in OURS):
        points = sorted((r.batch_size, r.tokens_per_second) for r in results if line(r) == method)
        left.plot(*zip(*points), marker="o", label=method, color=colors[method])
    for r in results:
        if r.batch_size == 1 and r.method.startswith("hf-") and "greedy" not in r.method:
            left.axhline(r.tokens_per_second, linestyle=":", color="grey")
    left.set(xscale="log", xlabel="batch size", ylabel="tokens/s", title="throughput")
    left.legend(fontsize=7)
    for method in dict.fromkeys(line(r) for r in results if r.method in OURS or line(r) == "hf-greedy"):
        points = sorted((r.batch_size, 100 * r.bookkeeping) for r in results
                        if line(r) == method and r.bookkeeping is not None)
        right.plot(*zip(*points), marker="o", label=method, color=colors[method])
    right.set(xscale="log", xlabel="batch size", ylabel="% of wall time outside model forwards",
              title="bookkeeping (everything but model forwards)")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


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
  method, batch      the method and its batch size (exspec: max_batch_size; "-b1": one prompt at a time)
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


def name_list(choices: tuple[str, ...], option: str):
    """The parser of an option taking comma-separated names from `choices` (an empty string for none)."""
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown method {', '.join(map(repr, unknown))} for {option}: expected "
                                             f"comma-separated names from {', '.join(choices)}, or '' for none")
        return names
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


def write_json(results: list[Result], path: str) -> None:
    Path(path).write_text(json.dumps([{**asdict(r), "tokens_per_second": r.tokens_per_second} for r in results],
                                     indent=1))


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
    parser.add_argument("--methods", type=name_list(BASELINES, "--methods"), default=",".join(BASELINES),
                        metavar="NAME,...",
                        help="HF baselines to run besides greedy, comma-separated, '' for none: assisted (assisted "
                             "generation at batch 1, with HF's defaults and with k=--k), lookup (prompt lookup "
                             "decoding at batch 1), early-exit (early-exit self-speculation at batch 1), uad "
                             "(universal assisted decoding: a draft with another tokenizer, at batch 1), cb "
                             "(continuous batching at each batch size)")
    parser.add_argument("--ours", type=name_list(OUR_METHODS, "--ours"), default=",".join(OUR_METHODS),
                        metavar="NAME,...",
                        help="our methods to run, comma-separated: eqspec, eqspec-realign (the paper's layout), "
                             "exspec, exspec-auto (speculation='auto'), exspec-lookup (prompt lookup, no draft "
                             "model), exspec-early-exit (the target's first --early-exit layers draft), "
                             "exspec-other-tokenizer (--other-draft); with --compile, exspec and exspec-auto also "
                             "run compiled")
    parser.add_argument("--other-draft", metavar="PATH",
                        help="a draft with a tokenizer of its own (model and tokenizer in one directory) for uad and "
                             "exspec-other-tokenizer (default: the bundled one)")
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
    parser.add_argument("--plot", help="write a PNG (throughput vs batch size; time breakdown)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--from-json", help="print (and --plot) a saved run instead of running one")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.from_json:
        fields = Result.__dataclass_fields__
        results = [Result(**{k: v for k, v in row.items() if k in fields})
                   for row in json.loads(Path(args.from_json).read_text())]
        threads = sorted({r.threads for r in results if r.threads is not None})
        print(f"results from {args.from_json}, torch threads {'/'.join(map(str, threads)) or 'not recorded'}")
    else:
        set_threads(args.threads)  # before the models load
        print(header(args.device, args.dtype), flush=True)
        results = run_bench(args, on_batch_size=lambda so_far: write_json(so_far, args.json) if args.json else None)
    print(table(results))
    if args.json:
        write_json(results, args.json)
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
