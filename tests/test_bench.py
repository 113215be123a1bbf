"""The bench and the demo run end to end on the bundled pair, and every method reproduces the reference rows.

Speed is not asserted here (tests do not time things); exactness and the report's shape are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return subprocess.run([sys.executable, "-m", "hf_batchspec", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


def test_bench_reports_every_method_exact(tmp_path):
    out = tmp_path / "bench.json"
    result = run("bench", "--num-prompts", "4", "--batch-sizes", "1,2", "--max-new-tokens", "12", "--methods",
                 "assisted,lookup", "--json", str(out), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())
    methods = {(r["method"], r["batch_size"]) for r in rows}
    assert {("hf-greedy-b1", 1), ("hf-greedy", 2), ("eqspec", 2), ("exspec", 2), ("exspec-auto", 2),
            ("eqspec-realign (paper's layout)", 2), ("hf-prompt-lookup-b1", 1)} <= methods
    for r in rows:
        assert r["exact_rows"] == r["rows"] == 4, r["method"]
        assert r["tokens"] == rows[0]["tokens"] and r["tokens"] > 0  # every method credited the same tokens
    ours = [r for r in rows if r["method"] in ("eqspec", "exspec")]
    assert all(r["target_calls"] > 0 and r["draft_calls"] > 0 and r["tokens_per_round"] >= 1 for r in ours)


def test_demo_checks_rows_against_plain_greedy():
    result = run("demo", "--num-prompts", "3", "--batch-size", "2", "--max-new-tokens", "10")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "every row equals plain greedy decoding" in result.stdout


def test_unknown_command_is_refused():
    result = run("train")
    assert result.returncode != 0 and "usage" in result.stderr
