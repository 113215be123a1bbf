"""The entry point: options, the run (the target, then both drafts from it; or one draft from a saved target) and
training_report.json, the provenance of the bundled weights."""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import torch
import transformers

from . import __doc__ as PACKAGE_DOC
from .bpe import train_tokenizer
from .configs import build_model, target_config
from .corpus import CORPUS_CAP_BYTES, SEQ_LEN, collect_stdlib_text, encode_corpus, split_files
from .drafts import DEFAULT_OTHER_STEPS, OTHER_DIR, train_other_tokenizer_draft, train_same_tokenizer_draft
from .export import save_model
from .teacher import DEFAULT_TEACHER_ROWS, HELDOUT_TEACHER_ROWS, load_teacher
from .training import (DEFAULT_BATCH, DEFAULT_DRAFT_STEPS, DEFAULT_TARGET_LAYERS, DEFAULT_TARGET_STEPS, TARGET_LR,
                       train_target)

DESCRIPTION = PACKAGE_DOC.split("\n\n")[0]


def parse_args(argv=None) -> argparse.Namespace:
    """The options; their defaults are the bundled weights' recipe."""
    p = argparse.ArgumentParser(prog="python scripts/train_demo_pair", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("hf_batchspec/demo_pair"),
                   help="output directory (gets target/, draft/, draft_other_tokenizer/, training_report.json)")
    p.add_argument("--steps", type=int, default=DEFAULT_TARGET_STEPS,
                   help=f"target training steps (default {DEFAULT_TARGET_STEPS}: ~11 min on 2 CPU cores)")
    p.add_argument("--draft-steps", type=int, default=DEFAULT_DRAFT_STEPS,
                   help=f"draft training steps (default {DEFAULT_DRAFT_STEPS}: ~1.5 min on 2 CPU cores, "
                        "after ~1.5 min generating the target's continuations)")
    p.add_argument("--seed", type=int, default=0, help="seed for init, batching and data split")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="windows per step")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--target-layers", type=int, default=DEFAULT_TARGET_LAYERS,
                   help=f"decoder layers of the target (default {DEFAULT_TARGET_LAYERS}); the draft has one")
    p.add_argument("--other-tokenizer-draft-only", action="store_true",
                   help=f"train only <out>/{OTHER_DIR} (a draft with a tokenizer of its own) from the target "
                        "already in <out>/target, with the corpus split recorded in <out>/training_report.json, "
                        f"and update only the '{OTHER_DIR}' entry of that report")
    p.add_argument("--draft-only", action="store_true",
                   help="train only <out>/draft (the same-tokenizer draft) from the target already in <out>/target, "
                        "and update only its entries ('draft', 'heldout') of <out>/training_report.json")
    p.add_argument("--other-steps", type=int, default=DEFAULT_OTHER_STEPS,
                   help=f"training steps of the other-tokenizer draft (default {DEFAULT_OTHER_STEPS})")
    p.add_argument("--teacher-rows", type=int, default=DEFAULT_TEACHER_ROWS,
                   help=f"target continuations it learns from (default {DEFAULT_TEACHER_ROWS})")
    p.add_argument("--heldout-teacher-rows", type=int, default=HELDOUT_TEACHER_ROWS,
                   help=f"held-out target continuations the drafts are measured on (default {HELDOUT_TEACHER_ROWS})")
    p.add_argument("--corpus-bytes", type=int, default=CORPUS_CAP_BYTES,
                   help=f"stdlib source bytes to collect at most (default {CORPUS_CAP_BYTES}); less only for a "
                        "quick check of the script (tests/test_train_demo_pair.py)")
    return p.parse_args(argv)




def main(argv=None) -> None:
    """Train (all three models, or one draft) into ``--out`` and write or update training_report.json."""
    args = parse_args(argv)
    target_steps, draft_steps = args.steps, args.draft_steps

    # Determinism: fixed seeds everywhere, deterministic kernels, fixed threads
    # (reduction order in some CPU kernels depends on the thread count).
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    out: Path = args.out
    split_seed = args.seed
    if args.other_tokenizer_draft_only or args.draft_only:
        # The held-out files must be the ones the bundled target never saw: the
        # split follows the seed of the run that trained it.
        report_path = out / "training_report.json"
        if not (out / "target").is_dir() or not report_path.is_file():
            raise SystemExit(f"--draft-only and --other-tokenizer-draft-only need {out}/target and {report_path} "
                             "from a full run")
        existing = json.loads(report_path.read_text())
        split_seed = existing["seed"]

    t_start = time.perf_counter()
    print("collecting stdlib sources ...", flush=True)
    texts = collect_stdlib_text(args.corpus_bytes)
    corpus_bytes = sum(len(t.encode("utf-8")) for t in texts)
    print(f"  {len(texts)} files, {corpus_bytes / 1e6:.2f} MB", flush=True)

    train_texts, held_texts = split_files(texts, split_seed)

    if args.draft_only or args.other_tokenizer_draft_only:
        teacher = load_teacher(out, train_texts, held_texts, seed=args.seed, rows=args.teacher_rows,
                               held_rows=args.heldout_teacher_rows)
    if args.draft_only:
        entry = train_same_tokenizer_draft(out, teacher, train_texts, held_texts, seed=args.seed, steps=draft_steps,
                                           batch=args.batch)
        existing["heldout"] = entry.pop("heldout")
        existing["draft"] = entry | {"seed": args.seed, "threads": args.threads,
                                     "versions": {"torch": torch.__version__,
                                                  "transformers": transformers.__version__}}
        report_path.write_text(json.dumps(existing, indent=2) + "\n")
        print(f"saved {out / 'draft'} in {entry['total_seconds']}s", flush=True)
        return

    if args.other_tokenizer_draft_only:
        if existing.get("corpus", {}).get("files") not in (None, len(texts)):
            print(f"warning: the report's corpus had {existing['corpus']['files']} files, this one "
                  f"{len(texts)} (another Python's stdlib?)", flush=True)
        existing[OTHER_DIR] = train_other_tokenizer_draft(
            out, teacher, train_texts, held_texts, seed=args.seed, steps=args.other_steps, batch=args.batch)
        existing[OTHER_DIR]["seed"] = args.seed
        existing[OTHER_DIR]["threads"] = args.threads
        existing[OTHER_DIR]["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
        report_path.write_text(json.dumps(existing, indent=2) + "\n")
        print(f"saved {out / OTHER_DIR} in {existing[OTHER_DIR]['total_seconds']}s", flush=True)
        return

    print("training tokenizer ...", flush=True)
    tokenizer = train_tokenizer(train_texts)
    train_stream = encode_corpus(tokenizer, train_texts)
    held_stream = encode_corpus(tokenizer, held_texts)
    print(f"  {train_stream.numel()} train tokens, {held_stream.numel()} held-out tokens, "
          f"{corpus_bytes / (train_stream.numel() + held_stream.numel()):.2f} bytes/token", flush=True)

    target_cfg = target_config(tokenizer, args.target_layers)

    torch.manual_seed(args.seed)
    target = build_model(target_cfg)
    n_target = sum(p.numel() for p in target.parameters())
    print(f"target {n_target / 1e6:.2f} M params", flush=True)

    print(f"training target for {target_steps} steps ...", flush=True)
    target_loss, target_secs = train_target(
        target, train_stream, steps=target_steps, batch=args.batch, lr=TARGET_LR, seed=args.seed + 10)

    save_model(target, tokenizer, out / "target")
    teacher = load_teacher(out, train_texts, held_texts, seed=args.seed, rows=args.teacher_rows,
                               held_rows=args.heldout_teacher_rows)  # once, for both
    draft_entry = train_same_tokenizer_draft(out, teacher, train_texts, held_texts, seed=args.seed,
                                             steps=draft_steps, batch=args.batch)
    other = train_other_tokenizer_draft(out, teacher, train_texts, held_texts, seed=args.seed,
                                        steps=args.other_steps, batch=args.batch)

    report = {
        "seed": args.seed,
        "batch": args.batch,
        "seq_len": SEQ_LEN,
        "threads": args.threads,
        "corpus": {"source": "python stdlib *.py", "files": len(texts), "bytes": corpus_bytes,
                   "heldout_files": len(held_texts), "train_tokens": train_stream.numel()},
        "target": {"params": n_target, "steps": target_steps, "seconds": round(target_secs, 1),
                   "final_train_loss": round(target_loss, 4)},
        "draft": {k: v for k, v in draft_entry.items() if k != "heldout"},
        "heldout": draft_entry["heldout"],
        OTHER_DIR: other,
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved to {out} in {report['total_seconds']}s", flush=True)

