"""Train the small target/draft model pair bundled with hf_batchspec.

Why this exists
---------------
Speculative decoding is only interesting when the draft model *agrees* with the
target often enough that proposed tokens get accepted.  Randomly initialised
"tiny" models (what the unit tests use) agree almost never, so they exercise
the rejection path but say nothing about speed-ups or about realistic
acceptance patterns.  Real checkpoints cannot be downloaded in every
environment (CI, air-gapped machines), so this script produces a genuinely
trained, *small* pair from text that is always available offline: the Python
standard library sources of the running interpreter.

The result is:

* ``<out>/target`` -- a 6-layer Llama-style model (~3.8 M parameters),
* ``<out>/draft``  -- a 1-layer Llama-style model distilled from the target on
  its own greedy continuations (sequence-level distillation, see below),
* a byte-level BPE tokenizer saved into both directories, so each one loads
  with ``AutoTokenizer.from_pretrained`` alone,
* ``<out>/draft_other_tokenizer`` -- a 1-layer draft with a tokenizer of its
  own (another BPE vocabulary, 1536 tokens, other special-token ids), for
  drafting with ``assistant_tokenizer=`` (universal assisted decoding); it
  learns the target's greedy continuations as text (see its section below),
* ``<out>/training_report.json`` -- losses, draft/target agreement, timings,
  parameter counts and library versions, so the provenance of the bundled
  weights is recorded next to them.

Weights are stored in float16 safetensors to keep the package small; load them
with ``dtype=torch.float32`` on CPU.

Usage::

    python scripts/train_demo_pair --out hf_batchspec/demo_pair

The defaults take about 20 minutes on two CPU cores (the target's 1000 steps
about 14 of them, each draft about 3).  To (re)train only one draft from the
target already in ``<out>`` (about 3 minutes each; only its entries of the
report change)::

    python scripts/train_demo_pair --out hf_batchspec/demo_pair --draft-only
    python scripts/train_demo_pair --out hf_batchspec/demo_pair --other-tokenizer-draft-only
  The run is deterministic for a given ``--seed`` (same machine,
same library versions, same standard library sources).

Layout, one job a module: ``corpus`` (the stdlib text, its split and windows), ``bpe`` (the tokenizers),
``configs`` (the models' shapes), ``training`` (optimiser, schedule, the two training loops and their defaults),
``teacher`` (the target's greedy continuations both drafts learn from), ``evaluation`` (held-out agreement),
``drafts`` (the two drafts, trained and saved), ``export`` (the saved files) and ``run`` (the options and the
report). The smaller options (``--corpus-bytes``, ``--heldout-teacher-rows``, few steps) exist for the smoke test
(tests/test_train_demo_pair.py); the defaults are the bundled weights' recipe.
"""
