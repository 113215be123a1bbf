"""scripts/train_demo_pair, the provenance of the bundled weights, runs end to end on a small corpus for a few steps,
and what it writes loads with transformers and decodes exactly through hf_batchspec.

It runs in this process (a subprocess would import torch and transformers again, most of the test's time); the
global state the script sets for determinism (deterministic algorithms, seeds, threads) is restored afterwards.
The options are the script's own small ones; its defaults (the bundled recipe) are not run here: minutes.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch

import hf_batchspec
from hf_batchspec.cli.loaders import left_pad
from tests.toolkit import plain_greedy

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3
PROMPTS = ["def f(n):\n", "import os\n\n\nclass Reader:\n    def __init__(self", "x = 1\n"]
NEW = 12


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The three models and the report, trained into a temporary folder (once for the module)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    rng, py_rng = torch.random.get_rng_state(), random.getstate()
    try:
        from train_demo_pair.run import main

        out = tmp_path_factory.mktemp("demo_pair")
        main(["--out", str(out), "--steps", str(STEPS), "--draft-steps", str(STEPS), "--other-steps", str(STEPS),
              "--teacher-rows", "8", "--heldout-teacher-rows", "8", "--batch", "4", "--target-layers", "1",
              "--threads", str(threads), "--corpus-bytes", str(256 * 1024)])
        yield out
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)
        torch.random.set_rng_state(rng)
        random.setstate(py_rng)
        sys.path.remove(str(ROOT / "scripts"))


def load(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


def test_the_report_records_the_run(trained):
    report = json.loads((trained / "training_report.json").read_text())
    assert report["target"]["steps"] == report["draft"]["steps"] == report["draft_other_tokenizer"]["steps"] == STEPS
    assert report["corpus"]["heldout_files"] >= 1 and report["corpus"]["bytes"] >= 256 * 1024
    assert report["target"]["params"] > report["draft"]["params"] > 0
    assert report["versions"]["torch"] == torch.__version__


@pytest.mark.parametrize("draft_dir", ["draft", "draft_other_tokenizer"])
def test_the_trained_pair_loads_and_decodes_as_plain_greedy(trained, draft_dir):
    """Every row of a batched exspec call with the trained target and draft equals plain greedy of its prompt alone
    (the draft with its own tokenizer through assistant_tokenizer)."""
    target, tokenizer = load(trained / "target")
    draft, draft_tokenizer = load(trained / draft_dir)
    assert (draft_tokenizer.get_vocab() == tokenizer.get_vocab()) == (draft_dir == "draft")
    hf_batchspec.enable(target)
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in PROMPTS]
    assert len({len(p) for p in prompts}) == len(prompts)  # ragged: left padding is exercised
    ids, mask, width = left_pad(prompts, tokenizer.pad_token_id, "cpu")  # [B, W] each
    other = {} if draft_dir == "draft" else dict(tokenizer=tokenizer, assistant_tokenizer=draft_tokenizer)
    out = target.generate(ids, attention_mask=mask, assistant_model=draft, batch_spec="exspec", max_batch_size=2,
                          num_assistant_tokens=3, max_new_tokens=NEW, do_sample=False,
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                          return_dict_in_generate=True, **other)
    eos = (tokenizer.eos_token_id,)
    for row, prompt in enumerate(prompts):
        expected = plain_greedy(target, prompt, NEW, eos)
        got = out.sequences[row, width:].tolist()[: len(expected)]
        assert got == expected, f"row {row}"
    assert out.spec_stats.draft_forward_calls > 0
