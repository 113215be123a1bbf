"""The ground truth of every greedy test: transformers' own `generate`, one prompt alone, and the helpers that set a
greedy test up (left padding, stop ids taken from what the model really generates)."""

from __future__ import annotations

import weakref

import torch
from hypothesis import strategies as st

# By model object, weakly: a key of id(model) outlived its model, and a later model at the same address read the
# dead one's results (seen once: a merged LoRA model compared against another model's greedy rows).
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _frozen(value):
    """A cache key for a generate argument: containers by content, anything else as the object itself (held by the
    key, so that its id is never reused by another object while the entry lives)."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, set):
        return frozenset(value)
    hash(value)  # an unhashable argument of another kind: refuse rather than key it wrongly
    return value


def plain_greedy(model, prompt: list[int], max_new_tokens: int, eos=None, **generate_kwargs) -> list[int]:
    """New tokens of transformers' greedy `generate` on this prompt alone (batch 1, no padding), through the first
    of the stop ids `eos` (as HF stops there; None: no EOS at all). `generate_kwargs` are passed on (logits
    processors, stopping criteria, stop strings with their tokenizer, PEFT `adapter_names`, another
    `pad_token_id`): the reference of a call with the same settings. The prompt goes to the device of the model's
    input embeddings (a GPU model, an accelerate-dispatched one). Cached per model and arguments."""
    eos = tuple(eos) if isinstance(eos, (list, tuple)) else (eos,) if eos is not None else None
    cache = _CACHE.setdefault(model, {})
    key = (tuple(prompt), max_new_tokens, eos or None, _frozen(generate_kwargs))
    if key not in cache:
        device = model.get_input_embeddings().weight.device
        ids = torch.tensor([prompt], device=device)
        call = dict(attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                    eos_token_id=list(eos) if eos else None, pad_token_id=0)
        out = model.generate(ids, **{**call, **generate_kwargs})
        new = out[0, len(prompt):].tolist()
        if eos:  # HF pads finished rows only in batches; alone it just stops, but be explicit
            first = next((i for i, t in enumerate(new) if t in eos), None)
            new = new if first is None else new[: first + 1]
        cache[key] = new
    return list(cache[key])


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts as a left-padded batch (transformers' padding_side='left') and its attention mask."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return ids, mask


def free_run_tokens(model, prompts: list[list[int]], max_new_tokens: int, skip_first: bool = False) -> list[int]:
    """The distinct tokens plain greedy generates for these prompts without a stop (sorted): stop ids taken from
    them really occur, so rows stop inside accepted blocks, not only by their budget. `skip_first` leaves out each
    row's first token (the prefill's, which no round decides)."""
    return sorted({t for p in prompts for t in plain_greedy(model, p, max_new_tokens, None)[int(skip_first):]})


def draw_stop_ids(data, model, prompts: list[list[int]], max_new_tokens: int, max_size: int = 2,
                  label: str = "eos") -> tuple[int, ...]:
    """0 to `max_size` distinct stop ids drawn (Hypothesis `data`) from the free run of these prompts."""
    free = free_run_tokens(model, prompts, max_new_tokens)
    return tuple(data.draw(st.lists(st.sampled_from(free), max_size=max_size, unique=True), label=label))


def most_frequent_token(model, prompts: list[list[int]], max_new_tokens: int) -> int:
    """The token plain greedy generates most often for these prompts (ties: the smallest id): a stop id that ends
    many rows at different lengths, so that rows finish at different rounds."""
    run = [t for p in prompts for t in plain_greedy(model, p, max_new_tokens, None)]
    return max(sorted(set(run)), key=run.count)


def reference_drafts(t: list[int], k: int, max_ngram: int, budget: int) -> list[int]:
    """Prompt lookup for one row, naively (the oracle of `lookup.ngram_drafts`): largest n first, then the most
    recent earlier occurrence."""
    L = len(t)
    for n in range(max_ngram, 0, -1):
        if L <= n:
            continue
        for s in range(L - 1 - n, -1, -1):  # s + n <= L - 1, most recent first
            if t[s : s + n] == t[L - n :]:
                return t[s + n : s + n + min(k, L - (s + n), budget)]
    return []
