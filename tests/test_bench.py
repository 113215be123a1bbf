"""The bench and the demo run end to end on the bundled pair, and every method reproduces the reference rows.

Speed is not asserted here (tests do not time things); exactness and the report's shape are.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_TARGET = ROOT / "hf_batchspec" / "demo_pair" / "target"


def run(*args):
    return subprocess.run([sys.executable, "-m", "hf_batchspec", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


def target_stopping_at(word: str, path: Path) -> tuple[Path, list[int]]:
    """A copy of the bundled target that also stops at `word`, a common token: rows then end at different
    lengths, most before max_new_tokens (the bundled target itself never emits EOS on the bundled prompts)."""
    from transformers import AutoTokenizer

    shutil.copytree(BUNDLED_TARGET, path)
    config = json.loads((path / "generation_config.json").read_text())
    [word_id] = AutoTokenizer.from_pretrained(path)(word, add_special_tokens=False)["input_ids"]
    config["eos_token_id"] = stops = [config["eos_token_id"], word_id]
    (path / "generation_config.json").write_text(json.dumps(config))
    return path, stops


def greedy_token_count(target: Path, stops: list[int], num_prompts: int, max_new_tokens: int) -> int:
    """New tokens through the first stop, summed over the bench's prompts, each decoded alone by transformers'
    plain greedy `generate`: worked out here, apart from the bench, as what it must credit every method with."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_batchspec.cli.loaders import load_prompts
    from tests.toolkit import plain_greedy

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the bench below runs: the same sums, the same near-ties
    try:
        model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
        return sum(len(plain_greedy(model, prompt, max_new_tokens, tuple(stops)))  # through the first stop
                   for prompt in load_prompts(None, AutoTokenizer.from_pretrained(target), num_prompts))
    finally:
        torch.set_num_threads(threads)


def test_bench_reports_every_method_exact(tmp_path):
    out = tmp_path / "bench.json"
    target, stops = target_stopping_at(" the", tmp_path / "target")
    other = ROOT / "hf_batchspec" / "demo_pair" / "draft_other_tokenizer"  # a copied target needs it named
    result = run("bench", "--target", str(target), "--other-draft", str(other), "--num-prompts", "4", "--batch-sizes",
                 "1,2", "--max-new-tokens", "12", "--methods", "assisted,lookup,early-exit,uad", "--threads", "1",
                 "--repeats", "1", "--json", str(out), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    header = result.stdout.splitlines()[0]
    assert "torch threads 1," in header and "device cpu" in header and "transformers " in header, header
    expected = greedy_token_count(target, stops, 4, 12)
    assert 0 < expected < 4 * 12  # some rows stop early: crediting tokens past the first stop would show
    saved = json.loads(out.read_text())
    rows, setup = saved["results"], saved["setup"]
    methods = {(r["method"], r["batch_size"]) for r in rows}
    assert {("hf-greedy-b1", 1), ("hf-greedy", 2), ("eqspec", 2), ("exspec", 2), ("exspec-auto", 2),
            ("eqspec-realign (paper's layout)", 2), ("hf-prompt-lookup-b1", 1), ("hf-early-exit-b1", 1),
            ("hf-universal-assisted-b1 (HF defaults)", 1),
            ("exspec-lookup", 2), ("exspec-early-exit", 2), ("exspec-other-tokenizer", 2),
            ("exspec-default", 2), ("exspec-lookup-default", 2), ("exspec-early-exit-default", 2),
            ("exspec-other-default", 2)} <= methods
    import torch
    import transformers

    import hf_batchspec

    # the setup: what the numbers were measured with, enough to read them without the command line
    assert setup["target"] == str(target) and setup["draft"].endswith("demo_pair/draft")
    assert setup["other_draft"] == str(other) and setup["draft_init"] == "trained"
    assert setup["target_parameters"] > setup["draft_parameters"] > 0 and setup["other_draft_parameters"] > 0
    assert (setup["k"], setup["max_new_tokens"], setup["num_prompts"], setup["batch_sizes"]) == (3, 12, 4, [1, 2])
    assert setup["prompts"].endswith("code_prompts.jsonl") and setup["threads"] == 1
    assert (setup["device"], setup["dtype"]) == ("cpu", "float32")
    assert (setup["torch"], setup["transformers"], setup["hf_batchspec"]) == (
        torch.__version__, transformers.__version__, hf_batchspec.__version__)
    assert setup["date"].startswith("20")
    for r in rows:
        assert r["exact_rows"] == r["rows"] == 4, r["method"]
        assert r["tokens"] == expected, r["method"]  # each row's new tokens through its first stop
        assert r["threads"] == 1, r["method"]
    ours = [r for r in rows if r["method"] in ("eqspec", "exspec", "exspec-early-exit", "exspec-other-tokenizer")]
    assert all(r["target_calls"] > 0 and r["draft_calls"] > 0 and r["tokens_per_round"] >= 1 for r in ours)
    lookup = next(r for r in rows if r["method"] == "exspec-lookup")
    assert lookup["draft_calls"] == 0 and lookup["tokens_per_round"] >= 1  # no draft model ran


def test_demo_checks_rows_against_plain_greedy():
    result = run("demo", "--num-prompts", "3", "--batch-size", "2", "--max-new-tokens", "10", "--threads", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch threads 1," in result.stdout.splitlines()[0], result.stdout
    assert "every row equals plain greedy decoding" in result.stdout
    assert "prompt lookup" in result.stdout and "its own tokenizer" in result.stdout  # both rows ran (and were exact)


def test_ours_selects_methods_and_each_batch_size_reports_as_it_ends(tmp_path):
    from hf_batchspec.cli.bench import parse_args, run_bench

    target, _ = target_stopping_at(" the", tmp_path / "target")
    args = parse_args(["--target", str(target), "--num-prompts", "3", "--batch-sizes", "2,3", "--max-new-tokens",
                       "6", "--methods", "", "--ours", "exspec", "--repeats", "1", "--quiet"])
    reported = []
    results = run_bench(args, on_batch_size=lambda so_far: reported.append([r.method for r in so_far]))
    assert [r.method for r in results] == ["hf-greedy-b1", "hf-greedy", "exspec", "hf-greedy", "exspec"]
    # the results so far after each batch size: batch 1's reference, then batch 2, then batch 3
    methods = [r.method for r in results]
    assert reported == [methods[:1], methods[:3], methods]
    assert all(r.exact_rows == r.rows == 3 for r in results)


def test_draft_sources_example_runs_and_every_row_is_exact():
    script = ROOT / "examples" / "draft_sources.py"
    result = subprocess.run([sys.executable, str(script), "--batch-size", "3", "--max-new-tokens", "8"],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("exact rows 3/3") == 4, result.stdout  # the four greedy sources
    assert "(12, " in result.stdout  # 3 prompts x 4 samples


@pytest.mark.slow  # compiles the bundled pair for us and for transformers in a new process: 4 minutes on 2 cores
def test_compiled_example_runs_and_every_row_is_exact():
    script = ROOT / "examples" / "compiled.py"
    result = subprocess.run([sys.executable, str(script), "--batch-size", "2", "--num-prompts", "4",
                             "--max-new-tokens", "12", "--k", "3", "--threads", "1"],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "plain greedy decoding of their prompt alone: 4/4" in result.stdout, result.stdout
    rounds = re.search(r"(\d+) of (\d+) rounds as whole-step compiled programs", result.stdout)
    assert rounds and rounds.group(1) == rounds.group(2) != "0", result.stdout


def test_other_tokenizer_rows_are_skipped_with_a_users_target_unless_other_draft_is_given(tmp_path, capsys):
    """The bundled draft with another tokenizer was trained for the bundled target: with a user's --target, its rows
    would time a draft trained for another model. They are skipped, with a line saying so, unless --other-draft."""
    from hf_batchspec.cli.bench import parse_args, run_bench

    target, _ = target_stopping_at(" the", tmp_path / "target")
    args = parse_args(["--target", str(target), "--num-prompts", "2", "--batch-sizes", "2", "--max-new-tokens", "4",
                       "--methods", "uad", "--ours", "exspec,exspec-other-tokenizer,exspec-other-default",
                       "--repeats", "1", "--quiet"])
    setup = {}
    results = run_bench(args, setup=setup)
    assert [r.method for r in results] == ["hf-greedy-b1", "hf-greedy", "exspec"]
    out = capsys.readouterr().out
    assert "skipped uad, exspec-other-tokenizer, exspec-other-default" in out and "--other-draft" in out, out
    assert setup["other_draft"] is None


class Recorded(Exception):
    """Raised by the recording generate below: the call's arguments are what is checked, not its output."""


def planned_calls(argv: list[str]) -> tuple[list, dict, object]:
    """The bench's plan for `argv` on the bundled pair, and the generate kwargs each planned call passes (the target's
    `generate` records them and stops: nothing decodes, nor compiles)."""
    from hf_batchspec.cli.args import DTYPES
    from hf_batchspec.cli.bench import parse_args, plan_runs
    from hf_batchspec.cli.harness import Bench
    from hf_batchspec.cli.loaders import load_pair

    args = parse_args(argv)
    target, draft, tokenizer = load_pair(None, None, DTYPES["float32"], "cpu")
    bench = Bench(target, draft, [[5, 6, 7], [8, 9]], 4, args.k, "cpu")
    calls, current = {}, [None]

    def recording_generate(*positional, **kwargs):
        calls[current[0]] = kwargs
        raise Recorded

    target.generate = recording_generate
    plan = plan_runs(args, bench, tokenizer)
    for current[0], _, fn, _ in plan:
        try:
            fn(bench.prompts, warmup=True)
        except Recorded:
            pass
    return plan, calls, args


def test_constant_k_rows_pass_speculation_and_k_and_default_rows_pass_neither(capsys):
    """The -default rows must be the call a user makes (no num_assistant_tokens, no speculation), so they follow
    the library's defaults when those change; every other row passes speculation (and k) explicitly, so it stays a
    constant-k (or auto) row then. Compiled rows likewise. Checked on the arguments each planned call passes to
    the target's real `generate` (stopped there: nothing needs to decode, nor compile)."""
    plan, calls, args = planned_calls(["--batch-sizes", "2", "--methods", "", "--compile", "--k", "4"])
    compiled = ["exspec-compiled", "exspec-auto-compiled", "exspec-default-compiled", "exspec-lookup-default-compiled",
                "exspec-early-exit-default-compiled"]
    assert [name for name, *_ in plan if "exspec" in name][-5:] == compiled
    unset = object()
    for name, kwargs in calls.items():
        if "batch_spec" not in kwargs:
            continue  # transformers' own baselines
        speculation, k = kwargs.get("speculation", unset), kwargs.get("num_assistant_tokens", unset)
        if name.removesuffix("-compiled").endswith("-default"):
            assert speculation is unset and k is unset, name
        else:
            assert speculation == ("auto" if "auto" in name else "always"), name
            assert k == (unset if "lookup" in name else 4), name
        assert ("compile_config" in kwargs) == name.endswith("-compiled"), name
        if "lookup" in name:
            assert kwargs["prompt_lookup_num_tokens"] == args.lookup_tokens and "assistant_model" not in kwargs
    defaults = {"exspec-default", "exspec-lookup-default", "exspec-early-exit-default", "exspec-other-default",
                "exspec-default-compiled", "exspec-lookup-default-compiled", "exspec-early-exit-default-compiled"}
    assert defaults <= set(calls) and {"exspec", "exspec-lookup", "exspec-early-exit", "exspec-other-tokenizer"} <= set(
        calls)
    assert calls["exspec-other-default"]["assistant_tokenizer"] is not None
    assert calls["exspec-early-exit-default"]["assistant_early_exit"] == args.early_exit


def test_random_draft_has_the_drafts_config_seeded_fresh_weights_and_rarely_agrees(capsys):
    """--draft-init random: the bundled draft's architecture with weights drawn under torch.manual_seed(0) (the same
    every time, unlike the trained ones), so acceptance is low; rows stay exact."""
    import torch

    from hf_batchspec.cli.args import DTYPES
    from hf_batchspec.cli.bench import parse_args, run_bench
    from hf_batchspec.cli.loaders import load_pair

    _, trained, _ = load_pair(None, None, DTYPES["float32"], "cpu")
    _, first, _ = load_pair(None, None, DTYPES["float32"], "cpu", draft_init="random")
    _, again, _ = load_pair(None, None, DTYPES["float32"], "cpu", draft_init="random")
    assert first.config.to_dict() == trained.config.to_dict() | {"dtype": first.config.to_dict()["dtype"]}
    names = list(trained.state_dict())
    assert list(first.state_dict()) == names
    assert all(torch.equal(first.state_dict()[n], again.state_dict()[n]) for n in names)  # seeded
    assert not any(torch.equal(first.state_dict()[n], trained.state_dict()[n]) for n in names
                   if "norm" not in n)  # fresh, not the trained weights (norms initialise to ones either way)
    args = parse_args(["--draft-init", "random", "--num-prompts", "3", "--batch-sizes", "2", "--max-new-tokens", "8",
                       "--methods", "", "--ours", "exspec", "--repeats", "1", "--quiet"])
    setup = {}
    [_, _, exspec] = run_bench(args, setup=setup)
    assert exspec.exact_rows == exspec.rows == 3
    # the trained pair gains ~2.8 tokens a round at k=3 here; a random draft's guesses are almost never the target's
    assert exspec.tokens_per_round < 1.5, exspec
    assert setup["draft_init"] == "random"


def test_mtp_rows_ask_for_the_targets_mtp_layers_and_are_not_in_the_default_run():
    """`--methods mtp` (transformers' use_mtp at batch 1) and `--ours exspec-mtp` call generate with use_mtp=True and
    no num_assistant_tokens (k is the number of MTP layers); the default run has neither (the bundled target has no
    MTP layers). Checked on the arguments each planned call passes to the target's `generate`."""
    from hf_batchspec.cli.bench import parse_args

    defaults = parse_args([])
    assert "mtp" not in defaults.methods and "exspec-mtp" not in defaults.ours
    _, calls, _ = planned_calls(["--batch-sizes", "2", "--methods", "mtp", "--ours", "exspec-mtp"])
    assert calls["hf-mtp-b1"]["use_mtp"] is True and "batch_spec" not in calls["hf-mtp-b1"]
    ours = calls["exspec-mtp"]
    assert ours["use_mtp"] is True and ours["batch_spec"] == "exspec" and ours["speculation"] == "always"
    assert "num_assistant_tokens" not in ours and "assistant_model" not in ours
