"""The two drafts, each trained from the teacher and saved under ``--out``: ``draft`` (the target's tokenizer) and
``draft_other_tokenizer`` (a tokenizer of its own), each returning its entry of training_report.json."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from .bpe import OTHER_SPECIAL_TOKENS, OTHER_VOCAB_SIZE, train_tokenizer
from .configs import build_model, draft_config
from .corpus import SEQ_LEN, encode_corpus, heldout_windows
from .evaluation import continuation_top1, evaluate
from .export import save_model
from .teacher import HELDOUT_NEW_TOKENS, TEACHER_NEW_TOKENS, Teacher, pack_continuations, to_draft_tokens
from .training import DRAFT_LR, TEACHER_SHARE, train_on_continuations

# For drafting with another tokenizer (``assistant_tokenizer=``, transformers'
# universal assisted decoding) the package ships a third model: a 1-layer draft
# as wide as ``draft/`` whose byte-level BPE has another vocabulary size and its
# special tokens in another order (eos 0, pad 1, bos 2; the target has pad 0,
# bos 1, eos 2), so that no id means the same thing in both vocabularies.
#
# Logit distillation needs one vocabulary, so this draft learns from text:
# sequence-level distillation.  The target (as bundled: float16 weights loaded
# in float32) continues prompts cut from the training files at line starts
# greedily; prompt + continuation are decoded to text and re-encoded with the
# draft's tokenizer, and the draft is trained with next-token cross-entropy on
# those sequences, mixed with ordinary corpus windows.  Greedy speculative
# decoding accepts a proposal when it is the target's greedy text, so learning
# that text (including the small target's habits, such as repeating itself)
# is what raises acceptance; the corpus windows keep the draft sensible on
# prompts unlike the generated ones.  Generating is cheap at this size (about
# 6k target tokens a second at batch 128 on two cores).
#
# Measured on 2 CPU cores (seed 0), held-out top-1 agreement with the target's
# greedy continuations / acceptance rate on 16 bundled code prompts at batch 8:
# corpus cross-entropy only (1500 steps) 0.53 / 0.21; with 75% continuations
# (3072 of them, 1500 steps) 0.84 / 0.59 -- 50% and 100% were within 0.01 of
# that, and 100% leaves the draft poor on ordinary text (corpus CE 5.06 vs
# 3.91); 6144 continuations and 2500 steps (the defaults, ~3.5 min) 0.85 / 0.64.
OTHER_DIR = "draft_other_tokenizer"  # under --out; also the key of its entry in training_report.json
DEFAULT_OTHER_STEPS = 2500  # ~120 s at batch 16
OTHER_LR = 5e-3


def train_same_tokenizer_draft(out: Path, teacher: Teacher, train_texts: list[str], held_texts: list[str], *,
                               seed: int, steps: int, batch: int) -> dict:
    """Train and save ``<out>/draft`` (the target's tokenizer) from the target saved in ``<out>/target``, by
    the sequence-level distillation the other-tokenizer draft uses (see the section above): next-token
    cross-entropy on the target's greedy continuations (``TEACHER_SHARE`` of each batch) and on corpus windows.
    Greedy speculative decoding accepts a draft when it is the target's greedy token, which is what these
    continuations are made of; logit distillation on corpus windows alone (this draft's first recipe) reached
    0.67 top-1 on them against 0.85 for the other-tokenizer draft trained this way.  Returns its report entry."""
    t_start = time.perf_counter()
    target, tokenizer = teacher.model, teacher.tokenizer
    train_stream = encode_corpus(tokenizer, train_texts)
    t_ids, t_len, _ = pack_continuations(teacher.pairs, tokenizer.pad_token_id, SEQ_LEN + 1)
    h_ids, h_len, h_start = pack_continuations(teacher.held_pairs, tokenizer.pad_token_id, 4 * SEQ_LEN)

    config = draft_config(tokenizer)
    torch.manual_seed(seed + 1)
    draft = build_model(config)
    n_params = sum(p.numel() for p in draft.parameters())
    print(f"training the draft ({n_params / 1e6:.2f} M params) for {steps} steps ...", flush=True)
    loss_t, loss_c, train_secs = train_on_continuations(draft, train_stream, t_ids, t_len, steps=steps,
                                                        batch=batch, lr=DRAFT_LR, seed=seed + 20,
                                                        teacher_share=TEACHER_SHARE, label="draft")
    top1 = continuation_top1(draft, h_ids, h_len, h_start)
    metrics = evaluate(target, draft, heldout_windows(encode_corpus(tokenizer, held_texts), n=256))
    print(f"held-out: top-1 on the target's greedy continuations {top1:.3f}; on corpus windows "
          f"{metrics['top1_agreement']:.3f}, draft CE {metrics['draft_heldout_ce']:.3f}", flush=True)
    save_model(draft, tokenizer, out / "draft")
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the target's files as they are (a reloaded
        shutil.copyfile(out / "target" / name, out / "draft" / name)  # tokenizer saves extra loading keys)
    entry = {
        "params": n_params,
        "training": "sequence-level distillation: next-token CE on the target's greedy continuations of "
                    f"line-start corpus prompts ({TEACHER_SHARE:.0%} of each batch) and on corpus windows",
        "teacher_rows": len(teacher.pairs),
        "teacher_new_tokens": TEACHER_NEW_TOKENS,
        "generation_seconds": round(teacher.seconds, 1),
        "steps": steps,
        "seconds": round(train_secs, 1),
        "final_train_ce_continuations": round(loss_t, 4),
        "final_train_ce_corpus": round(loss_c, 4),
        "heldout_top1_on_target_greedy": round(top1, 4),
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    return entry | {"heldout": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}}


def train_other_tokenizer_draft(out: Path, teacher: Teacher, train_texts: list[str], held_texts: list[str], *,
                                seed: int, steps: int, batch: int) -> dict:
    """Train and save ``<out>/draft_other_tokenizer`` from `teacher`; return its entry for
    training_report.json."""
    t_start = time.perf_counter()
    target_tok, pairs, held_pairs = teacher.tokenizer, teacher.pairs, teacher.held_pairs
    print("training the other tokenizer ...", flush=True)
    tokenizer = train_tokenizer(train_texts, OTHER_VOCAB_SIZE, OTHER_SPECIAL_TOKENS)
    train_stream = encode_corpus(tokenizer, train_texts)
    held_stream = encode_corpus(tokenizer, held_texts)
    corpus_bytes = sum(len(t.encode("utf-8")) for t in train_texts + held_texts)
    target_tokens = encode_corpus(target_tok, train_texts).numel() + encode_corpus(target_tok, held_texts).numel()
    print(f"  vocab {len(tokenizer)}, {train_stream.numel()} train tokens, "
          f"{corpus_bytes / (train_stream.numel() + held_stream.numel()):.2f} bytes/token "
          f"(target's: {corpus_bytes / target_tokens:.2f})", flush=True)

    teacher_tokens = sum(len(c) for _, c in pairs)
    t_ids, t_len, _ = to_draft_tokens(pairs, target_tok, tokenizer, SEQ_LEN + 1)
    h_ids, h_len, h_start = to_draft_tokens(held_pairs, target_tok, tokenizer, 4 * SEQ_LEN)

    config = draft_config(tokenizer, vocab_size=len(tokenizer))
    torch.manual_seed(seed + 2)
    draft = build_model(config)
    n_params = sum(p.numel() for p in draft.parameters())
    print(f"training the other-tokenizer draft ({n_params / 1e6:.2f} M params) for {steps} steps ...", flush=True)
    loss_t, loss_c, train_secs = train_on_continuations(draft, train_stream, t_ids, t_len, steps=steps, batch=batch,
                                                        lr=OTHER_LR, seed=seed + 40, teacher_share=TEACHER_SHARE,
                                                        label="other-tokenizer draft")

    top1 = continuation_top1(draft, h_ids, h_len, h_start)
    draft.eval()
    windows = heldout_windows(held_stream, n=256)
    ce = total = 0
    with torch.no_grad():
        for i in range(0, windows.size(0), 32):
            w = windows[i:i + 32]
            logits = draft(input_ids=w[:, :-1]).logits
            ce += F.cross_entropy(logits.reshape(-1, logits.size(-1)), w[:, 1:].reshape(-1), reduction="sum").item()
            total += w[:, 1:].numel()
    # The same measure for the bundled same-tokenizer draft, in target tokens, for comparison.
    reference = None
    if (out / "draft").is_dir():
        same = LlamaForCausalLM.from_pretrained(out / "draft", dtype=torch.float32).eval()
        reference = continuation_top1(same, *pack_continuations(held_pairs, target_tok.pad_token_id, 4 * SEQ_LEN))
    print(f"held-out: top-1 on the target's greedy continuations {top1:.3f} (same-tokenizer draft: "
          f"{reference if reference is None else round(reference, 3)}), corpus CE {ce / total:.3f}", flush=True)

    save_model(draft, tokenizer, out / OTHER_DIR)
    entry = {
        "params": n_params,
        "vocab_size": len(tokenizer),
        "special_ids": {"pad": tokenizer.pad_token_id, "bos": tokenizer.bos_token_id,
                        "eos": tokenizer.eos_token_id},
        "target_special_ids": {"pad": target_tok.pad_token_id, "bos": target_tok.bos_token_id,
                               "eos": target_tok.eos_token_id},
        "bytes_per_token": round(corpus_bytes / (train_stream.numel() + held_stream.numel()), 3),
        "training": "sequence-level distillation: next-token CE on the target's greedy continuations of "
                    f"line-start corpus prompts, re-tokenized ({TEACHER_SHARE:.0%} of each batch), "
                    "and on corpus windows (the rest)",
        "teacher_rows": len(pairs),
        "teacher_new_tokens": TEACHER_NEW_TOKENS,
        "teacher_tokens": teacher_tokens,
        "generation_seconds": round(teacher.seconds, 1),
        "steps": steps,
        "batch": batch,
        "seconds": round(train_secs, 1),
        "final_train_ce_continuations": round(loss_t, 4),
        "final_train_ce_corpus": round(loss_c, 4),
        "heldout": {
            "top1_on_target_greedy": round(top1, 4),
            "same_tokenizer_draft_top1_on_target_greedy": None if reference is None else round(reference, 4),
            "prompts": len(held_pairs),
            "new_tokens": HELDOUT_NEW_TOKENS,
            "draft_heldout_ce": round(ce / total, 4),
            "heldout_tokens": total,
        },
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    return entry


