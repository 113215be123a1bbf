"""The command line: help, usage errors and option checks. Nothing here loads a model.

Two tests run `python -m hf_batchspec` in a subprocess (the exit status a shell sees); the rest call the same
`main` in-process, which is faster (one import of torch and transformers for all of them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_batchspec.cli import main

ROOT = Path(__file__).resolve().parents[1]

LEGEND = ("tok/s", "vs HF greedy", "vs HF assisted b1", "tok/round", "calls t/d", "prefills included", "outside fwd",
          "bookkeeping", "exact", "HF greedy batch-1 reference")


def run(*args):
    env = {**os.environ, "COLUMNS": "100"}  # argparse wraps help at the terminal's width
    return subprocess.run([sys.executable, "-m", "hf_batchspec", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.fixture(autouse=True)
def wide_help(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps help at the terminal's width, even inside words like "a-b"


@pytest.fixture
def no_models(monkeypatch):
    """Loading a model fails the test: options these tests pass must be refused (or --help answered) first."""
    import hf_batchspec.cli.bench
    import hf_batchspec.cli.demo

    def load_pair(*args, **kwargs):
        raise AssertionError("the command line was accepted and went on to load models")

    for module in (hf_batchspec.cli.bench, hf_batchspec.cli.demo):
        monkeypatch.setattr(module, "load_pair", load_pair)


def exit_code(argv, capsys) -> tuple[int, str, str]:
    """`main(argv)`'s exit status (0 if it returns), stdout and stderr."""
    try:
        main(argv)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_help_exits_zero_and_names_both_commands():
    result = run("--help")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage" in result.stdout
    lines = result.stdout.splitlines()
    for command, words in (("bench", "side by side"), ("demo", "bundled pair")):  # each with its one-line summary
        assert any(line.split()[:1] == [command] and words in line for line in lines), result.stdout


def test_unknown_command_is_refused():
    result = run("train")
    assert result.returncode == 2 and "usage" in result.stderr and "bench" in result.stderr, result.stderr


def test_short_help_and_no_command(capsys):
    code, out, _ = exit_code(["-h"], capsys)
    assert code == 0 and "bench" in out and "demo" in out
    code, out, err = exit_code([], capsys)
    assert code == 2 and "usage" in err and not out


def test_bench_help_shows_defaults_formats_methods_and_legend(capsys, no_models):
    code, out, _ = exit_code(["bench", "-h"], capsys)
    assert code == 0
    flat = " ".join(out.split())  # argparse wraps lines at the terminal's width
    assert "hf-batchspec bench" in flat and "(default: 3)" in flat and "(default: 1,2,4,8,16,32)" in flat
    assert "comma-separated positive integers" in flat and "--threads" in flat
    assert all(name in flat for name in ("assisted", "lookup", "cb"))
    assert "--k 5" in flat and "docs/results.md" in flat  # why k defaults to 3, not the library's 5
    assert all(column in flat for column in LEGEND), out


def test_demo_help_shows_defaults_and_threads(capsys, no_models):
    code, out, _ = exit_code(["demo", "--help"], capsys)
    assert code == 0
    flat = " ".join(out.split())
    assert "hf-batchspec demo" in flat and "(default: 3)" in flat and "--threads" in flat and "--k 5" in flat


@pytest.mark.parametrize("command, option, value, says", [
    ("bench", "--batch-sizes", "1,,x", "comma-separated positive integers"),
    ("bench", "--batch-sizes", "0", "comma-separated positive integers"),
    ("bench", "--batch-sizes", "2,-4", "comma-separated positive integers"),
    ("bench", "--methods", "assisted,foo", "assisted, lookup, early-exit, uad, cb"),
    ("bench", "--ours", "exspec,exspec-compiled", "eqspec, eqspec-realign, exspec, exspec-auto"),
    ("bench", "--ours", "default", "exspec-other-default, defaults"),
    ("bench", "--threads", "0", "positive integer"),
    ("bench", "--threads", "two", "positive integer"),
    ("bench", "--k", "0", "positive integer"),
    ("demo", "--threads", "-1", "positive integer"),
])
def test_bad_values_are_refused_before_anything_loads(capsys, no_models, command, option, value, says):
    code, _, err = exit_code([command, option, value], capsys)
    assert code == 2 and "usage" in err and option in err and says in err, err


def test_from_json_reads_files_without_threads_and_methods_may_be_empty(tmp_path, capsys, no_models):
    row = dict(method="hf-greedy-b1", batch_size=1, seconds=2.0, tokens=100, exact_rows=4, rows=4, bookkeeping=0.1)
    old = tmp_path / "old.json"  # as written before `threads` was recorded
    old.write_text(json.dumps([row, {**row, "method": "hf-greedy", "batch_size": 2, "seconds": 1.0}]))
    code, out, err = exit_code(["bench", "--methods", "", "--from-json", str(old)], capsys)
    assert code == 0, err
    assert "torch threads not recorded" in out and "hf-greedy-b1" in out


def test_plot_without_matplotlib_is_refused_before_anything_runs(tmp_path, capsys, no_models, monkeypatch):
    """matplotlib is an optional dependency (the bench extra): --plot must say how to install it at once, not after
    a run of minutes ends in an ImportError. sys.modules[name] = None makes `import matplotlib` fail as if absent."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    png = tmp_path / "bench.png"
    code, out, err = exit_code(["bench", "--plot", str(png)], capsys)
    assert code == 2 and "--plot" in err and 'pip install -e ".[bench]"' in err and "pip install matplotlib" in err, err
    assert not png.exists() and not out


def test_ours_names_come_from_one_table_and_defaults_selects_the_default_rows(capsys, no_models):
    """Each --ours and --methods name is one entry of one table; 'defaults' stands for the four calls a user makes
    with no num_assistant_tokens and no speculation argument, each named once in the order given."""
    from hf_batchspec.cli.bench import parse_args
    from hf_batchspec.cli.methods import BASELINES, METHODS, OURS

    our_table = [m for m in METHODS if m.ours]
    assert len(OURS) + len(BASELINES) == len(METHODS) == len({m.name for m in METHODS})
    assert len(OURS) == len(our_table) and len({m.row for m in our_table}) == len(our_table)
    defaults = ["exspec-default", "exspec-lookup-default", "exspec-early-exit-default", "exspec-other-default"]
    assert [m.name for m in our_table if m.speculation is None] == defaults
    assert all(not OURS[name].constant_k for name in defaults)
    # every other row passes speculation, and k where the source takes one (MTP drafts one token per layer)
    assert all(m.speculation in ("always", "auto") and m.constant_k == (m.source != "mtp")
               for m in our_table if m.name not in defaults)
    assert parse_args(["--ours", "exspec,defaults,exspec-default"]).ours == ["exspec", *defaults]
    # every row by default, but those the bundled target cannot run (it has no MTP layers)
    assert parse_args([]).ours == [name for name in OURS if OURS[name].source != "mtp"]
    assert parse_args([]).methods == ["assisted", "lookup", "early-exit", "uad", "cb"]


def test_bench_help_names_the_default_rows_the_random_draft_and_the_skipped_rows(capsys, no_models):
    code, out, _ = exit_code(["bench", "-h"], capsys)
    flat = " ".join(out.split())
    assert code == 0
    for name in ("exspec-default", "exspec-lookup-default", "exspec-early-exit-default", "exspec-other-default",
                 "'defaults'",
                 "exspec-auto, exspec-default, exspec-lookup-default, exspec-early-exit-default also run compiled "
                 "(<name>-compiled)"):
        assert name in flat, name
    assert "--draft-init {trained,random}" in flat and "torch.manual_seed(0)" in flat
    assert "skipped" in flat and "unless --other-draft is given" in flat  # why the bundled other draft is not used
    assert 'pip install -e ".[bench]"' in flat  # --plot's dependency


def test_from_json_reads_a_file_with_its_setup(tmp_path, capsys, no_models):
    """A new file is {"setup", "results"}: read back, the setup is printed above the table and equals what was
    written, and the rows are the same rows."""
    from hf_batchspec.cli.harness import Result
    from hf_batchspec.cli.report import read_json, write_json

    setup = dict(target="my/target", target_parameters=3_800_000, draft="my/draft", draft_init="trained",
                 draft_parameters=300_000, k=4, max_new_tokens=16, num_prompts=8, prompts="p.jsonl", device="cpu",
                 dtype="float32", threads=1, torch="2.x", transformers="5.x", hf_batchspec="0.1.0",
                 date="2026-12-01T00:00:00+00:00")
    results = [Result("hf-greedy-b1", 1, 2.0, 100, 4, 4, threads=1), Result("exspec", 2, 1.0, 100, 4, 4, 2.5, 9, 20)]
    saved = tmp_path / "new.json"
    write_json(results, str(saved), setup)
    assert read_json(str(saved)) == (setup, results)
    code, out, err = exit_code(["bench", "--from-json", str(saved)], capsys)
    assert code == 0, err
    assert "target my/target (3.8M params)" in out and "k=4" in out and "max_new_tokens=16" in out and "exspec" in out


def figure_of(results, setup):
    pytest.importorskip("matplotlib")
    from hf_batchspec.cli.report import figure

    fig = figure(results, setup)
    left, right = fig.axes[:2]
    return fig, left, right


def test_plot_labels_every_line_with_a_style_of_its_own_on_the_batch_sizes_themselves():
    """What the figure must show to be read: every line in the legend, no two methods drawn alike (the old colour
    cycle gave exspec-auto hf-greedy's colour), batch-1 baselines labelled, the batch sizes themselves as ticks
    (a log axis labelled 1, 2 as 10^0, 2x10^0) and the setup in the title."""
    from hf_batchspec.cli.harness import Result

    methods = ["eqspec", "exspec", "exspec-auto", "exspec-lookup", "exspec-early-exit", "exspec-other-tokenizer",
               "exspec-default", "exspec-lookup-default", "exspec-early-exit-default", "exspec-other-default",
               "hf-continuous-batching", "a-method-the-style-table-lacks"]
    results = [Result("hf-greedy-b1", 1, 1.0, 100, 4, 4, bookkeeping=0.1),
               Result("hf-assisted-b1 (k=3, threshold off)", 1, 0.8, 100, 4, 4, bookkeeping=0.3),
               Result("hf-prompt-lookup-b1", 1, 0.9, 100, 4, 4, bookkeeping=0.2),
               Result("hf-greedy", 2, 0.6, 100, 4, 4, bookkeeping=0.1)]
    results += [Result(m, b, 0.5 + i / 50, 100, 4, 4, bookkeeping=0.2) for i, m in enumerate(methods) for b in (1, 2)]
    setup = dict(target="my/target", target_parameters=3_800_000, draft="my/draft", draft_parameters=300_000, k=3,
                 max_new_tokens=8, num_prompts=4, prompts="p.jsonl", device="cpu", dtype="float32", threads=1,
                 torch="2.x", transformers="5.x", hf_batchspec="0.1.0", date="2026-12-01")
    fig, left, right = figure_of(results, setup)
    lines = left.get_lines()
    labels = [line.get_label() for line in lines]
    assert sorted(labels) == sorted(["hf-greedy", *methods, "hf-assisted-b1 (k=3, threshold off), batch 1",
                                     "hf-prompt-lookup-b1, batch 1"])
    styles = [(line.get_color(), line.get_marker(), str(line.get_linestyle())) for line in lines]
    assert len(set(styles)) == len(styles), styles
    colors = {line.get_label(): line.get_color() for line in lines}
    assert colors["exspec-auto"] != colors["hf-greedy"]
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert sorted(legend) == sorted(labels)
    for axis in (left, right):
        assert [t.get_text() for t in axis.get_xticklabels()] == ["1", "2"]
        assert list(axis.get_xticks()) == [0, 1]  # equally spaced
    title = fig._suptitle.get_text().replace("\n", " ")
    for part in ("my/target", "my/draft", "k=3", "max_new_tokens=8", "4 prompts", "cpu float32"):
        assert part in title, title


def test_plot_reads_an_old_file_without_setup_and_many_batch_sizes_on_a_log_axis(tmp_path, capsys, no_models):
    pytest.importorskip("matplotlib")
    from hf_batchspec.cli.harness import Result

    sizes = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    results = [Result("hf-greedy-b1", 1, 1.0, 100, 4, 4, bookkeeping=0.1)]
    results += [Result(m, b, 0.5, 100, 4, 4, bookkeeping=0.2) for m in ("hf-greedy", "exspec") for b in sizes[1:]]
    results += [Result("exspec", 1, 0.5, 100, 4, 4, bookkeeping=0.2)]
    fig, left, _ = figure_of(results, None)
    assert left.get_xscale() == "log" and [t.get_text() for t in left.get_xticklabels()] == list(map(str, sizes))
    assert "setup not recorded" in fig._suptitle.get_text()
    old = tmp_path / "old.json"  # a bare list of rows, as written before the setup was recorded
    old.write_text(json.dumps([dict(method="hf-greedy-b1", batch_size=1, seconds=2.0, tokens=100, exact_rows=4,
                                    rows=4, bookkeeping=0.1),
                               dict(method="exspec", batch_size=2, seconds=1.0, tokens=100, exact_rows=4, rows=4,
                                    bookkeeping=0.2)]))
    png = tmp_path / "old.png"
    code, out, err = exit_code(["bench", "--from-json", str(old), "--plot", str(png)], capsys)
    assert code == 0, err
    assert "setup not recorded" in out and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_whisper_runs_every_row_exact(capsys):
    """`bench --whisper` on a narrow synthetic pair: every method's row printed, every input exact."""
    code, out, _ = exit_code(["bench", "--whisper", "--d-model", "96", "--decoder-layers", "2", "--num-inputs", "3",
                              "--batch-sizes", "1,2", "--max-new-tokens", "4", "--repeats", "1"], capsys)
    assert code == 0
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0] in
            ("hf-greedy", "hf-assisted", "exspec", "exspec-default")]
    assert [row[0] for row in rows] == ["hf-greedy", "hf-assisted", "hf-greedy", "exspec", "exspec-default"]
    assert all(row[-1] == "3/3" for row in rows)
    code, _, err = exit_code(["bench", "--whisper", "--compile", "--repeats", "1"], capsys)
    assert code == 2 and "--repeats >= 2" in err
