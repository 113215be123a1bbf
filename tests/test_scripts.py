"""Every script in scripts/ at least imports and answers --help: docs/results.md quotes their numbers and commands, and
no other test runs most of them, so a refactor that breaks one would otherwise go unseen until someone reruns it.

In this process (one import of torch and transformers for all of them): each script's `main` reads sys.argv, so
argv is set to `<script> --help`, which parses and exits 0 before anything loads.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
PYTHON_SCRIPTS = sorted(SCRIPTS.glob("*.py"))


def help_of(main, argv0: str, monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", [argv0, "--help"])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 0
    return capsys.readouterr().out


def test_every_script_is_covered():
    """A script added later is either a .py file, the train_demo_pair package or gpu_report.sh: all tested here."""
    assert len(PYTHON_SCRIPTS) >= 7
    others = {p.name for p in SCRIPTS.iterdir() if p.suffix != ".py" and p.name != "__pycache__"}
    assert others == {"train_demo_pair", "gpu_report.sh"}, others


@pytest.mark.parametrize("path", PYTHON_SCRIPTS, ids=lambda p: p.name)
def test_script_imports_and_answers_help(path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # its imports: the public names it uses still exist
    out = help_of(module.main, path.name, monkeypatch, capsys)
    assert out.startswith("usage:") and "--help" in out, out


def test_train_demo_pair_answers_help_with_its_small_options(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    from train_demo_pair.run import main

    out = help_of(lambda: main(), "train_demo_pair", monkeypatch, capsys)
    flat = " ".join(out.split())
    assert "usage: python scripts/train_demo_pair" in flat and "Train the small target/draft model pair" in flat
    assert "--corpus-bytes" in flat and "--heldout-teacher-rows" in flat and "(default 1000" in flat


def test_gpu_report_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(SCRIPTS / "gpu_report.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
