"""The training text: Python standard library sources (on every machine, no download), split by whole files into
training and held-out text, encoded as one id stream and cut into windows."""

from __future__ import annotations

import random
import sysconfig
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

SEQ_LEN = 128
CORPUS_CAP_BYTES = 4 * 1024 * 1024
HELDOUT_FRACTION = 0.05

# Parts of the stdlib that are not representative hand-written Python: test
# suites (huge, and they would crowd out everything else), generated codec
# tables, the pydoc topic dump, and vendored/third-party trees.
EXCLUDED_DIRS = {"test", "tests", "idle_test", "encodings", "pydoc_data", "site-packages",
                 "dist-packages", "lib2to3", "turtledemo", "__pycache__"}
MAX_FILE_BYTES = 256 * 1024


def collect_stdlib_text(cap_bytes: int = CORPUS_CAP_BYTES) -> list[str]:
    """Return the source text of stdlib ``*.py`` files, in a deterministic order.

    The standard library is used because it is present on every machine that
    can run this script, needs no network access, and is real, idiomatic Python
    -- which gives the models something learnable and the demo recognisable
    output.

    Paths are sorted (``rglob`` order depends on the filesystem) and then
    shuffled with a *fixed* RNG, independent of ``--seed``: the cap would
    otherwise keep only modules starting with a-e, and a fixed shuffle keeps
    the corpus identical across seeds so that seeds only change training.
    Collection stops at ``cap_bytes`` so the run time stays bounded.
    Unreadable or non-UTF-8 files are skipped silently; they are rare and not
    needed.  Very large files (generated tables) are skipped for diversity.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = [p for p in sorted(root.rglob("*.py"))
             if not EXCLUDED_DIRS.intersection(p.relative_to(root).parts[:-1])]
    random.Random(1234).shuffle(paths)
    texts: list[str] = []
    total = 0
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        size = len(text.encode("utf-8"))
        if not text.strip() or size > MAX_FILE_BYTES:
            continue
        texts.append(text)
        total += size
        if total >= cap_bytes:
            break
    if not texts:
        raise RuntimeError(f"no readable *.py files found under {root}")
    return texts


def split_files(texts: list[str], seed: int) -> tuple[list[str], list[str]]:
    """(training files, held-out files): a seed-shuffled ``HELDOUT_FRACTION`` of whole files held out, so that
    agreement is measured on text neither model has seen."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_held = max(1, int(len(texts) * HELDOUT_FRACTION))
    held_idx = set(order[:n_held])
    train_texts = [t for i, t in enumerate(texts) if i not in held_idx]
    held_texts = [t for i, t in enumerate(texts) if i in held_idx]
    return train_texts, held_texts


def encode_corpus(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> torch.Tensor:
    """Encode each file as ``<s> file </s>`` and concatenate into one id stream.

    Document boundaries are marked so the model learns what a file start looks
    like; training windows may span a boundary, which is harmless at this scale.
    """
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    ids: list[int] = []
    for enc in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.append(bos)
        ids.extend(enc)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def sample_windows(stream: torch.Tensor, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Draw ``batch`` random windows of ``SEQ_LEN + 1`` tokens from ``stream``.

    One extra token per window gives inputs and shifted next-token labels.
    Sampling random offsets (rather than iterating epochs) makes the step count
    freely adjustable and keeps batches uncorrelated.
    """
    starts = torch.randint(0, stream.numel() - SEQ_LEN - 1, (batch,), generator=generator)
    offsets = torch.arange(SEQ_LEN + 1)
    return stream[starts[:, None] + offsets[None, :]]


def heldout_windows(stream: torch.Tensor, n: int) -> torch.Tensor:
    """Non-overlapping, evenly spaced evaluation windows (fixed, not random)."""
    span = SEQ_LEN + 1
    count = min(n, stream.numel() // span)
    return stream[: count * span].view(count, span)

