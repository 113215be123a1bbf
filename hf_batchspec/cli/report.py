"""What a bench run reports: the table (and its legend), the figure, the JSON file and the setup it records, so that
a saved run can be read (and re-run) without its command line."""

from __future__ import annotations

import argparse
import json
import re
import textwrap
from dataclasses import asdict
from pathlib import Path

import torch

from .harness import Result
from .loaders import BUNDLED_OTHER_DRAFT, is_bundled_target, parameter_count

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



def header(device: str, dtype: str) -> str:
    """One line saying what the numbers below were measured on."""
    import transformers

    name = f" ({torch.cuda.get_device_name(torch.device(device))})" if device.startswith("cuda") else ""
    return (f"device {device}{name}, dtype {dtype}, torch threads {torch.get_num_threads()}, "
            f"torch {torch.__version__}, transformers {transformers.__version__}")


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
        repeats=args.repeats, calls=args.calls, compile=args.compile, calibrate=args.calibrate,
        threads=torch.get_num_threads(),
        device=args.device, device_name=torch.cuda.get_device_name(torch.device(args.device))
        if args.device.startswith("cuda") else platform.processor() or platform.machine(),
        dtype=args.dtype, torch=torch.__version__, transformers=transformers.__version__,
        hf_batchspec=hf_batchspec.__version__, python=platform.python_version(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def setup_line(setup: dict) -> str:
    """The setup in one line: the plot's title and the line printed above the table."""
    millions = lambda n: f"{n / 1e6:.1f}M params" if n is not None else "size ?"  # noqa: E731
    draft = setup["draft"] + (", random init" if setup.get("draft_init") == "random" else "")
    calls = ", ours one call per batch" if setup.get("calls") == "per-batch" else ""
    return (f"target {setup['target']} ({millions(setup.get('target_parameters'))}), draft {draft} "
            f"({millions(setup.get('draft_parameters'))}); k={setup['k']}, max_new_tokens={setup['max_new_tokens']}, "
            f"{setup['num_prompts']} prompts ({setup['prompts']}{calls}); {setup['device']} {setup['dtype']}, "
            f"torch threads {setup['threads']}; torch {setup['torch']}, transformers {setup['transformers']}, "
            f"hf_batchspec {setup['hf_batchspec']}, {setup['date']}")


def table(results: list[Result]) -> str:
    """The printed table, one line per result; its columns are described in TABLE_LEGEND (the bench's -h)."""
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
    """The method's key in STYLES: its k written "K", so a row looks the same at any --k."""
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
    """`figure` written to `path` (a PNG), then closed: a long session plotting many runs keeps no figures."""
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
