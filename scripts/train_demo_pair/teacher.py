"""What both drafts learn from: the target's greedy continuations of line-start prompts cut from the corpus
(sequence-level distillation), and those continuations as training rows in either draft's tokens."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from .corpus import encode_corpus

TEACHER_PROMPT_LENGTHS = (8, 16, 24, 32, 48)  # target tokens, cycled over generation batches
TEACHER_NEW_TOKENS = 80  # prompt + continuation fit a SEQ_LEN window in draft tokens, mostly
TEACHER_GEN_BATCH = 128
HELDOUT_TEACHER_ROWS = 256
HELDOUT_NEW_TOKENS = 64  # as the demo and the bench (max_new_tokens=64)
DEFAULT_TEACHER_ROWS = 6144  # ~85 s of generation


def line_start_prompts(stream: torch.Tensor, tokenizer, rows: int, length: int,
                       generator: torch.Generator) -> torch.Tensor:  # [rows, length]
    """``rows`` random windows of ``length`` ids of ``stream`` that start right after a newline token and hold
    no special token (the demo's prompts also start at a line start: ``def name(...):``)."""
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert len(newline) == 1, "the newline is its own pre-token, hence one token"
    specials = torch.zeros_like(stream, dtype=torch.bool)
    for sid in (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id):
        specials |= stream == sid
    in_window = F.pad(specials.long().cumsum(0), (1, 0))  # in_window[j] = specials before position j
    starts = (stream[:-length - 1] == newline[0]).nonzero().squeeze(1) + 1
    starts = starts[in_window[starts + length] == in_window[starts]]
    pick = starts[torch.randint(0, starts.numel(), (rows,), generator=generator)]
    return stream[pick[:, None] + torch.arange(length)[None, :]]


@torch.no_grad()
def teacher_continuations(target: LlamaForCausalLM, tokenizer, stream: torch.Tensor, *, rows: int,
                          new_tokens: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """The target's greedy continuations of ``rows`` line-start prompts from ``stream``: (prompt ids,
    continuation ids up to its first EOS), in target tokens.  Each generation batch has one prompt length
    (cycling through ``TEACHER_PROMPT_LENGTHS``), so no row is padded."""
    gen = torch.Generator().manual_seed(seed)
    target.eval()
    pairs: list[tuple[list[int], list[int]]] = []
    for i, first in enumerate(range(0, rows, TEACHER_GEN_BATCH)):
        n = min(TEACHER_GEN_BATCH, rows - first)
        length = TEACHER_PROMPT_LENGTHS[i % len(TEACHER_PROMPT_LENGTHS)]
        prompts = line_start_prompts(stream, tokenizer, n, length, gen)
        out = target.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens,
                              do_sample=False, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id)
        for prompt, new in zip(prompts.tolist(), out[:, length:].tolist()):
            if tokenizer.eos_token_id in new:
                new = new[:new.index(tokenizer.eos_token_id)]
            pairs.append((prompt, new))
    return pairs


def to_draft_tokens(pairs: list[tuple[list[int], list[int]]], target_tokenizer, draft_tokenizer,
                    max_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt + continuation as text, re-encoded with the draft's tokenizer (as the decoding loop re-encodes
    committed text: special tokens dropped, none added).  Returns ids [N, max_len] right-padded with the
    draft's pad id, each row's length, and where its continuation starts (the first draft token that is not
    a token of the prompt's own encoding)."""
    prompts = target_tokenizer.batch_decode([p for p, _ in pairs], skip_special_tokens=True)
    fulls = target_tokenizer.batch_decode([p + c for p, c in pairs], skip_special_tokens=True)
    enc_p = draft_tokenizer(prompts, add_special_tokens=False)["input_ids"]
    enc_f = draft_tokenizer(fulls, add_special_tokens=False)["input_ids"]
    ids = torch.full((len(pairs), max_len), draft_tokenizer.pad_token_id, dtype=torch.long)
    lengths = torch.zeros(len(pairs), dtype=torch.long)
    cont_start = torch.zeros(len(pairs), dtype=torch.long)
    for row, (p, f) in enumerate(zip(enc_p, enc_f)):
        f = f[:max_len]
        ids[row, :len(f)] = torch.tensor(f, dtype=torch.long)
        lengths[row] = len(f)
        common = 0
        while common < min(len(p), len(f)) and p[common] == f[common]:
            common += 1
        cont_start[row] = common
    return ids, lengths, cont_start


def pack_continuations(pairs: list[tuple[list[int], list[int]]], pad_id: int,
                       max_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt + continuation ids (the draft shares the target's tokens) right-padded with ``pad_id`` to
    ``max_len``: ids [N, max_len], each row's length, and where its continuation starts."""
    ids = torch.full((len(pairs), max_len), pad_id, dtype=torch.long)
    lengths = torch.zeros(len(pairs), dtype=torch.long)
    for row, (p, c) in enumerate(pairs):
        full = (p + c)[:max_len]
        ids[row, :len(full)] = torch.tensor(full, dtype=torch.long)
        lengths[row] = len(full)
    return ids, lengths, torch.tensor([len(p) for p, _ in pairs], dtype=torch.long)


@dataclass
class Teacher:
    """What both drafts learn from: the target as saved in ``<out>/target`` (float16 weights read back in
    float32, so a full run and a ``--*-draft-only`` run train from the same teacher), its tokenizer, and its
    greedy continuations of training and held-out prompts (made once, shared by both drafts in a full run)."""

    model: LlamaForCausalLM
    tokenizer: PreTrainedTokenizerFast
    pairs: list[tuple[list[int], list[int]]]  # (prompt ids, continuation ids) in target tokens
    held_pairs: list[tuple[list[int], list[int]]]
    seconds: float  # generating them


def load_teacher(out: Path, train_texts: list[str], held_texts: list[str], *, seed: int, rows: int,
                 held_rows: int = HELDOUT_TEACHER_ROWS) -> Teacher:
    """The target saved in ``<out>/target`` and its greedy continuations of ``rows`` training prompts and
    ``held_rows`` held-out ones."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "target")
    target = LlamaForCausalLM.from_pretrained(out / "target", dtype=torch.float32).eval()
    print(f"target continuations: {rows} for training, {held_rows} held out ...", flush=True)
    t0 = time.perf_counter()
    pairs = teacher_continuations(target, tokenizer, encode_corpus(tokenizer, train_texts), rows=rows,
                                  new_tokens=TEACHER_NEW_TOKENS, seed=seed + 30)
    held_pairs = teacher_continuations(target, tokenizer, encode_corpus(tokenizer, held_texts),
                                       rows=held_rows, new_tokens=HELDOUT_NEW_TOKENS, seed=seed + 31)
    seconds = time.perf_counter() - t0
    print(f"  {sum(len(c) for _, c in pairs)} target tokens generated in {seconds:.1f}s", flush=True)
    return Teacher(target, tokenizer, pairs, held_pairs, seconds)

