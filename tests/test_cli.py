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

from hf_batchspec.__main__ import main

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
    import hf_batchspec.bench
    import hf_batchspec.demo

    def load_pair(*args, **kwargs):
        raise AssertionError("the command line was accepted and went on to load models")

    for module in (hf_batchspec.bench, hf_batchspec.demo):
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
